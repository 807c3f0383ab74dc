"""Write tests/data/diffurec_reference.safetensors: DiffuRec's outputs under fixed seeds.

Run once with the code whose behaviour is the reference (``python tests/make_diffurec_reference.py``);
``test_diffurec_reference.py`` then checks that the current code reproduces every tensor bit for bit:
initial weights, the training loss and every gradient, x0_hat, the reverse chain and the scores.
"""

from __future__ import annotations

import pathlib
import sys

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from diffurec_reference_cases import CASES, REFERENCE_CPU_CAPABILITY, batch, build, run_case  # noqa: E402

if __name__ == "__main__":
    from diffrec.checkpoint import atomic_save_tensors

    capability = torch.backends.cpu.get_cpu_capability()
    if capability != REFERENCE_CPU_CAPABILITY:
        raise SystemExit(f"this CPU's kernels are {capability}; write the reference on a {REFERENCE_CPU_CAPABILITY} CPU or update REFERENCE_CPU_CAPABILITY")

    tensors: dict[str, torch.Tensor] = {}
    for name in CASES:
        for key, value in run_case(name, build(name)).items():
            tensors[f"{name}/{key}"] = value
    atomic_save_tensors(tensors, HERE / "data" / "diffurec_reference.safetensors")
    print(f"wrote {len(tensors)} tensors")
