import json
import pathlib
import pickle
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from diffrec.cli.main import app

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--eval-every", "1", "--hidden-size", "32", "--num-blocks", "1", "--num-heads", "2", "--max-len", "20", "--batch-size", "256", "--emb-init-std", "0.05", "-q"]

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run("train", "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_run(trained):
    final = json.loads((trained / "metrics.json").read_text())
    assert final["epochs_run"] == 2 and final["protocol"] == "correct"
    assert "HR@10" in final["test"] and "NDCG@20" in final["valid"]


def test_config_replay_reproduces_the_run(trained, tmp_path):
    out = tmp_path / "replay"
    result = run("train", "--config", trained / "config.toml", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    a = json.loads((trained / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["valid"] == b["valid"]


def test_evaluate_is_repeatable_and_exports_topk(trained, tmp_path):
    topk = tmp_path / "top.tsv"
    result = run("evaluate", "--checkpoint", trained, "--json", "--save-topk", topk, "-k", "5")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics == json.loads((trained / "metrics.json").read_text())["test"]
    lines = topk.read_text().splitlines()
    assert lines[0] == "user\titems" and len(lines) == 2001
    assert all(len(line.split("\t")[1].split()) == 5 for line in lines[1:])
    again = run("evaluate", "--checkpoint", trained, "--save-topk", topk)
    assert_clean_error(again, "exists")
    one_step = run("evaluate", "--checkpoint", trained, "--json", "--reverse-sampler", "one_step")
    assert one_step.exit_code == 0 and json.loads(one_step.stdout)["metrics"] != metrics
    assert_clean_error(run("evaluate", "--checkpoint", trained, "--reverse-sampler", "nope"), "unknown reverse_sampler 'nope'")
    official = run("evaluate", "--checkpoint", trained, "--json", "--eval-protocol", "official")
    assert official.exit_code == 0 and json.loads(official.stdout)["protocol"] == "official"


def test_recommend(trained):
    result = run("recommend", "--checkpoint", trained, "--history", "12 55 301", "-k", "7", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["rank"] for r in rows] == list(range(1, 8))
    items = [r["item"] for r in rows]
    assert not {12, 55, 301} & set(items) and 0 not in items
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert_clean_error(run("recommend", "--checkpoint", trained, "--history", "12 99999"), "outside 1..500")
    assert_clean_error(run("recommend", "--checkpoint", trained, "--history", "a b"), "--history")


def test_list_and_stats():
    result = run("list")
    assert result.exit_code == 0
    for name in ("trunc_lin", "transformer", "inner_product", "loss_aware", "ddpm", "diffurec"):
        assert name in result.stdout
    stats = run("data", "stats", "synthetic", "--json")
    assert stats.exit_code == 0
    s = json.loads(stats.stdout)
    assert s["users"] == 2000 and s["items"] == 500 and 0 < s["sparsity"] < 1


def test_plugin_part_trains_from_the_command_line(tmp_path):
    out = tmp_path / "conv"
    plugin = REPO / "examples" / "custom_approximator.py"
    result = run("train", "--plugin", plugin, "--approximator", "conv", "--out", out, *TINY[:2], "--epochs", "1", *TINY[4:])
    assert result.exit_code == 0, result.output
    assert "examples/custom_approximator.py" in (out / "config.toml").read_text()
    # the saved run remembers its plugin, so evaluation needs nothing more
    assert run("evaluate", "--checkpoint", out, "--json").exit_code == 0


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, trained):
    out = tmp_path / "x"
    assert_clean_error(run("train", "--out", out, "--approximator", "lstm"), "unknown approximator 'lstm'", "transformer")
    assert_clean_error(run("train", "--out", out, "--schedule", "cosin"), "valid choices")
    assert_clean_error(run("train", "--out", out, "--data", tmp_path / "missing.txt"), "not found")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_clean_error(run("train", "--out", out, "--data", empty), "empty")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 4\n2 5 x 7\n")
    assert_clean_error(run("train", "--out", out, "--data", bad), "bad.txt:2")
    evil = tmp_path / "dataset.pkl"
    evil.write_bytes(pickle.dumps({"train": shutil.rmtree}))
    assert_clean_error(run("train", "--out", out, "--data", evil), "shutil")
    assert_clean_error(run("train", "--out", out, "--attention-mask", "diag"), "attention_mask must be one of")
    assert_clean_error(run("train", "--out", out, "--schedule", "linear", "--steps", "12"), "T = 12")
    assert not out.exists()
    assert_clean_error(run("train", "--out", trained, *TINY), "exists and is not empty")
    assert (trained / "metrics.json").is_file()
    assert_clean_error(run("evaluate", "--checkpoint", tmp_path), "not a diffrec run directory")
    assert_clean_error(run("data", "stats", tmp_path / "nope.csv"), "not found")


def test_nan_loss_exits_cleanly(tmp_path):
    out = tmp_path / "nan"
    result = run("train", "--out", out, *TINY, "--lr", "1e30", "--emb-init-std", "1e30")
    assert_clean_error(result, "loss became")
    assert not out.exists()


def test_version_matches_the_package_metadata():
    import re

    from diffrec import __version__

    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == __version__
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"diffrec {__version__}"


def test_help_lists_every_command_in_its_section():
    result = run("--help")
    assert result.exit_code == 0
    text = result.output
    sections = ["Train and use a model", "Studies", "Parts, data and kernels"]
    assert all(s in text for s in sections)
    commands = [c.name or c.callback.__name__ for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert {"train", "evaluate", "recommend", "reproduce", "ablate", "analyze", "plot", "list", "data", "bench"} <= set(commands)
    for name in commands:
        assert f" {name} " in text, name
    assert text.index(" train ") < text.index(" evaluate ") < text.index("Studies") < text.index(" ablate ") < text.index("Parts, data")


def test_console_script_error_is_one_line(tmp_path):
    exe = shutil.which("diffrec")
    cmd = [exe] if exe else [sys.executable, "-m", "diffrec.cli.main"]
    proc = subprocess.run([*cmd, "train", "--out", str(tmp_path / "o"), "--loss", "hinge"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown loss 'hinge'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plot_curves(trained, tmp_path):
    png = tmp_path / "curves.png"
    result = run("plot", "--run", trained, "--out", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_clean_error(run("plot", "--run", trained, "--out", png), "exists")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run("plot", "--run", empty), "not found")
    both = tmp_path / "both.png"
    assert_clean_error(run("plot", "--run", trained, "--run", trained), "--out is required")
    result = run("plot", "--run", trained, "--run", trained, "--out", both)
    assert result.exit_code == 0, result.output
    assert both.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_and_bench_reject_bad_names(tmp_path):
    assert_clean_error(run("reproduce", "--dataset", "beauty", "--models", "diffurec,nope", "--data-root", tmp_path), "unknown model preset 'nope'")
    assert_clean_error(run("reproduce", "--dataset", "beauty", "--data-root", tmp_path / "missing"), "dataset folder not found")
    assert_clean_error(run("reproduce", "--dataset", "beauty", "--table-only", "--out", tmp_path), "not found")
    (tmp_path / "beauty.json").write_text("[1, 2]")
    assert_clean_error(run("reproduce", "--dataset", "beauty", "--table-only", "--out", tmp_path), "not a reproduction summary")
    assert_clean_error(run("reproduce", "--dataset", "movies", "--table-only", "--out", tmp_path), "unknown dataset 'movies'", "beauty, toys, ml-1m")
    assert_clean_error(run("reproduce", "--table-only", "--out", tmp_path), "--dataset is required")
    listing = run("reproduce", "--list-presets")  # needs no --dataset
    assert listing.exit_code == 0 and "diffurec-lambda0" in listing.stdout
    from diffrec.presets import PRESETS, RECIPE_PURPOSE, RECIPES, recipe_settings

    assert set(RECIPE_PURPOSE) == set(RECIPES)  # every recipe says what it is for
    text = " ".join(listing.stdout.split())  # a long description wraps under itself, indented past the names
    for name in RECIPES:  # each recipe with the settings it changes, read from the recipe itself
        assert f" {name} {RECIPE_PURPOSE[name]}: {recipe_settings(name)} " in f" {text} ", name
    for name, preset in PRESETS.items():
        assert f" {name} {preset.description} " in f" {text} ", name
    assert all(line == line.rstrip() for line in listing.stdout.splitlines())
    assert recipe_settings("fast") == "emb_init_std=0.05, epochs=21, eval_every=3, patience=2, lr_step=15"
    for command in ("reproduce", "ablate"):  # the help names every recipe
        text = " ".join(run(command, "--help").stdout.replace("│", " ").split())  # the panel's borders out of the wrapped lines
        assert all(f"{name}," in text or f"{name} (" in text for name in RECIPES), command
    assert_clean_error(run("bench", "kernels", "--op", "matmul"), "unknown op 'matmul'")


def test_reproduce_runs_the_seeds_asked_for(tmp_path):
    from diffrec.data import make_synthetic

    data = make_synthetic(num_users=150, num_items=40, seed=2)
    (tmp_path / "beauty").mkdir()
    (tmp_path / "beauty" / "sequences.txt").write_text("".join(f"{u + 1} {' '.join(map(str, s))}\n" for u, s in enumerate(data.sequences)))
    args = ["reproduce", "--dataset", "beauty", "--models", "caser-ce", "--data-root", tmp_path, "--out", tmp_path / "out", "--epochs", "1", "-q"]
    result = run(*args, "--seed", "5", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out" / "runs" / "beauty" / "paper" / "caser-ce").iterdir()) == ["seed3", "seed5"]
    result = run(*args, "--seed", "4")
    summary = json.loads((tmp_path / "out" / "beauty.json").read_text())
    assert [r["seed"] for r in summary["models"]["caser-ce"]["runs"]] == [3, 4, 5]
    assert "| caser-ce | 3 | 1 |" in result.stdout


def test_train_refuses_a_directory_in_use(tmp_path):
    from diffrec import checkpoint as ckpt

    out = tmp_path / "run"
    with ckpt.exclusive(out):
        assert_clean_error(run("train", "--out", out, "--force", *TINY), "is in use by another process")
    assert not any(out.iterdir())


def _summary():
    def entry(per_seed, epochs):
        runs = [{"seed": s, "epochs_run": epochs, "test": {"HR@10": hr, "NDCG@10": hr / 2}} for s, hr in per_seed.items()]
        mean = sum(per_seed.values()) / len(per_seed)
        std = None if len(per_seed) == 1 else (sum((v - mean) ** 2 for v in per_seed.values()) / (len(per_seed) - 1)) ** 0.5
        return {"runs": runs, "test": {"HR@10": {"mean": mean, "std": std}, "NDCG@10": {"mean": mean / 2, "std": std and std / 2}}}

    return {
        "dataset": "beauty",
        "models": {"diffurec@fast": entry({1: 8.0, 2: 8.4}, 21), "sasrec": entry({1: 3.0}, 6)},
        "paper": {"diffurec": {"HR@10": 7.9, "NDCG@10": 4.75}, "bert4rec": {"HR@10": 3.7, "NDCG@10": 1.8}},
    }


def test_plot_summary_figure():
    import matplotlib.pyplot as plt

    from diffrec.plots import _model_of, summary_figure

    assert (_model_of("sasrec-ce@fast"), _model_of("diffurec-1step@long"), _model_of("sasrec")) == ("sasrec", "diffurec", "sasrec")
    fig = summary_figure(_summary())
    hr, ndcg = fig.axes[:2]
    assert [p.get_width() for p in hr.patches] == pytest.approx([3.0, 8.2])  # sorted, worst first
    assert [p.get_width() for p in ndcg.patches] == pytest.approx([1.5, 4.1])
    assert [t.get_text() for t in hr.get_yticklabels()] == ["sasrec (1 seed, 6 ep)", "diffurec@fast (2 seeds, 21 ep)"]
    dots = sorted(x for line in hr.get_lines() if line.get_marker() == "o" for x in line.get_xdata())
    assert dots == pytest.approx([3.0, 8.0, 8.4])
    # the paper's value of each entry's own model on that entry's row; none for models the table lacks
    (paper,) = [line for line in ndcg.get_lines() if line.get_marker() == "D"]
    assert list(paper.get_xdata()) == [4.75] and list(paper.get_ydata()) == [1]
    plt.close(fig)


def test_plot_summary_cli(tmp_path):
    path = tmp_path / "beauty.json"
    path.write_text(json.dumps(_summary()))
    result = run("plot", "--summary", path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "beauty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_clean_error(run("plot", "--summary", path), "exists")
    assert run("plot", "--summary", path, "--force").exit_code == 0
    assert_clean_error(run("plot"), "either --run")
    assert_clean_error(run("plot", "--summary", path, "--run", tmp_path), "either --run")
    assert_clean_error(run("plot", "--summary", tmp_path / "missing.json"), "summary not found")
    (tmp_path / "bad.json").write_text("{")
    assert_clean_error(run("plot", "--summary", tmp_path / "bad.json"), "is not JSON")
    (tmp_path / "odd.json").write_text(json.dumps({"models": {"x": {"runs": []}}}))
    assert_clean_error(run("plot", "--summary", tmp_path / "odd.json", "--out", tmp_path / "odd.png"), "not a reproduction summary")
    assert not (tmp_path / "odd.png").exists()
