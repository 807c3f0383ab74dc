"""DiffuRec computes, bit for bit, what it computed when the reference was written.

``tests/data/diffurec_reference.safetensors`` was written by ``tests/make_diffurec_reference.py``
from the DiffuRec class that was checked against the public code. Every refactor must
reproduce it exactly: the initial weights (same random draws in the same order), the
training loss and every gradient, x0_hat, the whole reverse chain and the scores.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from diffurec_reference_cases import CASES, build, run_case  # noqa: E402

from diffrec.checkpoint import load_tensors  # noqa: E402

REFERENCE = load_tensors(pathlib.Path(__file__).resolve().parent / "data" / "diffurec_reference.safetensors")


@pytest.mark.parametrize("name", sorted(CASES))
def test_diffurec_reproduces_the_reference_bit_for_bit(name):
    got = run_case(name, build(name))
    want = {k.split("/", 1)[1]: v for k, v in REFERENCE.items() if k.startswith(name + "/")}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
