"""Sampled-negative losses: the native objectives of SASRec, Caser (``bce``) and GRU4Rec, STOSA (``bpr``).

Both follow the ``loss`` contract of :mod:`diffrec.losses`: called as
``loss(x0_hat, item_weight, targets)`` with a representation (B, d), the item
table (N + 1, d) and target ids (B,), they return the per-example loss (B,).
Any model can use them, DiffuRec included. Each example gets one negative id
drawn uniformly from ``1..N`` without the target (never padding, never the
target); scores are inner products ``s = x0_hat . e``:

- ``bce``: ``-log sigma(s+) - log(1 - sigma(s-))`` (SASRec, Kang & McAuley 2018);
- ``bpr``: ``-log sigma(s+ - s-)`` (Rendle et al. 2009; GRU4Rec's BPR ranking loss).

Callers that need the negatives themselves (STOSA's regulariser) draw them with
:func:`sample_negatives` and pass them as ``negatives=``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffrec.errors import ConfigError
from diffrec.registry import register


def sample_negatives(targets: torch.Tensor, num_items: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per target, uniform over ``{1..N} \\ {target}``: (B,) -> (B,)."""
    if num_items < 2:
        raise ConfigError(f"negative sampling needs at least 2 items, got {num_items}")
    r = torch.randint(1, num_items, targets.shape, device=targets.device, generator=generator)  # 1..N-1
    return r + (r >= targets).long()  # skip the target: uniform over the other N - 1 ids


class SampledLoss:
    """Scores the target and one sampled negative; subclasses turn (s+, s-) into a loss."""

    per_example = True

    def __call__(self, x0_hat: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        if negatives is None:
            negatives = sample_negatives(targets, item_weight.shape[0] - 1)
        pos = (x0_hat * item_weight[targets]).sum(-1)  # (B,)
        neg = (x0_hat * item_weight[negatives]).sum(-1)  # (B,)
        return self.from_scores(pos, neg)

    def from_scores(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@register("loss", "bce")
class SampledBCELoss(SampledLoss):
    """Binary cross-entropy with one uniform negative per target (SASRec, Caser)."""

    def from_scores(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return F.softplus(-pos) + F.softplus(neg)  # -log sigma(s+) - log(1 - sigma(s-)), (B,)


@register("loss", "bpr")
class SampledBPRLoss(SampledLoss):
    """Bayesian personalised ranking with one uniform negative per target (GRU4Rec, STOSA)."""

    def from_scores(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return F.softplus(neg - pos)  # -log sigma(s+ - s-), (B,)
