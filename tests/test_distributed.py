"""torchrun: two gloo processes train like one with the same global batch, evaluate exactly alike, and resume exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

TINY = ["--eval-every", "1", "--hidden-size", "16", "--num-blocks", "1", "--num-heads", "2", "--max-len", "12", "--emb-init-std", "0.05", "--batch-size", "256", "-q", "--threads", "1"]
TOLERANCE = 5.0  # points of validation HR@10 / NDCG@10: the processes draw other dropout and noise than one process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, procs: int = 2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": "/tmp"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "diffrec.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def single(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": "/tmp"}
    return subprocess.run([sys.executable, "-m", "diffrec.cli.main", *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    one = single("train", "--out", root / "one", "--epochs", "2", *TINY, "--set", "eval.rng=per_batch")
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun("train", "--out", root / "two", "--epochs", "2", *TINY)
    assert two.returncode == 0, two.stderr[-3000:]
    return root


def test_two_processes_train_like_one_with_the_same_global_batch(runs):
    one = json.loads((runs / "one" / "metrics.json").read_text())
    two = json.loads((runs / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    for metric in ("HR@10", "NDCG@10"):
        assert abs(one["valid"][metric] - two["valid"][metric]) < TOLERANCE, (metric, one["valid"], two["valid"])
    assert two["valid"]["HR@10"] > 10 * 100 * 10 / 500, "well above a random ranking"
    assert "rng = \"per_batch\"" in (runs / "two" / "config.toml").read_text()
    epochs = (runs / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(epochs) == 2, "rank 0 alone writes the log"


def test_sharded_evaluation_gives_exactly_the_single_process_numbers(runs):
    sharded = torchrun("evaluate", "--checkpoint", runs / "one", "--json")
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    alone = single("evaluate", "--checkpoint", runs / "one", "--json")
    a, b = json.loads(alone.stdout), json.loads(sharded.stdout)
    assert b["world_size"] == 2 and a["metrics"] == b["metrics"]


def test_a_resumed_torchrun_run_is_the_straight_run(runs, tmp_path):
    """One epoch, then a resume to two, under torchrun: the fixture's straight two-epoch run exactly."""
    first = torchrun("train", "--out", tmp_path / "resumed", "--epochs", "1", *TINY)
    assert first.returncode == 0, first.stderr[-2000:]
    more = torchrun("train", "--out", tmp_path / "resumed", "--resume", "--epochs", "2", "-q", "--threads", "1")
    assert more.returncode == 0, more.stderr[-2000:]
    a = json.loads((runs / "two" / "metrics.json").read_text())
    b = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert a["valid"] == b["valid"] and a["test"] == b["test"]
    logs = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (runs / "two", tmp_path / "resumed")]
    assert [(e["loss"], e["valid"]) for e in logs[0]] == [(e["loss"], e["valid"]) for e in logs[1]]
    alone = single("train", "--out", tmp_path / "resumed", "--resume", "--epochs", "4", "-q")
    assert alone.returncode == 2 and "trained by 2 process(es), this is 1" in alone.stderr
