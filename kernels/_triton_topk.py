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
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_available import is_interpreted
from .dispatch import BackendUnavailableError

_LOW32 = 0xFFFFFFFF
_EXCLUDE_CHUNK = 16  # per-query exclusion ids compared per step


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
    K: tl.constexpr, KP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_EXCL: tl.constexpr, EXCL_CHUNK: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), splits); writes out[split, rows, :K] (unsorted int64 keys)."""
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,)
    row_mask = rows < n_queries
    cols = tl.arange(0, BLOCK_D)
    q = tl.load(
        q_ptr + rows[:, None].to(tl.int64) * dim + cols[None, :],
        mask=row_mask[:, None] & (cols < dim)[None, :], other=0.0,
    )  # (BB, BD)
    if UPCAST:
        q = q.to(tl.float32)

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
        e = tl.load(
            e_ptr + ids[:, None] * dim + cols[None, :],
            mask=item_mask[:, None] & (cols < dim)[None, :], other=0.0,
        )  # (BN, BD)
        if UPCAST:
            e = e.to(tl.float32)
        scores = tl.dot(q, tl.trans(e), input_precision=PRECISION)  # (BB, BN) float32
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


def _num_splits(n_query_blocks: int, n_tiles: int, device: torch.device) -> int:
    """Enough item splits to give every streaming multiprocessor a few programs."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_tiles, triton.cdiv(4 * sms, n_query_blocks)))


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def triton_topk(queries: torch.Tensor, items: torch.Tensor, k: int, exclusion, splits: int | None = None):
    """Launch the kernel; ``exclusion`` is a :class:`diffrec.kernels.topk.Exclusion`.

    ``splits`` (tests only) forces the number of item splits merged afterwards.
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

    block_d = max(16, triton.next_power_of_2(dim))
    k_pad = triton.next_power_of_2(k)
    block_b = 64 if k_pad <= 32 else (32 if k_pad <= 64 else 16)  # K slots per query live in registers
    if n_queries <= 16 or block_d > 128:
        block_b = min(block_b, 16 if n_queries <= 16 else 32)
    block_n = 32 if block_d > 256 else 64
    interpreted = is_interpreted(_topk_kernel)
    if interpreted:
        block_n = 128  # fewer interpreted loop steps
    n_tiles = triton.cdiv(n_items, block_n)
    n_query_blocks = triton.cdiv(n_queries, block_b)
    if splits is None:
        splits = _num_splits(n_query_blocks, n_tiles, device)
    splits = max(1, min(splits, n_tiles))
    items_per_split = triton.cdiv(n_tiles, splits) * block_n
    splits = triton.cdiv(n_items, items_per_split)

    if exclusion.shared is not None:
        mask = torch.zeros(n_items, dtype=torch.int8, device=device)
        mask[exclusion.shared] = 1
    else:
        mask = torch.zeros(1, dtype=torch.int8, device=device)
    if exclusion.per_query is not None and exclusion.per_query.shape[1] > 0:
        excl = exclusion.per_query
    else:
        excl = torch.full((1, 1), -1, dtype=torch.int64, device=device)

    keys = torch.empty((splits, n_queries, k), dtype=torch.int64, device=device)
    _topk_kernel[(n_query_blocks, splits)](
        queries, items, keys, mask, excl,
        n_queries, n_items, dim, excl.shape[1], items_per_split,
        K=k, KP=k_pad,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d,
        HAS_MASK=exclusion.shared is not None,
        HAS_EXCL=exclusion.per_query is not None and exclusion.per_query.shape[1] > 0,
        EXCL_CHUNK=_EXCLUDE_CHUNK,
        UPCAST=queries.dtype == torch.bfloat16 and interpreted,
        PRECISION=_precision(queries.dtype),
    )
    keys = keys.permute(1, 0, 2).reshape(n_queries, splits * k)  # (B, splits·K)
    if splits > 1:
        keys = torch.topk(keys, k, dim=1).values  # (B, K)
    keys = torch.sort(keys, dim=1, descending=True).values
    scores, ids = decode_keys(keys)
    return scores.to(queries.dtype), ids
