"""Shared test set-up.

Triton kernels run on the CPU only through Triton's interpreter, which is chosen
when a kernel is decorated, so the variable is set before anything imports them.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def shared_dataset(name: str, filename: str = "sequences.txt") -> pathlib.Path:
    """Path to a shipped dataset file, or skip the test with a clear message."""
    path = SHARED_DATASETS / name / filename
    if not path.is_file():
        pytest.skip(f"../shared/datasets/{name}/{filename} is not present (real-data tests need the shared datasets)")
    return path
