"""A BSARec approximator: DiffuRec's noised history through BSARec's layers (Shin et al., AAAI 2024).

Stacked self-attention smooths a sequence toward its low frequencies. A BSARec layer mixes
into causal self-attention a frequency rescaler that keeps the high ones (BSARec Eq. 7-9):

    S = alpha * A_IB(X) + (1 - alpha) * A_SA(X),  then LayerNorm(S + Dropout(FFN(S))),

with A_IB the low-pass filter of ``c // 2 + 1`` DFT bins plus beta^2 times the rest
(:class:`diffrec.models.bsarec.BSARecBlock`, the same layer as the ``bsarec`` model). As in
BSARec's embedding layer, learned absolute positions over the ``max_len`` window are added to
the input and normalised before the first layer; the output is the last position's state.

The rescaler's DFT runs along the whole window, padding included, and DiffuRec's padding
positions differ (each draws its own λ), so no narrower window computes the same function: the
approximator ``reads_padding``, and DiffuRec pads every batch to the full window for it.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from diffrec.approximators.base import Approximator
from diffrec.config import ModelConfig
from diffrec.errors import ConfigError
from diffrec.models.bsarec import BSARecBlock, attention_bias
from diffrec.registry import register


def check_mix(name: str, alpha: float, attn_dropout: float) -> None:
    """The checks every BSARec-layer approximator makes of its rescaler weight and attention dropout."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{name} approximator: alpha must lie in [0, 1], got {alpha}")
    if not 0.0 <= attn_dropout < 1.0:
        raise ConfigError(f"{name} approximator: attn_dropout must lie in [0, 1), got {attn_dropout}")


@register("approximator", "bsarec")
class BSARecApproximator(Approximator):
    """BSARec layers (frequency rescaler beside causal self-attention, post-LN) over the noised history."""

    reads_padding = True  # the rescaler's DFT runs over the padding too

    def __init__(
        self,
        config: ModelConfig,
        *,
        c: Annotated[int, "the low-pass filter keeps the c // 2 + 1 lowest DFT bins (BSARec's c)"] = 5,
        alpha: Annotated[float, "weight of the frequency rescaler against self-attention, in [0, 1]"] = 0.7,
        attn_dropout: Annotated[float, "dropout on the attention weights"] = 0.5,
    ) -> None:
        super().__init__(config)
        if c < 1:
            raise ConfigError(f"bsarec approximator: c must be >= 1, got {c}")
        check_mix("bsarec", alpha, attn_dropout)
        d = config.hidden_size
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(BSARecBlock(d, config.num_heads, c, alpha, config.dropout, attn_dropout) for _ in range(config.num_blocks))

    def forward(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm(z + self.pos_emb.weight[None, -z.shape[1] :]))  # (B, L, d), positions of the window's right end
        bias = attention_bias(mask).to(x.dtype)  # (B, 1, L, L): real keys at or before the query
        for block in self.blocks:
            x = block(x, bias)
        return x[:, -1]  # (B, d)
