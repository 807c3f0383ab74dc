"""Full-catalogue ranking without a users x items matrix: the target's rank streamed over item tiles.

The rank of a target is the number of items scored above it, plus the items tied with it
that have a lower id (:func:`diffrec.metrics.target_ranks`). With scores that are inner
products of queries (B, d) and an item table (N + 1, d), both counts accumulate tile by
tile, so memory is B x tile whatever the catalogue's size. The target's own column never
counts against it; excluded items (a user's history, with ``exclude_history``) are scored
one by one and taken off the counts.
"""

from __future__ import annotations

import torch


def streamed_ranks(
    queries: torch.Tensor,
    table: torch.Tensor,
    targets: torch.Tensor,
    *,
    skip_padding: bool = True,
    exclude: list[list[int]] | None = None,
    tile: int = 65536,
) -> torch.Tensor:
    """0-based target ranks (B,) among the ids 1..N (0..N with ``skip_padding=False``), as
    :func:`diffrec.metrics.target_ranks` gives them on the dense scores."""
    B = queries.shape[0]
    start = 1 if skip_padding else 0
    target_scores = (queries * table[targets]).sum(-1)  # (B,)
    higher = torch.zeros(B, dtype=torch.long, device=queries.device)
    tied = torch.zeros_like(higher)
    for lo in range(start, table.shape[0], tile):
        hi = min(lo + tile, table.shape[0])
        scores = queries @ table[lo:hi].t()  # (B, tile)
        ids = torch.arange(lo, hi, device=queries.device)[None, :]  # (1, tile)
        other = ids != targets[:, None]
        higher += ((scores > target_scores[:, None]) & other).sum(1)
        tied += ((scores == target_scores[:, None]) & (ids < targets[:, None])).sum(1)
    if exclude is not None:
        higher, tied = _without_excluded(queries, table, targets, target_scores, higher, tied, exclude, start)
    return higher + tied


def _without_excluded(queries, table, targets, target_scores, higher, tied, exclude, start):
    """Take excluded items off the counts; a target that is itself excluded ranks after every allowed item."""
    width = max((len(h) for h in exclude), default=0)
    if width == 0:
        return higher, tied
    ids = torch.full((len(exclude), width), -1, dtype=torch.long)
    for row, items in enumerate(exclude):
        unique = sorted(set(items))
        ids[row, : len(unique)] = torch.as_tensor(unique, dtype=torch.long)
    ids = ids.to(queries.device)
    valid = (ids >= start) & (ids < table.shape[0])  # (B, W)
    scores = (queries[:, None, :] * table[ids.clamp(min=0)]).sum(-1)  # (B, W)
    other = valid & (ids != targets[:, None])
    higher = higher - ((scores > target_scores[:, None]) & other).sum(1)
    tied = tied - ((scores == target_scores[:, None]) & other & (ids < targets[:, None])).sum(1)
    target_excluded = (valid & (ids == targets[:, None])).any(1)
    if target_excluded.any():  # its score is -inf: every allowed item is above it, the -inf ids below it tie
        allowed = table.shape[0] - start - valid.sum(1)
        tied_before = (valid & (ids < targets[:, None])).sum(1) + (start if start else 0) * (targets > 0).long()
        higher = torch.where(target_excluded, allowed, higher)
        tied = torch.where(target_excluded, tied_before, tied)
    return higher, tied
