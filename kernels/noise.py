"""Fused λ-noise injection of DiffuRec: ``z = h + λ ⊙ x[:, None, :]`` with ``λ ~ N(delta, delta)``.

DiffuRec perturbs every item representation ``h[b, l]`` of a sequence with the noised target
``x[b]`` scaled element-wise by a Gaussian λ of mean and standard deviation ``delta``. The
unfused PyTorch version draws λ (B, L, d), stores it for the backward and reads it back. Here
λ is a pure function of ``seed``: the forward draws it, the backward draws it again.

Both backends agree on the forward/backward relation and on the distribution of λ; they draw
different λ for the same seed (Triton's Philox counters vs a seeded ``torch.Generator``).
"""

from __future__ import annotations

import math

import torch

from .dispatch import (
    KernelInputError,
    autocast_disabled,
    autocast_promote,
    check_float_tensor,
    check_int,
    check_same,
    resolve_backend,
)

_OP = "noise_inject"
_MAX_SEED = 2**63 - 1


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def torch_lambda(shape: torch.Size, delta: float, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """λ of the PyTorch twin: ``delta + delta·ε`` with ε drawn from a ``torch.Generator`` seeded by ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return eps.mul_(delta).add_(delta)


class TorchNoiseInject(torch.autograd.Function):
    """PyTorch twin: λ from a seeded generator, regenerated in the backward instead of saved."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, x: torch.Tensor, delta: float, seed: int) -> torch.Tensor:
        ctx.delta, ctx.seed, ctx.x_dtype = delta, seed, x.dtype
        compute = _compute_dtype(h.dtype)
        lam = torch_lambda(h.shape, delta, seed, h.device, compute)  # (B, L, d)
        z = lam.mul_(x.to(compute)[:, None, :]).add_(h.to(compute))  # (B, L, d)
        return z.to(h.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dz: torch.Tensor):
        dx = None
        if ctx.needs_input_grad[1]:
            compute = _compute_dtype(dz.dtype)
            with autocast_disabled(dz.device):
                lam = torch_lambda(dz.shape, ctx.delta, ctx.seed, dz.device, compute)  # (B, L, d)
                dx = (lam * dz.to(compute)).sum(dim=1).to(ctx.x_dtype)  # (B, d)
        dh = dz if ctx.needs_input_grad[0] else None
        return dh, dx, None, None


def _check_inputs(h: object, x: object, delta: object, seed: object) -> tuple[float, int]:
    check_same(_OP, h=h, x=x)
    if x.shape[0] != h.shape[0] or x.shape[1] != h.shape[2]:
        raise KernelInputError(
            f"{_OP}: x must have shape (B, d) = ({h.shape[0]}, {h.shape[2]}) to match h {tuple(h.shape)}, "
            f"got {tuple(x.shape)}"
        )
    if isinstance(delta, torch.Tensor):
        if delta.numel() != 1:
            raise KernelInputError(f"{_OP}: delta must be a scalar, got a tensor of shape {tuple(delta.shape)}")
        delta = delta.item()
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise KernelInputError(f"{_OP}: delta must be a float, got {type(delta).__name__}")
    delta = float(delta)
    if not math.isfinite(delta) or delta < 0:
        raise KernelInputError(f"{_OP}: delta must be finite and >= 0, got {delta}")
    seed = check_int(_OP, "seed", seed, low=0, high=_MAX_SEED)
    return delta, seed


def noise_inject(
    h: torch.Tensor, x: torch.Tensor, delta: float, seed: int, *, backend: str | None = None
) -> torch.Tensor:
    """Return ``z = h + λ ⊙ x[:, None, :]`` with λ element-wise ~ N(mean=delta, std=delta).

    Args:
        h: (B, L, d) sequence representations, float16/bfloat16/float32/float64.
        x: (B, d) noised targets, same dtype and device as ``h``.
        delta: mean and standard deviation of λ (finite, >= 0; a Python number or 1-element tensor).
        seed: int in [0, 2**63): λ is a deterministic function of ``(seed, shape of h)`` for a
            backend; use a fresh seed per training step.
        backend: ``"triton"``, ``"torch"`` or None (see :mod:`diffrec.kernels.dispatch`).

    Returns:
        z (B, L, d) in the dtype of ``h``; differentiable in ``h`` (dh = dz) and ``x``
        (dx = Σ_l λ ⊙ dz, λ regenerated from the seed, never stored). λ is computed in float32
        (float64 for float64 inputs). Non-contiguous inputs are copied to contiguous memory
        by the Triton backend.

    Under ``torch.autocast`` (for the device of ``h``) ``h`` and ``x`` are first cast to their
    promoted dtype, as PyTorch's element-wise ops are (e.g. float32 ``h`` and bfloat16 ``x`` give
    a float32 ``z``); the gradients come back in the original dtypes. Outside autocast, ``h``
    and ``x`` must share a dtype.
    """
    check_float_tensor("h", h, 3, _OP)
    check_float_tensor("x", x, 2, _OP)
    h, x = autocast_promote(h, x)
    delta, seed = _check_inputs(h, x, delta, seed)
    chosen = resolve_backend(backend, h.device, h.dtype, op=_OP)
    with autocast_disabled(h.device):
        if chosen == "triton":
            from ._triton_noise import TritonNoiseInject

            return TritonNoiseInject.apply(h, x, delta, seed)
        return TorchNoiseInject.apply(h, x, delta, seed)
