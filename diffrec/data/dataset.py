"""The in-memory dataset every loader returns, and the leave-one-out split.

Item ids are ``1..num_items``; ``0`` is padding and never an item. Each user's
sequence is in time order: the last item is the test target, the one before
it the validation target, the rest the training part (leave-one-out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffrec.errors import DataError

#: A user needs a training item, a validation target and a test target.
MIN_SEQUENCE_LENGTH = 3


@dataclass
class SequenceData:
    """Chronological item sequences, one per user, with ids re-indexed to 1..num_items."""

    sequences: list[list[int]]
    num_items: int
    name: str = "dataset"
    user_ids: list[str] | None = None
    #: original item id (as a string) for each internal id 1..num_items, index 0 unused
    item_ids: list[str] | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        if not self.sequences:
            raise DataError(f"{self.name}: no user sequences")
        if self.num_items < 1:
            raise DataError(f"{self.name}: no items")
        if self.user_ids is not None and len(self.user_ids) != len(self.sequences):
            raise DataError(f"{self.name}: {len(self.user_ids)} user ids for {len(self.sequences)} sequences")
        if self.item_ids is not None and len(self.item_ids) != self.num_items + 1:
            raise DataError(f"{self.name}: item_ids must have num_items + 1 entries (index 0 is padding)")
        for u, seq in enumerate(self.sequences):
            if len(seq) < MIN_SEQUENCE_LENGTH:
                who = self.user_ids[u] if self.user_ids is not None else u
                raise DataError(
                    f"{self.name}: user {who} has {len(seq)} interactions; leave-one-out needs at least {MIN_SEQUENCE_LENGTH}"
                )
            lo, hi = min(seq), max(seq)
            if lo < 1 or hi > self.num_items:
                who = self.user_ids[u] if self.user_ids is not None else u
                raise DataError(f"{self.name}: user {who} has item id {lo if lo < 1 else hi} outside 1..{self.num_items}")

    # ------------------------------------------------------------- statistics
    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_actions(self) -> int:
        return sum(len(s) for s in self.sequences)

    def stats(self) -> dict[str, float]:
        """Sizes; sparsity counts distinct (user, item) pairs, so repeated items never make it negative."""
        users, items, actions = self.num_users, self.num_items, self.num_actions
        pairs = sum(len(set(s)) for s in self.sequences)
        return {
            "users": users,
            "items": items,
            "actions": actions,
            "avg_length": actions / users,
            "sparsity": 1.0 - pairs / (users * items),
            "train_examples": sum(len(s) - 3 for s in self.sequences),
        }

    # ----------------------------------------------------------------- splits
    def train_part(self, u: int) -> list[int]:
        return self.sequences[u][:-2]

    def valid_input(self, u: int) -> list[int]:
        return self.sequences[u][:-2]

    def test_input(self, u: int) -> list[int]:
        return self.sequences[u][:-1]

    def valid_targets(self) -> np.ndarray:
        return np.array([s[-2] for s in self.sequences], dtype=np.int64)

    def test_targets(self) -> np.ndarray:
        return np.array([s[-1] for s in self.sequences], dtype=np.int64)

    def item_counts(self) -> np.ndarray:
        """Interactions per item id (index 0 = padding, always 0)."""
        counts = np.zeros(self.num_items + 1, dtype=np.int64)
        for s in self.sequences:
            np.add.at(counts, np.asarray(s, dtype=np.int64), 1)
        return counts
