"""The approximator contract: history representations in, one target representation out."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from diffrec.config import ModelConfig


class Approximator(nn.Module):
    """Maps the noised history ``z`` (paper Eq. 13) to the representation of its last position.

    ``forward(z, mask, pad_extra)``:

    - ``z``: (B, L, d) left-padded history with the noised target injected;
    - ``mask``: (B, L) bool, True at real items;
    - ``pad_extra``: (B,) long, padding positions that length bucketing trimmed
      away per row (0 when the batch is padded to ``max_len``). Approximators
      whose function depends on the padding (the official attention mask) use
      it to stay exact after trimming.

    Returns (B, d). Subclasses are built from a :class:`ModelConfig`.
    """

    #: whether the output depends on the padding positions whatever the attention mask (a DFT over
    #: the window does): such an approximator is always given the full max_len window
    reads_padding: ClassVar[bool] = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
