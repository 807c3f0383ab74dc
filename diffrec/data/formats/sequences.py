"""``sequences.txt``: one line per user, the user id then the item ids in time order.

Blank lines are skipped. The user id is an opaque label; item ids must be integers in
0..2^63-1. If they are exactly ``1..N`` they are kept unchanged (so ids match the
authors' files); otherwise (0-based ids, gaps) they are re-indexed to ``1..N`` in
increasing numeric order. A folder written by ``diffrec data prepare`` also holds
``items.tsv`` and ``users.tsv`` (internal id, original id) and ``prepared.json``; the
original ids are then restored from them, after checking that ``sequences.txt`` still has
the checksum recorded.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from diffrec.config import DataConfig
from diffrec.data.dataset import SequenceData
from diffrec.data.formats.base import DataFormat, UserSequences, label, parse_int_token, read_text
from diffrec.errors import DataError
from diffrec.registry import register

#: written by ``diffrec data prepare`` beside sequences.txt
PREPARED = "prepared.json"
ITEM_MAP = "items.tsv"
USER_MAP = "users.tsv"


@register("data_format", "sequences")
class SequencesFormat(DataFormat):
    """One line per user: user id, then item ids in time order (sequences.txt)."""

    suffixes = (".txt",)
    preferred_names = ("sequences.txt",)
    search_rank = 0
    any_name_in_folder = False
    is_log = False

    def load(self, file: pathlib.Path, options: DataConfig, name: str) -> SequenceData:
        text = read_text(file)
        users = UserSequences(file, options)
        first_line: dict[str, int] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            user = parts[0]
            items = [parse_int_token(file, tok, f":{lineno}") for tok in parts[1:]]
            if user in first_line:
                raise DataError(f"{file}:{lineno}: duplicate user id {label(user)} (first on line {first_line[user]})")
            first_line[user] = lineno
            users.add(user, items, f":{lineno}")
        declared = prepared_item_count(file)
        data = users.finish(name=name, fmt="sequences", num_items=declared)
        restore_prepared_ids(file, text, data)
        return data


def text_checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def prepared_item_count(file: pathlib.Path) -> int | None:
    """The catalogue size a prepared folder declares (items that no sequence holds included), or None."""
    record_file = file.parent / PREPARED
    if file.name != "sequences.txt" or not record_file.is_file():
        return None
    try:
        count = json.loads(record_file.read_text())["items"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{record_file}: not a record written by diffrec data prepare") from None
    if type(count) is not int or count < 1:
        raise DataError(f"{record_file}: items must be a positive integer, got {count!r:.40}")
    return count


def restore_prepared_ids(file: pathlib.Path, text: str, data: SequenceData) -> None:
    """Give ``data`` the original ids that ``diffrec data prepare`` stored beside ``file``."""
    record_file = file.parent / PREPARED
    if file.name != "sequences.txt" or not record_file.is_file():
        return
    try:
        record = json.loads(record_file.read_text())
        expected = record["sequences_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{record_file}: not a record written by diffrec data prepare") from None
    if text_checksum(text) != expected:
        raise DataError(f"{file} changed since diffrec data prepare wrote it (checksum differs from {record_file}); prepare it again")
    if data.meta.get("reindexed"):
        raise DataError(f"{file}: a prepared file holds item ids 1..N")
    data.item_ids = _read_map(file.parent / ITEM_MAP, data.num_items, "item")
    users = _read_map(file.parent / USER_MAP, data.num_users, "user")
    data.user_ids = [users[int(u)] if u.isdigit() and 1 <= int(u) <= data.num_users else u for u in data.user_ids or []]
    data.meta["prepared"] = True


def _read_map(map_file: pathlib.Path, size: int, label: str) -> list[str]:
    """``internal<TAB>original`` lines (after a header) as a list indexed by internal id 1..size."""
    originals = [""] * (size + 1)
    for lineno, line in enumerate(read_text(map_file).splitlines(), start=1):
        if lineno == 1 and line == f"{label}\toriginal":
            continue
        internal, sep, original = line.partition("\t")
        if not sep or not internal.isdigit() or not 1 <= int(internal) <= size:
            raise DataError(f"{map_file}:{lineno}: expected '{label} id<TAB>original id' with an id in 1..{size}")
        originals[int(internal)] = original
    if not all(originals[1:]):
        raise DataError(f"{map_file} does not map every {label} id 1..{size}")
    return originals
