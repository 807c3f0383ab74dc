"""The data-format contract and the helpers every format shares.

A data format is a class registered with ``@register("data_format", NAME)``. It says
which file names it claims (``suffixes``; ``preferred_names`` are looked for first when a
folder is given), may look at a file's first bytes to tell itself apart from a format
with the same suffix (``sniff``), and loads a file into a :class:`SequenceData`
following the loader options of a :class:`DataConfig`. Detection, folder search, the
help text and ``diffrec list`` all come from the registry, so a plugin adds a format
with one class.

Every format raises only :class:`DataError` (one line, naming the file and, where there
is one, the line) on bad input, and reads a file in memory proportional to its size.
"""

from __future__ import annotations

import gzip
import io
import pathlib
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

from diffrec.config import DataConfig
from diffrec.data.dataset import MIN_SEQUENCE_LENGTH, SequenceData
from diffrec.errors import DataError

#: Largest decompressed size accepted per compressed byte (text logs compress 4-10x).
MAX_GZIP_RATIO = 100
#: Item ids of the formats whose ids are integers must fit in int64 (they are re-indexed to 1..N).
MIN_INT_ID, MAX_INT_ID = -(2**63), 2**63 - 1


class DataFormat:
    """A dataset file format (see the module docstring)."""

    registry_name: ClassVar[str] = ""
    #: file name endings this format claims, lower-case (".csv", ".json.gz")
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: exact file names looked for first when a folder is given, in this order
    preferred_names: ClassVar[tuple[str, ...]] = ()
    #: the rank of ``preferred_names`` among all formats' (lower is looked for first)
    search_rank: ClassVar[int] = 100
    #: whether any file with one of ``suffixes`` in a folder is a candidate (logs), or only ``preferred_names``
    any_name_in_folder: ClassVar[bool] = True
    #: whether the format is an interaction log (k-core filtered) rather than ready sequences
    is_log: ClassVar[bool] = True

    def sniff(self, head: bytes) -> bool:
        """Whether a file that starts with ``head`` (decompressed) is in this format."""
        return True

    def load(self, file: pathlib.Path, options: DataConfig, name: str) -> SequenceData:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


# ------------------------------------------------------------------ reading
def is_gzip(file: pathlib.Path) -> bool:
    try:
        with open(file, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def read_bytes(file: pathlib.Path) -> bytes:
    """The file's bytes, decompressed when it is gzip (within :data:`MAX_GZIP_RATIO`)."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DataError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    limit = MAX_GZIP_RATIO * len(raw) + (1 << 20)
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            while chunk := fh.read(1 << 20):
                out.write(chunk)
                if out.tell() > limit:
                    raise DataError(f"{file}: decompresses to more than {MAX_GZIP_RATIO}x its size; refused as a decompression bomb")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{file}: not a readable gzip file ({exc})") from None
    return out.getvalue()


def read_text(file: pathlib.Path, encoding: str = "utf-8-sig") -> str:
    """The whole file as text, or a one-line DataError when it is empty or unreadable."""
    data = read_bytes(file)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text (byte offset {exc.start})") from None
    if not text.strip():
        raise DataError(f"{file}: empty file")
    return text


def head_bytes(file: pathlib.Path, size: int = 4096) -> bytes:
    """The first ``size`` bytes of the file's content (decompressed when gzip)."""
    try:
        with open(file, "rb") as fh:
            raw = fh.read(size)
            if raw[:2] != b"\x1f\x8b":
                return raw
            fh.seek(0)
            with gzip.GzipFile(fileobj=fh) as gz:
                return gz.read(size)
    except (OSError, EOFError, zlib.error):
        return b""


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every non-blank line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line


# ------------------------------------------------------------------ values
def short(value: Any, limit: int = 40) -> str:
    """A bounded, non-recursive rendering of an untrusted value for an error message."""
    if isinstance(value, str):
        return repr(value[:limit] + ("..." if len(value) > limit else ""))
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        digits = len(str(value)) if value.bit_length() < 4000 else None
        return str(value) if digits is not None and digits <= limit else f"<{int(value.bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"a {type(value).__name__} of {len(value)} entries"
    return f"a {type(value).__name__}"


def label(text: str, limit: int = 40) -> str:
    """A user-supplied id as text for a message, cut to ``limit`` characters."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return text if text.isprintable() else repr(text)


def check_int_id(file: pathlib.Path, value: Any, where: str) -> int:
    """``value`` as an item id: an int that fits in 64 bits (bool is not an int here)."""
    if type(value) is not int:
        raise DataError(f"{file}{where}: non-integer item {short(value)}")
    if not MIN_INT_ID <= value <= MAX_INT_ID:
        raise DataError(f"{file}{where}: item id {short(value)} does not fit in 64 bits")
    return value


def parse_int_token(file: pathlib.Path, token: str, where: str) -> int:
    """A whitespace-separated item id as an int, refusing what is not a 64-bit id."""
    body = token[1:] if token[:1] in "+-" else token
    if not body.isdigit() or not body.isascii():
        raise DataError(f"{file}{where}: item id {short(token)} is not an integer")
    if len(body) > 19 or not MIN_INT_ID <= int(token) <= MAX_INT_ID:
        raise DataError(f"{file}{where}: item id {short(token)} does not fit in 64 bits")
    return int(token)


def short_user_error(file: pathlib.Path, user: str, length: int, where: str, min_length: int) -> DataError:
    return DataError(
        f"{file}{where}: user {label(user)} has {length} item(s); leave-one-out needs at least "
        f"{min_length} (set drop_short, --drop-short, to drop such users)"
    )


class UserSequences:
    """Collects per-user sequences of a sequence file, enforcing ``min_length`` / ``drop_short``."""

    def __init__(self, file: pathlib.Path, options: DataConfig) -> None:
        self.file = file
        self.options = options
        self.sequences: list[list[int]] = []
        self.user_ids: list[str] = []
        self.dropped = 0

    def add(self, user: str, items: list[int], where: str) -> None:
        if len(items) < self.options.min_length:
            if not self.options.drop_short:
                raise short_user_error(self.file, user, len(items), where, self.options.min_length)
            self.dropped += 1
            return
        self.sequences.append(items)
        self.user_ids.append(user)

    def finish(self, *, name: str, fmt: str, num_items: int | None = None) -> SequenceData:
        return finish_sequences(self.file, self.sequences, self.user_ids, name=name, fmt=fmt, dropped=self.dropped, num_items=num_items)


def finish_sequences(
    file: pathlib.Path,
    sequences: list[list[int]],
    user_ids: list[str],
    *,
    name: str,
    fmt: str,
    dropped: int,
    num_items: int | None = None,
) -> SequenceData:
    """Keep ids that are exactly 1..N (or within a declared catalogue of ``num_items``), otherwise
    re-index them in increasing order."""
    if not sequences:
        raise DataError(f"{file}: no users with at least {MIN_SEQUENCE_LENGTH} items")
    distinct = sorted({item for seq in sequences for item in seq})
    if num_items is not None:
        if distinct[0] < 1 or distinct[-1] > num_items:
            raise DataError(f"{file}: item ids must lie in 1..{num_items} (the catalogue its folder declares), got {distinct[0] if distinct[0] < 1 else distinct[-1]}")
        return SequenceData(
            sequences=sequences,
            num_items=num_items,
            name=name,
            user_ids=user_ids,
            item_ids=[""] + [str(i) for i in range(1, num_items + 1)],
            source=str(file),
            meta={"format": fmt, "reindexed": False, "dropped_short_users": dropped},
        )
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
