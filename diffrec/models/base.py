"""The recommender contract every ``model`` part follows (RecBole-style).

- ``calculate_loss(batch) -> scalar``: the training objective of one batch;
- ``predict(batch, items) -> (B, C)``: scores of given candidate ids;
- ``full_sort_predict(batch, generator) -> (B, N + 1)``: scores of every id
  (column 0 is padding; the evaluator decides whether it is ranked);
- ``recommend(batch, k, exclude, generator) -> (scores, ids)``: the top k.

A model with ``supports_sequence_examples`` also trains on sequence examples
(``Batch.next_items``: a target at every position, ``--examples sequence``).

Models are built as ``Model(config, num_items)`` from a :class:`ModelConfig`. A model
declares its own settings as a dataclass, ``Settings`` (each field with its help, see
:func:`diffrec.params.setting`); the config's settings are checked against it and the
model reads them as ``self.settings``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.params import Param, settings_params


@dataclasses.dataclass
class NoSettings:
    """A model without settings of its own."""


class Recommender(nn.Module):
    #: whether ``calculate_loss`` accepts sequence examples (a target at every position)
    supports_sequence_examples: ClassVar[bool] = False
    #: the model's own settings (a dataclass; see the module docstring)
    Settings: ClassVar[type] = NoSettings
    #: the loss a config that names none trains with (its paper's objective, or DiffuRec's cross-entropy)
    default_loss: ClassVar[str] = "ce"

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.settings = config.model_settings()

    @classmethod
    def takes_sequence_examples(cls, config: ModelConfig) -> bool:
        """Whether the model built from ``config`` trains on sequence examples (a model whose
        settings decide it overrides this; ``supports_sequence_examples`` says "whatever the settings")."""
        return cls.supports_sequence_examples

    @classmethod
    def settings_params(cls) -> dict[str, Param]:
        """The settings the model declares, for checks, ``--set`` and ``diffrec list --params``."""
        return settings_params(cls.Settings)

    @property
    def trims_padding_exactly(self) -> bool:
        """Whether batches trimmed to their longest row compute the same function as max_len padding."""
        return True

    def calculate_loss(self, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def full_sort_predict(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def full_sort_queries(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(queries (B, d'), table (N + 1, d')) whose inner products are the scores of ``full_sort_predict``
        (drawing the same random numbers), for a ranking streamed over item tiles; None where the
        model's scores are not inner products."""
        return None

    def predict(self, batch: Batch, items: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scores of candidate ids ``items`` (B, C); by default gathered from the full ranking."""
        return self.full_sort_predict(batch, generator).gather(1, items)  # (B, C)

    @torch.no_grad()
    def recommend(self, batch: Batch, k: int, exclude: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores, ids) per row, never the padding id nor the ids in ``exclude`` (B, L)."""
        scores = self.full_sort_predict(batch, generator)  # (B, N + 1)
        scores[:, 0] = float("-inf")
        scores.scatter_(1, exclude, float("-inf"))
        return torch.topk(scores, k, dim=1)
