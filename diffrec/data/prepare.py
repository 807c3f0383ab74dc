"""``diffrec data prepare``: turn a raw log into a ready dataset folder, once.

The folder holds ``sequences.txt`` (one line per user: a user number, then the item ids
1..N in time order), ``items.tsv`` and ``users.tsv`` (each internal id with the dataset's
own id) and ``prepared.json``: the source file and its SHA-256, the format and loader
options, the sizes, the checksum of ``sequences.txt`` and the data fingerprint that runs
record. Loading the folder restores the original ids (see
:mod:`diffrec.data.formats.sequences`). Preparing the same file with the same options
again reuses the folder without reading the log; anything else in the way is refused, and
``force`` replaces only a folder that ``prepare`` wrote. The folder is written beside its
place and moved in whole, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from typing import Any

from diffrec.config import DataConfig
from diffrec.data.dataset import SequenceData
from diffrec.data.formats import choose_format, load_dataset, resolve
from diffrec.data.formats.sequences import ITEM_MAP, PREPARED, USER_MAP, text_checksum
from diffrec.errors import DataError, DiffrecError
from diffrec.files import atomic_write, is_temp_name, make_dirs, os_error, remove_created, temp_sibling

SEQUENCES = "sequences.txt"
#: everything ``prepare`` writes into its folder
PREPARED_FILES = frozenset({SEQUENCES, ITEM_MAP, USER_MAP, PREPARED})
#: the commands whose folders ``--force`` may replace
WRITERS = ("diffrec data prepare", "diffrec data synth")
#: the DataConfig fields that decide what a prepared folder holds
LOADER_FIELDS = ("format", "delimiter", "user_column", "item_column", "time_column", "header", "min_core", "min_length", "drop_short")


def file_checksum(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    return h.hexdigest()


def _entries(folder: pathlib.Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if not is_temp_name(p.name))
    except OSError as exc:
        raise os_error(exc, folder, "read") from None


def _record(folder: pathlib.Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / PREPARED).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("written_by") in WRITERS else None


def prepare(raw: str | os.PathLike[str], out: pathlib.Path, config: DataConfig | None = None, *, force: bool = False) -> tuple[dict[str, Any], bool]:
    """Prepare ``raw`` into ``out``; return the record and whether an earlier folder was reused."""
    config = config or DataConfig()
    source = resolve(pathlib.Path(raw))
    data_format = choose_format(source, config.format)
    options = {key: getattr(config, key) for key in LOADER_FIELDS}
    options["format"] = data_format.registry_name
    wanted = {"source_sha256": file_checksum(source), "options": options}
    if os.path.lexists(out) and out.is_dir() and _entries(out):
        record = _record(out)
        if record is not None and all(record.get(k) == v for k, v in wanted.items()) and _intact(out, record):
            return record, True
        if record is not None and not force:
            raise DiffrecError(f"{out} was prepared from other data or with other options (use --force to replace a folder that diffrec wrote)")
    _check_target(out, force)
    data = load_dataset(source, config)
    if data.num_users == 0:  # pragma: no cover (loaders refuse empty data)
        raise DataError(f"{source}: no users")
    return _write(out, data, {"written_by": "diffrec data prepare", "source": str(source.resolve()), **wanted}), False


def synthesize(out: pathlib.Path, data: SequenceData, params: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
    """Write a synthetic dataset (``diffrec data synth``) as a prepared folder; ``force`` replaces only
    a folder that ``data prepare`` or ``data synth`` wrote."""
    _check_target(out, force)
    record = {"written_by": "diffrec data synth", "source": f"synthetic({', '.join(f'{k}={v}' for k, v in params.items())})", "options": params}
    record["oracle_hr@10"] = data.meta.get("oracle_hr@10")
    return _write(out, data, record)


def _check_target(out: pathlib.Path, force: bool) -> None:
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise DiffrecError(f"{out} exists and is not a folder")
    entries = _entries(out)
    if not entries:
        return
    if not force:
        raise DiffrecError(f"{out} exists and is not empty (use --force to replace a folder that diffrec wrote)")
    foreign = [name for name in entries if name not in PREPARED_FILES or (out / name).is_dir()]
    if _record(out) is None or foreign:
        raise DiffrecError(f"refusing to replace {out}: it is not a folder that diffrec data prepare or synth wrote (it holds {', '.join((foreign or entries)[:5])})")


def _intact(folder: pathlib.Path, record: dict[str, Any]) -> bool:
    try:
        return text_checksum((folder / SEQUENCES).read_text()) == record.get("sequences_sha256")
    except (OSError, UnicodeDecodeError):
        return False


def _write(out: pathlib.Path, data: SequenceData, header: dict[str, Any]) -> dict[str, Any]:
    from diffrec.checkpoint import data_fingerprint

    for label, ids in (("item", data.item_ids or []), ("user", data.user_ids or [])):
        bad = next((i for i in ids if "\n" in i or "\r" in i), None)
        if bad is not None:
            raise DataError(f"{header['source']}: a {label} id holds a line break ({bad[:40]!r}); it cannot be written to a .tsv map")
    sequences = "".join(f"{u} {' '.join(map(str, seq))}\n" for u, seq in enumerate(data.sequences, start=1))
    items = "item\toriginal\n" + "".join(f"{i}\t{data.item_ids[i] if data.item_ids else i}\n" for i in range(1, data.num_items + 1))
    users = "user\toriginal\n" + "".join(f"{u}\t{data.user_ids[u - 1] if data.user_ids else u}\n" for u in range(1, data.num_users + 1))
    stats = data.stats()
    record = {
        **header,
        "users": stats["users"],
        "items": stats["items"],
        "actions": stats["actions"],
        "sequences_sha256": text_checksum(sequences),
        "fingerprint": data_fingerprint(data),
        "loader_meta": {k: v for k, v in data.meta.items() if isinstance(v, (str, int, float, bool))},
    }
    created = make_dirs(out.parent)
    stage = temp_sibling(out, "new")
    try:
        stage.mkdir()
        for name, text in ((SEQUENCES, sequences), (ITEM_MAP, items), (USER_MAP, users), (PREPARED, json.dumps(record, indent=2) + "\n")):
            atomic_write(stage / name, text)
        if os.path.lexists(out):
            old = temp_sibling(out, "old")
            os.rename(out, old)
            os.rename(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, out)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        remove_created(created)
        raise os_error(exc, out, "write") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        remove_created(created)
        raise
    return record


def describe(record: dict[str, Any]) -> dict[str, Any]:
    """The parts of a record worth printing."""
    keys = ("source", "users", "items", "actions", "sequences_sha256")
    return {k: record.get(k) for k in keys} | {"options": {k: v for k, v in record.get("options", {}).items() if v not in ("", None)}}


__all__ = ["LOADER_FIELDS", "PREPARED_FILES", "describe", "file_checksum", "prepare"]
