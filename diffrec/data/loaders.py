"""Load a dataset file (or a folder holding one) into a :class:`SequenceData`.

Supported formats (``fmt`` name, file pattern):

``sequences`` (``*.txt``)
    One line per user: a user id, then that user's item ids in time order, separated by
    whitespace. Blank lines are skipped. The user id is an opaque label; item ids must
    be integers. If the item ids are exactly ``1..N`` they are kept unchanged (so ids
    match the authors' files); otherwise (0-based ids, gaps, negatives) they are
    re-indexed to ``1..N`` in increasing numeric order.
``pickle`` (``*.pkl``, ``*.pickle``)
    The DiffuRec authors' ``dataset.pkl``: a dict with ``train``/``val``/``test`` (dicts
    from a 0-based user index to lists of item ids; ``val`` and ``test`` hold one item
    each) and optional ``umap``/``smap`` (original user / item id -> internal id). The
    full sequence is ``train + val + test``; users come in index order, labelled with
    their original id from ``umap``. Read with :func:`safe_load`, never plain pickle.
``csv`` / ``tsv`` (``*.csv``, ``*.tsv``)
    An interaction log, one row per interaction. With a header, the user, item and
    timestamp columns are found by name (``user``/``user_id``/``userid``/``uid``,
    ``item``/``item_id``/``itemid``/``iid``/``movie_id``/``product_id``/``asin``,
    ``timestamp``/``time``/``ts``/``datetime``/``date``, in any order, other columns
    ignored). Without one, columns are positional: ``user,item``, ``user,item,timestamp``
    or ``user,item,rating,timestamp``. The delimiter is a tab for ``.tsv``; for ``.csv``
    it is sniffed from the first line (comma, tab, semicolon or bar).
``inter`` (``*.inter``)
    A RecBole atomic file: tab-separated with a ``name:type`` header such as
    ``user_id:token  item_id:token  rating:float  timestamp:float``.

Logs go through :func:`diffrec.data.interactions.log_to_sequence_data`: iterative k-core
filtering (``min_core``), a stable chronological sort per user (without a timestamp
column the row order is the time order) and item numbering by first appearance.
Timestamps must be numbers or ISO-8601 date-times.

Short users: every user needs at least 3 items for the leave-one-out split. For the
sequence formats (``.txt``, ``.pkl``) a shorter user is an error naming the user and line
unless ``drop_short=True``; logs always drop them as part of the core filter.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import os
import pathlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np

from diffrec.data.dataset import MIN_SEQUENCE_LENGTH, SequenceData
from diffrec.data.interactions import log_to_sequence_data
from diffrec.data.safe_pickle import safe_load
from diffrec.errors import DataError

#: Format name -> file name suffixes it is chosen for.
FORMATS: dict[str, tuple[str, ...]] = {
    "sequences": (".txt",),
    "pickle": (".pkl", ".pickle"),
    "csv": (".csv",),
    "tsv": (".tsv",),
    "inter": (".inter",),
}

_USER_NAMES = ("user_id", "user", "userid", "uid", "user_id_remap", "reviewerid", "visitorid")
_ITEM_NAMES = ("item_id", "item", "itemid", "iid", "movie_id", "movieid", "product_id", "productid", "asin", "business_id")
_TIME_NAMES = ("timestamp", "time", "ts", "unix_time", "unixreviewtime", "datetime", "date")


def supported_formats() -> str:
    """The accepted formats and suffixes, for error messages."""
    return ", ".join(f"{fmt} ({'/'.join(suffixes)})" for fmt, suffixes in FORMATS.items())


def load_dataset(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    fmt: str = "auto",
    min_core: int = 5,
    drop_short: bool = False,
    delimiter: str | None = None,
    user_field: str | None = None,
    item_field: str | None = None,
    time_field: str | None = None,
) -> SequenceData:
    """Load ``path`` (a file or a folder holding one) into a :class:`SequenceData`.

    ``fmt`` is ``"auto"`` (choose by suffix) or one of :data:`FORMATS`. A folder is
    searched for ``sequences.txt``, then ``dataset.pkl``, then a single ``*.inter``,
    ``*.csv`` or ``*.tsv``. ``name`` defaults to the folder name for the generic file
    names ``sequences.txt``/``dataset.pkl`` and to the file stem otherwise.

    ``min_core`` (logs only) is the k of the k-core filter. ``drop_short`` (sequence
    formats only) drops users with fewer than 3 items instead of raising. ``delimiter``
    overrides the sniffed CSV delimiter; ``user_field``/``item_field``/``time_field``
    name the log columns when the built-in names do not match.
    """
    file = _resolve(pathlib.Path(path))
    fmt = _choose_format(file, fmt)
    if name is None:
        generic = file.name in ("sequences.txt", "dataset.pkl")
        name = file.parent.resolve().name if generic else file.stem
        name = name or file.stem
    if fmt == "sequences":
        return load_sequences_txt(file, name=name, drop_short=drop_short)
    if fmt == "pickle":
        return load_authors_pickle(file, name=name, drop_short=drop_short)
    fields = {"user_field": user_field, "item_field": item_field, "time_field": time_field}
    if fmt == "inter":
        return load_recbole_inter(file, name=name, min_core=min_core, **fields)
    if delimiter is None and fmt == "tsv":
        delimiter = "\t"
    return load_interaction_csv(file, name=name, min_core=min_core, delimiter=delimiter, **fields)


# --------------------------------------------------------------------- dispatch
def _resolve(path: pathlib.Path) -> pathlib.Path:
    """The data file for ``path``: the path itself, or the file found in a folder."""
    if not path.exists():
        raise DataError(f"{path}: dataset not found")
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: not a regular file or folder")
    for preferred in ("sequences.txt", "dataset.pkl"):
        if (path / preferred).is_file():
            return path / preferred
    logs = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".inter", ".csv", ".tsv"))
    if len(logs) == 1:
        return logs[0]
    if not logs:
        raise DataError(f"{path}: no dataset file in folder (looked for sequences.txt, dataset.pkl, *.inter, *.csv, *.tsv)")
    names = ", ".join(p.name for p in logs)
    raise DataError(f"{path}: several interaction logs in folder ({names}); pass the file path instead")


def _choose_format(file: pathlib.Path, fmt: str) -> str:
    """The format name for ``file``: ``fmt`` when given, else from the suffix."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"{file}: unknown format {fmt!r}; supported: auto, {', '.join(FORMATS)}")
        return fmt
    suffix = file.suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    raise DataError(f"{file}: unknown dataset file type {suffix or '(no suffix)'!r}; supported: {supported_formats()}")


def _read_text(file: pathlib.Path) -> str:
    """The whole file as text, or a one-line DataError when it is empty or unreadable."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text (byte offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if not text.strip():
        raise DataError(f"{file}: empty file")
    return text


def _short_user_error(file: pathlib.Path, user: str, length: int, where: str) -> DataError:
    return DataError(
        f"{file}{where}: user {user} has {length} item(s); leave-one-out needs at least "
        f"{MIN_SEQUENCE_LENGTH} (pass drop_short=True to drop such users)"
    )


def _finish_sequences(
    file: pathlib.Path,
    sequences: list[list[int]],
    user_ids: list[str],
    *,
    name: str,
    fmt: str,
    dropped: int,
) -> SequenceData:
    """Keep ids that are exactly 1..N, otherwise re-index them in increasing order."""
    if not sequences:
        raise DataError(f"{file}: no users with at least {MIN_SEQUENCE_LENGTH} items")
    distinct = sorted({item for seq in sequences for item in seq})
    reindexed = distinct[0] != 1 or distinct[-1] != len(distinct)
    if reindexed:
        mapping = {item: idx for idx, item in enumerate(distinct, start=1)}
        sequences = [[mapping[item] for item in seq] for seq in sequences]
    return SequenceData(
        sequences=sequences,
        num_items=len(distinct),
        name=name,
        user_ids=user_ids,
        item_ids=[""] + [str(item) for item in distinct],
        source=str(file),
        meta={"format": fmt, "reindexed": reindexed, "dropped_short_users": dropped},
    )


# ------------------------------------------------------------- sequence files
def load_sequences_txt(file: str | os.PathLike[str], *, name: str = "dataset", drop_short: bool = False) -> SequenceData:
    """Load a ``sequences.txt`` file: ``user item item ...`` per line, in time order."""
    file = pathlib.Path(file)
    text = _read_text(file)
    sequences: list[list[int]] = []
    user_ids: list[str] = []
    first_line: dict[str, int] = {}
    dropped = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        user = parts[0]
        try:
            items = list(map(int, parts[1:]))
        except ValueError:
            bad = next(tok for tok in parts[1:] if not _is_int(tok))
            raise DataError(f"{file}:{lineno}: item id {bad[:40]!r} is not an integer") from None
        if user in first_line:
            raise DataError(f"{file}:{lineno}: duplicate user id {user} (first on line {first_line[user]})")
        first_line[user] = lineno
        if len(items) < MIN_SEQUENCE_LENGTH:
            if not drop_short:
                raise _short_user_error(file, user, len(items), f":{lineno}")
            dropped += 1
            continue
        sequences.append(items)
        user_ids.append(user)
    return _finish_sequences(file, sequences, user_ids, name=name, fmt="sequences", dropped=dropped)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def load_authors_pickle(file: str | os.PathLike[str], *, name: str = "dataset", drop_short: bool = False) -> SequenceData:
    """Load the DiffuRec authors' ``dataset.pkl`` (train/val/test/umap/smap) safely."""
    file = pathlib.Path(file)
    if file.is_file() and file.stat().st_size == 0:
        raise DataError(f"{file}: empty file")
    data = safe_load(file)
    if not isinstance(data, dict):
        raise DataError(f"{file}: expected a dict with train/val/test, got {type(data).__name__}")
    missing = [key for key in ("train", "val", "test") if key not in data]
    if missing:
        raise DataError(f"{file}: missing key(s) {', '.join(missing)} (expected train/val/test/umap/smap)")
    parts = {}
    for key in ("train", "val", "test", "umap", "smap"):
        value = data.get(key, {} if key in ("umap", "smap") else None)
        if not isinstance(value, dict):
            raise DataError(f"{file}: {key} must be a dict, got {type(value).__name__}")
        parts[key] = value
    train, val, test = parts["train"], parts["val"], parts["test"]
    if not (train.keys() == val.keys() == test.keys()):
        raise DataError(f"{file}: train, val and test must have the same users ({len(train)}/{len(val)}/{len(test)})")
    user_label = _inverse_map(file, "umap", parts["umap"])
    item_label = _inverse_map(file, "smap", parts["smap"])
    keys = list(train.keys())
    if not all(type(u) is int for u in keys):
        bad = next(u for u in keys if type(u) is not int)
        raise DataError(f"{file}: train has a non-integer user key {bad!r:.40}")
    sequences: list[list[int]] = []
    user_ids: list[str] = []
    dropped = 0
    for u in sorted(keys):
        for key in ("val", "test"):
            value = parts[key][u]
            if not isinstance(value, list) or len(value) != 1:
                raise DataError(f"{file}: {key}[{u}] must be a list of one item, got {value!r:.60}")
        if not isinstance(train[u], list):
            raise DataError(f"{file}: train[{u}] must be a list, got {type(train[u]).__name__}")
        seq = train[u] + val[u] + test[u]
        if not all(type(i) is int for i in seq):
            bad = next(i for i in seq if type(i) is not int)
            raise DataError(f"{file}: user {u} has a non-integer item {bad!r:.40}")
        label = str(user_label.get(u, u))
        if len(seq) < MIN_SEQUENCE_LENGTH:
            if not drop_short:
                raise _short_user_error(file, label, len(seq), f" (train[{u}])")
            dropped += 1
            continue
        sequences.append(seq)
        user_ids.append(label)
    result = _finish_sequences(file, sequences, user_ids, name=name, fmt="pickle", dropped=dropped)
    if item_label:
        result.item_ids = [""] + [str(item_label.get(int(i), i)) for i in result.item_ids[1:]]
    return result


def _inverse_map(file: pathlib.Path, key: str, mapping: dict) -> dict[int, Any]:
    """Invert ``umap``/``smap`` (original id -> internal int id); ids must be unique."""
    inverse: dict[int, Any] = {}
    for original, internal in mapping.items():
        if type(internal) is not int:
            raise DataError(f"{file}: {key} maps {original!r:.40} to a non-integer {internal!r:.40}")
        if internal in inverse:
            raise DataError(f"{file}: {key} maps both {inverse[internal]!r:.40} and {original!r:.40} to {internal}")
        inverse[internal] = original
    return inverse


# ------------------------------------------------------------ interaction logs
def load_interaction_csv(
    file: str | os.PathLike[str],
    *,
    name: str = "dataset",
    min_core: int = 5,
    delimiter: str | None = None,
    user_field: str | None = None,
    item_field: str | None = None,
    time_field: str | None = None,
) -> SequenceData:
    """Load a CSV/TSV interaction log (see the module docstring for the columns)."""
    file = pathlib.Path(file)
    text = _read_text(file)
    if delimiter is None:
        delimiter = _sniff_delimiter(text)
    with _paused_gc():
        if delimiter == "\t":
            rows = _split_lines(text, "\t")
        else:
            reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
            rows = [(reader.line_num, row) for row in reader if len(row) > 1 or (row and row[0].strip())]
    overrides = (user_field, item_field, time_field)
    header = [cell.strip().lower() for cell in rows[0][1]]
    if any(overrides) or _looks_like_header(header):
        columns = _columns_by_name(file, header, overrides)
        rows = rows[1:]
    else:
        columns = _columns_by_position(file, len(header))
    return _log_rows_to_data(file, rows, columns, name=name, min_core=min_core, fmt="tsv" if delimiter == "\t" else "csv")


def load_recbole_inter(
    file: str | os.PathLike[str],
    *,
    name: str = "dataset",
    min_core: int = 5,
    user_field: str | None = None,
    item_field: str | None = None,
    time_field: str | None = None,
) -> SequenceData:
    """Load a RecBole atomic ``.inter`` file (tab-separated, ``name:type`` header)."""
    file = pathlib.Path(file)
    text = _read_text(file)
    with _paused_gc():
        rows = _split_lines(text, "\t")
    header = [cell.strip().split(":", 1)[0].lower() for cell in rows[0][1]]
    if not all(":" in cell for cell in rows[0][1]):
        raise DataError(f"{file}:1: a RecBole .inter header must name every column as name:type, got {rows[0][1]!r:.80}")
    columns = _columns_by_name(file, header, (user_field, item_field, time_field))
    return _log_rows_to_data(file, rows[1:], columns, name=name, min_core=min_core, fmt="inter")


@contextlib.contextmanager
def _paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of small lists are built.

    The rows hold no reference cycles, and collections triggered by the allocations
    alone would otherwise make parsing a million-row log several times slower.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _split_lines(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank line, split on ``delimiter``."""
    return [(n, line.split(delimiter)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV file: the first of comma, tab, semicolon, bar on line one."""
    first = next(line for line in text.splitlines() if line.strip())
    for candidate in (",", "\t", ";", "|"):
        if candidate in first:
            return candidate
    return ","


def _looks_like_header(cells: list[str]) -> bool:
    """True when a first row names columns rather than holding an interaction."""
    known = set(_USER_NAMES) | set(_ITEM_NAMES) | set(_TIME_NAMES)
    return any(cell in known or cell.split(":", 1)[0] in known for cell in cells)


def _find_column(cells: list[str], override: str | None, names: tuple[str, ...], prefix: str) -> int | None:
    """Index of a column: the override name, else a known name, else a name starting with ``prefix``."""
    if override is not None:
        wanted = override.strip().lower()
        return cells.index(wanted) if wanted in cells else -1
    for candidate in names:
        if candidate in cells:
            return cells.index(candidate)
    for i, cell in enumerate(cells):
        if cell.startswith(prefix):
            return i
    return None


def _columns_by_name(file: pathlib.Path, cells: list[str], overrides: tuple) -> tuple[int, int, int | None]:
    """(user, item, timestamp) column indexes from a header; timestamp may be absent."""
    user = _find_column(cells, overrides[0], _USER_NAMES, "user")
    item = _find_column(cells, overrides[1], _ITEM_NAMES, "item")
    time = _find_column(cells, overrides[2], _TIME_NAMES, "timestamp")
    for label, idx, override in (("user", user, overrides[0]), ("item", item, overrides[1]), ("timestamp", time, overrides[2])):
        if idx == -1:
            raise DataError(f"{file}:1: no column named {override!r} in header {cells!r:.100}")
        if idx is None and label != "timestamp":
            raise DataError(f"{file}:1: header {cells!r:.100} has no {label} column (e.g. {label}_id)")
    return user, item, time


def _columns_by_position(file: pathlib.Path, width: int) -> tuple[int, int, int | None]:
    """(user, item, timestamp) column indexes for a log without a header."""
    if width == 2:
        return 0, 1, None
    if width == 3:
        return 0, 1, 2
    if width == 4:
        return 0, 1, 3
    raise DataError(
        f"{file}:1: {width} columns without a header; expected user,item[,timestamp] or "
        "user,item,rating,timestamp (add a header naming user_id, item_id, timestamp)"
    )


def _log_rows_to_data(
    file: pathlib.Path,
    rows: list[tuple[int, list[str]]],
    columns: tuple[int, int, int | None],
    *,
    name: str,
    min_core: int,
    fmt: str,
) -> SequenceData:
    """Pick the columns out of parsed rows and run the shared log pipeline."""
    if not rows:
        raise DataError(f"{file}: no interactions (only a header)")
    ucol, icol, tcol = columns
    needed = max(c for c in columns if c is not None) + 1
    for lineno, row in rows:
        if len(row) < needed:
            raise DataError(f"{file}:{lineno}: expected at least {needed} columns, got {len(row)}")
    users = [row[ucol].strip() for _, row in rows]
    items = [row[icol].strip() for _, row in rows]
    for label, values in (("user", users), ("item", items)):
        if "" in values:
            raise DataError(f"{file}:{rows[values.index('')][0]}: empty {label} id")
    timestamps = None
    if tcol is not None:
        timestamps = _parse_timestamps(file, [row[tcol].strip() for _, row in rows], [n for n, _ in rows])
    return log_to_sequence_data(
        np.array(users),
        np.array(items),
        timestamps,
        k=min_core,
        name=name,
        source=str(file),
        meta={"format": fmt, "timestamps": tcol is not None},
    )


def _parse_timestamps(file: pathlib.Path, values: list[str], linenos: list[int]) -> np.ndarray:
    """Timestamps as float seconds: numbers, or ISO-8601 date-times when none is a number."""
    try:
        stamps = np.array(values, dtype=np.float64)
    except ValueError:
        stamps = None
    if stamps is not None:
        if not np.isfinite(stamps).all():
            bad = int(np.flatnonzero(~np.isfinite(stamps))[0])
            raise DataError(f"{file}:{linenos[bad]}: timestamp {values[bad][:40]!r} is not a finite number")
        return stamps
    numeric = [_is_float(v) for v in values]
    if any(numeric):
        bad = numeric.index(False)
        hint = " (a header must name the user, item and timestamp columns)" if linenos[bad] == 1 else ""
        raise DataError(f"{file}:{linenos[bad]}: timestamp {values[bad][:40]!r} is not a number{hint}")
    out = np.empty(len(values), dtype=np.float64)
    for pos, value in enumerate(values):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            raise DataError(f"{file}:{linenos[pos]}: timestamp {value[:40]!r} is neither a number nor an ISO-8601 date") from None
        if stamp.tzinfo is None:
            out[pos] = (stamp - datetime(1970, 1, 1)).total_seconds()
        else:
            out[pos] = stamp.timestamp()
    return out


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
