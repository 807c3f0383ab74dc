"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

Item embeddings (scaled by sqrt(d), as in the authors' code) plus learned
absolute positions, dropout, then ``num_blocks`` causal self-attention blocks
written as in the paper, ``g(x) = x + Dropout(g(LayerNorm(x)))`` (Sec. III-C),
with a point-wise ReLU feed-forward of width d and a final LayerNorm (authors'
code). The last position's output F is the query and the shared item
embeddings are the output layer: r_i = F . M_i.

Native objective: ``--loss bce``, binary cross-entropy with one uniformly
sampled negative per target. The paper trains every position of a sequence at
once, as ``--examples sequence`` does (a position's output sees only the items
up to it, and positions are numbered in the left-padded window, as in the
authors' code); the default prefix examples hold the same (history, next item)
pairs, one per example. Attention uses ``config.num_heads`` heads (the paper found one head
enough). Init: Xavier-normal for every weight matrix and embedding (the widely
used PyTorch port); ``config.emb_init_std`` is unused.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.models.baselines import (
    BaselineRecommender,
    TransformerBlock,
    attention_mask,
    window_positions,
)
from diffrec.registry import register


@register("model", "sasrec")
class SASRec(BaselineRecommender):
    """SASRec: causal self-attention over the history; shared item embeddings score the next item."""

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        d = config.hidden_size
        self.item_emb = nn.Embedding(num_items + 1, d)  # (N + 1, d); row 0 = padding (masked out of attention)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.num_heads, d, config.dropout, activation="relu", norm_first=True, eps=1e-8) for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)

    supports_sequence_examples = True

    def query(self, batch: Batch) -> torch.Tensor:
        """F at the last position: (B, d)."""
        return self.query_states(batch)[:, -1]

    def query_states(self, batch: Batch) -> torch.Tensor:
        """F at every position (causal: each from the items up to it): (B, L, d)."""
        d = self.config.hidden_size
        x = self.item_emb(batch.seq) * math.sqrt(d) + self.pos_emb(window_positions(batch))  # (B, L, d)
        x = self.emb_dropout(x)
        allowed = attention_mask(batch.mask, causal=True)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, allowed)  # (B, L, d)
        return self.final_norm(x)  # (B, L, d)

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight  # (N + 1, d)
