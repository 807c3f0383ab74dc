"""Shared pieces of the same-protocol baselines: SASRec, GRU4Rec, BERT4Rec, Caser and STOSA.

The baselines train on the same data as DiffuRec (one example per prefix of a
user's training part, one target each), with the same trainer and evaluator.

Objective scheme (the same for all five models)
-----------------------------------------------
Every baseline reduces a batch to a *query* vector per prediction and scores
it against an *item table* (N + 1 rows, row 0 = padding) by inner product;
``full_sort_predict`` is ``query @ table.T``. Two settings pick the objective:

- ``config.loss`` (``--loss``) is the per-target loss and is always honoured:
  any registered loss, called through the loss contract
  ``loss(query, table, targets)`` exactly as DiffuRec calls it.
  ``ce`` is DiffuRec's full-catalogue softmax cross-entropy (padding column
  included or not as ``config.ce_over_padding`` says); ``bce`` and ``bpr``
  (:mod:`diffrec.sampled_losses`) score the target against one uniformly
  sampled negative.
- the setting ``objective`` (``--set objective=...``) says which terms are
  trained: ``"next"`` = one next-item term per example and nothing else;
  ``"native"`` (default) = the paper's training structure. For SASRec,
  GRU4Rec and Caser the two are the same (their papers train one sampled
  per-target loss); BERT4Rec's native structure is its cloze task (random
  masked positions of prefix + target, each scored with ``config.loss``);
  STOSA's adds its positive-negative distance regulariser.

Examples: by default a batch holds prefix examples, one target each. SASRec,
GRU4Rec and STOSA also define ``query_states`` (a query at every position, each
from the items up to it) and set ``supports_sequence_examples``; with
``--examples sequence`` (``Batch.next_items``) every real position is a
(query, target) pair of ``training_pairs``, as those papers train. BERT4Rec
also accepts sequence examples: its cloze task masks the user's whole
training window (see ``bert4rec.py``).

Paper-native recipes: ``sasrec --loss bce``, ``gru4rec --loss bpr``,
``caser --loss bce``, ``bert4rec --loss ce``, ``stosa --loss bpr``.
The DiffuRec objective for all five: ``--loss ce --option objective=next``.

Inner products that are not plain ``h . e``: an output bias (BERT4Rec, Caser)
is folded in as ``[h, 1] . [e, b]``; STOSA's negative squared Wasserstein
distance is an inner product of lifted Gaussians (see ``stosa.py``). So every
registered loss applies unchanged.

Padding: every model attends only to real items (key padding), packs padding
away (GRU4Rec) or sees zero padding vectors (Caser), and models with learned
absolute positions number positions as in the full ``max_len`` window
(``pad_extra``), so trimmed batches compute the same function
(``trims_padding_exactly`` is true for all five).

Initialisation follows each paper or its reference code, not
``config.emb_init_std`` (whose default, 1.0, is DiffuRec's public-code quirk).
Dropout: ``config.emb_dropout`` on input embeddings (not Caser, whose paper
has one dropout), ``config.dropout`` inside the networks. Each model declares its settings
(``Settings``); unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import diffrec.losses  # noqa: F401  (registers "ce", the default loss)
from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.models.base import Recommender
from diffrec.params import setting
from diffrec.registry import registry
from diffrec.sampled_losses import SampledLoss, sample_negatives

OBJECTIVES = ("native", "next")

__all__ = [
    "OBJECTIVES",
    "BaselineRecommender",
    "SelfAttention",
    "TransformerBlock",
    "append_ones",
    "attention_mask",
    "sample_negatives",
    "window_positions",
]


@dataclasses.dataclass
class BaselineSettings:
    """Settings every baseline has."""

    objective: Literal["native", "next"] = setting("native", "native: the paper's training structure (cloze, regulariser); next: one next-item term")


class BaselineRecommender(Recommender):
    """A query/item-table recommender trained with a registered loss (see the module docstring).

    Subclasses define ``query(batch) -> (B, k)`` and ``item_table() -> (N + 1, k)``,
    and a ``Settings`` dataclass (a subclass of :class:`BaselineSettings`) for their own settings.
    """

    Settings = BaselineSettings

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        #: the settings as a dict (the models read ``self.options[key]``)
        self.options = dataclasses.asdict(self.settings)
        backend = None if config.kernel_backend == "auto" else config.kernel_backend
        self.loss_fn = registry("loss").build(config.loss, over_padding=config.ce_over_padding, backend=backend, config=config)

    @property
    def native(self) -> bool:
        """Whether the paper's training structure (cloze, regulariser) is on."""
        return self.options["objective"] == "native"

    def query(self, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def target_loss(self, query: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        """``config.loss`` of queries (n, k) against their targets (n,): (n,), or () for a batch-mean loss."""
        table = self.item_table()  # (N + 1, k)
        if negatives is not None and isinstance(self.loss_fn, SampledLoss):
            return self.loss_fn(query, table, targets, negatives=negatives)
        return self.loss_fn(query, table, targets)

    def query_states(self, batch: Batch) -> torch.Tensor:  # pragma: no cover
        """Queries at every position, each from the items up to it: (B, L, k). Models that define it
        set ``supports_sequence_examples``; position -1 equals ``query(batch)``."""
        raise NotImplementedError

    def training_pairs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (n, k) and their target ids (n,): one per prefix example, or one per real position
        of a sequence example (``batch.next_items``)."""
        if batch.next_items is None:
            return self.query(batch), batch.target
        real = batch.next_items > 0  # (B, L)
        return self.query_states(batch)[real], batch.next_items[real]

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        query, targets = self.training_pairs(batch)
        return self.target_loss(query, targets).mean()

    @torch.no_grad()
    def full_sort_predict(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.query(batch) @ self.item_table().t()  # (B, N + 1)

    @torch.no_grad()
    def full_sort_queries(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(batch), self.item_table()


def window_positions(batch: Batch, extra: int = 0) -> torch.Tensor:
    """Position ids of the batch columns (plus ``extra`` appended ones) in the full max_len window: (B, L + extra)."""
    L = batch.seq.shape[1] + extra
    return batch.pad_extra[:, None] + torch.arange(L, device=batch.seq.device)[None, :]


def append_ones(x: torch.Tensor) -> torch.Tensor:
    """(..., k) -> (..., k + 1) with a trailing 1 (folds an output bias into an inner product)."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def attention_mask(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean (B, 1, L, L), True where query i may attend to key j: real keys only (j <= i if causal).

    A padding query that would see no key attends to itself; padding outputs are never used.
    """
    L = mask.shape[1]
    allowed = mask[:, None, None, :]  # (B, 1, 1, L)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    return allowed | torch.eye(L, dtype=torch.bool, device=mask.device)  # (B, 1, L, L)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with a boolean mask."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)  # (B, H, L, dh)
        return self.out(y.transpose(1, 2).reshape(B, L, d))  # (B, L, d)


class TransformerBlock(nn.Module):
    """Self-attention + point-wise feed-forward, pre-LN (``x + Drop(f(LN(x)))``, SASRec) or post-LN (BERT)."""

    def __init__(self, d: int, heads: int, ffn_dim: int, dropout: float, activation: str, norm_first: bool, eps: float) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = SelfAttention(d, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_dim), nn.GELU() if activation == "gelu" else nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d))
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self.attn(self.ln1(x), allowed))  # (B, L, d)
            return x + self.drop(self.ffn(self.ln2(x)))
        x = self.ln1(x + self.drop(self.attn(x, allowed)))
        return self.ln2(x + self.drop(self.ffn(x)))
