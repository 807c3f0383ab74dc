"""The Transformer approximator of DiffuRec (paper Sec. 4.2.2, public-code block).

Pre-LayerNorm blocks ``x + Dropout(sublayer(LN(x)))`` with multi-head
self-attention and a 4d feed-forward network with tanh-GELU, then block-output
dropout. Three attention masks:

- ``official``: the public code's mask. It blanks the *query rows* of padding
  positions (they attend uniformly to every position) and masks no key: real
  positions attend to every padding key, bidirectionally. With no position
  embedding all padding positions carry the same input, so a batch trimmed to
  fewer padding columns reproduces the full-length function exactly when each
  remaining padding key's logit carries ``log(full pads / kept pads)``.
- ``key_padding``: padding keys are masked, attention is bidirectional.
- ``causal``: padding keys masked and position i sees only j <= i.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from diffrec.approximators.base import Approximator
from diffrec.config import ModelConfig
from diffrec.layers import Dropout, DropoutRNG
from diffrec.registry import register


def attention_bias(mask: torch.Tensor, pad_extra: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive key bias (B, 1, L, L) and the padding-query rows' replacement logits (B, 1, 1, L).

    Padding query rows get the replacement logits instead of q.k (uniform
    attention, as in the public code, weighted by the padding multiplicity).
    """
    B, L = mask.shape
    pad = ~mask  # (B, L)
    if mode == "official":
        kept = pad.sum(1)  # (B,)
        ratio = (kept + pad_extra).clamp(min=1).to(torch.float32) / kept.clamp(min=1).to(torch.float32)
        key_bias = torch.where(pad, ratio.log().unsqueeze(1), torch.zeros((), device=mask.device))  # (B, L)
        bias = key_bias[:, None, None, :].expand(B, 1, L, L)
        return bias, key_bias[:, None, None, :]
    neg = torch.full((), float("-inf"), device=mask.device)
    key_bias = torch.where(pad, neg, torch.zeros((), device=mask.device))  # (B, L)
    bias = key_bias[:, None, None, :].expand(B, 1, L, L)
    if mode == "causal":
        future = torch.ones(L, L, dtype=torch.bool, device=mask.device).triu(1)  # (L, L)
        bias = bias.masked_fill(future, float("-inf"))
    elif mode != "key_padding":
        raise ValueError(f"unknown attention mask {mode!r}")
    return bias, torch.zeros(B, 1, 1, L, device=mask.device)


class MultiHeadAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.p = dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        nn.init.xavier_normal_(self.out.weight)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, real_rows: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``bias`` (B, 1, Lq, L) holds the logits of padding query rows; ``real_rows`` (B, 1, Lq, 1).

        ``last_only``: queries from the last position alone (Lq = 1), keys and values from all.
        """
        B, L, d = x.shape
        if last_only:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, -1:], w[:d], b[:d]).view(B, 1, self.heads, d // self.heads).transpose(1, 2)  # (B, H, 1, dh)
            k, v = F.linear(x, w[d:], b[d:]).view(B, L, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 2 x (B, H, L, dh)
        else:
            q, k, v = self.qkv(x).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, dh)
        # a zero query turns a padding row's logits into its bias alone: the uniform (weighted) row of the public code
        q = q * real_rows
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.p if self.training else 0.0)  # (B, H, Lq, dh)
        return self.out(y.transpose(1, 2).reshape(B, q.shape[2], d))


class FeedForward(nn.Module):
    def __init__(self, d: int, dropout: float, rng: DropoutRNG = "torch") -> None:
        super().__init__()
        self.w1 = nn.Linear(d, 4 * d)
        self.w2 = nn.Linear(4 * d, d)
        self.dropout = Dropout(dropout, rng)
        nn.init.xavier_normal_(self.w1.weight)
        nn.init.xavier_normal_(self.w2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.dropout(F.gelu(self.w1(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float, rng: DropoutRNG = "torch") -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-12)
        self.attn = MultiHeadAttention(d, heads, dropout)
        self.ln2 = nn.LayerNorm(d, eps=1e-12)
        self.ffn = FeedForward(d, dropout, rng)
        self.drop1 = Dropout(dropout, rng)
        self.drop2 = Dropout(dropout, rng)
        self.drop_out = Dropout(dropout, rng)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, real_rows: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L, d) -> (B, L, d), or (B, 1, d) for the last position alone when ``last_only``."""
        if last_only:  # every position still gives keys and values; only the last one is carried on
            x = x[:, -1:] + self.drop1(self.attn(self.ln1(x), bias[:, :, -1:], real_rows[:, :, -1:], last_only=True))  # (B, 1, d)
        else:
            x = x + self.drop1(self.attn(self.ln1(x), bias, real_rows))  # (B, L, d)
        x = x + self.drop2(self.ffn(self.ln2(x)))
        return self.drop_out(x)


@register("approximator", "transformer")
class TransformerApproximator(Approximator):
    """Pre-LN Transformer blocks (public-code block, heads, FFN and dropouts); the last position is the output.

    ``dropout_rng`` (context from the model) picks the mask generator of its dropouts.
    """

    def __init__(
        self,
        config: ModelConfig,
        dropout_rng: DropoutRNG = "torch",
        *,
        last_block_output_only: Annotated[bool, "compute the last block for the output position only: the same function, about a fifth fewer FLOPs, other dropout draws"] = False,
    ) -> None:
        super().__init__(config)
        self.mask_mode = config.attention_mask
        self.last_block_output_only = last_block_output_only
        self.blocks = nn.ModuleList(Block(config.hidden_size, config.num_heads, config.dropout, dropout_rng) for _ in range(config.num_blocks))

    @property
    def causal(self) -> bool:
        """With the causal mask (real keys at or before the query; padding rows are never read)."""
        return self.mask_mode == "causal"

    def forward(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        return self._states(z, mask, pad_extra, last_only=self.last_block_output_only)[:, -1, :]  # (B, d)

    def all_positions(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor) -> torch.Tensor:
        if not self.causal:
            return super().all_positions(z, mask, pad_extra)
        return self._states(z, mask, pad_extra, last_only=False)  # (B, L, d)

    def _states(self, z: torch.Tensor, mask: torch.Tensor, pad_extra: torch.Tensor, last_only: bool) -> torch.Tensor:
        """The blocks' output: (B, L, d), or (B, 1, d) when the last block runs for the last position only."""
        bias, pad_logits = attention_bias(mask, pad_extra, self.mask_mode)  # (B, 1, L, L), (B, 1, 1, L)
        real_rows = mask[:, None, :, None]  # (B, 1, L, 1)
        bias = torch.where(real_rows, bias, pad_logits).to(z.dtype)  # padding query rows: their replacement logits
        real_rows = real_rows.to(z.dtype)
        h = z
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            h = block(h, bias, real_rows, last_only=last_only and i == last)  # (B, L, d); (B, 1, d) if last only
        return h
