"""Triton kernels for the fused λ-noise injection ``z = h + λ ⊙ x[:, None, :]``.

λ is never stored: both kernels regenerate it from ``(seed, counter)`` with Triton's Philox
generator. The counter of an element depends only on its row ``r = b·L + l``, its column and
``d``, so the forward (tiled over rows) and the backward (tiled over the sequence axis)
produce bit-identical λ whatever block sizes each of them runs with.

Layout of one row of ``d`` columns: it is cut into ``n_tiles`` tiles of ``4·Q`` columns;
tile ``t`` draws ``Q`` Philox counters ``r·n_tiles·Q + t·Q + q`` and each ``randn4x`` call
yields four normals, used for the four lanes (column ``t·4Q + j·Q + q`` for lane ``j``).

Counter width: the counters are int32 whenever the largest one fits
(``B·L·n_tiles·Q <= 2**31``, see :func:`counter_bits`), which keeps Triton's Philox on its
32-bit words (older Triton releases pick the 64-bit Philox variant for int64 counters; 3.9
splits them into two 32-bit words, which still costs 64-bit index arithmetic). Larger launches
use int64 counters (the ``WIDE`` constexpr). The decision is a function of the shape only; the
forward stores it and the backward reuses it, so both always draw the same λ.

Block sizes: ``Q`` is part of the λ layout (a function of ``d``); the rows per program
(``ROWS``) and the warps are free and autotuned on CUDA (see :mod:`._triton_common`).

Imported only when the Triton backend is used (Triton chooses interpreter or compiler when a
kernel is decorated).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_available import is_interpreted
from ._triton_common import Overrides, as_config, autotune_enabled, launch, size_bucket, to_output, unique_configs
from .dispatch import BackendUnavailableError, autocast_disabled

_MAX_Q = 64  # at most 4·64 = 256 columns per tile
_INTERPRETER_ROWS = 16  # rows per program (forward) and per loop step (backward) in the interpreter
COUNTER_LIMIT = 2**31  # int32 counters while the largest counter, n_rows·n_tiles·Q - 1, is below this

#: Test-only overrides (see :class:`._triton_common.Overrides`): ``fwd`` / ``bwd`` (a dict such as
#: ``{"ROWS": 4}`` or a ``triton.Config``), ``gpu=True`` (the CUDA default configuration in the
#: interpreter) and ``counter_bits`` (32 or 64, regardless of the shape).
force_config = Overrides("fwd", "bwd", "gpu", "sms", "counter_bits")


def philox_layout(d: int) -> tuple[int, int]:
    """Return ``(Q, n_tiles)``: counters per tile and tiles per row for feature size ``d``."""
    q = min(_MAX_Q, triton.next_power_of_2(max(1, triton.cdiv(d, 4))))
    return q, triton.cdiv(d, 4 * q)


def counter_bits(n_rows: int, d: int) -> int:
    """32 when every Philox counter of a launch over ``n_rows = B·L`` rows of ``d`` columns fits in
    int32 (``n_rows·n_tiles·Q <= 2**31``), 64 otherwise."""
    q, n_tiles = philox_layout(d)
    return 32 if n_rows * n_tiles * q <= COUNTER_LIMIT else 64


@triton.jit
def _counters(rows, row_mask, tile, n_tiles, Q: tl.constexpr, WIDE: tl.constexpr):
    """(ROWS, Q) Philox counters ``r·n_tiles·Q + t·Q + q``; rows outside the launch use row 0
    (their λ is never used), so the int32 arithmetic never overflows."""
    rows = tl.where(row_mask, rows, 0)
    if WIDE:
        rows = rows.to(tl.int64)
    q = tl.arange(0, Q)
    return rows[:, None] * (n_tiles * Q) + tile * Q + q[None, :]


@triton.jit
def _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, cols, row_mask, d, normal, delta,
                 COMPUTE: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """z[rows, cols] = h + (delta + delta·normal) · x[batch, cols] for one lane of a tile."""
    col_mask = cols < d  # (Q,)
    mask = row_mask[:, None] & col_mask[None, :]  # (ROWS, Q)
    offs = rows[:, None].to(tl.int64) * d + cols[None, :]
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(COMPUTE)  # (ROWS, Q)
    x = tl.load(x_ptr + batch[:, None].to(tl.int64) * d + cols[None, :], mask=mask, other=0.0).to(COMPUTE)
    lam = delta + delta * normal.to(COMPUTE)
    tl.store(z_ptr + offs, to_output(h + lam * x, z_ptr.dtype.element_ty, EMULATE_BF16), mask=mask)


@triton.jit(do_not_specialize=["seed"])
def _noise_fwd_kernel(
    h_ptr, x_ptr, z_ptr, n_rows, seq_len, d, delta, seed,
    ROWS: tl.constexpr, Q: tl.constexpr, WIDE: tl.constexpr, COMPUTE: tl.constexpr, EMULATE_BF16: tl.constexpr,
):
    """Grid (cdiv(B·L, ROWS), n_tiles): one program writes ROWS rows × one tile of 4·Q columns."""
    pid_r = tl.program_id(0)
    tile = tl.program_id(1)
    n_tiles = tl.num_programs(1)
    if WIDE:
        pid_r = pid_r.to(tl.int64)
    rows = pid_r * ROWS + tl.arange(0, ROWS)  # (ROWS,) flat rows b·L + l
    row_mask = rows < n_rows
    batch = rows // seq_len  # (ROWS,)
    q = tl.arange(0, Q)
    n0, n1, n2, n3 = tl.randn4x(seed, _counters(rows, row_mask, tile, n_tiles, Q, WIDE))
    col0 = tile * 4 * Q
    _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, col0 + q, row_mask, d, n0, delta, COMPUTE, EMULATE_BF16)
    _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, col0 + Q + q, row_mask, d, n1, delta, COMPUTE, EMULATE_BF16)
    _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, col0 + 2 * Q + q, row_mask, d, n2, delta, COMPUTE, EMULATE_BF16)
    _inject_lane(h_ptr, x_ptr, z_ptr, rows, batch, col0 + 3 * Q + q, row_mask, d, n3, delta, COMPUTE, EMULATE_BF16)


@triton.jit
def _lane_grad(dz_ptr, rows, cols, row_mask, d, normal, delta, COMPUTE: tl.constexpr):
    """Σ over the given rows of λ ⊙ dz for one lane, accumulated in COMPUTE; returns (Q,)."""
    mask = row_mask[:, None] & (cols < d)[None, :]  # (ROWS, Q)
    dz = tl.load(dz_ptr + rows[:, None].to(tl.int64) * d + cols[None, :], mask=mask, other=0.0).to(COMPUTE)
    lam = delta + delta * normal.to(COMPUTE)
    return tl.sum(lam * dz, axis=0)


@triton.jit(do_not_specialize=["seed"])
def _noise_bwd_x_kernel(
    dz_ptr, dx_ptr, seq_len, d, delta, seed,
    ROWS: tl.constexpr, Q: tl.constexpr, WIDE: tl.constexpr, COMPUTE: tl.constexpr, EMULATE_BF16: tl.constexpr,
):
    """Grid (B, n_tiles): dx[b, tile] = Σ_l λ[b, l, tile] ⊙ dz[b, l, tile], λ regenerated."""
    b = tl.program_id(0)
    tile = tl.program_id(1)
    n_tiles = tl.num_programs(1)
    if WIDE:
        b = b.to(tl.int64)
    q = tl.arange(0, Q)
    acc0 = tl.zeros((Q,), dtype=COMPUTE)
    acc1 = tl.zeros((Q,), dtype=COMPUTE)
    acc2 = tl.zeros((Q,), dtype=COMPUTE)
    acc3 = tl.zeros((Q,), dtype=COMPUTE)
    col0 = tile * 4 * Q
    for l0 in range(0, seq_len, ROWS):
        pos = l0 + tl.arange(0, ROWS)  # (ROWS,)
        row_mask = pos < seq_len
        rows = b * seq_len + pos
        n0, n1, n2, n3 = tl.randn4x(seed, _counters(rows, row_mask, tile, n_tiles, Q, WIDE))
        acc0 += _lane_grad(dz_ptr, rows, col0 + q, row_mask, d, n0, delta, COMPUTE)
        acc1 += _lane_grad(dz_ptr, rows, col0 + Q + q, row_mask, d, n1, delta, COMPUTE)
        acc2 += _lane_grad(dz_ptr, rows, col0 + 2 * Q + q, row_mask, d, n2, delta, COMPUTE)
        acc3 += _lane_grad(dz_ptr, rows, col0 + 3 * Q + q, row_mask, d, n3, delta, COMPUTE)
    out = dx_ptr + b.to(tl.int64) * d
    out_ty = dx_ptr.dtype.element_ty
    tl.store(out + col0 + q, to_output(acc0, out_ty, EMULATE_BF16), mask=col0 + q < d)
    tl.store(out + col0 + Q + q, to_output(acc1, out_ty, EMULATE_BF16), mask=col0 + Q + q < d)
    tl.store(out + col0 + 2 * Q + q, to_output(acc2, out_ty, EMULATE_BF16), mask=col0 + 2 * Q + q < d)
    tl.store(out + col0 + 3 * Q + q, to_output(acc3, out_ty, EMULATE_BF16), mask=col0 + 3 * Q + q < d)


# --------------------------------------------------------------------------------------------
# launch configurations
# --------------------------------------------------------------------------------------------


def _rows_for(elements: int, q: int, most: int) -> int:
    """Rows (a power of two in [1, most]) so that a block holds about ``elements`` values."""
    return max(1, min(most, elements // (4 * q)))


def fwd_configs(d: int) -> list[triton.Config]:
    """CUDA candidates of the forward, the default first: rows per program and warps.

    The forward is a pure streaming kernel (read h, x; write z): candidates hold 1K-8K elements
    per program, 8-32 per thread (the Philox normals are register-hungry: 32 elements per thread
    take about 110 registers on sm_90, 64 would spill). The default, 2K elements with 4 warps,
    is the previous fixed configuration at d = 128.
    """
    q, _ = philox_layout(d)
    return unique_configs([
        triton.Config({"ROWS": _rows_for(elements, q, 256)}, num_warps=warps, num_stages=1)
        for elements, warps in ((2048, 4), (4096, 4), (1024, 4), (4096, 8), (8192, 8))
    ])


def bwd_configs(d: int) -> list[triton.Config]:
    """CUDA candidates of the backward, the default first: sequence positions per loop step, warps, stages."""
    q, _ = philox_layout(d)
    return unique_configs([
        triton.Config({"ROWS": _rows_for(elements, q, 64)}, num_warps=warps, num_stages=stages)
        for elements, warps, stages in ((2048, 4, 3), (1024, 4, 3), (4096, 8, 3), (2048, 8, 4))
    ])


def _choose(name: str, configs: list[triton.Config], interpreted: bool) -> tuple[list[triton.Config], bool]:
    """(candidates, autotune?) for kernel ``name`` ("fwd" or "bwd")."""
    forced = force_config.get(name)
    if forced is not None:
        return [as_config(forced)], False
    if interpreted and not force_config.get("gpu"):
        return [triton.Config({"ROWS": _INTERPRETER_ROWS})], False
    return configs, not interpreted and autotune_enabled()


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_runnable(t: torch.Tensor, kernel: object) -> None:
    if t.device.type == "cpu" and not is_interpreted(kernel):
        raise BackendUnavailableError(
            "noise_inject: the Triton kernels were compiled for GPU (TRITON_INTERPRET was off when they were "
            "first loaded), so they cannot take CPU tensors"
        )


def choose_counter_bits(n_rows: int, d: int) -> int:
    """:func:`counter_bits`, unless a test forces a width through ``force_config(counter_bits=...)``."""
    forced = force_config.get("counter_bits")
    if forced is not None:
        if forced not in (32, 64):
            raise ValueError(f"counter_bits must be 32 or 64, got {forced!r}")
        if forced == 32 and counter_bits(n_rows, d) == 64:
            raise ValueError("int32 counters cannot address this launch")
        return int(forced)
    return counter_bits(n_rows, d)


def noise_forward(h: torch.Tensor, x: torch.Tensor, delta: float, seed: int, bits: int) -> torch.Tensor:
    """Launch the forward kernel on contiguous ``h`` (B, L, d) and ``x`` (B, d); returns z (B, L, d)."""
    _check_runnable(h, _noise_fwd_kernel)
    batch, seq_len, d = h.shape
    z = torch.empty_like(h)
    n_rows = batch * seq_len
    if z.numel() == 0:
        return z
    q, n_tiles = philox_layout(d)
    interpreted = is_interpreted(_noise_fwd_kernel)
    configs, tune = _choose("fwd", fwd_configs(d), interpreted)
    launch(
        _noise_fwd_kernel,
        lambda meta: (triton.cdiv(n_rows, meta["ROWS"]), n_tiles),
        (h, x, z, n_rows, seq_len, d, float(delta), seed),
        dict(Q=q, WIDE=bits == 64, COMPUTE=_compute_dtype(h.dtype),
             EMULATE_BF16=interpreted and h.dtype == torch.bfloat16),
        configs, family=("noise_fwd", q, size_bucket(n_rows)), key=["d"], tune=tune,
    )
    return z


def noise_backward_x(dz: torch.Tensor, x_dtype: torch.dtype, delta: float, seed: int, bits: int) -> torch.Tensor:
    """Launch the backward kernel on contiguous ``dz`` (B, L, d); returns dx (B, d)."""
    _check_runnable(dz, _noise_bwd_x_kernel)
    batch, seq_len, d = dz.shape
    dx = torch.empty((batch, d), dtype=x_dtype, device=dz.device)
    if dx.numel() == 0:
        return dx
    if seq_len == 0:
        return dx.zero_()
    q, n_tiles = philox_layout(d)
    interpreted = is_interpreted(_noise_bwd_x_kernel)
    configs, tune = _choose("bwd", bwd_configs(d), interpreted)
    launch(
        _noise_bwd_x_kernel,
        (batch, n_tiles),
        (dz, dx, seq_len, d, float(delta), seed),
        dict(Q=q, WIDE=bits == 64, COMPUTE=_compute_dtype(dz.dtype),
             EMULATE_BF16=interpreted and x_dtype == torch.bfloat16),
        configs, family=("noise_bwd", q, size_bucket(seq_len), size_bucket(batch)), key=["d"], tune=tune,
    )
    return dx


class TritonNoiseInject(torch.autograd.Function):
    """Autograd wrapper: saves only (delta, seed, counter width); dh = dz, dx = Σ_l λ ⊙ dz with λ regenerated."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, x: torch.Tensor, delta: float, seed: int) -> torch.Tensor:
        batch, seq_len, d = h.shape
        bits = choose_counter_bits(batch * seq_len, d)
        ctx.delta, ctx.seed, ctx.x_dtype, ctx.bits = delta, seed, x.dtype, bits
        return noise_forward(h.contiguous(), x.contiguous(), delta, seed, bits)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dz: torch.Tensor):
        dx = None
        if ctx.needs_input_grad[1]:
            with autocast_disabled(dz.device):
                dx = noise_backward_x(dz.contiguous(), ctx.x_dtype, ctx.delta, ctx.seed, ctx.bits)
        dh = dz if ctx.needs_input_grad[0] else None
        return dh, dx, None, None
