"""Interaction logs as rows of (user, item, timestamp): the shared reader behind every log format.

:class:`LogBuilder` turns rows into integer codes as they are read (one dict per id
column and three flat arrays, so memory grows with the rows kept, not with the longest
id), parses timestamps (numbers, or ISO-8601 date-times when the first one is not a
number) and hands the result to
:func:`diffrec.data.interactions.coded_log_to_sequence_data`: iterative k-core
filtering (``min_core``, users also need ``min_length``), a stable chronological sort per
user (without timestamps the row order is the time order) and items numbered by first
appearance.

Columns are found by :func:`find_columns`: from a header by name (the names below, or
``user_column``/``item_column``/``time_column``), or by position (``"0"``, ``"1"``, ...).
"""

from __future__ import annotations

import math
import pathlib
from array import array
from collections.abc import Sequence
from datetime import datetime

import numpy as np

from diffrec.config import DataConfig
from diffrec.data.dataset import SequenceData
from diffrec.data.formats.base import short
from diffrec.data.interactions import coded_log_to_sequence_data
from diffrec.errors import DataError

USER_NAMES = ("user_id", "user", "userid", "uid", "user_id_remap", "reviewerid", "visitorid", "username")
ITEM_NAMES = ("item_id", "item", "itemid", "iid", "movie_id", "movieid", "product_id", "productid", "asin", "business_id")
TIME_NAMES = ("timestamp", "time", "ts", "unix_time", "unixreviewtime", "datetime", "date")

_EPOCH = datetime(1970, 1, 1)


class LogBuilder:
    """Accumulate (user, item, timestamp) rows of one file as integer codes."""

    def __init__(self, file: pathlib.Path, *, timestamps: bool) -> None:
        self.file = file
        self.users: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self.user_codes = array("q")
        self.item_codes = array("q")
        self.times = array("d") if timestamps else None
        self._numeric_times: bool | None = None
        #: set by a reader whose file began with a header row
        self.had_header = False

    def __len__(self) -> int:
        return len(self.user_codes)

    def add(self, lineno: int, user: str, item: str, stamp: object = None) -> None:
        if not user:
            raise DataError(f"{self.file}:{lineno}: empty user id")
        if not item:
            raise DataError(f"{self.file}:{lineno}: empty item id")
        self.user_codes.append(self.users.setdefault(user, len(self.users)))
        self.item_codes.append(self.items.setdefault(item, len(self.items)))
        if self.times is not None:
            self.times.append(self._timestamp(lineno, stamp))

    def _timestamp(self, lineno: int, value: object) -> float:
        """Seconds: a number, or an ISO-8601 date-time when the file's first timestamp is not a number."""
        if isinstance(value, bool) or value is None:
            raise DataError(f"{self.file}:{lineno}: missing timestamp")
        if isinstance(value, (int, float)):
            number = float(value) if abs(value) < 1e300 else math.inf
            if not math.isfinite(number):
                raise DataError(f"{self.file}:{lineno}: timestamp {short(value)} is not a finite number")
            return number
        text = str(value).strip()
        if self._numeric_times is None:
            self._numeric_times = _is_float(text)
        if self._numeric_times:
            if not _is_float(text):
                hint = " (a header must name the user, item and timestamp columns)" if lineno == 1 else ""
                raise DataError(f"{self.file}:{lineno}: timestamp {short(text)} is not a number{hint}")
            number = float(text)
            if not math.isfinite(number):
                raise DataError(f"{self.file}:{lineno}: timestamp {short(text)} is not a finite number")
            return number
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            if lineno == 1:
                raise DataError(f"{self.file}:1: timestamp {short(text)} is not a number (a header must name the user, item and timestamp columns)") from None
            raise DataError(f"{self.file}:{lineno}: timestamp {short(text)} is neither a number nor an ISO-8601 date") from None
        return (stamp - _EPOCH).total_seconds() if stamp.tzinfo is None else stamp.timestamp()

    def build(self, options: DataConfig, *, name: str, fmt: str) -> SequenceData:
        if not len(self):
            raise DataError(f"{self.file}: no interactions" + (" (only a header)" if self.had_header else ""))
        return coded_log_to_sequence_data(
            np.frombuffer(self.user_codes, dtype=np.int64).copy(),
            list(self.users),
            np.frombuffer(self.item_codes, dtype=np.int64).copy(),
            list(self.items),
            None if self.times is None else np.frombuffer(self.times, dtype=np.float64).copy(),
            k=options.min_core,
            min_length=options.min_length,
            name=name,
            source=str(self.file),
            meta={"format": fmt, "timestamps": self.times is not None},
        )


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def looks_like_header(cells: Sequence[str]) -> bool:
    """True when a first row names columns rather than holding an interaction."""
    known = set(USER_NAMES) | set(ITEM_NAMES) | set(TIME_NAMES)
    return any(cell in known or cell.split(":", 1)[0] in known for cell in cells)


def column_position(spec: str) -> int | None:
    """A column given as a 0-based position ("2"), or None for a name."""
    spec = spec.strip()
    return int(spec) if spec.isdigit() and spec.isascii() and len(spec) < 6 else None


def _find(file: pathlib.Path, cells: list[str] | None, spec: str, names: tuple[str, ...], prefix: str, label: str, width: int) -> int | None:
    """Index of one column: ``spec`` (a name or a position), else a known name or prefix."""
    if spec:
        wanted = spec.strip().lower()
        if cells is not None and wanted in cells:
            return cells.index(wanted)
        position = column_position(wanted)
        if position is not None:
            if position >= width:
                raise DataError(f"{file}:1: {label} column {position} does not exist (rows have {width} columns, numbered from 0)")
            return position
        if cells is None:
            raise DataError(f"{file}: no header to find the {label} column {short(spec)} in; give its 0-based position")
        raise DataError(f"{file}:1: no column named {short(spec)} in header {short(','.join(cells), 100)}")
    if cells is None:
        return None
    for candidate in names:
        if candidate in cells:
            return cells.index(candidate)
    for i, cell in enumerate(cells):
        if cell.startswith(prefix):
            return i
    return None


def find_columns(file: pathlib.Path, cells: list[str] | None, width: int, options: DataConfig) -> tuple[int, int, int | None]:
    """(user, item, timestamp) column indexes; ``cells`` is the lower-cased header or None.

    Without a header and without positions given, the columns are ``user,item``,
    ``user,item,timestamp`` or ``user,item,rating,timestamp`` by the row width.
    """
    user = _find(file, cells, options.user_column, USER_NAMES, "user", "user", width)
    item = _find(file, cells, options.item_column, ITEM_NAMES, "item", "item", width)
    time = _find(file, cells, options.time_column, TIME_NAMES, "timestamp", "timestamp", width)
    if cells is not None:
        for label, idx in (("user", user), ("item", item)):
            if idx is None:
                raise DataError(f"{file}:1: header {short(','.join(cells), 100)} has no {label} column (e.g. {label}_id)")
        return user, item, time  # type: ignore[return-value]
    if user is None or item is None:
        default = {2: (0, 1, None), 3: (0, 1, 2), 4: (0, 1, 3)}.get(width)
        if default is None:
            raise DataError(
                f"{file}:1: {width} columns without a header; expected user,item[,timestamp] or "
                "user,item,rating,timestamp (add a header naming user_id, item_id, timestamp, or give --user-column/--item-column positions)"
            )
        user = default[0] if user is None else user
        item = default[1] if item is None else item
        if time is None and not options.time_column:
            time = default[2]
    return user, item, time
