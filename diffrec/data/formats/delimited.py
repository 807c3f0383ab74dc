"""Delimited interaction logs: CSV, TSV, MovieLens ``.dat`` and RecBole ``.inter``.

One row per interaction. With a header the user, item and timestamp columns are found
by name (see :mod:`diffrec.data.formats.logs`); without one they are positional
(``user,item``, ``user,item,timestamp`` or ``user,item,rating,timestamp``), or given as
0-based positions. ``header`` (auto, yes, no) says whether the first row names columns;
``auto`` decides by the names it holds. ``delimiter`` overrides the format's own:

- ``csv``: comma, or the first of tab, semicolon, bar found on the first line; quoted
  fields as in RFC 4180;
- ``tsv``: tab;
- ``movielens``: ``UserID::MovieID::Rating::Timestamp`` (MovieLens 1M/10M ``ratings.dat``,
  no header, Latin-1 text);
- ``inter``: a RecBole atomic file, tab-separated with a ``name:type`` header such as
  ``user_id:token  item_id:token  rating:float  timestamp:float``.

Multi-character delimiters (``::``) split plainly; single characters other than tab go
through the ``csv`` module, so quotes are honoured.
"""

from __future__ import annotations

import csv
import io
import pathlib
from collections.abc import Iterator

from diffrec.config import DataConfig
from diffrec.data.dataset import SequenceData
from diffrec.data.formats.base import DataFormat, read_text, short
from diffrec.data.formats.logs import LogBuilder, column_position, find_columns, looks_like_header
from diffrec.errors import DataError
from diffrec.registry import register


def _rows(file: pathlib.Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row."""
    if delimiter == "\t" or len(delimiter) > 1:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield lineno, line.split(delimiter)
        return
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True, strict=True)
    try:
        for row in reader:
            if len(row) > 1 or (row and row[0].strip()):
                yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"{file}:{reader.line_num}: malformed CSV ({exc})") from None


def read_log(file: pathlib.Path, text: str, delimiter: str, options: DataConfig, *, name: str, fmt: str, typed_header: bool = False) -> SequenceData:
    """Parse delimited rows into a log and run the log pipeline."""
    rows = _rows(file, text, delimiter)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{file}: empty file")
    lineno, cells = first
    if typed_header:
        if not all(":" in cell for cell in cells):
            raise DataError(f"{file}:1: a RecBole .inter header must name every column as name:type, got {short(delimiter.join(cells), 80)}")
        names = [cell.strip().split(":", 1)[0].lower() for cell in cells]
        header = True
    else:
        names = [cell.strip().lower() for cell in cells]
        named = [spec for spec in (options.user_column, options.item_column, options.time_column) if spec and column_position(spec) is None]
        header = options.header == "yes" or (options.header == "auto" and (bool(named) or looks_like_header(names)))
    columns = find_columns(file, names if header else None, len(cells), options)
    ucol, icol, tcol = columns
    needed = max(c for c in columns if c is not None) + 1
    log = LogBuilder(file, timestamps=tcol is not None)
    log.had_header = header
    pending = rows if header else _chain(first, rows)
    for lineno, row in pending:
        if len(row) < needed:
            raise DataError(f"{file}:{lineno}: expected at least {needed} columns, got {len(row)}")
        log.add(lineno, row[ucol].strip(), row[icol].strip(), row[tcol] if tcol is not None else None)
    return log.build(options, name=name, fmt=fmt)


def _chain(first: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
    yield first
    yield from rest


def sniff_delimiter(text: str) -> str:
    """A CSV file's delimiter: comma, or the first of tab, semicolon, bar on its first line."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    for candidate in (",", "\t", ";", "|"):
        if candidate in first:
            return candidate
    return ","


@register("data_format", "csv")
class CsvFormat(DataFormat):
    """Interaction log, comma-separated (or ; | tab, sniffed), with or without a header (.csv)."""

    suffixes = (".csv", ".csv.gz")

    def load(self, file: pathlib.Path, options: DataConfig, name: str) -> SequenceData:
        text = read_text(file)
        delimiter = options.delimiter or sniff_delimiter(text)
        return read_log(file, text, delimiter, options, name=name, fmt="tsv" if delimiter == "\t" else "csv")


@register("data_format", "tsv")
class TsvFormat(DataFormat):
    """Interaction log, tab-separated, with or without a header (.tsv)."""

    suffixes = (".tsv", ".tsv.gz")

    def load(self, file: pathlib.Path, options: DataConfig, name: str) -> SequenceData:
        return read_log(file, read_text(file), options.delimiter or "\t", options, name=name, fmt="tsv")


@register("data_format", "movielens")
class MovieLensFormat(DataFormat):
    """MovieLens ratings.dat: UserID::MovieID::Rating::Timestamp, no header (.dat)."""

    suffixes = (".dat",)
    preferred_names = ("ratings.dat",)
    search_rank = 10

    def load(self, file: pathlib.Path, options: DataConfig, name: str) -> SequenceData:
        text = read_text(file, encoding="latin-1")
        return read_log(file, text, options.delimiter or "::", options, name=name, fmt="movielens")


@register("data_format", "inter")
class RecBoleInterFormat(DataFormat):
    """RecBole atomic .inter file: tab-separated with a name:type header."""

    suffixes = (".inter",)

    def load(self, file: pathlib.Path, options: DataConfig, name: str) -> SequenceData:
        return read_log(file, read_text(file), options.delimiter or "\t", options, name=name, fmt="inter", typed_header=True)
