"""Nothing a user wrote is lost, and every bad input is one line on stderr: through the real console script.

Each case runs ``diffrec`` in a subprocess and checks the exit status, that stderr is one
line without a traceback, and that every file that existed before is byte-identical
afterwards (and nothing new is left behind) when the command fails.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from diffrec import checkpoint as ckpt

EXE = shutil.which("diffrec")
CMD = [EXE] if EXE else [sys.executable, "-m", "diffrec.cli.main"]
TINY = ["--epochs", "2", "--eval-every", "1", "--hidden-size", "16", "--num-blocks", "1", "--num-heads", "2", "--max-len", "12", "--batch-size", "512", "--emb-init-std", "0.05", "-q", "--threads", "1"]
SMALL_DATA = ["--data", "synthetic"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": tempfile.gettempdir(), **extra}


def diffrec(*args, cwd=None, preexec_fn=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env(), preexec_fn=preexec_fn)


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert len(err.splitlines()) == 1, err
    assert ".tmp" not in err and ".diffrec-" not in err, f"an internal temporary file is named: {err}"
    for fragment in fragments:
        assert fragment in err, err
    return err


def snapshot(root: pathlib.Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    proc = diffrec("train", "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    return out


def copy_run(run: pathlib.Path, where: pathlib.Path) -> pathlib.Path:
    target = where / "run"
    shutil.copytree(run, target)
    return target


# ------------------------------------------------------------------ --force
def test_force_never_touches_a_folder_that_is_not_a_run(tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    (thesis / "chapters" / "one.tex").write_text("one")
    before = snapshot(tmp_path)
    for extra in ([], ["--lr", "1e30", "--emb-init-std", "1e30"]):  # and a run that would diverge
        err = one_line_error(diffrec("train", "--out", thesis, "--force", *TINY, *extra), "refusing to replace", "not a diffrec run", "thesis.tex")
        assert "chapters" in err
        assert snapshot(tmp_path) == before


def test_force_refuses_a_run_holding_a_users_file(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    (run / "notes.md").write_text("my notes")
    before = snapshot(tmp_path)
    one_line_error(diffrec("train", "--out", run, "--force", *TINY), "files that diffrec did not write", "notes.md")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--delta", "nan"], "delta must be a finite number"),
        (["--lr", "1e30", "--emb-init-std", "1e30"], "loss became"),
    ],
)
def test_failed_force_leaves_the_old_run_byte_identical(tmp_path, finished_run, extra, message):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(tmp_path)
    one_line_error(diffrec("train", "--out", run, "--force", *TINY, *extra), message)
    assert snapshot(tmp_path) == before, "the old run and nothing else"


def test_force_replaces_a_run_once_the_new_one_has_finished(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    old = json.loads((run / "metrics.json").read_text())
    assert diffrec("evaluate", "--checkpoint", run, "--save-topk", run / "top.tsv", "-k", "3").returncode == 0  # diffrec's own, replaceable
    proc = diffrec("train", "--out", run, "--force", *TINY, "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    new = json.loads((run / "metrics.json").read_text())
    assert new["test"] != old["test"] and "seed = 7" in (run / "config.toml").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "no staging or old folder left"


def test_an_interrupted_replacement_keeps_the_old_run_and_resumes(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    stage = tmp_path / ".run.diffrec-new"
    args = [*CMD, "train", "--out", str(run), "--force", *TINY, "--epochs", "400", "--eval-every", "50", "--seed", "8"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.time() + 120
    while not (stage / ckpt.LAST).is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (stage / ckpt.LAST).is_file(), "the replacement had written a checkpoint"
    after = {k: v for k, v in snapshot(run).items() if k != ckpt.LOCK}  # a killed process cannot remove its (released) lock file
    assert after == before, "kill -9 during a replacement leaves the old run as it was"
    one_line_error(diffrec("evaluate", "--checkpoint", run, "--reverse-sampler", "nope"), "unknown reverse_sampler")
    assert diffrec("evaluate", "--checkpoint", run, "--json").returncode == 0, "the old run still evaluates"
    proc = diffrec("train", "--out", run, "--resume", "--epochs", "3", "-q", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "resuming the replacement" in proc.stdout
    assert "seed = 8" in (run / "config.toml").read_text() and "epochs = 3" in (run / "config.toml").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_failed_resume_writes_nothing(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    other = tmp_path / "other"
    assert diffrec("train", "--out", other, *TINY, "--epochs", "1", "--hidden-size", "24").returncode == 0
    shutil.copy(other / ckpt.LAST, run / ckpt.LAST)  # weights of another shape
    before = snapshot(run)
    one_line_error(diffrec("train", "--out", run, "--resume", "--epochs", "4", "-q"), "weights do not fit", "size mismatch")
    assert snapshot(run) == before, "config.toml was not rewritten"
    data = (finished_run / ckpt.LAST).read_bytes()
    (run / ckpt.LAST).write_bytes(data[: len(data) // 2])  # truncated
    before = snapshot(run)
    one_line_error(diffrec("train", "--out", run, "--resume", "--epochs", "4", "-q"), "last.safetensors")
    assert snapshot(run) == before


def test_damaged_weights_are_refused_by_every_command(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    raw = bytearray((run / ckpt.BEST).read_bytes())
    raw[-64:-32] = b"\xff" * 32  # the tensor bytes (NaNs), the header still parses
    (run / ckpt.BEST).write_bytes(bytes(raw))
    for args in (("evaluate", "--checkpoint", run), ("recommend", "--checkpoint", run, "--history", "1 2 3", "--json")):
        one_line_error(diffrec(*args), "checksum mismatch")


def test_non_finite_scores_are_refused_even_with_a_valid_checksum(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    tensors = ckpt.load_tensors(run / ckpt.BEST)
    key = next(k for k in tensors if k.endswith("weight") and tensors[k].dim() == 2)
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    ckpt.atomic_save_tensors(tensors, run / ckpt.BEST)
    proc = diffrec("recommend", "--checkpoint", run, "--history", "1 2 3", "--json")
    one_line_error(proc, "non-finite")
    assert "NaN" not in proc.stdout
    one_line_error(diffrec("evaluate", "--checkpoint", run, "--json"), "non-finite")


# ------------------------------------------------------------ --save-topk
def test_save_topk_replaces_only_its_own_files(tmp_path, finished_run):
    topk = tmp_path / "top.tsv"
    assert diffrec("evaluate", "--checkpoint", finished_run, "--save-topk", topk, "-k", "3").returncode == 0
    first = topk.read_bytes()
    assert first.startswith(b"user\titems\n")
    one_line_error(diffrec("evaluate", "--checkpoint", finished_run, "--save-topk", topk), "exists", "--force")
    assert diffrec("evaluate", "--checkpoint", finished_run, "--save-topk", topk, "-k", "4", "--force").returncode == 0
    assert topk.read_bytes() != first
    mine = tmp_path / "mine.tsv"
    mine.write_text("my own table\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    before = snapshot(tmp_path)
    one_line_error(diffrec("evaluate", "--checkpoint", finished_run, "--save-topk", mine, "--force"), "not a top-K list written by diffrec")
    one_line_error(diffrec("evaluate", "--checkpoint", finished_run, "--save-topk", folder, "--force"), "it is a folder")
    one_line_error(diffrec("evaluate", "--checkpoint", finished_run, "--save-topk", topk, "--force", "--eval-protocol", "odd"), "unknown evaluation protocol")
    one_line_error(diffrec("evaluate", "--checkpoint", finished_run, "--save-topk", tmp_path / "no" / "such" / "dir.tsv"), "No such file")
    assert snapshot(tmp_path) == before


def test_plot_force_replaces_only_diffrecs_png(tmp_path, finished_run):
    png = tmp_path / "curves.png"
    assert diffrec("plot", "--run", finished_run, "--out", png).returncode == 0
    assert diffrec("plot", "--run", finished_run, "--out", png, "--force").returncode == 0
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not drawn by diffrec")
    before = snapshot(tmp_path)
    one_line_error(diffrec("plot", "--run", finished_run, "--out", photo, "--force"), "not a plot written by diffrec")
    assert snapshot(tmp_path) == before


def test_reproduce_refuses_to_overwrite_a_foreign_summary(tmp_path):
    (tmp_path / "data" / "beauty").mkdir(parents=True)
    (tmp_path / "data" / "beauty" / "sequences.txt").write_text("".join(f"{u} 1 2 3 4\n" for u in range(1, 5)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "beauty.json").write_text(json.dumps({"my": "results"}))
    before = snapshot(tmp_path)
    one_line_error(diffrec("reproduce", "--dataset", "beauty", "--models", "caser-ce", "--data-root", tmp_path / "data", "--out", out, "--epochs", "1", "-q"), "not a reproduction summary")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------- bad values
@pytest.mark.parametrize("option", ["--delta", "--dropout", "--emb-dropout", "--emb-init-std", "--lr", "--weight-decay", "--lr-gamma", "--grad-clip"])
def test_non_finite_float_options_are_refused_before_anything_is_written(tmp_path, option):
    from typer.testing import CliRunner

    from diffrec.cli.main import app

    for value in ("nan", "inf", "-inf"):
        result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "out"), *TINY, option, value])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "finite" in result.stderr or "must" in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()


def test_bad_values_and_messages_keep_their_subject(tmp_path, finished_run):
    one_line_error(diffrec("train", "--out", tmp_path / "t", *TINY, "--threads", "-1"), "num_threads must be >= 0")
    config = tmp_path / "c.toml"
    config.write_text("[model]\nhiden_size = 3\n")
    one_line_error(diffrec("train", "--config", config, "--out", tmp_path / "o"), str(config), "unknown setting(s) hiden_size for model diffurec", "valid settings")
    config.write_text('[model]\nhidden_size = "big"\n')
    one_line_error(diffrec("train", "--config", config, "--out", tmp_path / "o"), str(config), "[model] hidden_size must be int")
    config.write_text("[train]\nlr = nan\n")
    one_line_error(diffrec("train", "--config", config, "--out", tmp_path / "o"), "lr must be a finite number")
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()
    repeats = tmp_path / "repeats.txt"
    repeats.write_text("u1 1 1 1 1 2\nu2 2 2 2 1\n")
    proc = diffrec("data", "stats", repeats, "--json")
    assert proc.returncode == 0 and 0 <= json.loads(proc.stdout)["sparsity"] < 1


# ---------------------------------------------------------- a portable run
def test_a_run_evaluates_from_any_directory_and_says_how_to_find_moved_data(tmp_path):
    project = tmp_path / "project"
    data = project / "data"
    data.mkdir(parents=True)
    from diffrec.data import make_synthetic

    synth = make_synthetic(num_users=120, num_items=30, seed=1)
    (data / "sequences.txt").write_text("".join(f"u{u} {' '.join(map(str, s))}\n" for u, s in enumerate(synth.sequences)))
    proc = diffrec("train", "--data", "data", "--out", "runs/r", *TINY, "--epochs", "1", cwd=project)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((project / "runs" / "r" / "dataset.json").read_text())
    assert record["path"] == "data" and record["resolved_path"] == str(data.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert diffrec("evaluate", "--checkpoint", project / "runs" / "r", "--json", cwd=elsewhere).returncode == 0
    moved = tmp_path / "moved"
    shutil.move(str(project), moved)  # the resolved path is gone; the data sits above the run
    assert diffrec("evaluate", "--checkpoint", moved / "runs" / "r", "--json", cwd=elsewhere).returncode == 0
    shutil.move(str(moved / "data"), tmp_path / "far")
    one_line_error(diffrec("evaluate", "--checkpoint", moved / "runs" / "r", cwd=elsewhere), "not found", "--data")
    assert diffrec("evaluate", "--checkpoint", moved / "runs" / "r", "--data", tmp_path / "far", "--json", cwd=elsewhere).returncode == 0


def test_recommend_speaks_the_datasets_own_ids(tmp_path):
    from diffrec.data import make_synthetic

    synth = make_synthetic(num_users=150, num_items=25, seed=3)
    log = tmp_path / "log.csv"
    rows = [f"user{u},sku-{i:03d},{t}\n" for u, s in enumerate(synth.sequences) for t, i in enumerate(s)]
    log.write_text("user_id,item_id,timestamp\n" + "".join(rows))
    run = tmp_path / "run"
    assert diffrec("train", "--data", log, "--out", run, *TINY, "--epochs", "1", "--min-core", "1").returncode == 0
    assert (run / ckpt.IDS).is_file()
    proc = diffrec("recommend", "--checkpoint", run, "--history", "sku-001 sku-002", "-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert all(str(r["item"]).startswith("sku-") for r in rows) and {"sku-001", "sku-002"}.isdisjoint(r["item"] for r in rows)
    internal = json.loads(diffrec("recommend", "--checkpoint", run, "--history", "1 2", "-k", "5", "--json", "--ids", "internal").stdout)
    assert all(isinstance(r["item"], int) for r in internal)
    one_line_error(diffrec("recommend", "--checkpoint", run, "--history", "sku-999"), "not in the run's catalogue")
    topk = tmp_path / "top.tsv"
    assert diffrec("evaluate", "--checkpoint", run, "--save-topk", topk, "-k", "2").returncode == 0
    first = topk.read_text().splitlines()[1].split("\t")
    assert first[0].startswith("user") and all(i.startswith("sku-") for i in first[1].split())


# ------------------------------------------------------------ OS refusals
def _without_file_override():
    """A preexec function under which root obeys file permissions like any user.

    Root bypasses permission bits through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH;
    dropping both from the child's bounding set makes chmod'ed folders refuse it. For
    other users chmod works as it is (None).
    """
    if os.geteuid() != 0:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


@pytest.fixture
def shared_tmp():
    """A temporary folder every user may enter (pytest's own is private to root)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="diffrec-perm-"))
    path.chmod(0o755)
    yield path
    for p in path.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def test_permission_errors_are_one_line_and_leave_nothing(shared_tmp):
    drop = _without_file_override()
    try:
        probe = diffrec("--help", preexec_fn=drop)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot run diffrec without the file-permission override here ({exc})")
    assert probe.returncode == 0, probe.stderr
    locked = shared_tmp / "locked"
    locked.mkdir()
    (locked / "sequences.txt").write_text("1 1 2 3\n")
    locked.chmod(0o000)
    readonly = shared_tmp / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        one_line_error(diffrec("data", "stats", locked, preexec_fn=drop), "locked", "ermission denied")
        one_line_error(diffrec("train", "--out", readonly / "a" / "run", *TINY, "--epochs", "1", preexec_fn=drop), "readonly", "ermission denied")
        assert list(readonly.iterdir()) == []
    finally:
        locked.chmod(0o755)
    runs = shared_tmp / "runs"
    runs.mkdir()
    runs.chmod(0o777)
    proc = diffrec("train", "--out", runs / "r", *TINY, "--epochs", "1", preexec_fn=drop)
    assert proc.returncode == 0, proc.stderr
    (runs / "r").chmod(0o555)  # the run may be read, not written
    out = readonly / "top.tsv"
    one_line_error(diffrec("evaluate", "--checkpoint", runs / "r", "--save-topk", out, preexec_fn=drop), "readonly", "ermission denied")
    assert list(readonly.iterdir()) == []


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--preset", "x"], ["No such option: --preset", "train --help"]),
        (["train", "--out", "o", "--epochs", "many"], ["'--epochs'", "integer"]),
        (["evaluate"], ["Missing option '--checkpoint'"]),
        (["nosuchcommand"], ["No such command 'nosuchcommand'", " --help"]),
        (["list", "model", "extra"], ["unexpected extra argument"]),
    ],
)
def test_usage_errors_are_one_line(tmp_path, args, fragments):
    one_line_error(diffrec(*args, cwd=tmp_path), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_help_and_bare_groups_still_print_help():
    kinds = ("model", "approximator", "schedule", "loss", "rounding", "timestep_sampler", "reverse_sampler")
    probe = (  # the built-in registry as a fresh process sees it (tests here register extra parts in this one)
        "import json; from diffrec.registry import load_builtin_parts, registry; load_builtin_parts();"
        "from diffrec.building import sequence_example_models;"
        f"print(json.dumps({{**{{k: registry(k).names() for k in {kinds!r}}}, 'sequence': sequence_example_models()}}))"
    )
    names = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True).stdout)
    wide = lambda *args: subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=120, env=env(COLUMNS="400"))  # noqa: E731
    proc = wide("train", "--help")
    assert proc.returncode == 0 and "--out" in proc.stdout, proc.stderr
    proc.stdout = " ".join(proc.stdout.replace("│", " ").split())  # however the panel wraps
    for kind in kinds:
        assert "Choices: " + ", ".join(names[kind]) in proc.stdout, kind  # filled in from the registry
    assert "<choices of" not in proc.stdout and "<models taking" not in proc.stdout
    assert "SASRec's training; " + ", ".join(names["sequence"]) + "; DiffuRec trains on sequence examples with" in " ".join(proc.stdout.split())
    proc = wide("evaluate", "--help")
    proc.stdout = " ".join(proc.stdout.replace("│", " ").split())
    assert "Choices: " + ", ".join(names["reverse_sampler"]) in proc.stdout and "<choices of" not in proc.stdout
    proc = diffrec("data")
    assert "prepare" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_help_and_usage_errors_start_without_torch():
    """`diffrec --help`, a command's help without part lists and a usage error never import torch
    (seconds at every start); the part lists are read from the registry only when shown."""
    probe = (
        "import sys\n"
        "from diffrec.cli.main import main\n"
        "sys.argv = ['diffrec', *sys.argv[1:]]\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    for args in (["--help"], ["--version"], ["data", "--help"], ["ablate", "--help"], ["train", "--epochs", "many"], ["nosuchcommand"]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120, env=env())
        assert "TORCH False" in proc.stderr, (args, proc.stderr)
    proc = subprocess.run([sys.executable, "-c", probe, "train", "--help"], capture_output=True, text=True, timeout=120, env=env())
    assert "TORCH True" in proc.stderr and "Choices: " in proc.stdout  # the part lists need the registry


def test_output_into_a_closed_pipe_and_an_interrupt_print_no_traceback(tmp_path):
    reader, writer = os.pipe()
    os.close(reader)  # `diffrec --help | head -0`: whoever reads has gone
    proc = subprocess.run([*CMD, "--help"], stdout=writer, stderr=subprocess.PIPE, text=True, env=env(), timeout=120)
    os.close(writer)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    args = [*CMD, "train", "--out", str(tmp_path / "run"), *SMALL_DATA, *TINY, "--epochs", "400", "--eval-every", "50"]
    # as from a terminal: a runner started in the background passes SIGINT on ignored, and Python keeps ignoring it
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(), preexec_fn=restore)
    deadline = time.time() + 120
    while not (tmp_path / "run" / ckpt.LAST).is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted" in err and "--resume" in err, err


@pytest.mark.parametrize("command", [["evaluate"], ["recommend", "--history", "1 2"], ["analyze", "--out", "a"]])
def test_evaluation_commands_take_threads(tmp_path, finished_run, command):
    one_line_error(diffrec(*command, "--checkpoint", finished_run, "--threads", "-1", cwd=tmp_path), "--threads must be >= 0, got -1")
    assert list(tmp_path.iterdir()) == []
    proc = diffrec(*command, "--checkpoint", finished_run, "--threads", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
