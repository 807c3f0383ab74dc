"""BERT4Rec (Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from Transformer", CIKM 2019).

Items and a [MASK] token (id N + 1, its own one-row embedding, so the item
table keeps N + 1 rows) plus learned absolute positions, LayerNorm and
dropout, then ``num_blocks`` bidirectional post-LN Transformer blocks with a
GELU feed-forward of width 4d. Output layer: the hidden state at a masked
position scores item i as ``GELU(h W + b) . E_i + b_i`` with the shared item
embeddings and a per-item output bias.

Inference: [MASK] is appended after the history and its output is the query.
The input is the history window (up to ``max_len`` items) plus that slot, so
there are ``max_len + 1`` positions, numbered as in the full window.

Cloze objective (``options["objective"] = "native"``, default): an example's
input is its prefix followed by its target. The target is always masked (the
paper's extra "mask only the last item" samples, which match inference; here
every example is one, since each ends with its target) and each prefix item is
masked independently with probability ``options["mask_prob"]`` (default 0.2).
Every masked position predicts its original item with ``config.loss`` (``ce``,
the paper's softmax over items, by default), averaged over masked positions.
With ``objective = "next"`` only the target is masked. Masked tokens are
always replaced by [MASK] (no BERT 80/10/10 rule).

Sequence examples (``--examples sequence``, the paper's own training): one
example per user, its whole training window, cloze-masked as above, so every
epoch sees each user once with fresh masks. The batch's input plus its last
target is that window; the target is masked as before and the other items with
probability ``mask_prob`` (the paper found 0.6 best on Beauty). Init: truncated normal (std
0.02) as in BERT; ``config.emb_init_std`` is unused.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.models.baselines import (
    BaselineRecommender,
    BaselineSettings,
    TransformerBlock,
    append_ones,
    attention_mask,
    window_positions,
)
from diffrec.params import setting
from diffrec.registry import register


@dataclasses.dataclass
class BERT4RecSettings(BaselineSettings):
    """BERT4Rec's settings."""

    mask_prob: float = setting(0.2, "probability that each position other than the last is masked in the cloze task")

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob must lie in [0, 1), got {self.mask_prob}")


@register("model", "bert4rec")
class BERT4Rec(BaselineRecommender):
    """BERT4Rec: a bidirectional Transformer trained by cloze; a trailing [MASK] scores the next item."""

    Settings = BERT4RecSettings
    #: the cloze input is prefix + target, which for a sequence example is the user's training window
    supports_sequence_examples = True

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        self.mask_prob = self.settings.mask_prob
        d = config.hidden_size
        self.mask_id = num_items + 1
        self.item_emb = nn.Embedding(num_items + 1, d)  # (N + 1, d); row 0 = padding (masked out of attention)
        self.mask_emb = nn.Parameter(torch.empty(d))  # the [MASK] token
        self.pos_emb = nn.Embedding(config.max_len + 1, d)  # the history window plus the [MASK] slot
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.num_heads, 4 * d, config.dropout, activation="gelu", norm_first=False, eps=1e-12)
            for _ in range(config.num_blocks)
        )
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.out_bias = nn.Parameter(torch.zeros(num_items + 1))
        for name, p in self.named_parameters():
            if p.dim() >= 2 or name == "mask_emb":
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def encode(self, tokens: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Hidden states of the tokens (B, L + 1) = the batch columns plus one appended slot: (B, L + 1, d)."""
        is_mask = tokens == self.mask_id  # (B, L + 1)
        x = self.item_emb(tokens.masked_fill(is_mask, 0))  # (B, L + 1, d)
        x = torch.where(is_mask[..., None], self.mask_emb, x)
        x = self.emb_dropout(self.emb_norm(x + self.pos_emb(window_positions(batch, extra=1))))
        allowed = attention_mask(tokens > 0, causal=False)  # (B, 1, L + 1, L + 1)
        for block in self.blocks:
            x = block(x, allowed)
        return x

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """[GELU(h W + b), 1], to score against [E, b_out]: (..., d) -> (..., d + 1)."""
        return append_ones(self.head(h))

    def query(self, batch: Batch) -> torch.Tensor:
        """The output at a [MASK] appended after the history: (B, d + 1)."""
        slot = torch.full_like(batch.seq[:, :1], self.mask_id)  # (B, 1)
        h = self.encode(torch.cat([batch.seq, slot], dim=1), batch)  # (B, L + 1, d)
        return self.project(h[:, -1])

    def item_table(self) -> torch.Tensor:
        return torch.cat([self.item_emb.weight, self.out_bias[:, None]], dim=1)  # (N + 1, d + 1)

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        tokens = torch.cat([batch.seq, batch.target[:, None]], dim=1)  # (B, L + 1): prefix + target
        masked = torch.zeros_like(tokens, dtype=torch.bool)
        masked[:, -1] = True  # the target is always masked
        if self.native and self.mask_prob > 0:
            masked |= (torch.rand(tokens.shape, device=tokens.device) < self.mask_prob) & (tokens > 0)
        h = self.encode(tokens.masked_fill(masked, self.mask_id), batch)  # (B, L + 1, d)
        return self.target_loss(self.project(h[masked]), tokens[masked]).mean()  # over masked positions
