"""Review dumps, one record per line, plain or gzipped: Amazon and Steam.

``amazon``: the Amazon review dumps of 2014 and 2018 (``reviewerID``, ``asin``,
``unixReviewTime``) and of 2023 (``user_id``, ``parent_asin``, ``timestamp`` in ms), JSON
per line (``reviews_Beauty_5.json.gz``, ``Beauty_5.json.gz``, ``Beauty.jsonl.gz``).

``steam``: the Steam review dump (``steam_reviews.json.gz``, Kang and McAuley), whose
lines are Python literals (``{u'username': u'...', u'product_id': u'725280', u'date':
u'2017-12-17', ...}``): the user is ``user_id`` where a record has one, else
``username``; the item ``product_id``; the time ``date``. Python literals are parsed with
``ast.literal_eval``, which evaluates no code; a line longer than :data:`MAX_LINE` is
refused.

``user_column``/``item_column``/``time_column`` name other keys. Both are interaction
logs: k-core filtered, sorted by time per user (see :mod:`diffrec.data.formats.logs`).
"""

from __future__ import annotations

import ast
import json
import pathlib
import warnings
from typing import Any, ClassVar

from diffrec.config import DataConfig
from diffrec.data.dataset import SequenceData
from diffrec.data.formats.base import DataFormat, numbered_lines, read_text, short
from diffrec.data.formats.logs import LogBuilder
from diffrec.errors import DataError
from diffrec.registry import register

#: Longest record line accepted (Steam reviews are a few kilobytes).
MAX_LINE = 1 << 20
_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def parse_record(file: pathlib.Path, lineno: int, line: str) -> dict[str, Any]:
    """One record: JSON, or a Python literal (as the Steam and older Amazon dumps write)."""
    if len(line) > MAX_LINE:
        raise DataError(f"{file}:{lineno}: a record longer than {MAX_LINE:,} characters")
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        try:
            record = _literal(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(f"{file}:{lineno}: neither a JSON object nor a Python dict literal") from None
    if not isinstance(record, dict):
        raise DataError(f"{file}:{lineno}: expected an object with the record's fields, got {short(record)}")
    return record


def _literal(text: str) -> Any:
    """``ast.literal_eval`` (which evaluates no code) without the parser's warnings on odd input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.literal_eval(text)


def _first_record(head: bytes) -> dict[str, Any] | None:
    line = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    for parse in (json.loads, _literal):
        try:
            record = parse(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return record if isinstance(record, dict) else None
    return None


class ReviewDump(DataFormat):
    """Shared reading of a review dump: pick the user, item and time keys of every record."""

    suffixes = _SUFFIXES
    #: candidate keys, first present wins
    user_keys: ClassVar[tuple[str, ...]] = ()
    item_keys: ClassVar[tuple[str, ...]] = ()
    time_keys: ClassVar[tuple[str, ...]] = ()

    def sniff(self, head: bytes) -> bool:
        record = _first_record(head)
        return record is not None and any(k in record for k in self.item_keys) and any(k in record for k in self.user_keys)

    def load(self, file: pathlib.Path, options: DataConfig, name: str) -> SequenceData:
        users = (options.user_column,) if options.user_column else self.user_keys
        items = (options.item_column,) if options.item_column else self.item_keys
        times = (options.time_column,) if options.time_column else self.time_keys
        log = LogBuilder(file, timestamps=True)
        for lineno, line in numbered_lines(read_text(file)):
            record = parse_record(file, lineno, line)
            user = _field(file, lineno, record, users, "user")
            item = _field(file, lineno, record, items, "item")
            stamp = record.get(next((k for k in times if k in record), ""), None)
            if stamp is None:
                raise DataError(f"{file}:{lineno}: no time field (looked for {', '.join(times)})")
            log.add(lineno, user, item, stamp)
        return log.build(options, name=name, fmt=self.registry_name)


def _field(file: pathlib.Path, lineno: int, record: dict[str, Any], keys: tuple[str, ...], label: str) -> str:
    key = next((k for k in keys if k in record), None)
    if key is None:
        raise DataError(f"{file}:{lineno}: no {label} field (looked for {', '.join(keys)})")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{file}:{lineno}: {label} id {short(value)} is neither a string nor an integer")
    if isinstance(value, int) and value.bit_length() > 64:
        raise DataError(f"{file}:{lineno}: {label} id {short(value)} is out of range")
    return str(value).strip()


@register("data_format", "amazon")
class AmazonReviews(ReviewDump):
    """Amazon review dump, JSON lines, optionally gzipped (2014/2018: reviewerID, asin, unixReviewTime; 2023)."""

    user_keys = ("reviewerID", "user_id")
    item_keys = ("parent_asin", "asin")
    time_keys = ("unixReviewTime", "timestamp")


@register("data_format", "steam")
class SteamReviews(ReviewDump):
    """Steam review dump (steam_reviews.json.gz: username or user_id, product_id, date), Python-literal lines."""

    user_keys = ("user_id", "username")
    item_keys = ("product_id",)
    time_keys = ("date",)
