"""Triton kernel for the inner-product top-K (see :mod:`diffrec.kernels.topk` for the contract).

Each program owns ``BLOCK_B`` queries and one contiguous split of the items. It streams the
split in tiles of ``BLOCK_N`` items, computes the (BLOCK_B, BLOCK_N) score tile with ``tl.dot``
and keeps, per query, ``K`` slots holding packed int64 keys::

    key = order_preserving_int32(score) << 32 | (2**32 - 1 - item_id)

so that a larger key means a higher score, or the same score and a lower id: the tie rule is
plain integer order and every key of a query is distinct. The smallest slot is the running
K-th best (the threshold). A tile is skipped unless some score beats its query's threshold;
otherwise the best candidate of each query is extracted and replaces that query's smallest
slot, until no candidate beats the threshold. Few tiles need work once the slots are full, so
selection stays cheap next to the matmul.

Per-query exclusions are checked only for the extracted candidates (never for the whole tile);
shared exclusions are a length-N int8 mask. The slots of every split are written out
unsorted; the launcher merges splits and sorts the (B, K) keys with PyTorch, which is exact
because keys are unique.

The feature size is streamed in chunks of ``BLOCK_K`` columns (scores accumulated in float32
over the chunks); when one chunk holds all of ``d`` the query block is loaded once and kept.
On CUDA that is the case while a row takes at most 512 bytes (float32 d <= 128, 16-bit
d <= 256); wider rows are streamed in chunks of 64 columns, so d = 512 or 1024 never needs
one huge block.
Block sizes, warps and stages are autotuned on CUDA (see :mod:`._triton_common`); the
interpreter runs one fixed configuration. ``force_config`` (tests only) overrides both.
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
)
from .dispatch import BackendUnavailableError

_LOW32 = 0xFFFFFFFF
_EXCLUDE_CHUNK = 16  # per-query exclusion ids compared per step
SPLIT_GRANULE = 128  # item splits are multiples of this many items (the largest BLOCK_N of any candidate)
MAX_CHUNK = 256  # the interpreter's widest chunk of d (and gradient column block)
_INTERPRETER_BLOCK_N = 128  # fewer interpreted loop steps

#: Test-only overrides (see :class:`._triton_common.Overrides`): ``config`` (a dict such as
#: ``{"BLOCK_B": 16, "BLOCK_N": 64, "BLOCK_K": 16}`` or a ``triton.Config``), ``gpu=True`` (the CUDA
#: default configuration and CUDA's split count in the interpreter, for ``sms`` multiprocessors)
#: and ``splits`` (the number of item splits).
force_config = Overrides("config", "gpu", "sms", "splits")


@triton.jit
def _score_keys(scores, ids):
    """Pack float32 ``scores`` (BB, BN) and int64 ``ids`` (BN,) into order-preserving int64 keys."""
    scores = tl.where(scores == 0.0, 0.0, scores)  # -0.0 and +0.0 must get the same key
    bits = scores.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # signed int order == float order
    return (ordered.to(tl.int64) << 32) | (4294967295 - ids)[None, :]


@triton.jit
def _topk_kernel(
    q_ptr, e_ptr, out_ptr, mask_ptr, excl_ptr,
    n_queries, n_items, dim, n_excl, items_per_split,
    K: tl.constexpr, KP: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_EXCL: tl.constexpr, EXCL_CHUNK: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), splits); writes out[split, rows, :K] (unsorted int64 keys)."""
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,)
    row_mask = rows < n_queries
    if BLOCK_K >= D_PAD:  # one chunk holds d: load the queries once
        q = load_rows(q_ptr, rows, row_mask, tl.arange(0, BLOCK_K), dim, EMULATE_BF16)  # (BB, BK)

    slot = tl.arange(0, KP)
    # empty slots get distinct keys below every real key; padding slots (>= K) are never replaced
    empty = tl.where(slot < K, -9223372036854775807 - 1 + slot.to(tl.int64), 9223372036854775807)  # (KP,)
    keys = tl.zeros((BLOCK_B, KP), dtype=tl.int64) + empty[None, :]  # (BB, KP)
    threshold = tl.min(keys, axis=1)  # (BB,)

    start = split * items_per_split
    stop = tl.minimum(start + items_per_split, n_items)
    for n0 in range(start, stop, BLOCK_N):
        ids = n0 + tl.arange(0, BLOCK_N).to(tl.int64)  # (BN,)
        item_mask = ids < stop
        if BLOCK_K >= D_PAD:
            e = load_rows(e_ptr, ids, item_mask, tl.arange(0, BLOCK_K), dim, EMULATE_BF16)  # (BN, BK)
            scores = tl.dot(q, tl.trans(e), input_precision=PRECISION, out_dtype=tl.float32)  # (BB, BN)
        else:
            scores = chunked_dot(q_ptr, rows, row_mask, e_ptr, ids, item_mask, dim,
                                     BLOCK_B, BLOCK_N, BLOCK_K, PRECISION, EMULATE_BF16)
        allowed = row_mask[:, None] & item_mask[None, :]
        if HAS_MASK:
            banned = tl.load(mask_ptr + ids, mask=item_mask, other=1)
            allowed = allowed & (banned == 0)[None, :]
        tile_keys = _score_keys(scores, ids)  # (BB, BN)
        candidate = allowed & (tile_keys > threshold[:, None])
        remaining = tl.sum(candidate.to(tl.int32))
        while remaining > 0:
            best = tl.max(tl.where(candidate, tile_keys, -9223372036854775807 - 1), axis=1)  # (BB,)
            take = best > threshold  # queries that still have a candidate
            candidate = candidate & (tile_keys != best[:, None])
            if HAS_EXCL:
                best_id = 4294967295 - (best & 4294967295)  # (BB,)
                hit = tl.zeros((BLOCK_B,), dtype=tl.int32)
                for l0 in range(0, n_excl, EXCL_CHUNK):
                    lidx = l0 + tl.arange(0, EXCL_CHUNK)
                    banned_ids = tl.load(
                        excl_ptr + rows[:, None].to(tl.int64) * n_excl + lidx[None, :],
                        mask=row_mask[:, None] & (lidx < n_excl)[None, :], other=-1,
                    )  # (BB, EXCL_CHUNK)
                    hit += tl.sum((banned_ids == best_id[:, None]).to(tl.int32), axis=1)
                take = take & (hit == 0)
            keys = tl.where(take[:, None] & (keys == threshold[:, None]), best[:, None], keys)
            threshold = tl.min(keys, axis=1)
            candidate = candidate & (tile_keys > threshold[:, None])
            remaining = tl.sum(candidate.to(tl.int32))

    out = out_ptr + split.to(tl.int64) * n_queries * K + rows[:, None].to(tl.int64) * K + slot[None, :]
    tl.store(out, keys, mask=row_mask[:, None] & (slot < K)[None, :])


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert the key packing: int64 keys -> (float32 scores, int64 ids)."""
    ids = _LOW32 - (keys & _LOW32)
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.view(torch.float32), ids


# --------------------------------------------------------------------------------------------
# launch configurations
# --------------------------------------------------------------------------------------------


def _feature_pad(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _query_block(k_pad: int, n_queries: int) -> int:
    """Queries per program: their K slots live in registers, so fewer for larger K."""
    block_b = 64 if k_pad <= 32 else (32 if k_pad <= 64 else 16)
    return min(block_b, 16) if n_queries <= 16 else block_b


def smem_estimate(meta: dict, stages: int, elt: int, d_pad: int) -> int:
    """Rough bytes of shared memory: ``stages`` buffers of the tiles loaded in the item loop
    (plus the query block once when it is loaded outside the loop)."""
    bb, bn, bk = meta["BLOCK_B"], meta["BLOCK_N"], meta["BLOCK_K"]
    if bk >= d_pad:
        return (stages * bn * bk + bb * bk) * elt
    return stages * (bn + bb) * bk * elt


def cuda_configs(k: int, dim: int, n_queries: int, elt: int = 4,
                 smem: int = int(SMEM_FOR_TESTS * 0.9)) -> list[triton.Config]:
    """CUDA candidates (the default first) for ``elt``-byte inputs and ``smem`` bytes of shared memory.

    BLOCK_B queries × BLOCK_N items per tile; d whole in one block while a row takes at most
    512 bytes (float32 d <= 128, 16-bit d <= 256), else streamed in chunks of BLOCK_K = 64 with
    8 warps. The default with d whole is the previous configuration (64 x 64, 4 warps); the
    others vary the tile, the chunk and the warps; stages are lowered to fit ``smem``.
    Registers and spills of every candidate were checked on sm_90 compilations (no GPU run).
    """
    k_pad, d_pad = triton.next_power_of_2(k), _feature_pad(dim)
    block_b = _query_block(k_pad, n_queries)
    whole = d_pad * elt <= 512
    if d_pad > 128:  # as before: a smaller query block for wide rows
        block_b = min(block_b, 32)
    small_b = max(16, block_b // 2)
    if whole:
        candidates = [
            (block_b, 64, d_pad, 4, 3),
            (block_b, 64, d_pad, 8, 3),
            (block_b, 128, d_pad, 8, 3),
            (small_b, 64, d_pad, 4, 3),
        ]
        if n_queries > 256 and k_pad <= 32 and d_pad <= 128:
            candidates.append((128, 64, d_pad, 8, 3))
    else:  # 4 warps spill registers when d is streamed (sm_90 compilations)
        candidates = [
            (block_b, 64, 64, 8, 3),
            (block_b, 64, 64, 4, 3),
            (block_b, 128, 64, 8, 3),
            (small_b, 64, 64, 8, 3),
            (block_b, 64, 128, 8, 3),
        ]
    configs = [
        triton.Config({"BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
        for bb, bn, bk, w, st in candidates
    ]
    return fit_stages(configs, lambda meta, stages: smem_estimate(meta, stages, elt, d_pad), smem)


def interpreter_config(k: int, dim: int, n_queries: int) -> triton.Config:
    """The fixed configuration of the interpreter (large item tiles: fewer interpreted steps)."""
    block_b = _query_block(triton.next_power_of_2(k), n_queries)
    return triton.Config({"BLOCK_B": block_b, "BLOCK_N": _INTERPRETER_BLOCK_N,
                          "BLOCK_K": min(_feature_pad(dim), MAX_CHUNK)})


def _num_splits(n_queries: int, block_b: int, n_granules: int, sms: int | None) -> int:
    """Enough item splits to give every streaming multiprocessor a few programs (1 off CUDA)."""
    if sms is None:
        return 1
    return max(1, min(n_granules, triton.cdiv(4 * sms, triton.cdiv(n_queries, block_b))))


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def triton_topk(queries: torch.Tensor, items: torch.Tensor, k: int, exclusion, splits: int | None = None):
    """Launch the kernel; ``exclusion`` is a :class:`diffrec.kernels.topk.Exclusion`.

    ``splits`` (tests only) forces the number of item splits merged afterwards (as does
    ``force_config(splits=...)``).
    """
    if queries.device.type == "cpu" and not is_interpreted(_topk_kernel):
        raise BackendUnavailableError(
            "inner_product_topk: the Triton kernel was compiled for GPU (TRITON_INTERPRET was off when it was "
            "first loaded), so it cannot take CPU tensors"
        )
    queries, items = queries.contiguous(), items.contiguous()
    n_queries, dim = queries.shape
    n_items = items.shape[0]
    device = queries.device
    interpreted = is_interpreted(_topk_kernel)

    forced = force_config.get("config")
    gpu_configs = cuda_configs(k, dim, n_queries, queries.element_size(), smem_budget(device))
    if forced is not None:
        configs, tune = [as_config(forced)], False
    elif interpreted and not force_config.get("gpu"):
        configs, tune = [interpreter_config(k, dim, n_queries)], False
    else:
        configs, tune = gpu_configs, not interpreted and autotune_enabled()

    n_granules = triton.cdiv(n_items, SPLIT_GRANULE)
    if splits is None:
        splits = force_config.get("splits")
    if splits is None:
        splits = _num_splits(n_queries, gpu_configs[0].kwargs["BLOCK_B"], n_granules,
                             multiprocessors(device, force_config))
    splits = max(1, min(splits, n_granules))
    items_per_split = triton.cdiv(n_granules, splits) * SPLIT_GRANULE
    splits = triton.cdiv(n_items, items_per_split)

    if exclusion.shared is not None:
        mask = torch.zeros(n_items, dtype=torch.int8, device=device)
        mask[exclusion.shared] = 1
    else:
        mask = torch.zeros(1, dtype=torch.int8, device=device)
    has_excl = exclusion.per_query is not None and exclusion.per_query.shape[1] > 0
    excl = exclusion.per_query if has_excl else torch.full((1, 1), -1, dtype=torch.int64, device=device)

    keys = torch.empty((splits, n_queries, k), dtype=torch.int64, device=device)
    launch(
        _topk_kernel,
        lambda meta: (triton.cdiv(n_queries, meta["BLOCK_B"]), splits),
        (queries, items, keys, mask, excl, n_queries, n_items, dim, excl.shape[1], items_per_split),
        dict(K=k, KP=triton.next_power_of_2(k), D_PAD=_feature_pad(dim),
             HAS_MASK=exclusion.shared is not None, HAS_EXCL=has_excl, EXCL_CHUNK=_EXCLUDE_CHUNK,
             EMULATE_BF16=queries.dtype == torch.bfloat16 and interpreted, PRECISION=_precision(queries.dtype)),
        configs,
        family=("topk", triton.next_power_of_2(k), _feature_pad(dim), queries.element_size(), size_bucket(n_queries),
                size_bucket(n_granules)),
        key=["dim"], tune=tune,
    )
    keys = keys.permute(1, 0, 2).reshape(n_queries, splits * k)  # (B, splits·K)
    if splits > 1:
        keys = torch.topk(keys, k, dim=1).values  # (B, K)
    keys = torch.sort(keys, dim=1, descending=True).values
    scores, ids = decode_keys(keys)
    return scores.to(queries.dtype), ids
