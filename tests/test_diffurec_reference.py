"""DiffuRec computes, bit for bit, what it computed when the reference was written.

``tests/data/diffurec_reference.safetensors`` was written by ``tests/make_diffurec_reference.py``
from the DiffuRec class that was checked against the public code. Every refactor must
reproduce it exactly: the initial weights (same random draws in the same order), the
training loss and every gradient, x0_hat, the whole reverse chain and the scores.

"Exactly" holds on a CPU whose kernels are those that wrote the file
(``REFERENCE_CPU_CAPABILITY``). Elsewhere (e.g. AVX2 against AVX-512) torch's float32 kernels
sum in another order, so the initial weights must still be bit-identical, and everything
computed from them must agree to float32 rounding: within 3e-5 of the tensor's largest
magnitude (measured across AVX2 and AVX-512: at most 5.6e-6), far below any real change.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from diffurec_reference_cases import CASES, REFERENCE_CPU_CAPABILITY, build, run_case  # noqa: E402

from diffrec.checkpoint import load_tensors  # noqa: E402

REFERENCE = load_tensors(pathlib.Path(__file__).resolve().parent / "data" / "diffurec_reference.safetensors")


@pytest.mark.parametrize("name", sorted(CASES))
def test_diffurec_reproduces_the_reference_bit_for_bit(name):
    got = run_case(name, build(name))
    want = {k.split("/", 1)[1]: v for k, v in REFERENCE.items() if k.startswith(name + "/")}
    assert sorted(got) == sorted(want)
    exact = torch.backends.cpu.get_cpu_capability() == REFERENCE_CPU_CAPABILITY
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        if exact or key.startswith("init.") or not value.is_floating_point():
            assert torch.equal(got[key], value), key
        else:
            error = (got[key].double() - value.double()).abs().max().item()
            assert error <= ROUNDING * max(value.double().abs().max().item(), 1e-30), (key, error)


#: float32 rounding between CPU kernels, relative to a tensor's largest magnitude
ROUNDING = 3e-5
