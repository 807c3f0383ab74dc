"""A causal BSARec approximator: BSARec's layers with a low-pass filter that reads only the past.

BSARec (Shin et al., AAAI 2024) splits each layer input X into low and high frequencies with a DFT
along the whole window, so every position depends on the items after it, and the ``bsarec``
approximator cannot give per-position states. Here the low-frequency part at position p is an
exponentially weighted mean of the real items up to p:

    LFC[X]_p = sum_{s <= p, s real} gamma^(p - s) X_s / sum_{s <= p, s real} gamma^(p - s),
    HFC[X] = X - LFC[X],   A_IB(X) = LayerNorm(X + Dropout(LFC[X] + beta^2 * HFC[X])),

and the layer is BSARec's: ``alpha * A_IB(X) + (1 - alpha) * A_SA(X)`` with causal self-attention
over the real items, then the feed-forward sublayer (:class:`diffrec.models.bsarec.BSARecBlock`).
``decay`` = gamma: 1 gives the mean of the history so far (the causal counterpart of keeping the
DFT's lowest bin), a smaller one follows the recent items.

Learned positions count the real items from the first one in the window (position 0), so a
history cut after p keeps its positions, and position p's state is the state of that cut history.
Nothing at a real position reads a padding position (the attention masks padding keys and the
filter weighs real items only), so trimming the padding is exact and the approximator is causal:
DiffuRec's ``injection = own_position`` can train it on every position of a sequence at once.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from diffrec.approximators.base import Approximator
from diffrec.approximators.bsarec import check_mix
from diffrec.config import ModelConfig
from diffrec.errors import ConfigError
from diffrec.models.bsarec import BSARecBlock, FrequencyRescaler, attention_bias
from diffrec.registry import register


class CausalRescaler(FrequencyRescaler):
    """BSARec's rescaler with the causal low-pass filter above (the same beta, dropout and LayerNorm)."""

    def __init__(self, d: int, decay: float, dropout: float) -> None:
        super().__init__(d, c=1, dropout=dropout)
        self.decay = decay

    def low_pass(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decay-weighted mean of the real items up to each position (zero at padding): (B, L, d)."""
        assert mask is not None, "the causal filter weighs real items only: give the mask"
        L = x.shape[1]
        lag = torch.arange(L, device=x.device)[:, None] - torch.arange(L, device=x.device)[None, :]  # (L, L): p - s
        gamma = torch.tensor(self.decay, dtype=x.dtype, device=x.device)
        weights = gamma.pow(lag.clamp_min(0).to(x.dtype)) * (lag >= 0)  # (L, L): gamma^(p - s) for s <= p, else 0
        real = mask.to(x.dtype)  # (B, L)
        total = torch.einsum("ps,bsd->bpd", weights, x * real[..., None])  # (B, L, d)
        norm = torch.einsum("ps,bs->bp", weights, real)  # (B, L): the weights of the real items seen
        return total / norm.clamp_min(torch.finfo(x.dtype).tiny)[..., None]


@register("approximator", "bsarec_causal")
class CausalBSARecApproximator(Approximator):
    """BSARec layers with a causal low-pass filter (decay-weighted mean of the past) beside causal self-attention."""

    causal = True

    def __init__(
        self,
        config: ModelConfig,
        *,
        decay: Annotated[float, "weight gamma^(p - s) of item s in position p's low-pass mean, in (0, 1]; 1 = the plain mean of the history so far"] = 1.0,
        alpha: Annotated[float, "weight of the frequency rescaler against self-attention, in [0, 1]"] = 0.7,
        attn_dropout: Annotated[float, "dropout on the attention weights"] = 0.5,
    ) -> None:
        super().__init__(config)
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"bsarec_causal approximator: decay must lie in (0, 1], got {decay}")
        check_mix("bsarec_causal", alpha, attn_dropout)
        d = config.hidden_size
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            BSARecBlock(d, config.num_heads, 1, alpha, config.dropout, attn_dropout, rescaler=CausalRescaler(d, decay, config.dropout))
            for _ in range(config.num_blocks)
        )

    def all_positions(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        """Every position's state, zero at padding: (B, L, d)."""
        position = (mask.long().cumsum(1) - 1).clamp_min(0)  # (B, L): real items counted from the first
        x = self.drop(self.norm(z + self.pos_emb(position)))  # (B, L, d)
        bias = attention_bias(mask).to(x.dtype)  # (B, 1, L, L): real keys at or before the query
        for block in self.blocks:
            x = block(x, bias, mask)
        return x * mask[..., None].to(x.dtype)

    def forward(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        return self.all_positions(z, mask, pad_extra)[:, -1]  # (B, d)
