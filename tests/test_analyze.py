"""``diffrec analyze`` and ``diffrec plot --schedules``: breakdowns, beyond-accuracy metrics, multi-sample fusion, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffrec.analysis import beyond_accuracy, intra_list_diversity, sample_counts
from diffrec.cli.main import app

TINY = ["--epochs", "1", "--hidden-size", "16", "--num-blocks", "1", "--num-heads", "2", "--max-len", "12", "-q"]
runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    for name, extra in (("diffurec", ["--emb-init-std", "0.05"]), ("sasrec", ["--model", "sasrec"])):
        result = runner.invoke(app, ["train", "--out", str(root / name), *TINY, *extra])
        assert result.exit_code == 0, result.output
    return root


def test_analyze_writes_every_breakdown_and_figure(runs, tmp_path):
    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", "--checkpoint", str(runs / "diffurec"), "--checkpoint", str(runs / "sasrec"), "--out", str(out), "--samples", "3"])
    assert result.exit_code == 0, result.output
    analysis = json.loads((out / "analysis.json").read_text())
    diff, sas = analysis["runs"]
    evaluated = json.loads((runs / "diffurec" / "metrics.json").read_text())["test"]
    assert diff["overall"]["HR@10"] == pytest.approx(evaluated["HR@10"]) and diff["overall"]["NDCG@10"] == pytest.approx(evaluated["NDCG@10"])
    pop = diff["popularity"]
    users = diff["overall"]["users"]
    assert pop["head"]["users"] + pop["tail"]["users"] == users == sum(q["users"] for q in pop["quintiles"])
    assert sum(b["users"] for b in diff["length"]) == users
    weighted = sum(q["users"] * q["NDCG@10"] for q in pop["quintiles"] if q["users"]) / users
    assert weighted == pytest.approx(diff["overall"]["NDCG@10"]), "the quintiles partition the users"
    assert [s["samples"] for s in diff["samples"] if s["fusion"] == "score"] == [1, 2, 3]
    one = next(s for s in diff["samples"] if s["samples"] == 1 and s["fusion"] == "score")
    assert one["HR@10"] == pytest.approx(diff["overall"]["HR@10"])
    assert sas["deterministic"] and [s["samples"] for s in sas["samples"]] == [1, 1]
    for key, lo, hi in (("coverage", 0, 100), ("gini", 0, 1), ("ild", 0, 2)):
        assert lo <= diff["beyond"][key] <= hi, key
    for png in ("popularity.png", "length.png", "beyond.png", "samples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    again = runner.invoke(app, ["analyze", "--checkpoint", str(runs / "sasrec"), "--out", str(out)])
    assert again.exit_code == 2 and "exists and is not empty" in again.stderr
    assert runner.invoke(app, ["analyze", "--checkpoint", str(runs / "sasrec"), "--out", str(out), "--force"]).exit_code == 0


def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path):
    other = tmp_path / "other"
    data = tmp_path / "seq.txt"
    data.write_text("".join(f"u{u} 1 2 3 4 5\n" for u in range(50)))
    assert runner.invoke(app, ["train", "--data", str(data), "--out", str(other), *TINY]).exit_code == 0
    cases = [
        (["--checkpoint", str(runs / "diffurec"), "--samples", "0"], "--samples must be >= 1"),
        (["--checkpoint", str(runs / "diffurec"), "--checkpoint", str(other)], "trained on other data"),
        (["--checkpoint", str(tmp_path / "nope")], "run directory not found"),
        (["--checkpoint", str(runs / "diffurec"), "--split", "train"], "unknown split"),
        ([], "give at least one --checkpoint"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["analyze", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert not (tmp_path / "out").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    result = runner.invoke(app, ["analyze", "--checkpoint", str(runs / "diffurec"), "--out", str(mine), "--force"])
    assert result.exit_code == 2 and "not an analysis folder that diffrec wrote" in result.stderr
    assert (mine / "notes.txt").read_text() == "keep"


def test_beyond_accuracy_metrics_on_known_lists():
    table = torch.eye(5)  # items 1..4 orthogonal (row 0 padding)
    lists = np.array([[1, 2], [1, 2]])
    counts = np.array([0, 9, 1, 0, 0])
    b = beyond_accuracy(lists, counts, table)
    assert b["coverage"] == pytest.approx(50.0)
    assert b["ild"] == pytest.approx(1.0), "orthogonal items are maximally diverse (1 - cos = 1)"
    p = (counts[1:] + 1) / (10 + 4)
    assert b["novelty"] == pytest.approx(np.mean(-np.log2(p[[0, 1, 0, 1]])))
    equal = beyond_accuracy(np.array([[1, 2], [3, 4]]), counts, table)
    assert equal["gini"] == pytest.approx(0.0) and b["gini"] > 0.4
    assert intra_list_diversity(np.array([[1, 1]]), table) == pytest.approx(0.0)
    assert sample_counts(1) == [1] and sample_counts(6) == [1, 2, 4, 6] and sample_counts(8) == [1, 2, 4, 8]


def test_plot_schedules(tmp_path):
    out = tmp_path / "schedules.png"
    result = runner.invoke(app, ["plot", "--schedules", "--steps", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert runner.invoke(app, ["plot", "--schedules"]).exit_code == 2
