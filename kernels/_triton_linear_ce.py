"""Triton kernels for the linear cross-entropy (see :mod:`diffrec.kernels.linear_ce`).

Forward, grid (query blocks, item splits): each program streams its split of the items in
tiles, computes the (BLOCK_B, BLOCK_N) logits with ``tl.dot`` and keeps an online
log-sum-exp (running max ``m`` and rescaled sum ``s``) plus the target logit when the target
falls in the split. The launcher combines the splits' ``(m, s)`` into the row log-sum-exp.

Backward, with ``P = softmax(logits) - onehot(targets)`` scaled by ``g / B``, recomputed tile by
tile from the saved log-sum-exp (no atomics, deterministic):

* ``dq = P @ E``: grid (query blocks, item splits), each program accumulates its (BLOCK_B, d)
  partial in registers; the launcher sums the splits;
* ``dE = Pᵀ @ Q``: grid (item tiles,), each program loops over all query blocks and
  accumulates its (BLOCK_N, d) tile.

The feature size is held whole in a block (``BLOCK_D = next_power_of_2(d)``, at most 512).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_available import is_interpreted
from .dispatch import BackendUnavailableError, KernelInputError

MAX_DIM = 512


@triton.jit
def _load_rows(ptr, rows, n_rows, cols, dim, UPCAST: tl.constexpr):
    """Load the (len(rows), BLOCK_D) block ``ptr[rows, :dim]`` with zeros outside."""
    block = tl.load(
        ptr + rows[:, None].to(tl.int64) * dim + cols[None, :],
        mask=(rows < n_rows)[:, None] & (cols < dim)[None, :], other=0.0,
    )
    if UPCAST:
        block = block.to(tl.float32)
    return block


@triton.jit
def _lce_fwd_kernel(
    q_ptr, e_ptr, t_ptr, m_ptr, s_ptr, tgt_ptr,
    n_queries, n_items, dim, items_per_split,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), splits): partial (max, sum of exp, target logit) per row and split."""
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,)
    row_mask = rows < n_queries
    cols = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr, rows, n_queries, cols, dim, UPCAST)  # (BB, BD)
    targets = tl.load(t_ptr + rows, mask=row_mask, other=-1)  # (BB,)

    m = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_B,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_B,), dtype=tl.float32)
    start = split * items_per_split
    stop = tl.minimum(start + items_per_split, n_items)
    for n0 in range(start, stop, BLOCK_N):
        ids = n0 + tl.arange(0, BLOCK_N)  # (BN,)
        e = _load_rows(e_ptr, ids, stop, cols, dim, UPCAST)  # (BN, BD)
        logits = tl.dot(q, tl.trans(e), input_precision=PRECISION)  # (BB, BN)
        logits = tl.where((ids < stop)[None, :], logits, float("-inf"))
        target_logit += tl.sum(tl.where(ids[None, :] == targets[:, None], logits, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m = m_new
    out = split * n_queries + rows
    tl.store(m_ptr + out, m, mask=row_mask)
    tl.store(s_ptr + out, s, mask=row_mask)
    tl.store(tgt_ptr + out, target_logit, mask=row_mask)


@triton.jit
def _scaled_probs(q, e, ids, n_items, targets, lse, scale, PRECISION: tl.constexpr):
    """(softmax - onehot) · scale for a (BB, BN) tile; zero outside the valid items."""
    logits = tl.dot(q, tl.trans(e), input_precision=PRECISION)  # (BB, BN)
    probs = tl.exp(logits - lse[:, None])
    probs = tl.where(ids[None, :] == targets[:, None], probs - 1.0, probs)
    return tl.where((ids < n_items)[None, :], probs * scale, 0.0)


@triton.jit
def _lce_bwd_q_kernel(
    q_ptr, e_ptr, t_ptr, lse_ptr, g_ptr, dq_ptr,
    n_queries, n_items, dim, items_per_split, inv_batch,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), splits): dq partial (float32) of the split's items."""
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < n_queries
    cols = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr, rows, n_queries, cols, dim, UPCAST)  # (BB, BD)
    targets = tl.load(t_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    scale = tl.load(g_ptr).to(tl.float32) * inv_batch
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    start = split * items_per_split
    stop = tl.minimum(start + items_per_split, n_items)
    for n0 in range(start, stop, BLOCK_N):
        ids = n0 + tl.arange(0, BLOCK_N)
        e = _load_rows(e_ptr, ids, stop, cols, dim, UPCAST)  # (BN, BD)
        probs = _scaled_probs(q, e, ids, stop, targets, lse, scale, PRECISION)  # (BB, BN)
        acc += tl.dot(probs.to(e.dtype), e, input_precision=PRECISION)  # (BB, BD)
    out = dq_ptr + split.to(tl.int64) * n_queries * dim + rows[:, None].to(tl.int64) * dim + cols[None, :]
    tl.store(out, acc, mask=row_mask[:, None] & (cols < dim)[None, :])


@triton.jit
def _lce_bwd_e_kernel(
    q_ptr, e_ptr, t_ptr, lse_ptr, g_ptr, de_ptr,
    n_queries, n_items, dim, inv_batch,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N),): dE for one item tile, looping over every query block."""
    pid_n = tl.program_id(0)
    ids = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    cols = tl.arange(0, BLOCK_D)
    e = _load_rows(e_ptr, ids, n_items, cols, dim, UPCAST)  # (BN, BD)
    scale = tl.load(g_ptr).to(tl.float32) * inv_batch
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for b0 in range(0, n_queries, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_mask = rows < n_queries
        q = _load_rows(q_ptr, rows, n_queries, cols, dim, UPCAST)  # (BB, BD)
        targets = tl.load(t_ptr + rows, mask=row_mask, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        probs = _scaled_probs(q, e, ids, n_items, targets, lse, scale, PRECISION)  # (BB, BN)
        probs = tl.where(row_mask[:, None], probs, 0.0)
        acc += tl.dot(tl.trans(probs.to(q.dtype)), q, input_precision=PRECISION)  # (BN, BD)
    out = de_ptr + ids[:, None].to(tl.int64) * dim + cols[None, :]
    tl.store(out, acc.to(de_ptr.dtype.element_ty), mask=(ids < n_items)[:, None] & (cols < dim)[None, :])


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


class _Config:
    """Block sizes and item splits for one call."""

    def __init__(self, queries: torch.Tensor, n_items: int):
        n_queries, dim = queries.shape
        if dim > MAX_DIM:
            raise KernelInputError(f"linear_cross_entropy: the Triton kernel supports d <= {MAX_DIM}, got {dim}; "
                                   "use backend='torch'")
        self.interpreted = is_interpreted(_lce_fwd_kernel)
        if queries.device.type == "cpu" and not self.interpreted:
            raise BackendUnavailableError(
                "linear_cross_entropy: the Triton kernels were compiled for GPU (TRITON_INTERPRET was off when "
                "they were first loaded), so they cannot take CPU tensors"
            )
        self.block_d = max(16, triton.next_power_of_2(dim))
        self.block_b = 16 if n_queries <= 16 else (32 if self.block_d > 128 else 64)
        self.block_n = 32 if self.block_d > 256 else 64
        if self.interpreted:
            self.block_n = 128
        n_tiles = triton.cdiv(n_items, self.block_n)
        n_query_blocks = triton.cdiv(n_queries, self.block_b)
        splits = 1
        if queries.device.type == "cuda":
            sms = torch.cuda.get_device_properties(queries.device).multi_processor_count
            splits = max(1, min(n_tiles, triton.cdiv(4 * sms, n_query_blocks)))
        self.items_per_split = triton.cdiv(n_tiles, splits) * self.block_n
        self.splits = triton.cdiv(n_items, self.items_per_split)
        self.query_blocks = n_query_blocks
        self.item_tiles = n_tiles
        self.upcast = queries.dtype == torch.bfloat16 and self.interpreted
        self.precision = _precision(queries.dtype)

    def meta(self) -> dict:
        return dict(
            BLOCK_B=self.block_b, BLOCK_N=self.block_n, BLOCK_D=self.block_d,
            UPCAST=self.upcast, PRECISION=self.precision,
        )


def lce_forward(queries: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, cfg: _Config):
    """Return ``(loss, lse)``: the mean loss (0-d float32) and the row log-sum-exp (B,) float32."""
    n_queries, dim = queries.shape
    n_items = items.shape[0]
    part = torch.empty((3, cfg.splits, n_queries), dtype=torch.float32, device=queries.device)
    _lce_fwd_kernel[(cfg.query_blocks, cfg.splits)](
        queries, items, targets, part[0], part[1], part[2],
        n_queries, n_items, dim, cfg.items_per_split, **cfg.meta(),
    )
    m, s, target_logit = part[0], part[1], part[2]  # (splits, B) each
    lse = torch.logsumexp(m + torch.log(s), dim=0)  # (B,)
    return (lse - target_logit.sum(dim=0)).mean(), lse


def lce_backward(queries, items, targets, lse, grad, cfg: _Config, need_q: bool, need_e: bool):
    """Return ``(dq, de)`` (None where not needed) for the upstream gradient ``grad`` (0-d)."""
    n_queries, dim = queries.shape
    n_items = items.shape[0]
    grad = grad.to(torch.float32).contiguous()
    dq = de = None
    if need_q:
        partial = torch.empty((cfg.splits, n_queries, dim), dtype=torch.float32, device=queries.device)
        _lce_bwd_q_kernel[(cfg.query_blocks, cfg.splits)](
            queries, items, targets, lse, grad, partial,
            n_queries, n_items, dim, cfg.items_per_split, 1.0 / n_queries, **cfg.meta(),
        )
        dq = partial.sum(dim=0).to(queries.dtype)
    if need_e:
        de = torch.empty_like(items)
        _lce_bwd_e_kernel[(cfg.item_tiles,)](
            queries, items, targets, lse, grad, de,
            n_queries, n_items, dim, 1.0 / n_queries, **cfg.meta(),
        )
    return dq, de


class TritonLinearCrossEntropy(torch.autograd.Function):
    """Autograd wrapper: saves inputs and the (B,) log-sum-exp; the backward recomputes logits."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        queries, items, targets = queries.contiguous(), items.contiguous(), targets.contiguous()
        cfg = _Config(queries, items.shape[0])
        loss, lse = lce_forward(queries, items, targets, cfg)
        ctx.save_for_backward(queries, items, targets, lse)
        ctx.cfg = cfg
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        queries, items, targets, lse = ctx.saved_tensors
        dq, de = lce_backward(
            queries, items, targets, lse, grad, ctx.cfg, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return dq, de, None
