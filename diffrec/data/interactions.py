"""The shared pipeline that turns an interaction log into per-user sequences.

A log is three parallel columns: user, item and timestamp, one row per interaction.
:func:`log_to_sequence_data` applies, in order:

1. iterative k-core filtering (:func:`kcore_filter`) until every remaining user has at
   least ``max(k, 3)`` interactions and every remaining item at least ``k``; repeated
   (user, item) pairs count as separate interactions, as in the raw log;
2. chronological ordering per user (:func:`to_sequences`): a stable sort by timestamp,
   so interactions with equal timestamps keep their file order;
3. re-indexing: users in order of their first row in the filtered log, items
   numbered 1..N in order of first appearance when the sequences are read user by
   user, each in time order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffrec.data.dataset import MIN_SEQUENCE_LENGTH, SequenceData
from diffrec.errors import DataError


def _codes(values: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..K-1 for ``values`` and the distinct values (sorted) they stand for."""
    uniques, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.reshape(-1).astype(np.int64, copy=False), uniques


def kcore_filter(
    users: Sequence | np.ndarray,
    items: Sequence | np.ndarray,
    k: int,
    *,
    user_k: int | None = None,
) -> np.ndarray:
    """Boolean mask of the interactions that survive iterative k-core filtering.

    Rows are removed until every remaining user has at least ``user_k`` (default ``k``)
    interactions and every remaining item at least ``k``; each removal can push other
    users or items below the threshold, so the filter repeats until nothing changes.
    ``k <= 1`` (with ``user_k <= 1``) keeps everything.
    """
    user_k = k if user_k is None else user_k
    if len(users) != len(items):
        raise DataError(f"kcore_filter: {len(users)} users but {len(items)} items")
    n = len(users)
    keep = np.ones(n, dtype=bool)
    if n == 0 or (k <= 1 and user_k <= 1):
        return keep
    ucodes, uniq_users = _codes(users)
    icodes, uniq_items = _codes(items)
    while True:
        ucount = np.bincount(ucodes[keep], minlength=len(uniq_users))
        icount = np.bincount(icodes[keep], minlength=len(uniq_items))
        new_keep = keep & (ucount[ucodes] >= user_k) & (icount[icodes] >= k)
        if np.array_equal(new_keep, keep):
            return keep
        keep = new_keep


def _chronological_order(user_codes: np.ndarray, timestamps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row order that groups users (by first row) and sorts each stably by time.

    Returns ``(order, bounds, users_by_first_row)``: the row permutation, the offsets
    where a new user starts in it, and the user codes in output order.
    """
    n = len(user_codes)
    num_users = int(user_codes.max()) + 1
    rows = np.arange(n, dtype=np.int64)
    first_row = np.full(num_users, n, dtype=np.int64)
    np.minimum.at(first_row, user_codes, rows)
    users_by_first_row = np.argsort(first_row, kind="stable")
    rank = np.empty(num_users, dtype=np.int64)
    rank[users_by_first_row] = np.arange(num_users)
    user_rank = rank[user_codes]
    keys = (rows, user_rank) if timestamps is None else (rows, np.asarray(timestamps), user_rank)
    order = np.lexsort(keys)
    bounds = np.flatnonzero(np.diff(user_rank[order])) + 1
    return order, bounds, users_by_first_row


def to_sequences(
    users: Sequence | np.ndarray,
    items: Sequence | np.ndarray,
    timestamps: Sequence | np.ndarray | None = None,
) -> tuple[list, list[list]]:
    """Group a log into chronological per-user sequences.

    Returns ``(user_order, sequences)``: users in order of their first row, and for each
    the items sorted by timestamp with a stable sort (ties, and a missing ``timestamps``,
    keep the row order).
    """
    items = np.asarray(items)
    n = len(users)
    if len(items) != n or (timestamps is not None and len(timestamps) != n):
        raise DataError("to_sequences: users, items and timestamps must have the same length")
    if n == 0:
        return [], []
    user_codes, uniq_users = _codes(users)
    order, bounds, users_by_first_row = _chronological_order(user_codes, timestamps)
    sequences = [chunk.tolist() for chunk in np.split(items[order], bounds)]
    return uniq_users[users_by_first_row].tolist(), sequences


def log_to_sequence_data(
    users: Sequence | np.ndarray,
    items: Sequence | np.ndarray,
    timestamps: Sequence | np.ndarray | None,
    *,
    k: int = 5,
    name: str = "dataset",
    source: str = "",
    meta: dict | None = None,
) -> SequenceData:
    """Run the whole log pipeline (k-core, chronological order, re-indexing).

    Users are kept only with at least ``max(k, 3)`` interactions, so every sequence
    supports the leave-one-out split; the item threshold is ``k``.
    """
    if k < 0:
        raise DataError(f"{name}: k-core threshold must be >= 0, got {k}")
    n_rows = len(users)
    keep = kcore_filter(users, items, k, user_k=max(k, MIN_SEQUENCE_LENGTH))
    users = np.asarray(users)[keep]
    items = np.asarray(items)[keep]
    if timestamps is not None:
        timestamps = np.asarray(timestamps)[keep]
    if len(users) == 0:
        where = f"{source}: " if source else f"{name}: "
        raise DataError(
            f"{where}no interactions left after {k}-core filtering ({n_rows} rows; "
            f"every user needs >= {max(k, MIN_SEQUENCE_LENGTH)} and every item >= {k} interactions)"
        )
    user_codes, uniq_users = _codes(users)
    item_codes, uniq_items = _codes(items)
    order, bounds, users_by_first_row = _chronological_order(user_codes, timestamps)
    flat = item_codes[order]
    _, first_seen = np.unique(flat, return_index=True)
    by_first_seen = np.argsort(first_seen, kind="stable")
    new_id = np.empty(len(uniq_items), dtype=np.int64)
    new_id[by_first_seen] = np.arange(1, len(uniq_items) + 1)
    sequences = [chunk.tolist() for chunk in np.split(new_id[flat], bounds)]
    info = {
        "rows": n_rows,
        "rows_kept": int(len(users)),
        "kcore": k,
        "item_order": "first appearance",
    }
    if meta:
        info.update(meta)
    return SequenceData(
        sequences=sequences,
        num_items=len(uniq_items),
        name=name,
        user_ids=[str(u) for u in uniq_users[users_by_first_row].tolist()],
        item_ids=[""] + [str(i) for i in uniq_items[by_first_seen].tolist()],
        source=source,
        meta=info,
    )
