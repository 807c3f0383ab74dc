"""Small building blocks shared by the models."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """Inverted dropout with the mask drawn as ``uniform < 1 - p``.

    The same distribution as :class:`torch.nn.Dropout` (an i.i.d. Bernoulli(1 - p)
    mask, kept values scaled by 1 / (1 - p)), drawn about twice as fast on the CPU,
    where ``bernoulli_`` is much slower than ``rand``; DiffuRec applies seven
    dropouts per Transformer block, so this is a large share of a training step.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = 1.0 - self.p
        mask = (torch.rand_like(x) < keep).to(x.dtype).mul_(1.0 / keep)
        return x * mask
