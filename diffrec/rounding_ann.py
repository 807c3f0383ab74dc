"""Approximate rounding through FAISS: inner-product search over the catalogue without scoring every item.

``faiss_ivf`` clusters the item table into ``nlist`` cells (k-means) and searches the
``nprobe`` cells nearest each query; ``faiss_hnsw`` walks a navigable small-world graph of
``M`` links per item, exploring ``ef_search`` candidates. Both rank only what they retrieve:
``topk`` returns the approximate top K, and ``scores`` gives the retrieved items (the
``depth`` best found) their exact inner product and every other item -inf, so that an
evaluation measures what the approximate search would recommend. The index is built on
first use and rebuilt when the table changes. Exact search (``inner_product``) stays the
default; :func:`recall_at_k` measures an index against it.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch

from diffrec.errors import ConfigError
from diffrec.registry import register


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:  # pragma: no cover (a dependency of the package)
        raise ConfigError("the faiss roundings need the faiss-cpu package") from None
    return faiss


class _FaissRounding:
    """Shared index caching and search; subclasses build the index."""

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self._index: Any = None
        self._key: tuple | None = None

    def _build(self, items: np.ndarray) -> Any:  # pragma: no cover
        raise NotImplementedError

    def index(self, item_weight: torch.Tensor) -> Any:
        """The index of the items 1..N (padding left out), rebuilt when the table changes."""
        table = item_weight.detach().float().cpu()
        key = (table.data_ptr(), tuple(table.shape), float(table[1:].sum()))
        if self._index is None or self._key != key:
            self._index = self._build(np.ascontiguousarray(table[1:].numpy()))
            self._key = key
        return self._index

    def search(self, x0: torch.Tensor, item_weight: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate (scores, ids) of the k best items 1..N per row; missing slots are (-inf, 0)."""
        scores, ids = self.index(item_weight).search(np.ascontiguousarray(x0.detach().float().cpu().numpy()), k)
        ids = torch.from_numpy(ids.astype(np.int64)) + 1  # faiss counts from 0 without the padding row
        scores = torch.from_numpy(scores)
        missing = ids <= 0
        return scores.masked_fill(missing, float("-inf")).to(x0.device), ids.masked_fill(missing, 0).to(x0.device)

    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
        """Exact inner products of the ``depth`` retrieved items; -inf elsewhere: (B, N + 1)."""
        depth = min(self.depth, item_weight.shape[0] - 1)
        _, ids = self.search(x0, item_weight, depth)
        out = torch.full((x0.shape[0], item_weight.shape[0]), float("-inf"), dtype=x0.dtype, device=x0.device)
        exact = (x0[:, None, :] * item_weight[ids]).sum(-1)  # (B, depth)
        out.scatter_(1, ids, torch.where(ids > 0, exact, torch.full_like(exact, float("-inf"))))
        out[:, 0] = x0 @ item_weight[0]  # the padding column as every rounding gives it (the evaluator masks it)
        return out

    def topk(self, x0: torch.Tensor, item_weight: torch.Tensor, k: int, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores(x0, item_weight)
        scores[:, 0] = float("-inf")
        scores.scatter_(1, exclude, float("-inf"))
        return torch.topk(scores, k, dim=1)


@register("rounding", "faiss_ivf")
class FaissIVFRounding(_FaissRounding):
    """Approximate inner-product search with a FAISS inverted-file index (k-means cells)."""

    def __init__(
        self,
        *,
        nlist: Annotated[int, "k-means cells of the index"] = 256,
        nprobe: Annotated[int, "cells searched per query"] = 16,
        depth: Annotated[int, "items retrieved per query (the approximate candidates)"] = 100,
    ) -> None:
        super().__init__(depth)
        if nlist < 1 or not 1 <= nprobe <= nlist:
            raise ConfigError(f"rounding faiss_ivf: need nlist >= 1 and 1 <= nprobe <= nlist, got {nlist}, {nprobe}")
        self.nlist, self.nprobe = nlist, nprobe

    def _build(self, items: np.ndarray) -> Any:
        faiss = _faiss()
        nlist = min(self.nlist, len(items))
        quantizer = faiss.IndexFlatIP(items.shape[1])
        index = faiss.IndexIVFFlat(quantizer, items.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(items)
        index.add(items)
        index.nprobe = min(self.nprobe, nlist)
        return index


@register("rounding", "faiss_hnsw")
class FaissHNSWRounding(_FaissRounding):
    """Approximate inner-product search with a FAISS HNSW graph."""

    def __init__(
        self,
        *,
        M: Annotated[int, "graph links per item"] = 32,
        ef_search: Annotated[int, "candidates explored per query"] = 128,
        ef_construction: Annotated[int, "candidates explored while building"] = 80,
        depth: Annotated[int, "items retrieved per query (the approximate candidates)"] = 100,
    ) -> None:
        super().__init__(depth)
        if M < 2 or ef_search < 1 or ef_construction < 1:
            raise ConfigError(f"rounding faiss_hnsw: need M >= 2, ef_search >= 1, ef_construction >= 1, got {M}, {ef_search}, {ef_construction}")
        self.M, self.ef_search, self.ef_construction = M, ef_search, ef_construction

    def _build(self, items: np.ndarray) -> Any:
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(items.shape[1], self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.add(items)
        index.hnsw.efSearch = max(self.ef_search, self.depth)
        return index


def recall_at_k(rounding: _FaissRounding, queries: torch.Tensor, item_weight: torch.Tensor, k: int) -> float:
    """The share of the exact top k (padding left out) that the approximate search returns."""
    exact = torch.topk((queries @ item_weight[1:].t()), k, dim=1).indices + 1
    _, found = rounding.search(queries, item_weight, k)
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact, found))
    return hits / (k * len(queries))
