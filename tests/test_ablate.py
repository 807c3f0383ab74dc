"""``diffrec ablate`` through the console script: a tiny grid on the synthetic data, reuse, refused cells, bad input."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

EXE = shutil.which("diffrec")
CMD = [EXE] if EXE else [sys.executable, "-m", "diffrec.cli.main"]
TINY = ["--set", "hidden_size=16", "--set", "num_blocks=1", "--set", "num_heads=2", "--set", "max_len=12", "--set", "eval_every=1", "--epochs", "1", "--threads", "1", "-q"]


def diffrec(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": str(pathlib.Path("/tmp"))}
    return subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate") / "grid"
    args = ["ablate", "--out", out, "--grid", "delta=0.001,0.01", "--grid", "reverse_sampler=ddpm,one_step", "--seeds", "2", "--recipe", "fast",
            "--reference", "delta=0.001,reverse_sampler=ddpm", *TINY]  # fmt: skip
    proc = diffrec(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, args, proc


def test_a_grid_writes_its_summary_table_and_figures(grid):
    out, _, proc = grid
    summary = json.loads((out / "ablation.json").read_text())
    assert len(summary["cells"]) == 4 and summary["reference"] == "delta=0.001, reverse_sampler=ddpm"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["delta=0.001", "delta=0.01"], "inference-only axes share the trainings"
    for name, cell in summary["cells"].items():
        assert cell["status"] == "ok" and [r["seed"] for r in cell["runs"]] == [1997, 1998]
        interval = cell["test"]["NDCG@10"]["ci95"]
        assert interval[0] <= cell["test"]["NDCG@10"]["mean"] <= interval[1]
        for metric in ("HR@10", "NDCG@10"):
            for key in ("p", "p_holm"):
                p = cell.get("vs_reference", {}).get(metric, {}).get(key)
                assert p is None or 0.0 <= p <= 1.0
    assert "| delta=0.001, reverse_sampler=ddpm | 2 |" in (out / "ablation.md").read_text()
    assert (out / "ablation.md").read_text().startswith("<!-- diffrec ablation -->")
    for png in ("ablation_HR10.png", "ablation_NDCG10.png", "ablation_delta.png", "ablation_heatmap.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "ablation (2 seeds" in proc.stdout


def test_a_second_invocation_reuses_every_run(grid):
    out, args, _ = grid
    before = json.loads((out / "ablation.json").read_text())
    proc = diffrec(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training in" not in proc.stdout and "re-evaluating" not in proc.stdout
    assert proc.stdout.count("reusing") == 2 * 2 + 2 * 2  # 4 trainings and the 4 cached re-evaluations
    after = json.loads((out / "ablation.json").read_text())
    assert {n: c["test"] for n, c in after["cells"].items()} == {n: c["test"] for n, c in before["cells"].items()}


def test_another_ablation_shares_the_trainings_through_runs(grid, tmp_path):
    out, _, _ = grid
    steps = tmp_path / "steps"
    proc = diffrec("ablate", "--out", steps, "--runs", out / "runs", "--grid", "delta=0.001", "--grid", "reverse_sampler.steps=1,2", "--seeds", "2", "--recipe", "fast", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training in" not in proc.stdout and proc.stdout.count("re-evaluating") == 2 * 2
    summary = json.loads((steps / "ablation.json").read_text())
    assert summary["runs_dir"] == str(out / "runs") and not (steps / "runs").exists()
    assert [c["status"] for c in summary["cells"].values()] == ["ok", "ok"]
    assert {r["run_dir"] for c in summary["cells"].values() for r in c["runs"]} == {str(out / "runs" / "delta=0.001" / f"seed{s}") for s in (1997, 1998)}
    respelled = f"{out}/../{out.name}/runs"  # the same folder, spelled another way: the cached evaluations still count
    proc = diffrec("ablate", "--out", steps, "--runs", respelled, "--grid", "delta=0.001", "--grid", "reverse_sampler.steps=1,2", "--seeds", "2", "--recipe", "fast", *TINY)
    assert proc.returncode == 0 and "re-evaluating" not in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_no_train_summarises_the_finished_runs_and_trains_nothing(grid, tmp_path):
    out, _, _ = grid
    partial = tmp_path / "partial"
    args = ["ablate", "--out", partial, "--runs", out / "runs", "--grid", "delta=0.001,0.01", "--grid", "rounding=inner_product,l2", "--seeds", "3", "--recipe", "fast", "--no-train", *TINY]
    proc = diffrec(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training in" not in proc.stdout and proc.stdout.count("not trained yet (--no-train)") == 2
    assert not (out / "runs" / "delta=0.001" / "seed1999").exists()
    summary = json.loads((partial / "ablation.json").read_text())
    assert sorted(summary["untrained"]) == [str(out / "runs" / f"delta={d}" / "seed1999") for d in ("0.001", "0.01")]
    assert all([r["seed"] for r in c["runs"]] == [1997, 1998] for c in summary["cells"].values())
    assert "2 runs not trained yet" in (partial / "ablation.md").read_text()
    empty = tmp_path / "empty"
    proc = diffrec("ablate", "--out", empty, "--grid", "delta=0.001", "--no-train", *TINY)
    assert proc.returncode == 2 and "nothing to summarise" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (empty / "ablation.json").exists()


def test_a_run_without_its_weights_is_reported_and_the_other_seeds_still_evaluate(grid, tmp_path):
    """A checkout keeps a run's configs and metrics but not its weights: an inference-only cell on
    such a run is listed as ``no_weights``; the trained cells and the other seeds are reported."""
    out, _, _ = grid
    shared = tmp_path / "runs"
    shutil.copytree(out / "runs", shared)
    (shared / "delta=0.001" / "seed1998" / "model.safetensors").unlink()
    report = tmp_path / "report"
    args = ["ablate", "--out", report, "--runs", shared, "--grid", "delta=0.001", "--grid", "reverse_sampler.steps=1,2", "--seeds", "2", "--recipe", "fast"]
    proc = diffrec(*args, "--no-train", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("model.safetensors are not there") == 2 and proc.stdout.count("re-evaluating") == 2, proc.stdout
    summary = json.loads((report / "ablation.json").read_text())
    assert summary["no_weights"] == [str(shared / "delta=0.001" / "seed1998")]
    assert all([r["seed"] for r in c["runs"]] == [1997] for c in summary["cells"].values())
    assert "1 run without weights here" in (report / "ablation.md").read_text()
    proc = diffrec(*args, *TINY)  # training mode neither retrains the finished run nor fails on it
    assert proc.returncode == 0 and "training in" not in proc.stdout, proc.stderr[-2000:]
    assert json.loads((report / "ablation.json").read_text())["no_weights"] == [str(shared / "delta=0.001" / "seed1998")]


def test_a_grid_finds_a_training_that_runs_holds_under_another_cells_name(grid, tmp_path):
    out, _, _ = grid
    shared = tmp_path / "runs"
    shutil.copytree(out / "runs", shared)
    schedules = tmp_path / "schedules"
    proc = diffrec("ablate", "--out", schedules, "--runs", shared, "--grid", "schedule=trunc_lin,cosine", "--seeds", "2", "--recipe", "fast", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("the same training is") == 2 and proc.stdout.count("training in") == 2, proc.stdout
    cells = json.loads((schedules / "ablation.json").read_text())["cells"]
    assert [r["run_dir"] for r in cells["schedule=trunc_lin"]["runs"]] == [str(shared / "delta=0.001" / f"seed{s}") for s in (1997, 1998)]
    assert [r["run_dir"] for r in cells["schedule=cosine"]["runs"]] == [str(shared / "schedule=cosine" / f"seed{s}") for s in (1997, 1998)]
    grid_cell = json.loads((out / "ablation.json").read_text())["cells"]["delta=0.001, reverse_sampler=ddpm"]
    assert cells["schedule=trunc_lin"]["test"] == grid_cell["test"]


def test_a_training_on_other_data_or_with_other_settings_is_not_taken_for_the_same(grid, tmp_path):
    from diffrec import ablate, checkpoint
    from diffrec.data.source import open_dataset

    out, _, _ = grid
    shared = tmp_path / "runs"
    shutil.copytree(out / "runs" / "delta=0.001" / "seed1997", shared / "renamed" / "seed1997")
    config = checkpoint.RunDir(shared / "renamed" / "seed1997").valid_config()
    data = open_dataset(config.data)
    wanted = {("schedule=trunc_lin", 1997): config}
    assert ablate.run_directories(wanted, shared, data, print)[("schedule=trunc_lin", 1997)] == shared / "renamed" / "seed1997"
    config.train.num_threads, config.train.device = 2, "cpu"  # how fast or where it runs is the same training
    assert ablate.run_directories(wanted, shared, data, print)[("schedule=trunc_lin", 1997)] == shared / "renamed" / "seed1997"
    other = checkpoint.RunDir(shared / "renamed" / "seed1997").valid_config()
    other.train.lr *= 2
    assert ablate.run_directories({("lr", 1997): other}, shared, data, print)[("lr", 1997)] == shared / "lr" / "seed1997"
    record = json.loads((shared / "renamed" / "seed1997" / "dataset.json").read_text())
    (shared / "renamed" / "seed1997" / "dataset.json").write_text(json.dumps({**record, "fingerprint": "0" * 16}))
    assert ablate.run_directories(wanted, shared, data, print)[("schedule=trunc_lin", 1997)] == shared / "schedule=trunc_lin" / "seed1997"


@pytest.mark.parametrize(
    "name, content",
    [("notes.txt", b"mine"), ("ablation.md", b"| my own table |\n"), ("ablation.json", b'{"kind": "my results"}'), ("ablation_HR10.png", b"\x89PNG\r\n\x1a\nmine")],
)
def test_an_out_folder_with_files_ablate_did_not_write_is_refused(tmp_path, name, content):
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_bytes(content)
    proc = diffrec("ablate", "--out", out, "--grid", "delta=0.001,0.01", *TINY)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"refusing to write into {out}: it holds {name}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [name] and (out / name).read_bytes() == content


def test_an_earlier_ablation_folder_is_accepted(tmp_path):
    from diffrec.ablate import check_out

    (tmp_path / "runs" / "delta=0.01").mkdir(parents=True)
    (tmp_path / "ablation.json").write_text('{"kind": "diffrec ablation"}')
    (tmp_path / "ablation.md").write_text("| cell | seeds | HR@10 | NDCG@10 | Δ HR@10 | Δ NDCG@10 |\n")  # written before the marker
    check_out(tmp_path)
    (tmp_path / "ablation.md").write_text("| cell | seeds | mine |\n")
    with pytest.raises(Exception, match="it holds ablation.md"):
        check_out(tmp_path)


def test_an_out_or_runs_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    for option in ("--out", "--runs"):
        args = ["--out", tmp_path / "new", "--runs", tmp_path / "file"] if option == "--runs" else ["--out", tmp_path / "file"]
        proc = diffrec("ablate", *args, "--grid", "delta=0.001,0.01", *TINY)
        assert proc.returncode == 2 and f"{option} {tmp_path / 'file'} exists and is not a folder" in proc.stderr
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "new").exists()


def test_a_flat_line_plot_is_drawn_on_a_readable_scale(tmp_path, monkeypatch):
    import matplotlib.figure

    from diffrec.ablation_report import figures

    limits = {}
    real = matplotlib.figure.Figure.savefig
    def spy(fig, path, *args, **kwargs):
        limits[pathlib.Path(path).name] = [ax.get_ylim() for ax in fig.axes]
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    cells = {
        f"steps={s}": {"status": "ok", "assignments": {"steps": str(s)}, "runs": [{"test": {"HR@10": 8.16 + 0.01 * (s % 3), "NDCG@10": 4.55}}],
                       "test": {"HR@10": {"mean": 8.16 + 0.01 * (s % 3), "std": None}, "NDCG@10": {"mean": 4.55, "std": None}}}
        for s in (1, 2, 4, 8)
    }  # fmt: skip
    figures({"cells": cells}, [("steps", ["1", "2", "4", "8"])], tmp_path)
    line = next(v for k, v in limits.items() if "ablation_steps.png" in k)  # the temporary file beside it
    (hr_low, hr_high), (nd_low, nd_high) = line
    assert hr_high - hr_low >= 0.8 and hr_low <= 8.16 and hr_high >= 8.18  # 10 % of the value, not the second decimal
    assert nd_high - nd_low >= 0.5 and nd_low <= 4.55 <= nd_high


def test_an_invalid_combination_is_refused_and_the_others_go_on(tmp_path):
    out = tmp_path / "refused"
    proc = diffrec("ablate", "--out", out, "--grid", "model=diffurec,preferdiff", "--grid", "loss=mse,ce", "--seeds", "1", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = json.loads((out / "ablation.json").read_text())["cells"]
    assert cells["model=preferdiff, loss=ce"]["status"] == "refused"
    assert "compares reconstruction errors" in cells["model=preferdiff, loss=ce"]["reason"]
    assert sum(c["status"] == "ok" for c in cells.values()) == 3


@pytest.mark.parametrize(
    "grid_args, message",
    [
        (["--grid", "shedule=cosine"], "unknown key 'shedule'"),
        (["--grid", "schedule=cosin"], "--grid schedule=cosin: unknown schedule 'cosin'; valid choices"),
        (["--grid", "schedule="], "an empty value list"),
        (["--grid", "schedule=cosine", "--grid", "schedule=linear"], "--grid schedule is given twice"),
        (["--grid", "schedule=cosine,cosine"], "a value is given twice"),
        (["--grid", "schedule=cosine,linear", "--reference", "schedule=sqrt"], "is not a cell of the grid"),
        (["--grid", "delta=0.1,0.2,0.3,0.4,0.5,0.6", "--grid", "dropout=0.1,0.2,0.3,0.4", "--seeds", "5"], "the grid needs 120 trainings; pass --yes"),
        ([], "give at least one --grid"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, grid_args, message):
    out = tmp_path / "bad"
    proc = diffrec("ablate", "--out", out, *grid_args, *TINY)
    assert proc.returncode == 2, proc.stdout[-500:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists()
