"""Rounding: map a continuous x0 to item scores (paper Eq. 21; "w R*" ablation in Table 3).

A ``rounding`` part scores every item id: ``scores(x0 (B, d), item_weight (N + 1, d)) -> (B, N + 1)``;
ranking items by these scores is the recommendation. ``topk`` returns the K best
ids directly; the inner-product rounding streams it through the top-K kernel
without a B x N score matrix.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from diffrec.kernels import inner_product_topk
from diffrec.registry import register


@runtime_checkable
class Rounding(Protocol):
    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor: ...

    def topk(self, x0: torch.Tensor, item_weight: torch.Tensor, k: int, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def as_inner_product(self, x0: torch.Tensor, item_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries (B, d'), table (N + 1, d')) whose inner products rank items as ``scores`` does,
        so that evaluation can stream over item tiles instead of building (B, N + 1)."""
        ...


class _DenseTopK:
    """top-K from the full score matrix; ``exclude`` (B, L) ids (0 = padding, always excluded)."""

    def topk(self, x0: torch.Tensor, item_weight: torch.Tensor, k: int, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores(x0, item_weight)  # type: ignore[attr-defined]
        scores[:, 0] = float("-inf")
        scores.scatter_(1, exclude, float("-inf"))
        return torch.topk(scores, k, dim=1)


@register("rounding", "inner_product")
class InnerProductRounding:
    """Score = x0 . e_i (DiffuRec's rounding)."""

    def __init__(self, backend: str | None = None) -> None:
        self.backend = backend

    def topk(self, x0: torch.Tensor, item_weight: torch.Tensor, k: int, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padded = torch.nn.functional.pad(exclude, (1, 0))  # (B, L + 1): id 0 (padding) is never recommended
        return inner_product_topk(x0.contiguous(), item_weight.detach().contiguous(), k, exclude=padded, backend=self.backend)

    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
        return x0 @ item_weight.t()  # (B, N + 1)

    def as_inner_product(self, x0: torch.Tensor, item_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x0, item_weight


@register("rounding", "l2")
class L2Rounding(_DenseTopK):
    """Score = -||x0 - e_i||^2 (the Diffusion-LM rounding, the paper's "w R*" ablation)."""

    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
        sq = x0.pow(2).sum(-1, keepdim=True) + item_weight.pow(2).sum(-1).unsqueeze(0) - 2.0 * (x0 @ item_weight.t())
        return -sq.clamp_min(0.0)  # (B, N + 1)

    def as_inner_product(self, x0: torch.Tensor, item_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-||x - e||^2 ranks as x . e - ||e||^2 / 2 = [x, 1] . [e, -||e||^2 / 2]."""
        ones = torch.ones_like(x0[:, :1])
        return torch.cat([x0, ones], -1), torch.cat([item_weight, -0.5 * item_weight.pow(2).sum(-1, keepdim=True)], -1)


@register("rounding", "cosine")
class CosineRounding(_DenseTopK):
    """Score = cos(x0, e_i)."""

    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
        return F.normalize(x0, dim=-1) @ F.normalize(item_weight, dim=-1).t()  # (B, N + 1)

    def as_inner_product(self, x0: torch.Tensor, item_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(x0, dim=-1), F.normalize(item_weight, dim=-1)
