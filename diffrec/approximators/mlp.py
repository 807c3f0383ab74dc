"""An MLP approximator: the last position alone, through a two-layer feed-forward network."""

from __future__ import annotations

import torch
from torch import nn

from diffrec.approximators.base import Approximator
from diffrec.config import ModelConfig
from diffrec.registry import register


@register("approximator", "mlp")
class MLPApproximator(Approximator):
    """Feed-forward network on the last (noised) history position; no sequence modelling."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.net = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Dropout(config.dropout), nn.Linear(4 * d, d))

    causal = True  # each position alone

    def forward(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        last = z[:, -1, :]  # (B, d)
        return last + self.net(last)

    def all_positions(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        return z + self.net(z)  # (B, L, d)
