"""Triton kernels for the linear cross-entropy (see :mod:`diffrec.kernels.linear_ce`).

Forward, grid (query blocks, item splits): each program streams its split of the items in
tiles, computes the (BLOCK_B, BLOCK_N) logits with ``tl.dot`` and keeps an online
log-sum-exp (running max ``m`` and rescaled sum ``s``) plus the target logit when the target
falls in the split. The launcher combines the splits' ``(m, s)`` into the row log-sum-exp.

The forward returns each row's loss; a reduction (mean, sum) is applied outside by PyTorch, so
the backward receives one upstream gradient ``g_b`` per row. With
``P = (softmax(logits) - onehot(targets))`` scaled row by row by ``g_b``, recomputed tile by
tile from the saved log-sum-exp (no atomics, deterministic):

* ``dq = P @ E``: grid (query blocks, item splits, column blocks), each program accumulates a
  (BLOCK_B, BLOCK_DO) partial in registers; the launcher sums the splits;
* ``dE = Pᵀ @ Q``: grid (item tiles, column blocks), each program loops over all query blocks
  and accumulates its (BLOCK_N, BLOCK_DO) tile.

Feature size: logits are accumulated over ``d`` in chunks of ``BLOCK_K`` columns. When one
chunk holds all of ``d`` (on CUDA while a row takes at most 512 bytes: float32 d <= 128,
16-bit d <= 256) the blocks are loaded once and reused for the gradient, with a single column
block. Otherwise ``d`` is streamed in chunks of 64 columns and the gradients are produced in
column blocks of ``BLOCK_DO`` (512 bytes of a row: 128 float32 or 256 16-bit columns); each
column block recomputes the logits, so the backward costs about ``1 + cdiv(d, BLOCK_DO)``
matmuls per item tile instead of 2 (d = 1024 in float32: 9).

Precision: every matmul takes the inputs' dtype and accumulates in float32; ``P`` is rounded
to the inputs' dtype before ``P @ E`` and ``Pᵀ @ Q`` (as the tensor cores need); ``dE`` is
stored in the items' dtype, ``dq`` partials in float32.

Block sizes, warps and stages are autotuned on CUDA (see :mod:`._triton_common`); the
interpreter runs fixed configurations and a single item split. ``force_config`` (tests only)
overrides both.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_available import is_interpreted
from ._triton_common import (
    SMEM_FOR_TESTS,
    Overrides,
    as_config,
    autotune_enabled,
    chunked_dot,
    fit_stages,
    launch,
    load_rows,
    multiprocessors,
    size_bucket,
    smem_budget,
    to_operand,
    to_output,
)
from .dispatch import BackendUnavailableError, autocast_disabled

SPLIT_GRANULE = 128  # item splits are multiples of this many items (the largest BLOCK_N of any candidate)
MAX_CHUNK = 256  # the interpreter's widest chunk of d (and gradient column block)
_INTERPRETER_BLOCK_N = 128  # fewer interpreted loop steps

#: Test-only overrides (see :class:`._triton_common.Overrides`): ``fwd`` / ``bwd_q`` / ``bwd_e``
#: (a dict of that kernel's block sizes or a ``triton.Config``), ``gpu=True`` (the CUDA default
#: configurations and CUDA's split count in the interpreter, for ``sms`` multiprocessors) and
#: ``splits`` (the number of item splits).
force_config = Overrides("fwd", "bwd_q", "bwd_e", "gpu", "sms", "splits")


@triton.jit
def _lce_fwd_kernel(
    q_ptr, e_ptr, t_ptr, m_ptr, s_ptr, tgt_ptr,
    n_queries, n_items, dim, items_per_split,
    D_PAD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), splits): partial (max, sum of exp, target logit) per row and split."""
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,)
    row_mask = rows < n_queries
    if BLOCK_K >= D_PAD:  # one chunk holds d: load the queries once
        q = load_rows(q_ptr, rows, rows < n_queries, tl.arange(0, BLOCK_K), dim, EMULATE_BF16)  # (BB, BK)
    targets = tl.load(t_ptr + rows, mask=row_mask, other=-1)  # (BB,)

    m = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_B,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_B,), dtype=tl.float32)
    start = split * items_per_split
    stop = tl.minimum(start + items_per_split, n_items)
    for n0 in range(start, stop, BLOCK_N):
        ids = n0 + tl.arange(0, BLOCK_N)  # (BN,)
        if BLOCK_K >= D_PAD:
            e = load_rows(e_ptr, ids, ids < stop, tl.arange(0, BLOCK_K), dim, EMULATE_BF16)  # (BN, BK)
            logits = tl.dot(q, tl.trans(e), input_precision=PRECISION, out_dtype=tl.float32)  # (BB, BN)
        else:
            logits = chunked_dot(q_ptr, rows, rows < n_queries, e_ptr, ids, ids < stop, dim,
                                     BLOCK_B, BLOCK_N, BLOCK_K, PRECISION, EMULATE_BF16)
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
def _scaled_probs(logits, ids, n_items, targets, lse, scale):
    """(softmax - onehot) · scale (one per row) for a (BB, BN) tile of float32 logits; zero outside the valid items."""
    probs = tl.exp(logits - lse[:, None])
    probs = tl.where(ids[None, :] == targets[:, None], probs - 1.0, probs)
    return tl.where((ids < n_items)[None, :], probs * scale[:, None], 0.0)


@triton.jit
def _lce_bwd_q_kernel(
    q_ptr, e_ptr, t_ptr, lse_ptr, g_ptr, dq_ptr,
    n_queries, n_items, dim, items_per_split,
    D_PAD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_DO: tl.constexpr, EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), splits, column blocks): float32 dq partial of the split's items."""
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    pid_d = tl.program_id(2)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < n_queries
    if BLOCK_K >= D_PAD:
        out_cols = tl.arange(0, BLOCK_K)
        q = load_rows(q_ptr, rows, rows < n_queries, out_cols, dim, EMULATE_BF16)  # (BB, BK)
        acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    else:
        out_cols = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
        acc = tl.zeros((BLOCK_B, BLOCK_DO), dtype=tl.float32)
    targets = tl.load(t_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    scale = tl.load(g_ptr + rows, mask=row_mask, other=0.0)  # (BB,) upstream gradient per row
    start = split * items_per_split
    stop = tl.minimum(start + items_per_split, n_items)
    for n0 in range(start, stop, BLOCK_N):
        ids = n0 + tl.arange(0, BLOCK_N)
        if BLOCK_K >= D_PAD:
            e = load_rows(e_ptr, ids, ids < stop, out_cols, dim, EMULATE_BF16)  # (BN, BK)
            logits = tl.dot(q, tl.trans(e), input_precision=PRECISION, out_dtype=tl.float32)
        else:
            logits = chunked_dot(q_ptr, rows, rows < n_queries, e_ptr, ids, ids < stop, dim,
                                     BLOCK_B, BLOCK_N, BLOCK_K, PRECISION, EMULATE_BF16)
            e = load_rows(e_ptr, ids, ids < stop, out_cols, dim, EMULATE_BF16)  # (BN, BDO)
        probs = _scaled_probs(logits, ids, stop, targets, lse, scale)  # (BB, BN) float32
        acc = tl.dot(to_operand(probs, e_ptr.dtype.element_ty, EMULATE_BF16), e, acc,
                     input_precision=PRECISION, out_dtype=tl.float32)
    out = dq_ptr + split.to(tl.int64) * n_queries * dim + rows[:, None].to(tl.int64) * dim + out_cols[None, :]
    tl.store(out, acc, mask=row_mask[:, None] & (out_cols < dim)[None, :])


@triton.jit
def _lce_bwd_e_kernel(
    q_ptr, e_ptr, t_ptr, lse_ptr, g_ptr, de_ptr,
    n_queries, n_items, dim,
    D_PAD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_DO: tl.constexpr, EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N), column blocks): dE for one item tile, looping over every query block."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    ids = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    if BLOCK_K >= D_PAD:
        out_cols = tl.arange(0, BLOCK_K)
        e = load_rows(e_ptr, ids, ids < n_items, out_cols, dim, EMULATE_BF16)  # (BN, BK)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        out_cols = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
        acc = tl.zeros((BLOCK_N, BLOCK_DO), dtype=tl.float32)
    for b0 in range(0, n_queries, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_mask = rows < n_queries
        targets = tl.load(t_ptr + rows, mask=row_mask, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        scale = tl.load(g_ptr + rows, mask=row_mask, other=0.0)  # (BB,)
        if BLOCK_K >= D_PAD:
            q = load_rows(q_ptr, rows, rows < n_queries, out_cols, dim, EMULATE_BF16)  # (BB, BK)
            logits = tl.dot(q, tl.trans(e), input_precision=PRECISION, out_dtype=tl.float32)
        else:
            logits = chunked_dot(q_ptr, rows, rows < n_queries, e_ptr, ids, ids < n_items, dim,
                                     BLOCK_B, BLOCK_N, BLOCK_K, PRECISION, EMULATE_BF16)
            q = load_rows(q_ptr, rows, rows < n_queries, out_cols, dim, EMULATE_BF16)  # (BB, BDO)
        probs = _scaled_probs(logits, ids, n_items, targets, lse, scale)  # (BB, BN) float32
        probs = tl.where(row_mask[:, None], probs, 0.0)
        acc = tl.dot(tl.trans(to_operand(probs, q_ptr.dtype.element_ty, EMULATE_BF16)), q, acc,
                     input_precision=PRECISION, out_dtype=tl.float32)  # (BN, BDO)
    out = de_ptr + ids[:, None].to(tl.int64) * dim + out_cols[None, :]
    tl.store(out, to_output(acc, de_ptr.dtype.element_ty, EMULATE_BF16),
             mask=(ids < n_items)[:, None] & (out_cols < dim)[None, :])


# --------------------------------------------------------------------------------------------
# launch configurations
# --------------------------------------------------------------------------------------------


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _feature_pad(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _default_blocks(n_queries: int, dim: int, elt: int) -> tuple[int, int, int, int]:
    """(BLOCK_B, BLOCK_N, BLOCK_K, BLOCK_DO) of the CUDA default for ``elt``-byte inputs: d whole
    while a row takes at most 512 bytes (float32 d <= 128, 16-bit d <= 256), else chunks of 64
    columns and gradient column blocks of 128 (float32) or 256 (16-bit) columns."""
    d_pad = _feature_pad(dim)
    whole = d_pad * elt <= 512
    block_b = 16 if n_queries <= 16 else (32 if d_pad > 128 else 64)  # as before
    if whole:
        return block_b, 64, d_pad, d_pad
    return block_b, 64, 64, 512 // elt


def smem_estimate(kernel: str, meta: dict, stages: int, elt: int, d_pad: int) -> int:
    """Rough bytes of shared memory of ``kernel``: ``stages`` buffers of the tiles loaded in its
    loop, the tiles loaded once, and the probability tile fed to the second matmul."""
    bb, bn, bk = meta["BLOCK_B"], meta["BLOCK_N"], meta["BLOCK_K"]
    bdo = meta.get("BLOCK_DO", bk)
    whole = bk >= d_pad
    if kernel == "fwd":
        return (stages * bn * bk + bb * bk) * elt if whole else stages * (bn + bb) * bk * elt
    probs = bb * bn * elt
    if kernel == "bwd_q":
        loop = bn * bk if whole else (bn + bb) * bk + bn * bdo
        once = bb * bk if whole else 0
    else:
        loop = bb * bk if whole else (bn + bb) * bk + bb * bdo
        once = bn * bk if whole else 0
    return (stages * loop + once) * elt + probs


def cuda_configs(kernel: str, n_queries: int, dim: int, elt: int = 4,
                 smem: int = int(SMEM_FOR_TESTS * 0.9)) -> list[triton.Config]:
    """CUDA candidates (the default first) of ``kernel`` ("fwd", "bwd_q" or "bwd_e") for
    ``elt``-byte inputs; stages are lowered to fit ``smem`` bytes of shared memory.

    The defaults were chosen from sm_90 compilations (registers and spills reported by
    ``cuobjdump -res-usage``, no GPU run): the forward keeps the previous 64 x 64 tile with
    4 warps while d is whole (8 warps when it streams d, 4 would spill); the backward kernels
    hold a second accumulator and use 32 x 64 (``dE`` streaming d: 64 queries x 32 items) tiles
    with 8 warps, the largest that compiled without spills.
    """
    d_pad = _feature_pad(dim)
    block_b, _, block_k, block_do = _default_blocks(n_queries, dim, elt)
    whole = block_k >= d_pad
    small = n_queries <= 16
    # (BLOCK_B, BLOCK_N, BLOCK_K, warps, stages); BLOCK_K is d_pad when d fits in one chunk
    if kernel == "fwd":
        if whole:
            candidates = [(block_b, 64, block_k, 4, 3), (block_b, 64, block_k, 8, 3), (block_b, 128, block_k, 8, 3),
                          (max(16, block_b // 2), 128, block_k, 4, 3)]
            if n_queries > 256 and d_pad <= 128:
                candidates.append((128, 64, block_k, 8, 3))
        else:
            candidates = [(block_b, 64, 64, 8, 3), (block_b, 64, 64, 4, 3), (block_b, 128, 64, 8, 3),
                          (block_b, 64, 32, 4, 4), (block_b, 64, 128, 8, 3)]
    elif kernel == "bwd_q":
        bb = 16 if small else 32
        candidates = [(bb, 64, block_k, 8, 3), (bb, 64, block_k, 4, 3), (bb, 32, block_k, 4, 3),
                      (16 if small else 64, 32, block_k, 8, 3), (16 if small else 64, 64, block_k, 8, 2)]
        if not whole:
            candidates.append((bb, 64, 32, 8, 4))
    else:
        bb = 16 if small else 32
        big = 16 if small else 64
        if whole:
            candidates = [(bb, 64, block_k, 8, 3), (big, 32, block_k, 8, 3), (bb, 32, block_k, 4, 3),
                          (bb, 64, block_k, 4, 3), (big, 64, block_k, 8, 2)]
        else:
            candidates = [(big, 32, 64, 8, 3), (bb, 64, 64, 8, 3), (bb, 32, 64, 4, 3), (big, 64, 64, 8, 2),
                          (bb, 64, 32, 8, 4)]
    configs = []
    for bb, bn, bk, w, st in candidates:
        meta = {"BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_K": bk}
        if kernel != "fwd":
            meta["BLOCK_DO"] = block_do if not whole else bk
        configs.append(triton.Config(meta, num_warps=w, num_stages=st))
    return fit_stages(configs, lambda meta, stages: smem_estimate(kernel, meta, stages, elt, d_pad), smem)


def interpreter_config(kernel: str, n_queries: int, dim: int) -> triton.Config:
    """The fixed configuration of the interpreter (large item tiles: fewer interpreted steps)."""
    d_pad = _feature_pad(dim)
    block_k = min(d_pad, MAX_CHUNK)
    meta = {"BLOCK_B": 16 if n_queries <= 16 else 64, "BLOCK_N": _INTERPRETER_BLOCK_N, "BLOCK_K": block_k}
    if kernel != "fwd":
        meta["BLOCK_DO"] = block_k
    return triton.Config(meta)


class _Config:
    """Candidate configurations of the three kernels and the item splits for one call."""

    def __init__(self, queries: torch.Tensor, n_items: int):
        n_queries, dim = queries.shape
        self.interpreted = is_interpreted(_lce_fwd_kernel)
        if queries.device.type == "cpu" and not self.interpreted:
            raise BackendUnavailableError(
                "linear_cross_entropy: the Triton kernels were compiled for GPU (TRITON_INTERPRET was off when "
                "they were first loaded), so they cannot take CPU tensors"
            )
        self.candidates: dict[str, list[triton.Config]] = {}
        self.tune = False
        for kernel in ("fwd", "bwd_q", "bwd_e"):
            forced = force_config.get(kernel)
            if forced is not None:
                self.candidates[kernel] = [as_config(forced)]
            elif self.interpreted and not force_config.get("gpu"):
                self.candidates[kernel] = [interpreter_config(kernel, n_queries, dim)]
            else:
                self.candidates[kernel] = cuda_configs(kernel, n_queries, dim, queries.element_size(),
                                                       smem_budget(queries.device))
                self.tune = not self.interpreted and autotune_enabled()
        n_granules = triton.cdiv(n_items, SPLIT_GRANULE)
        splits = force_config.get("splits")
        if splits is None:
            sms = multiprocessors(queries.device, force_config)
            splits = 1
            if sms is not None:
                query_blocks = triton.cdiv(n_queries, _default_blocks(n_queries, dim, queries.element_size())[0])
                splits = max(1, min(n_granules, triton.cdiv(4 * sms, query_blocks)))
        splits = max(1, min(int(splits), n_granules))
        self.items_per_split = triton.cdiv(n_granules, splits) * SPLIT_GRANULE
        self.splits = triton.cdiv(n_items, self.items_per_split)
        self.family = (_feature_pad(dim), queries.element_size(), size_bucket(n_queries), size_bucket(n_granules),
                       self.splits > 1)
        self.fixed = dict(
            D_PAD=_feature_pad(dim),
            EMULATE_BF16=queries.dtype == torch.bfloat16 and self.interpreted,
            PRECISION=_precision(queries.dtype),
        )


def _column_blocks(meta: dict, dim: int) -> int:
    return 1 if meta["BLOCK_K"] >= _feature_pad(dim) else triton.cdiv(dim, meta["BLOCK_DO"])


def lce_forward(queries: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, cfg: _Config):
    """Return ``(loss, lse)``: each row's loss and log-sum-exp, (B,) float32 each."""
    n_queries, dim = queries.shape
    n_items = items.shape[0]
    part = torch.empty((3, cfg.splits, n_queries), dtype=torch.float32, device=queries.device)
    launch(
        _lce_fwd_kernel,
        lambda meta: (triton.cdiv(n_queries, meta["BLOCK_B"]), cfg.splits),
        (queries, items, targets, part[0], part[1], part[2], n_queries, n_items, dim, cfg.items_per_split),
        cfg.fixed, cfg.candidates["fwd"], family=("lce_fwd", *cfg.family), key=["dim"], tune=cfg.tune,
    )
    m, s, target_logit = part[0], part[1], part[2]  # (splits, B) each
    lse = torch.logsumexp(m + torch.log(s), dim=0)  # (B,)
    return lse - target_logit.sum(dim=0), lse


def lce_backward(queries, items, targets, lse, grad, cfg: _Config, need_q: bool, need_e: bool):
    """Return ``(dq, de)`` (None where not needed) for the rows' upstream gradients ``grad`` (B,)."""
    n_queries, dim = queries.shape
    n_items = items.shape[0]
    grad = grad.to(torch.float32).contiguous()
    dq = de = None
    if need_q:
        partial = torch.empty((cfg.splits, n_queries, dim), dtype=torch.float32, device=queries.device)
        launch(
            _lce_bwd_q_kernel,
            lambda meta: (triton.cdiv(n_queries, meta["BLOCK_B"]), cfg.splits, _column_blocks(meta, dim)),
            (queries, items, targets, lse, grad, partial, n_queries, n_items, dim, cfg.items_per_split),
            cfg.fixed, cfg.candidates["bwd_q"], family=("lce_bwd_q", *cfg.family), key=["dim"], tune=cfg.tune,
        )
        dq = partial.sum(dim=0).to(queries.dtype)
    if need_e:
        de = torch.empty_like(items)
        launch(
            _lce_bwd_e_kernel,
            lambda meta: (triton.cdiv(n_items, meta["BLOCK_N"]), _column_blocks(meta, dim)),
            (queries, items, targets, lse, grad, de, n_queries, n_items, dim),
            cfg.fixed, cfg.candidates["bwd_e"], family=("lce_bwd_e", *cfg.family), key=["dim"], tune=cfg.tune,
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
        with autocast_disabled(queries.device):
            dq, de = lce_backward(
                queries, items, targets, lse, grad, ctx.cfg, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            )
        return dq, de, None
