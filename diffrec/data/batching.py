"""Training examples (every prefix, or one sequence per user) and evaluation inputs, batched with trimmed padding.

Sequences are cut to the most recent ``max_len`` items and left-padded with 0.
With bucketing, examples of similar length share a batch and the batch is only
as wide as its longest row plus one padding column; ``Batch.pad_extra`` tells
the approximator how many padding positions each row lost, so that a model
whose function depends on padding (the official attention mask) stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffrec.data.dataset import SequenceData


@dataclass
class Batch:
    seq: torch.Tensor  # (B, L) long, left-padded with 0
    target: torch.Tensor  # (B,) long
    pad_extra: torch.Tensor  # (B,) long: padding positions trimmed away per row (relative to max_len)
    users: torch.Tensor  # (B,) long: user index in the dataset
    #: sequence examples only: the item that follows each position, 0 at padding (B, L) long;
    #: ``target`` is then its last column
    next_items: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.seq > 0  # (B, L)

    @property
    def num_targets(self) -> int:
        """(history, next item) pairs the batch trains: one per row, or one per real position."""
        return len(self) if self.next_items is None else int((self.next_items > 0).sum())

    def to(self, device: torch.device | str) -> Batch:
        nxt = None if self.next_items is None else self.next_items.to(device)
        return Batch(self.seq.to(device), self.target.to(device), self.pad_extra.to(device), self.users.to(device), nxt)

    def __len__(self) -> int:
        return self.seq.shape[0]


class _Flat:
    """All users' item ids in one array, with per-user offsets."""

    def __init__(self, sequences: list[list[int]]) -> None:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.items = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(lengths.sum()))

    def gather(self, users: np.ndarray, ends: np.ndarray, max_len: int, width: int | None) -> tuple[np.ndarray, int]:
        """Left-padded windows flat[off+end-len : off+end] with len = min(end, max_len): (B, W)."""
        lengths = np.minimum(ends, max_len)  # (B,)
        if width is None:
            width = int(min(max_len, lengths.max() + 1))
        pos = np.arange(width)[None, :]  # (1, W)
        idx = self.offsets[users][:, None] + ends[:, None] - width + pos  # (B, W)
        valid = pos >= (width - lengths)[:, None]
        seq = np.where(valid, self.items[np.where(valid, idx, 0)], 0)
        return seq, width


def _make_batch(flat: _Flat, users: np.ndarray, ends: np.ndarray, targets: np.ndarray, max_len: int, trim: bool) -> Batch:
    seq, width = flat.gather(users, ends, max_len, None if trim else max_len)
    pad_extra = np.full(len(users), max_len - width, dtype=np.int64)
    return Batch(
        torch.from_numpy(seq),
        torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64)),
        torch.from_numpy(pad_extra),
        torch.from_numpy(users.astype(np.int64)),
    )


class TrainExamples:
    """Every prefix of each user's training part predicts its next item."""

    def __init__(self, data: SequenceData, max_len: int) -> None:
        self.max_len = max_len
        self.flat = _Flat(data.sequences)
        train_lengths = np.array([len(s) - 2 for s in data.sequences], dtype=np.int64)  # training part
        counts = np.maximum(train_lengths - 1, 0)
        self.users = np.repeat(np.arange(len(data.sequences)), counts)  # (E,)
        # example ends at position j (1..n-1) of the training part: input = part[:j], target = part[j]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.ends = np.arange(len(self.users)) - np.repeat(starts, counts) + 1
        self.targets = self.flat.items[self.flat.offsets[self.users] + self.ends]
        self.lengths = np.minimum(self.ends, max_len)

    def __len__(self) -> int:
        return len(self.users)

    def batches(self, batch_size: int, rng: np.random.Generator, bucketing: bool = True, trim: bool = True) -> Iterator[Batch]:
        """One epoch of shuffled batches; with bucketing, batches hold examples of similar length.

        Padding is trimmed to the batch's longest row (plus one column) when bucketing and ``trim``.
        """
        order = rng.permutation(len(self))
        if bucketing:
            order = order[np.argsort(self.lengths[order], kind="stable")]
            chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        else:
            chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in chunks:
            yield self._batch(idx, bucketing and trim)

    def _batch(self, idx: np.ndarray, trim: bool) -> Batch:
        return _make_batch(self.flat, self.users[idx], self.ends[idx], self.targets[idx], self.max_len, trim)

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size

    @property
    def num_targets(self) -> int:
        """(history, next item) pairs per epoch."""
        return len(self)


class SequenceExamples(TrainExamples):
    """One example per user: the last ``max_len`` inputs of the training part, a target at every position.

    For a training part ``[a, b, c, d]`` the input is ``[a, b, c]`` and the next items are
    ``[b, c, d]``: the pairs ``[a] -> b``, ``[a, b] -> c``, ``[a, b, c] -> d`` of the prefix
    examples, trained in one pass by a model that scores every position (SASRec's own
    training). A training part longer than ``max_len + 1`` keeps its last ``max_len``
    pairs, as in SASRec's code; its earlier pairs are not trained.
    """

    def __init__(self, data: SequenceData, max_len: int) -> None:
        self.max_len = max_len
        self.flat = _Flat(data.sequences)
        train_lengths = np.array([len(s) - 2 for s in data.sequences], dtype=np.int64)
        self.users = np.flatnonzero(train_lengths >= 2)  # (U,) users with at least one pair
        self.ends = train_lengths[self.users] - 1  # input = part[:n-1]; its last target is part[n-1]
        self.targets = self.flat.items[self.flat.offsets[self.users] + self.ends]
        self.lengths = np.minimum(self.ends, max_len)
        self.pairs = int(self.lengths.sum())

    def _batch(self, idx: np.ndarray, trim: bool) -> Batch:
        batch = _make_batch(self.flat, self.users[idx], self.ends[idx], self.targets[idx], self.max_len, trim)
        width = batch.seq.shape[1]
        shifted, _ = self.flat.gather(self.users[idx], self.ends[idx] + 1, self.max_len, width)  # windows one item later
        seq = batch.seq.numpy()
        batch.next_items = torch.from_numpy(np.where(seq > 0, shifted, 0))  # (B, W)
        return batch

    @property
    def num_targets(self) -> int:
        return self.pairs


class EvalInputs:
    """Validation (input = training part) or test (input = training part + validation item) inputs."""

    def __init__(self, data: SequenceData, split: str, max_len: int) -> None:
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        self.max_len = max_len
        self.flat = _Flat(data.sequences)
        lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
        self.users = np.arange(len(data.sequences))
        self.ends = lengths - (2 if split == "valid" else 1)
        self.targets = self.flat.items[self.flat.offsets + self.ends]

    def __len__(self) -> int:
        return len(self.users)

    def batches(self, batch_size: int, bucketing: bool = True, trim: bool = True) -> Iterator[Batch]:
        """Deterministic batches; bucketing groups users by length, otherwise users stay in order."""
        order = np.argsort(np.minimum(self.ends, self.max_len), kind="stable") if bucketing else np.arange(len(self))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield _make_batch(self.flat, self.users[idx], self.ends[idx], self.targets[idx], self.max_len, trim)

    def history(self, users: np.ndarray) -> list[np.ndarray]:
        """Every item of each user's input (for excluding seen items)."""
        return [self.flat.items[self.flat.offsets[u] : self.flat.offsets[u] + self.ends[u]] for u in users]


def history_batch(items: list[int], max_len: int) -> Batch:
    """A single inference input from an item history (for ``recommend``)."""
    data_seq = np.asarray(items[-max_len:], dtype=np.int64)
    width = min(max_len, len(data_seq) + 1)
    seq = np.zeros((1, width), dtype=np.int64)
    seq[0, width - len(data_seq) :] = data_seq
    return Batch(
        torch.from_numpy(seq), torch.zeros(1, dtype=torch.long), torch.tensor([max_len - width]), torch.zeros(1, dtype=torch.long)
    )
