"""Triton kernels for the fused λ-noise injection ``z = h + λ ⊙ x[:, None, :]``.

λ is never stored: both kernels regenerate it from ``(seed, counter)`` with Triton's Philox
generator. The counter of an element depends only on its row ``r = b·L + l``, its column and
``d``, so the forward (tiled over rows) and the backward (tiled over the sequence axis)
produce bit-identical λ.

Layout of one row of ``d`` columns: it is cut into ``n_tiles`` tiles of ``4·Q`` columns;
tile ``t`` draws ``Q`` Philox counters ``r·n_tiles·Q + t·Q + q`` and each ``randn4x`` call
yields four normals, used for the four lanes (column ``t·4Q + j·Q + q`` for lane ``j``).

Imported only when the Triton backend is used (Triton chooses interpreter or compiler when a
kernel is decorated).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_available import is_interpreted
from .dispatch import BackendUnavailableError

_MAX_Q = 64  # at most 4·64 = 256 columns per tile
_FWD_ROWS = 16  # rows per forward program
_BWD_ROWS = 16  # sequence positions per backward loop step


def philox_layout(d: int) -> tuple[int, int]:
    """Return ``(Q, n_tiles)``: counters per tile and tiles per row for feature size ``d``."""
    q = min(_MAX_Q, triton.next_power_of_2(max(1, triton.cdiv(d, 4))))
    return q, triton.cdiv(d, 4 * q)


@triton.jit
def _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, cols, row_mask, d, normal, delta, COMPUTE: tl.constexpr):
    """z[rows, cols] = h + (delta + delta·normal) · x[batch, cols] for one lane of a tile."""
    col_mask = cols < d  # (Q,)
    mask = row_mask[:, None] & col_mask[None, :]  # (ROWS, Q)
    offs = rows[:, None].to(tl.int64) * d + cols[None, :]
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(COMPUTE)  # (ROWS, Q)
    x = tl.load(x_ptr + batch[:, None].to(tl.int64) * d + cols[None, :], mask=mask, other=0.0).to(COMPUTE)
    lam = delta + delta * normal.to(COMPUTE)
    tl.store(z_ptr + offs, (h + lam * x).to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed"])
def _noise_fwd_kernel(
    h_ptr, x_ptr, z_ptr, n_rows, seq_len, d, delta, seed,
    ROWS: tl.constexpr, Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    """Grid (cdiv(B·L, ROWS), n_tiles): one program writes ROWS rows × one tile of 4·Q columns."""
    pid_r = tl.program_id(0)
    tile = tl.program_id(1)
    n_tiles = tl.num_programs(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)  # (ROWS,) flat rows b·L + l
    row_mask = rows < n_rows
    batch = rows // seq_len  # (ROWS,)
    q = tl.arange(0, Q)
    counter = rows[:, None].to(tl.int64) * (n_tiles * Q) + tile * Q + q[None, :]  # (ROWS, Q)
    n0, n1, n2, n3 = tl.randn4x(seed, counter)
    col0 = tile * 4 * Q
    _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, col0 + q, row_mask, d, n0, delta, COMPUTE)
    _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, col0 + Q + q, row_mask, d, n1, delta, COMPUTE)
    _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, col0 + 2 * Q + q, row_mask, d, n2, delta, COMPUTE)
    _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, col0 + 3 * Q + q, row_mask, d, n3, delta, COMPUTE)


@triton.jit
def _lane_grad(dz_ptr, rows, cols, row_mask, d, normal, delta, COMPUTE: tl.constexpr):
    """Σ over the given rows of λ ⊙ dz for one lane; returns (Q,)."""
    mask = row_mask[:, None] & (cols < d)[None, :]  # (ROWS, Q)
    dz = tl.load(dz_ptr + rows[:, None].to(tl.int64) * d + cols[None, :], mask=mask, other=0.0).to(COMPUTE)
    lam = delta + delta * normal.to(COMPUTE)
    return tl.sum(lam * dz, axis=0)


@triton.jit(do_not_specialize=["seed"])
def _noise_bwd_x_kernel(
    dz_ptr, dx_ptr, seq_len, d, delta, seed,
    ROWS: tl.constexpr, Q: tl.constexpr, COMPUTE: tl.constexpr,
):
    """Grid (B, n_tiles): dx[b, tile] = Σ_l λ[b, l, tile] ⊙ dz[b, l, tile], λ regenerated."""
    b = tl.program_id(0)
    tile = tl.program_id(1)
    n_tiles = tl.num_programs(1)
    q = tl.arange(0, Q)
    acc0 = tl.zeros((Q,), dtype=COMPUTE)
    acc1 = tl.zeros((Q,), dtype=COMPUTE)
    acc2 = tl.zeros((Q,), dtype=COMPUTE)
    acc3 = tl.zeros((Q,), dtype=COMPUTE)
    col0 = tile * 4 * Q
    for l0 in range(0, seq_len, ROWS):
        pos = l0 + tl.arange(0, ROWS)  # (ROWS,)
        row_mask = pos < seq_len
        rows = b.to(tl.int64) * seq_len + pos
        counter = rows[:, None] * (n_tiles * Q) + tile * Q + q[None, :]  # (ROWS, Q)
        n0, n1, n2, n3 = tl.randn4x(seed, counter)
        acc0 += _lane_grad(dz_ptr, rows, col0 + q, row_mask, d, n0, delta, COMPUTE)
        acc1 += _lane_grad(dz_ptr, rows, col0 + Q + q, row_mask, d, n1, delta, COMPUTE)
        acc2 += _lane_grad(dz_ptr, rows, col0 + 2 * Q + q, row_mask, d, n2, delta, COMPUTE)
        acc3 += _lane_grad(dz_ptr, rows, col0 + 3 * Q + q, row_mask, d, n3, delta, COMPUTE)
    out = dx_ptr + b.to(tl.int64) * d
    tl.store(out + col0 + q, acc0.to(dx_ptr.dtype.element_ty), mask=col0 + q < d)
    tl.store(out + col0 + Q + q, acc1.to(dx_ptr.dtype.element_ty), mask=col0 + Q + q < d)
    tl.store(out + col0 + 2 * Q + q, acc2.to(dx_ptr.dtype.element_ty), mask=col0 + 2 * Q + q < d)
    tl.store(out + col0 + 3 * Q + q, acc3.to(dx_ptr.dtype.element_ty), mask=col0 + 3 * Q + q < d)


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_runnable(t: torch.Tensor, kernel: object) -> None:
    if t.device.type == "cpu" and not is_interpreted(kernel):
        raise BackendUnavailableError(
            "noise_inject: the Triton kernels were compiled for GPU (TRITON_INTERPRET was off when they were "
            "first loaded), so they cannot take CPU tensors"
        )


def noise_forward(h: torch.Tensor, x: torch.Tensor, delta: float, seed: int) -> torch.Tensor:
    """Launch the forward kernel on contiguous ``h`` (B, L, d) and ``x`` (B, d); returns z (B, L, d)."""
    _check_runnable(h, _noise_fwd_kernel)
    batch, seq_len, d = h.shape
    z = torch.empty_like(h)
    n_rows = batch * seq_len
    if z.numel() == 0:
        return z
    q, n_tiles = philox_layout(d)
    grid = (triton.cdiv(n_rows, _FWD_ROWS), n_tiles)
    _noise_fwd_kernel[grid](
        h, x, z, n_rows, seq_len, d, float(delta), seed,
        ROWS=_FWD_ROWS, Q=q, COMPUTE=_compute_dtype(h.dtype),
    )
    return z


def noise_backward_x(dz: torch.Tensor, x_dtype: torch.dtype, delta: float, seed: int) -> torch.Tensor:
    """Launch the backward kernel on contiguous ``dz`` (B, L, d); returns dx (B, d)."""
    _check_runnable(dz, _noise_bwd_x_kernel)
    batch, seq_len, d = dz.shape
    dx = torch.empty((batch, d), dtype=x_dtype, device=dz.device)
    if dx.numel() == 0:
        return dx
    if seq_len == 0:
        return dx.zero_()
    q, n_tiles = philox_layout(d)
    _noise_bwd_x_kernel[(batch, n_tiles)](
        dz, dx, seq_len, d, float(delta), seed,
        ROWS=_BWD_ROWS, Q=q, COMPUTE=_compute_dtype(dz.dtype),
    )
    return dx


class TritonNoiseInject(torch.autograd.Function):
    """Autograd wrapper: saves only (delta, seed); dh = dz, dx = Σ_l λ ⊙ dz with λ regenerated."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, x: torch.Tensor, delta: float, seed: int) -> torch.Tensor:
        ctx.delta, ctx.seed, ctx.x_dtype = delta, seed, x.dtype
        return noise_forward(h.contiguous(), x.contiguous(), delta, seed)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dz: torch.Tensor):
        dx = None
        if ctx.needs_input_grad[1]:
            dx = noise_backward_x(dz.contiguous(), ctx.x_dtype, ctx.delta, ctx.seed)
        dh = dz if ctx.needs_input_grad[0] else None
        return dh, dx, None, None
