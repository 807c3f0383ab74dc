"""Rounding: map a continuous x0 to item scores (paper Eq. 21; "w R*" ablation in Table 3).

A ``rounding`` part scores every item id: ``scores(x0 (B, d), item_weight (N + 1, d)) -> (B, N + 1)``;
ranking items by these scores is the recommendation.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from diffrec.registry import register


@runtime_checkable
class Rounding(Protocol):
    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor: ...


@register("rounding", "inner_product")
class InnerProductRounding:
    """Score = x0 . e_i (DiffuRec's rounding)."""

    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
        return x0 @ item_weight.t()  # (B, N + 1)


@register("rounding", "l2")
class L2Rounding:
    """Score = -||x0 - e_i||^2 (the Diffusion-LM rounding, the paper's "w R*" ablation)."""

    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
        sq = x0.pow(2).sum(-1, keepdim=True) + item_weight.pow(2).sum(-1).unsqueeze(0) - 2.0 * (x0 @ item_weight.t())
        return -sq.clamp_min(0.0)  # (B, N + 1)


@register("rounding", "cosine")
class CosineRounding:
    """Score = cos(x0, e_i)."""

    def scores(self, x0: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
        return F.normalize(x0, dim=-1) @ F.normalize(item_weight, dim=-1).t()  # (B, N + 1)
