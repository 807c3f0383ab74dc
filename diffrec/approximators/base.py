"""The approximator contract: history representations in, one target representation out
(and, for causal approximators, one per position)."""

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

    A *causal* approximator (:attr:`causal`), whose state at position p depends on ``z[:, :p + 1]``
    alone, also gives every position's state, ``all_positions(z, mask, pad_extra)`` (B, L, d),
    whose last column is ``forward``'s output. A model that injects each position's own noised
    target can then train on every position of a sequence at once without any position seeing
    its own future.
    """

    #: whether the output depends on the padding positions whatever the attention mask (a DFT over
    #: the window does): such an approximator is always given the full max_len window
    reads_padding: ClassVar[bool] = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def causal(self) -> bool:
        """Whether position p's state depends on positions <= p only (as configured)."""
        return False

    def forward(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def all_positions(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        """Every position's state (B, L, d); causal approximators only."""
        raise NotImplementedError(f"the {type(self).__name__} is not causal: its states are not defined per position")
