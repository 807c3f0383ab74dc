"""The DiffuRec configurations and the computation whose tensors the reference test pins down."""

from __future__ import annotations

import torch

from diffrec.config import ModelConfig, RunConfig
from diffrec.data.batching import Batch
from diffrec.building import build_model

N, D, L = 30, 16, 8

#: name -> DiffuRec settings (the public code's defaults, and the variants that take other code paths)
#: the CPU kernels (``torch.backends.cpu.get_cpu_capability()``) that computed the reference file.
#: torch picks its float32 kernels by this capability, so another one sums in another order and
#: agrees only to float32 rounding; the reference is rewritten on a CPU of this capability.
REFERENCE_CPU_CAPABILITY = "AVX512"

CASES: dict[str, dict] = {
    "default": {},
    "variants": {
        "attention_mask": "key_padding",
        "position_embedding": True,
        "x0_from_embedding": True,
        "schedule": "cosine",
        "timestep_sampler": "loss_aware",
        "loss": "mse",
        "emb_init_std": 0.1,
    },
    "gru_one_step": {"approximator": "gru", "reverse_sampler": "one_step", "rounding": "l2", "delta": 0.01},
}


def model_config(name: str) -> ModelConfig:
    common = dict(hidden_size=D, num_blocks=2, num_heads=2, max_len=L, diffusion_steps=12, dropout=0.1, emb_dropout=0.3)
    return ModelConfig(model="diffurec", **common, **CASES[name])


def build(name: str):
    torch.manual_seed(1234)
    return build_model(RunConfig(model=model_config(name)), N)


def batch() -> Batch:
    g = torch.Generator().manual_seed(7)
    lengths = [3, 8, 1, 5, 2, 7]
    seq = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        seq[i, L - n :] = torch.randint(1, N + 1, (n,), generator=g)
    target = torch.randint(1, N + 1, (len(lengths),), generator=g)
    return Batch(seq, target, torch.zeros(len(lengths), dtype=torch.long), torch.arange(len(lengths)))


def run_case(name: str, model) -> dict[str, torch.Tensor]:
    """Everything the reference fixes, in a fixed order of random draws."""
    out = {f"init.{k}": v.detach().clone() for k, v in model.state_dict().items() if k != "_extra_state"}
    b = batch()
    model.train()
    torch.manual_seed(99)
    loss = model.calculate_loss(b)
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    for k, p in model.named_parameters():
        out[f"grad.{k}"] = p.grad.detach().clone() if p.grad is not None else torch.zeros(0)
    model.eval()
    with torch.no_grad():
        h = model.condition(b)
        x_t = torch.randn(len(b), D, generator=torch.Generator().manual_seed(5))
        t = torch.full((len(b),), 6, dtype=torch.long)
        out["x0_hat"] = model.denoiser(x_t, t, h, b, torch.Generator().manual_seed(11))
        out["reverse"] = model.reverse(b, torch.Generator().manual_seed(3))
        out["scores"] = model.full_sort_predict(b, torch.Generator().manual_seed(3))
    return out
