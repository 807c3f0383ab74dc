"""Ranking metrics for full-catalogue, single-target evaluation.

The rank of the target is the number of items scored above it, plus the
number of items with an equal score and a lower id (ties are broken by the
lower id, deterministically). With 0-based rank r:

- HR@K   = 1 if r < K
- NDCG@K = 1 / log2(r + 2) if r < K (one relevant item, so the ideal DCG is 1)
- MRR@K  = 1 / (r + 1) if r < K
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

METRIC_NAMES = ("HR", "NDCG", "MRR")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among all columns: scores (B, N), targets (B,) -> (B,) long."""
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    higher = (scores > target_scores).sum(1)
    ids = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = ((scores == target_scores) & (ids < targets[:, None])).sum(1)
    return higher + tied_before


def metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int]) -> dict[str, torch.Tensor]:
    """Per-example metric values (B,) for every K: keys like "HR@10"."""
    ranks = ranks.to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = hit.to(torch.float64)
        out[f"NDCG@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        out[f"MRR@{k}"] = torch.where(hit, 1.0 / (ranks + 1.0), torch.zeros_like(ranks))
    return out


def metric_keys(ks: Iterable[int]) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in METRIC_NAMES]

