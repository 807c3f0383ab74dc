"""Dataset formats as a registry, and loading a file or folder into a :class:`SequenceData`.

Every format is a registered ``data_format`` part (``diffrec list`` shows them):
``sequences`` (``sequences.txt``), ``pickle`` (the authors' ``dataset.pkl``), ``csv``,
``tsv``, ``movielens`` (``ratings.dat``), ``inter`` (RecBole), ``amazon`` and ``steam``
(review dumps). A plugin registers another with ``@register("data_format", NAME)`` on a
:class:`DataFormat` subclass.

A file's format is the one given, or the one whose suffix the file name ends with
(longest first; formats sharing a suffix are told apart by their ``sniff`` of the file's
first bytes). A folder is searched for the formats' ``preferred_names`` (in
``search_rank`` order: ``sequences.txt``, ``dataset.pkl``, ``ratings.dat``), then for a
single file with any log format's suffix.
"""

from __future__ import annotations

import os
import pathlib

from diffrec.config import DataConfig
from diffrec.data.dataset import SequenceData
from diffrec.data.formats import authors_pickle, delimited, jsonl, sequences  # noqa: F401  (register the formats)
from diffrec.data.formats.base import DataFormat, head_bytes
from diffrec.errors import DataError, DiffrecError
from diffrec.registry import registry

__all__ = ["DataFormat", "choose_format", "formats", "load_dataset", "resolve", "supported_formats"]


def formats() -> dict[str, type[DataFormat]]:
    """Every registered data format by name, in search order."""
    reg = registry("data_format")
    classes = {name: reg.get(name) for name in reg.names()}
    return dict(sorted(classes.items(), key=lambda item: (item[1].search_rank, item[0])))


def supported_formats() -> str:
    """The accepted formats and suffixes, for help texts and error messages."""
    return ", ".join(f"{name} ({'/'.join(cls.suffixes)})" for name, cls in formats().items())


def _suffix_match(file: pathlib.Path) -> list[tuple[int, str]]:
    lower = file.name.lower()
    return [(len(suffix), name) for name, cls in formats().items() for suffix in cls.suffixes if lower.endswith(suffix)]


def resolve(path: pathlib.Path) -> pathlib.Path:
    """The data file for ``path``: the path itself, or the file found in a folder."""
    try:
        if not path.exists():
            raise DataError(f"{path}: dataset not found")
        if path.is_file():
            return path
        if not path.is_dir():
            raise DataError(f"{path}: not a regular file or folder")
        table = formats()
        for cls in table.values():
            for preferred in cls.preferred_names:
                if (path / preferred).is_file():
                    return path / preferred
        logs = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and any(table[name].any_name_in_folder for _, name in _suffix_match(p))
        )
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(logs) == 1:
        return logs[0]
    looked = ", ".join(n for cls in table.values() for n in cls.preferred_names)
    if not logs:
        suffixes = sorted({s for cls in table.values() if cls.any_name_in_folder for s in cls.suffixes})
        raise DataError(f"{path}: no dataset file in folder (looked for {looked}, *{', *'.join(suffixes)})")
    names = ", ".join(p.name for p in logs[:8]) + (" ..." if len(logs) > 8 else "")
    raise DataError(f"{path}: several interaction logs in folder ({names}); pass the file path instead")


def choose_format(file: pathlib.Path, fmt: str = "auto") -> DataFormat:
    """The format of ``file``: ``fmt`` when given, else from its name and first bytes."""
    table = formats()
    if fmt != "auto":
        if fmt not in table:
            raise DataError(f"{file}: unknown format {fmt!r}; supported: auto, {', '.join(table)}")
        return table[fmt]()
    matches = sorted(_suffix_match(file), reverse=True)
    if not matches:
        suffix = "".join(file.suffixes[-2:]) if file.suffix.lower() == ".gz" else file.suffix
        raise DataError(f"{file}: unknown dataset file type {suffix or '(no suffix)'!r}; supported: {supported_formats()}")
    longest = [name for length, name in matches if length == matches[0][0]]
    if len(longest) == 1:
        return table[longest[0]]()
    head = head_bytes(file)
    sniffed = [name for name in longest if table[name]().sniff(head)]
    if len(sniffed) == 1:
        return table[sniffed[0]]()
    choices = ", ".join(sniffed or longest)
    reason = "could be any of" if sniffed else "matches none of"
    raise DataError(f"{file}: the content {reason} the formats {choices}; pass the format (--data-format NAME)")


def load_dataset(
    path: str | os.PathLike[str],
    config: DataConfig | None = None,
    *,
    name: str | None = None,
    fmt: str | None = None,
    min_core: int | None = None,
    min_length: int | None = None,
    drop_short: bool | None = None,
    delimiter: str | None = None,
    header: str | None = None,
    user_field: str | None = None,
    item_field: str | None = None,
    time_field: str | None = None,
) -> SequenceData:
    """Load ``path`` (a file or a folder holding one) into a :class:`SequenceData`.

    Loader options come from ``config`` (a :class:`DataConfig`; its ``path`` is ignored)
    and may be given one by one as keywords: ``fmt`` (a format name or ``"auto"``),
    ``min_core`` (logs: the k of the k-core filter), ``min_length`` (fewest items per
    user, at least 3), ``drop_short`` (sequence files: drop shorter users instead of
    refusing), ``delimiter``, ``header`` (auto/yes/no) and ``user_field``/``item_field``/
    ``time_field`` (a column name or a 0-based position). ``name`` defaults to the folder
    name for the generic file names ``sequences.txt``/``dataset.pkl``/``ratings.dat`` and
    to the file stem otherwise.
    """
    options = DataConfig(**{**(config.__dict__ if config is not None else {}), "path": os.fspath(path)})
    given = {
        "format": fmt,
        "min_core": min_core,
        "min_length": min_length,
        "drop_short": drop_short,
        "delimiter": delimiter,
        "header": header,
        "user_column": user_field,
        "item_column": item_field,
        "time_column": time_field,
    }
    for key, value in given.items():
        if value is not None:
            setattr(options, key, value)
    try:
        options.validate()
    except DiffrecError as exc:
        raise DataError(str(exc)) from None
    file = resolve(pathlib.Path(path))
    data_format = choose_format(file, options.format)
    if name is None:
        preferred = {n for cls in formats().values() for n in cls.preferred_names}
        name = file.parent.resolve().name if file.name in preferred else file.name.split(".")[0]
        name = name or file.stem
    return data_format.load(file, options, name)
