"""Exact float32 inner-product top-K through a bfloat16 screen (CPU).

On CPUs that multiply bfloat16 matrices in hardware (AVX512-BF16, AMX) a bf16 product is several
times faster than a float32 one. The screen multiplies in bf16, tile by tile, and keeps only the
items whose bf16 score a rigorous error bound cannot rule out of the float32 top-K; those few are
rescored in float32, so the result is the float32 top-K with the tie rule of
:mod:`diffrec.kernels.topk`, never an approximation.

It is on by default only where the CPU has AMX tiles (:func:`screen_by_default`). With AVX512-BF16
dot products alone it measured about half the speed of faiss' BLAS search, which the float32 path
uses (benchmarks/RESULTS.md), so there it stays an option (``topk.SCREEN_BF16 = True``).

The bound. Let ``s~`` be the bf16 score (both inputs rounded to bf16 with unit roundoff
``u = 2^-8``, products exact in float32, summed in float32 in any order, the sum rounded to
bf16) and ``r`` the float32 rescoring (a dot product summed in float32 in any order). With
``g = d·2^-24 / (1 - d·2^-24)`` (Higham's gamma_d for float32):

    |s~ - q·e| <= [(2u + u²) + g(1 + u)² + u(1 + u)²(1 + g)] · Σ|q_i e_i|
    |r  - q·e| <= g · Σ|q_i e_i|,         Σ|q_i e_i| <= ||q||·||e||  (Cauchy-Schwarz)

so ``|s~ - r| <= b = c_d·||q||·||e||`` plus a tiny absolute term for flushed subnormals; ``c_d``
is inflated by 1 % for the rounding of the bound's own arithmetic (in float64). For a query, ``L`` (kept as
tiles go by) is the largest over tiles of the tile's k-th best group maximum (groups of 16 items)
less the tile's largest bound: k items then have ``r >= L``, so the k-th largest ``r`` over the
catalogue is at least ``L``, and every item of the float32 top-K, ties included, has
``s~ + b >= L``. A tile keeps the items with ``s~ >= L - c_d·||q||·max||e||`` (its largest bound;
a group whose maximum is below that holds none); at the end ``L`` is raised to the k-th largest
``s~ - b`` of the kept items, the filter ``s~ + b >= L`` applied, and only those are rescored.
"""

from __future__ import annotations

import weakref

import torch

UNIT_BF16 = 2.0**-8
UNIT_FP32 = 2.0**-24
MAX_CANDIDATES = 8192  # a query with more candidates than this is ranked by the float32 path
TILE = 1 << 16  # items per bf16 product
GROUP = 16  # items per group whose maximum screens them together
MIN_QUERIES = 16  # below this the product is memory-bound and the float32 path is as fast
_RESCORE_ELEMENTS = 1 << 24  # gathered candidate vectors per rescoring step (64 MiB of float32)

_cache: dict[str, object] = {}


def bound_factor(dim: int) -> float:
    """``c_d`` of the module docstring: ``|s~ - r| <= c_d·||q||·||e||`` (plus :func:`absolute_slack`)."""
    u = UNIT_BF16
    g = dim * UNIT_FP32 / (1.0 - dim * UNIT_FP32)
    screen = (2 * u + u * u) + g * (1 + u) ** 2 + u * (1 + u) ** 2 * (1 + g)
    return 1.01 * (screen + g)


def absolute_slack(dim: int) -> float:
    """Covers subnormal inputs and partial sums flushed to zero (each below 2^-126 in size)."""
    return 4.0 * dim * 2.0**-126


def amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix products about 17x its float32 rate)."""
    supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(supported is not None and supported())


def hardware_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16 dot products)."""
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return amx() or bool(avx is not None and avx())


def screen_by_default() -> bool:
    """Where the screen is on unless ``topk.SCREEN_BF16`` says otherwise: CPUs with AMX."""
    return amx()


def _item_side(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """bf16 copy, norms (in float64, so that no square underflows) and whether the copy is finite
    of the item table, cached for the last table seen (an evaluation ranks every batch against the same table)."""
    key = (items.data_ptr(), items._version, tuple(items.shape), tuple(items.stride()))
    ref = _cache.get("ref")
    if ref is not None and ref() is items and _cache.get("key") == key:
        return _cache["bf16"], _cache["norms"], _cache["finite"]  # type: ignore[return-value]
    bf16, norms = items.to(torch.bfloat16), torch.linalg.vector_norm(items, dim=1, dtype=torch.float64)
    finite = bool(torch.isfinite(bf16).all())
    _cache.clear()
    _cache.update(ref=weakref.ref(items, _forget), key=key, bf16=bf16, norms=norms, finite=finite)
    return bf16, norms, finite


def _forget(ref: weakref.ref) -> None:
    """Drop the cached copy once its table is gone (not a later table's)."""
    if _cache.get("ref") is ref:
        _cache.clear()


def _round_down_bf16(values: torch.Tensor) -> torch.Tensor:
    """bf16 values at most ``values`` (float64): lowered by 2^-7 of their size (twice bf16's
    rounding) first, so that rounding to nearest cannot move them above the original."""
    return (values - values.abs() * 2.0**-7 - 2.0**-120).to(torch.bfloat16)


def screened_topk(queries: torch.Tensor, items: torch.Tensor, k: int, exclusion, exact, *, tile: int = TILE, max_candidates: int = MAX_CANDIDATES):
    """The float32 top-K of ``queries`` (B, d) against ``items`` (N, d), both float32 on the CPU.

    ``exclusion`` is a :class:`diffrec.kernels.topk.Exclusion`; ``exact(rows)`` computes the
    float32 top-K of the given query rows another way (for rows with more than ``max_candidates``
    candidates, and for inputs whose products could leave bf16's or float32's range). Returns ``(scores, ids)`` in canonical order.
    """
    from .topk import canonical_order

    n_queries, dim = queries.shape
    n_items = items.shape[0]
    items_bf16, item_norms, items_finite = _item_side(items)
    queries_bf16 = queries.to(torch.bfloat16)
    if not (items_finite and bool(torch.isfinite(queries_bf16).all())):
        return exact(torch.arange(n_queries))
    factor, slack = bound_factor(dim), absolute_slack(dim)
    query_norms = torch.linalg.vector_norm(queries, dim=1, dtype=torch.float64)  # (B,); bounds are float64 throughout
    if float(query_norms.max()) * float(item_norms.max()) * (1 + factor) >= 2.0**127:  # a partial sum could overflow
        return exact(torch.arange(n_queries))
    lower = torch.full((n_queries,), float("-inf"), dtype=torch.float64)  # (B,) at most the k-th float32 score
    found_rows, found_ids, found_scores = [], [], []
    queries_t = queries_bf16.T  # (d, B)
    for start in range(0, n_items, tile):
        stop = min(n_items, start + tile)
        size = stop - start
        groups = -(-size // GROUP)
        # items x queries, so that the maxima over groups of GROUP items reduce along whole rows
        scores = torch.empty((groups * GROUP, n_queries), dtype=torch.bfloat16)
        torch.mm(items_bf16[start:stop], queries_t, out=scores[:size])  # (c, B) bf16
        scores[size:] = float("-inf")
        exclusion.mask_chunk(scores[:size].T, start)
        group_max = scores.view(groups, GROUP, n_queries).amax(dim=1)  # (G, B)
        reach = factor * query_norms * item_norms[start:stop].max() + slack  # (B,) |s~ - r| on this tile
        if groups >= k:  # the k best groups hold k items scoring at least their k-th maximum, so k float32 scores >= it - reach
            lower = torch.maximum(lower, torch.topk(group_max.T, k, dim=1).values[:, -1].double() - reach)
        threshold = _round_down_bf16(lower - reach)  # (B,) an item below it cannot reach the top-K
        group, query = (group_max >= threshold[None, :]).nonzero(as_tuple=True)  # (P,) groups that may hold one
        members = group[:, None] * GROUP + torch.arange(GROUP)  # (P, GROUP) item offsets in the tile
        values = scores[members, query[:, None]]  # (P, GROUP)
        hit = values >= threshold[query, None]
        found_rows.append(query[:, None].expand(-1, GROUP)[hit])
        found_ids.append(members[hit] + start)
        found_scores.append(values[hit].double())
    rows, ids, screen = torch.cat(found_rows), torch.cat(found_ids), torch.cat(found_scores)
    finite = torch.isfinite(screen)
    rows, ids, screen = rows[finite], ids[finite], screen[finite]
    bound = factor * query_norms[rows] * item_norms[ids] + slack
    # a tighter lower bound from the candidates' own bounds: the k-th largest s~ - b of any k items
    (low,), _ = _by_row(rows, n_queries, float("-inf"), screen - bound)
    lower = torch.maximum(lower, torch.topk(low, k, dim=1).values[:, -1])
    keep = screen + bound >= lower[rows]
    rows, ids = rows[keep], ids[keep]

    counts = torch.bincount(rows, minlength=n_queries)  # (B,) >= k each
    out_v = torch.empty((n_queries, k), dtype=queries.dtype)
    out_i = torch.empty((n_queries, k), dtype=torch.int64)
    crowded = counts > max_candidates
    settled = (~crowded).nonzero().squeeze(1)
    if settled.numel():
        inside = ~crowded[rows]
        (chosen,), valid = _by_row(rows[inside], n_queries, 0, ids[inside])  # (B, W) candidate ids per query
        rows_per_step = max(1, _RESCORE_ELEMENTS // max(1, chosen.shape[1] * dim))
        for lo in range(0, settled.numel(), rows_per_step):
            step = settled[lo : lo + rows_per_step]
            block_ids, block_valid = chosen[step], valid[step]
            exact_scores = torch.bmm(items[block_ids], queries[step, :, None]).squeeze(2)  # (s, W) float32
            exact_scores = exact_scores.masked_fill(~block_valid, float("-inf"))
            top_v, top_i = canonical_order(exact_scores, block_ids)  # ties by lower id; padding last
            out_v[step], out_i[step] = top_v[:, :k], top_i[:, :k]
    if bool(crowded.any()):
        step = crowded.nonzero().squeeze(1)
        out_v[step], out_i[step] = exact(step)
    return out_v, out_i


def _by_row(rows: torch.Tensor, n_rows: int, fill: float, *columns: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Flat entries (``rows`` and their ``columns``) laid out as (n_rows, W) matrices, one row per
    query, padded with ``fill``; also the (n_rows, W) mask of real entries."""
    order = torch.sort(rows, stable=True).indices
    rows = rows[order]
    counts = torch.bincount(rows, minlength=n_rows)
    width = int(counts.max()) if rows.numel() else 0
    slot = torch.arange(rows.numel()) - (torch.cumsum(counts, 0) - counts)[rows]  # position within its row
    valid = torch.zeros((n_rows, width), dtype=torch.bool)
    valid[rows, slot] = True
    out = []
    for column in columns:
        matrix = torch.full((n_rows, width), fill, dtype=column.dtype)
        matrix[rows, slot] = column[order]
        out.append(matrix)
    return out, valid
