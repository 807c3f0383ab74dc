"""Inner-product top-K over a whole item catalogue ("rounding" in DiffuRec) without a B×N score matrix.

Contract shared by both backends:

* ``scores, indices = inner_product_topk(queries, items, k)`` returns, for every query, the
  ``k`` largest ``q·e`` over the rows of ``items``, sorted descending; equal scores are
  ordered by the lower item index first, and an item tied with the k-th score is kept only if
  it has a lower index than the tied items left out. "Equal" refers to the scores as computed
  by the backend (matmul rounding may differ in the last bits between backends).
* ``exclude`` removes item ids from the candidates:

  - ``None``: nothing excluded;
  - an ``int`` or a 1-D integer tensor: ids excluded for every query (e.g. ``0`` = padding);
  - a 2-D integer tensor of shape (B, L): row ``b`` lists ids excluded for query ``b`` only,
    padded freely (e.g. a user's history padded with ``0``, which then excludes item 0 too).

  Negative ids are ignored (use ``-1`` as padding that excludes nothing); ids ``>= N`` raise
  :class:`~diffrec.kernels.dispatch.KernelInputError`. To combine shared and per-query ids,
  concatenate them as extra columns of the 2-D form.
* If a query has fewer than ``k`` allowed items, :class:`KernelInputError` (a ValueError) is
  raised before any work is done. Scores must be finite (NaN/inf give unspecified results).

The PyTorch twin (``backend="torch"``) uses faiss' exhaustive inner-product search for float32
CPU tensors when faiss is importable (it never writes the score matrix and measured faster
than any chunked PyTorch variant on CPU); faiss breaks ties differently, so the twin asks faiss
for ``k + 1`` results and recomputes, exactly, every query whose k-th and (k+1)-th scores
are equal. Other dtypes/devices use a chunked matmul with a running top-K (memory O(B·chunk)).
faiss' speed collapses when other processes keep the cores busy (see benchmarks/RESULTS.md);
``diffrec.kernels.topk.USE_FAISS = False`` switches the float32 CPU path to the chunked matmul.
On CPUs with AMX, float32 queries are first screened in bf16 and only the
candidates that an error bound cannot rule out are rescored in float32
(:mod:`diffrec.kernels.topk_screen`; the result is the float32 top-K, ties as above;
``SCREEN_BF16`` switches it).
"""

from __future__ import annotations

import torch

from .dispatch import (
    KernelInputError,
    autocast_disabled,
    autocast_lower,
    check_float_tensor,
    check_int,
    check_same,
    resolve_backend,
)

_OP = "inner_product_topk"
_CHUNK_ELEMENTS = 1 << 22  # B·chunk scores per step of the chunked twin (16 MiB in float32)
TRITON_MAX_K = 256
USE_FAISS = True  # set False to make the float32 CPU twin use the chunked matmul instead of faiss
#: the exact bf16 screen for float32 CPU top-K: None = where the CPU has AMX (for 16 or more
#: queries), True = always, False = never
SCREEN_BF16: bool | None = None
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------
# exclusion
# --------------------------------------------------------------------------------------------


class Exclusion:
    """Normalised ``exclude`` argument.

    Attributes:
        shared: sorted unique ids (M,) excluded for every query, or None.
        per_query: (B, L) int64 ids per query (negative = ignored), or None.
        per_query_sorted: ``per_query`` sorted along dim 1, or None.
        max_excluded: the largest number of distinct excluded ids of any query.
        min_allowed: the smallest number of allowed items of any query.
    """

    def __init__(self, shared: torch.Tensor | None, per_query: torch.Tensor | None, n_items: int):
        self.shared = shared
        self.per_query = per_query
        self.per_query_sorted = None
        self.max_excluded = 0
        self.min_allowed = n_items
        self.worst_query: int | None = None  # a query with the fewest allowed items (per-query form)
        if shared is not None:
            self.max_excluded = int(shared.numel())
            self.min_allowed = n_items - self.max_excluded
        if per_query is not None:
            srt = torch.sort(per_query, dim=1).values  # (B, L)
            self.per_query_sorted = srt
            valid = srt >= 0
            distinct = valid.clone()
            distinct[:, 1:] &= srt[:, 1:] != srt[:, :-1]
            counts = distinct.sum(dim=1)  # (B,)
            if counts.numel():
                worst = int(counts.argmax())
                self.max_excluded = int(counts[worst])
                self.min_allowed = n_items - self.max_excluded
                self.worst_query = worst

    @property
    def empty(self) -> bool:
        return self.shared is None and self.per_query is None

    def rows(self, rows: torch.Tensor) -> Exclusion:
        """The exclusion restricted to a subset of queries."""
        sub = Exclusion.__new__(Exclusion)
        sub.shared = self.shared
        sub.per_query = None if self.per_query is None else self.per_query[rows]
        sub.per_query_sorted = None if self.per_query_sorted is None else self.per_query_sorted[rows]
        sub.max_excluded, sub.min_allowed, sub.worst_query = self.max_excluded, self.min_allowed, None
        return sub

    def mask_chunk(self, scores: torch.Tensor, start: int) -> None:
        """Set to -inf, in place, the excluded entries of ``scores`` (B, c) covering items [start, start + c)."""
        stop = start + scores.shape[1]
        if self.shared is not None:
            ids = self.shared[(self.shared >= start) & (self.shared < stop)]
            if ids.numel():
                scores[:, ids - start] = float("-inf")
        if self.per_query is not None:
            inside = (self.per_query >= start) & (self.per_query < stop)  # (B, L)
            rows, cols = inside.nonzero(as_tuple=True)
            if rows.numel():
                scores[rows, self.per_query[rows, cols] - start] = float("-inf")

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean (B, m): whether ``ids`` (B, m) are excluded for their query."""
        hit = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        if self.shared is not None and self.shared.numel():
            hit |= torch.isin(ids, self.shared)
        if self.per_query_sorted is not None and self.per_query_sorted.shape[1]:
            srt = self.per_query_sorted
            pos = torch.searchsorted(srt, ids).clamp_(max=srt.shape[1] - 1)
            hit |= srt.gather(1, pos) == ids
        return hit


def normalize_exclude(exclude: object, n_queries: int, n_items: int, device: torch.device) -> Exclusion:
    """Validate ``exclude`` and return an :class:`Exclusion` (see the module docstring for the forms)."""
    if exclude is None:
        return Exclusion(None, None, n_items)
    if isinstance(exclude, bool):
        raise KernelInputError(f"{_OP}: exclude must be None, an int or an integer tensor, got a bool")
    if isinstance(exclude, int):
        exclude = torch.tensor([exclude], dtype=torch.int64, device=device)
    if not isinstance(exclude, torch.Tensor):
        raise KernelInputError(f"{_OP}: exclude must be None, an int or an integer tensor, got {type(exclude).__name__}")
    if exclude.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise KernelInputError(f"{_OP}: exclude must hold integer ids, got dtype {exclude.dtype}")
    if exclude.device != device:
        raise KernelInputError(f"{_OP}: exclude is on {exclude.device} but queries are on {device}")
    exclude = exclude.to(torch.int64)
    if exclude.numel() and int(exclude.max()) >= n_items:
        raise KernelInputError(f"{_OP}: exclude holds id {int(exclude.max())} but there are only {n_items} items")
    if exclude.dim() <= 1:
        ids = exclude.reshape(-1)
        ids = torch.unique(ids[ids >= 0])  # sorted
        return Exclusion(ids if ids.numel() else None, None, n_items)
    if exclude.dim() == 2:
        if exclude.shape[0] != n_queries:
            raise KernelInputError(
                f"{_OP}: a 2-D exclude must have one row per query ({n_queries}), got shape {tuple(exclude.shape)}"
            )
        return Exclusion(None, exclude.contiguous(), n_items)
    raise KernelInputError(f"{_OP}: exclude must be 0-, 1- or 2-D, got shape {tuple(exclude.shape)}")


# --------------------------------------------------------------------------------------------
# PyTorch twin
# --------------------------------------------------------------------------------------------


def canonical_order(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by value descending, equal values by id ascending."""
    ids, order = torch.sort(ids, dim=1)
    values = values.gather(1, order)
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    return values, ids.gather(1, order)


def _chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-min(k, c) of ``scores`` (B, c) in canonical order, with local indices."""
    c = scores.shape[1]
    kk = min(k, c)
    if kk == c:
        return torch.sort(scores, dim=1, descending=True, stable=True)
    values, ids = torch.topk(scores, kk + 1, dim=1)  # (B, kk + 1), descending
    boundary_tie = values[:, kk] == values[:, kk - 1]  # the set of the top kk is ambiguous there
    values, ids = values[:, :kk].clone(), ids[:, :kk].clone()
    if bool(boundary_tie.any()):
        rows = boundary_tie.nonzero().squeeze(1)
        exact_v, exact_i = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        values[rows], ids[rows] = exact_v[:, :kk], exact_i[:, :kk]
    return canonical_order(values, ids)


def chunked_topk(
    queries: torch.Tensor, items: torch.Tensor, k: int, exclusion: Exclusion, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked matmul + running top-K; memory O(B·chunk). Exact tie rule."""
    n_queries, n_items = queries.shape[0], items.shape[0]
    if chunk is None:
        chunk = max(1024, min(1 << 16, _CHUNK_ELEMENTS // max(1, n_queries)))
    chunk = max(chunk, k)
    buffer = torch.empty((n_queries, min(chunk, n_items)), dtype=queries.dtype, device=queries.device)
    best_v = torch.empty((n_queries, 0), dtype=queries.dtype, device=queries.device)
    best_i = torch.empty((n_queries, 0), dtype=torch.int64, device=queries.device)
    for start in range(0, n_items, chunk):
        block = items[start : start + chunk]  # (c, d)
        scores = buffer[:, : block.shape[0]]  # (B, c)
        torch.matmul(queries, block.T, out=scores)
        exclusion.mask_chunk(scores, start)
        values, ids = _chunk_topk(scores, k)
        # running entries have lower ids than this chunk and both parts are canonical, so a
        # stable sort by value keeps the tie rule
        merged_v = torch.cat([best_v, values], dim=1)
        merged_i = torch.cat([best_i, ids + start], dim=1)
        merged_v, order = torch.sort(merged_v, dim=1, descending=True, stable=True)
        best_v, best_i = merged_v[:, :k], merged_i.gather(1, order[:, :k])
    return best_v, best_i


def _faiss_module():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


#: faiss searches batches of at least this many queries through BLAS (a matrix product, then the
#: top-K per row) and smaller ones query by query. faiss' own default moved to 128,000 queries,
#: which sends every batch down the query-by-query path: 5-7x slower at 512 queries on the CPUs
#: measured (benchmarks/RESULTS.md); BLAS wins from about 8-16 queries there.
FAISS_BLAS_MIN_QUERIES = 8


def _faiss_knn(faiss, queries, items, k: int):
    """``faiss.knn`` by inner product with BLAS for batches of ``FAISS_BLAS_MIN_QUERIES`` or more.
    faiss keeps the switch in a process-wide variable; it is restored after the call."""
    cvar = faiss.cvar
    default = cvar.distance_compute_blas_threshold
    cvar.distance_compute_blas_threshold = FAISS_BLAS_MIN_QUERIES
    try:
        return faiss.knn(queries, items, k, faiss.METRIC_INNER_PRODUCT)
    finally:
        cvar.distance_compute_blas_threshold = default


def faiss_topk(faiss, queries: torch.Tensor, items: torch.Tensor, k: int, exclusion: Exclusion):
    """float32 CPU top-K through faiss (exhaustive inner product); exact tie rule restored afterwards."""
    n_items = items.shape[0]
    wanted = min(n_items, k + exclusion.max_excluded + 1)
    dist, labels = _faiss_knn(faiss, queries.numpy(), items.numpy(), wanted)
    values, ids = torch.from_numpy(dist), torch.from_numpy(labels)  # (B, wanted), descending
    if not exclusion.empty:
        excluded = exclusion.contains(ids)  # (B, wanted)
        order = torch.sort(excluded.to(torch.int8), dim=1, stable=True).indices  # allowed first, order kept
        values = values.masked_fill(excluded, float("-inf")).gather(1, order)
        ids = ids.gather(1, order)
    top_v, top_i = values[:, :k].clone(), ids[:, :k].clone()
    if wanted > k:
        boundary_tie = values[:, k] == values[:, k - 1]
        if bool(boundary_tie.any()):
            rows = boundary_tie.nonzero().squeeze(1)
            exact_v, exact_i = chunked_topk(queries[rows], items, k, exclusion.rows(rows))
            top_v[rows], top_i[rows] = exact_v, exact_i
    return canonical_order(top_v, top_i)


def _screen(n_queries: int) -> bool:
    from .topk_screen import MIN_QUERIES, screen_by_default

    if SCREEN_BF16 is None:
        return n_queries >= MIN_QUERIES and screen_by_default()
    return bool(SCREEN_BF16)


def torch_topk(
    queries: torch.Tensor, items: torch.Tensor, k: int, exclusion: Exclusion
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch twin: for float32 on the CPU the bf16 screen where it pays (exact, see
    :mod:`diffrec.kernels.topk_screen`) or faiss when available; the chunked matmul otherwise."""
    queries, items = queries.detach(), items.detach()
    if queries.device.type == "cpu" and queries.dtype == torch.float32:
        queries, items = queries.contiguous(), items.contiguous()
        faiss = _faiss_module() if USE_FAISS else None

        def exact(rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            sub, sub_exclusion = (queries, exclusion) if rows is None else (queries[rows], exclusion.rows(rows))
            if faiss is not None:
                return faiss_topk(faiss, sub, items, k, sub_exclusion)
            return chunked_topk(sub, items, k, sub_exclusion)

        if _screen(queries.shape[0]):
            from .topk_screen import screened_topk

            return screened_topk(queries, items, k, exclusion, exact)
        return exact()
    return chunked_topk(queries, items, k, exclusion)


# --------------------------------------------------------------------------------------------
# public op
# --------------------------------------------------------------------------------------------


def inner_product_topk(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    *,
    exclude: int | torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest inner products of each query with all items.

    Args:
        queries: (B, d) float tensor.
        items: (N, d) float tensor, same dtype and device.
        k: 1 <= k <= number of allowed items of every query (Triton backend: k <= 256).
        exclude: ids to leave out; None, an int or 1-D tensor (all queries), or a (B, L) tensor
            (per query). Negative ids are ignored. See the module docstring.
        backend: ``"triton"``, ``"torch"`` or None (see :mod:`diffrec.kernels.dispatch`).

    Returns:
        ``(scores, indices)``: (B, k) scores in the dtype of ``queries`` (Triton accumulates in
        float32; fp32 follows ``torch.get_float32_matmul_precision()``, so on GPU "high" means
        TF32), and (B, k) int64 item indices, sorted by score descending, ties by lower index.
        Not differentiable (inputs are detached). Triton copies non-contiguous inputs. Under
        ``torch.autocast`` (for the device of ``queries``) float16/bfloat16/float32 inputs are
        first cast to the autocast dtype, as autocast does for ``queries @ items.T``; the
        scores are then in that dtype.

    Raises:
        KernelInputError (ValueError): mismatched shapes, dtypes or devices, ``k`` out of range,
            bad ``exclude``, or a query with fewer than ``k`` allowed items.
    """
    check_float_tensor("queries", queries, 2, _OP)
    check_float_tensor("items", items, 2, _OP)
    queries, items = autocast_lower(queries.detach(), items.detach())
    check_same(_OP, queries=queries, items=items)
    n_queries, dim = queries.shape
    n_items = items.shape[0]
    if items.shape[1] != dim:
        raise KernelInputError(f"{_OP}: queries have d={dim} but items have d={items.shape[1]}")
    k = check_int(_OP, "k", k, low=1)
    if k > n_items:
        raise KernelInputError(f"{_OP}: k={k} is larger than the number of items N={n_items}")
    exclusion = normalize_exclude(exclude, n_queries, n_items, queries.device)
    if n_queries and exclusion.min_allowed < k:
        where = "every query" if exclusion.worst_query is None else f"query {exclusion.worst_query}"
        raise KernelInputError(
            f"{_OP}: {where} has only {exclusion.min_allowed} allowed items after exclusion, fewer than k={k}"
        )
    chosen = resolve_backend(backend, queries.device, queries.dtype, op=_OP, triton_dtypes=TRITON_DTYPES)
    if n_queries == 0:
        return queries.new_empty((0, k)), torch.empty((0, k), dtype=torch.int64, device=queries.device)
    with autocast_disabled(queries.device):
        if chosen == "triton":
            if k > TRITON_MAX_K:
                raise KernelInputError(
                    f"{_OP}: the Triton kernel supports k <= {TRITON_MAX_K}, got {k}; use backend='torch'"
                )
            from ._triton_topk import triton_topk

            return triton_topk(queries, items, k, exclusion)
        return torch_topk(queries, items, k, exclusion)
