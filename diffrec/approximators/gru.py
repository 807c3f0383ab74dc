"""A GRU approximator (the paper's "w GRU" ablation, Table 3)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from diffrec.approximators.base import Approximator
from diffrec.config import ModelConfig
from diffrec.registry import register


def left_to_right_padded(z: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Move each row's last ``length`` positions to the front: (B, L, d) -> (B, L, d)."""
    B, L, _ = z.shape
    offsets = (L - lengths).unsqueeze(1)  # (B, 1)
    idx = (torch.arange(L, device=z.device).unsqueeze(0) + offsets) % L  # (B, L)
    return z.gather(1, idx.unsqueeze(-1).expand_as(z))


@register("approximator", "gru")
class GRUApproximator(Approximator):
    """Stacked GRU over the real items only (padding is packed away, so trimming is exact)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.gru = nn.GRU(d, d, num_layers=config.num_blocks, batch_first=True, dropout=config.dropout if config.num_blocks > 1 else 0.0)

    causal = True  # a left-to-right recurrence

    def forward(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        _, h_n = self.gru(self._packed(z, mask))  # (layers, B, d)
        return h_n[-1]

    def all_positions(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        """The top layer's state after each real item, back in the left-padded layout (zeros at padding): (B, L, d)."""
        B, L, _ = z.shape
        out, _ = pad_packed_sequence(self.gru(self._packed(z, mask))[0], batch_first=True, total_length=L)  # (B, L, d), right-padded
        lengths = mask.sum(1)  # (B,)
        return left_to_right_padded(out, L - lengths)  # rotate each row's states to its last positions

    @staticmethod
    def _packed(z: torch.Tensor, mask: torch.Tensor):
        lengths = mask.sum(1)  # (B,)
        return pack_padded_sequence(left_to_right_padded(z, lengths), lengths.cpu(), batch_first=True, enforce_sorted=False)
