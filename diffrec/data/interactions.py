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


def _codes(values: Sequence | np.ndarray) -> tuple[np.ndarray, list]:
    """Integer codes 0..K-1 for ``values`` and the distinct values they stand for.

    Numeric arrays are coded in sorted order; anything else (strings, mixed objects) in
    order of first appearance through a dict, never through a fixed-width NumPy string
    array, whose size is rows times the longest value (a single long id would blow it up).
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        uniques, codes = np.unique(values, return_inverse=True)
        return codes.reshape(-1).astype(np.int64, copy=False), uniques.tolist()
    index: dict = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return codes, list(index)


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
    n = len(users)
    if len(items) != n or (timestamps is not None and len(timestamps) != n):
        raise DataError("to_sequences: users, items and timestamps must have the same length")
    if n == 0:
        return [], []
    items = np.asarray(items) if isinstance(items, np.ndarray) else np.array(items, dtype=object)
    user_codes, uniq_users = _codes(users)
    order, bounds, users_by_first_row = _chronological_order(user_codes, timestamps)
    sequences = [chunk.tolist() for chunk in np.split(items[order], bounds)]
    return [uniq_users[u] for u in users_by_first_row.tolist()], sequences


def log_to_sequence_data(
    users: Sequence | np.ndarray,
    items: Sequence | np.ndarray,
    timestamps: Sequence | np.ndarray | None,
    *,
    k: int = 5,
    min_length: int = MIN_SEQUENCE_LENGTH,
    name: str = "dataset",
    source: str = "",
    meta: dict | None = None,
) -> SequenceData:
    """Run the whole log pipeline (k-core, chronological order, re-indexing).

    Users are kept only with at least ``max(k, min_length)`` interactions (``min_length`` is
    at least 3, so every sequence supports the leave-one-out split); the item threshold is ``k``.
    """
    if len(users) != len(items) or (timestamps is not None and len(timestamps) != len(users)):
        raise DataError(f"{name}: users, items and timestamps must have the same length")
    user_codes, user_labels = _codes(users)
    item_codes, item_labels = _codes(items)
    stamps = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
    return coded_log_to_sequence_data(
        user_codes, user_labels, item_codes, item_labels, stamps, k=k, min_length=min_length, name=name, source=source, meta=meta
    )


def coded_log_to_sequence_data(
    user_codes: np.ndarray,
    user_labels: list,
    item_codes: np.ndarray,
    item_labels: list,
    timestamps: np.ndarray | None,
    *,
    k: int = 5,
    min_length: int = MIN_SEQUENCE_LENGTH,
    name: str = "dataset",
    source: str = "",
    meta: dict | None = None,
) -> SequenceData:
    """:func:`log_to_sequence_data` on a log whose users and items are already integer codes
    (``user_labels[c]`` is the id of code ``c``), as the streaming loaders build it."""
    if k < 0:
        raise DataError(f"{name}: k-core threshold must be >= 0, got {k}")
    min_length = max(min_length, MIN_SEQUENCE_LENGTH)
    n_rows = len(user_codes)
    keep = kcore_filter(user_codes, item_codes, k, user_k=max(k, min_length))
    user_codes, item_codes = user_codes[keep], item_codes[keep]
    if timestamps is not None:
        timestamps = timestamps[keep]
    if len(user_codes) == 0:
        where = f"{source}: " if source else f"{name}: "
        raise DataError(
            f"{where}no interactions left after {k}-core filtering ({n_rows} rows; "
            f"every user needs >= {max(k, min_length)} and every item >= {k} interactions)"
        )
    user_codes, kept_users = _compact(user_codes)
    item_codes, kept_items = _compact(item_codes)
    order, bounds, users_by_first_row = _chronological_order(user_codes, timestamps)
    flat = item_codes[order]
    _, first_seen = np.unique(flat, return_index=True)
    by_first_seen = np.argsort(first_seen, kind="stable")
    new_id = np.empty(len(kept_items), dtype=np.int64)
    new_id[by_first_seen] = np.arange(1, len(kept_items) + 1)
    sequences = [chunk.tolist() for chunk in np.split(new_id[flat], bounds)]
    info = {
        "rows": n_rows,
        "rows_kept": int(len(user_codes)),
        "kcore": k,
        "item_order": "first appearance",
    }
    if meta:
        info.update(meta)
    return SequenceData(
        sequences=sequences,
        num_items=len(kept_items),
        name=name,
        user_ids=[str(user_labels[kept_users[u]]) for u in users_by_first_row.tolist()],
        item_ids=[""] + [str(item_labels[kept_items[i]]) for i in by_first_seen.tolist()],
        source=source,
        meta=info,
    )


def _compact(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes that are left 0..K-1; return them and the old code of each new one."""
    kept, compact = np.unique(codes, return_inverse=True)
    return compact.reshape(-1).astype(np.int64, copy=False), kept
