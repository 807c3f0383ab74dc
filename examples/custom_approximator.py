"""A new approximator written outside the package, registered by one decorator.

Train it from the command line:

    diffrec train --plugin examples/custom_approximator.py --approximator conv --out runs/conv

or from Python by importing this module before building a RunConfig that names it.
"""

from __future__ import annotations

import torch
from torch import nn

from diffrec import ModelConfig, register
from diffrec.approximators import Approximator


@register("approximator", "conv")
class ConvApproximator(Approximator):
    """Causal 1-D convolutions over the noised history (a Caser/NextItNet-flavoured approximator)."""

    def __init__(self, config: ModelConfig, kernel_size: int = 3) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.kernel_size = kernel_size
        self.convs = nn.ModuleList(nn.Conv1d(d, d, kernel_size) for _ in range(config.num_blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(config.num_blocks))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        h = z * mask.unsqueeze(-1)  # (B, L, d): padding contributes nothing, so trimming is exact
        for conv, norm in zip(self.convs, self.norms):
            x = nn.functional.pad(norm(h).transpose(1, 2), (self.kernel_size - 1, 0))  # (B, d, L + k - 1), causal
            h = h + self.dropout(torch.relu(conv(x))).transpose(1, 2) * mask.unsqueeze(-1)
        return h[:, -1, :]  # (B, d)
