"""Shared test set-up.

Triton kernels run on the CPU only through Triton's interpreter, which is chosen
when a kernel is decorated, so the variable is set before anything imports them.
The CLI tests run the console script in a subprocess too; it inherits the variable.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# The suite trains many tiny models: one intra-op thread is as fast for them and keeps
# the timings steady when other processes share the two cores.
torch.set_num_threads(1)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def shared_dataset(name: str, filename: str = "sequences.txt") -> pathlib.Path:
    """Path to a shipped dataset file, or skip the test with a clear message."""
    path = SHARED_DATASETS / name / filename
    if not path.is_file():
        pytest.skip(f"../shared/datasets/{name}/{filename} is not present (real-data tests need the shared datasets)")
    return path


def kernel_device(backend: str) -> str:
    """The device a kernel test runs on: the twin on CUDA when present, else CPU; Triton on CUDA or
    in the interpreter (skipped when neither is available)."""
    if backend == "torch":
        return "cuda" if torch.cuda.is_available() else "cpu"
    pytest.importorskip("triton")
    from diffrec.kernels import interpreter_enabled

    if interpreter_enabled():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")


def spy_launches(module, monkeypatch) -> list[tuple[str, tuple, dict]]:
    """Record (kernel family, grid, meta) of every launch that a Triton kernel module makes."""
    seen = []
    real_launch = module.launch

    def spy(kernel, grid, args, fixed, configs, **kw):
        used = real_launch(kernel, grid, args, fixed, configs, **kw)
        meta = dict(fixed, **used.kwargs)
        seen.append((kw["family"][0], grid(meta) if callable(grid) else grid, meta))
        return used

    monkeypatch.setattr(module, "launch", spy)
    return seen
