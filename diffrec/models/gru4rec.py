"""GRU4Rec (Hidasi, Karatzoglou, Baltrunas, Tikk, "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016).

Item embedding -> dropout -> a stack of ``num_blocks`` GRU layers (hidden size
d) over the real items only (padding is packed away, so trimmed batches give
the same function); the final hidden state, after dropout, scores every item
by inner product with the item embeddings (shared input/output embeddings, the
"constrained embeddings" of the authors' later code).

Native objective: ``--loss bpr``, the paper's BPR ranking loss with one
uniformly sampled negative per target. Deviations: the paper trains with
session-parallel mini-batches and takes the other sessions' targets in the
mini-batch as negatives (popularity-proportional sampling); here each prefix
is encoded from scratch (the same hidden states) and negatives are uniform;
``--examples sequence`` trains every step of a user's sequence in one pass,
closer to the session-parallel training.
Init: Glorot-uniform for every weight matrix and embedding (the paper's Theano
code); ``config.emb_init_std`` is unused.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from diffrec.approximators.gru import left_to_right_padded
from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.models.baselines import BaselineRecommender
from diffrec.registry import register


@register("model", "gru4rec")
class GRU4Rec(BaselineRecommender):
    """GRU4Rec: a GRU over the history; its final state scores the next item."""

    supports_sequence_examples = True

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        d = config.hidden_size
        self.item_emb = nn.Embedding(num_items + 1, d)  # (N + 1, d); row 0 = padding (packed away)
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.gru = nn.GRU(d, d, num_layers=config.num_blocks, batch_first=True, dropout=config.dropout if config.num_blocks > 1 else 0.0)
        self.out_dropout = nn.Dropout(config.dropout)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.xavier_uniform_(p)

    def _gru(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The GRU over each row's real items: top-layer outputs (packed), final states (layers, B, d), lengths (B,)."""
        lengths = batch.mask.sum(1).clamp(min=1)  # (B,)
        x = self.emb_dropout(self.item_emb(batch.seq))  # (B, L, d)
        packed = pack_padded_sequence(left_to_right_padded(x, lengths), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.gru(packed)
        return out, h_n, lengths

    def query(self, batch: Batch) -> torch.Tensor:
        """The top GRU layer's state after the last real item: (B, d)."""
        return self.out_dropout(self._gru(batch)[1][-1])  # (B, d)

    def query_states(self, batch: Batch) -> torch.Tensor:
        """The top layer's state after each item, aligned with ``batch.seq`` (0 at padding): (B, L, d)."""
        L = batch.seq.shape[1]
        packed, _, lengths = self._gru(batch)
        out, _ = pad_packed_sequence(packed, batch_first=True, total_length=L)  # (B, L, d), real steps first
        # back to left padding: column j takes step j - (L - length), which is past the end (zero) for padding columns
        idx = (torch.arange(L, device=out.device)[None, :] + lengths[:, None]) % L  # (B, L)
        return self.out_dropout(out.gather(1, idx[..., None].expand_as(out)))

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight  # (N + 1, d)
