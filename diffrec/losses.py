"""Training losses on the reconstructed target x0_hat (paper Sec. 4.2.5).

A ``loss`` part is called as ``loss(x0_hat, item_weight, targets)`` with
x0_hat (B, d), the item-embedding table (N + 1, d) and target ids (B,), and
returns the per-example loss (B,) so that timestep samplers can reweight and
learn from it. A loss that can only return the batch mean sets
``per_example = False`` and cannot be combined with a learning sampler.

The cross-entropy over a catalogue larger than :data:`FUSE_ABOVE` items is computed by the fused
linear cross-entropy (:func:`diffrec.kernels.linear_cross_entropy`), which never holds the
B x (N + 1) logits; below it, by the plain ``x0_hat @ E.T`` of the paper's Eq. 19-20.
"""

from __future__ import annotations

from typing import Annotated, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from diffrec.kernels import linear_cross_entropy
from diffrec.registry import register


@runtime_checkable
class Loss(Protocol):
    per_example: bool

    def __call__(self, x0_hat: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


#: catalogues (rows of the item table) larger than this train the ``ce`` loss through the fused kernel
FUSE_ABOVE = 200_000


def fused_cross_entropy(x0_hat: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor, over_padding: bool, backend: str | None) -> torch.Tensor:
    """Per-example softmax cross-entropy of x0_hat . e_i without the B x (N + 1) logits."""
    if over_padding:
        return linear_cross_entropy(x0_hat, item_weight, targets, reduction="none", backend=backend)  # (B,)
    return linear_cross_entropy(x0_hat, item_weight[1:], targets - 1, reduction="none", backend=backend)  # (B,)


@register("loss", "ce")
class CrossEntropyLoss:
    """Softmax cross-entropy of x0_hat . e_i over the whole catalogue (Eq. 19-20); fused above 200,000 items."""

    per_example = True

    def __init__(
        self,
        over_padding: bool = True,
        backend: str | None = None,
        *,
        fused: Annotated[Literal["auto", "always", "never"], "the fused kernel (no B x N logits): auto = above 200,000 items"] = "auto",
    ) -> None:
        #: the public code's softmax also covers the padding id 0
        self.over_padding = over_padding
        self.backend = backend
        self.fused = fused

    def __call__(self, x0_hat: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.fused == "always" or (self.fused == "auto" and item_weight.shape[0] > FUSE_ABOVE):
            return fused_cross_entropy(x0_hat, item_weight, targets, self.over_padding, self.backend)
        logits = x0_hat @ item_weight.t()  # (B, N + 1)
        if not self.over_padding:
            logits = logits.clone()
            logits[:, 0] = float("-inf")
        return F.cross_entropy(logits, targets, reduction="none")  # (B,)


@register("loss", "mse")
class MSELoss:
    """Regression of x0_hat to the target embedding: mean over d of (x0_hat - e_target)^2."""

    per_example = True

    def __init__(self, over_padding: bool = True) -> None:
        del over_padding

    def __call__(self, x0_hat: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (x0_hat - item_weight[targets]).pow(2).mean(-1)  # (B,)


@register("loss", "cosine")
class CosineErrorLoss:
    """Squared cosine error (cos(x0_hat, e_target) - 1)^2: direction only (PreferDiff's best reconstruction error)."""

    per_example = True

    def __call__(self, x0_hat: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (F.cosine_similarity(x0_hat, item_weight[targets], dim=-1) - 1.0).pow(2)  # (B,)


@register("loss", "ce_fused")
class FusedCrossEntropyLoss:
    """The ``ce`` loss always through the fused linear cross-entropy kernel: no B x (N + 1) logits."""

    per_example = True

    def __init__(self, over_padding: bool = True, backend: str | None = None) -> None:
        self.over_padding = over_padding
        self.backend = backend

    def __call__(self, x0_hat: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return fused_cross_entropy(x0_hat, item_weight, targets, self.over_padding, self.backend)  # (B,)
