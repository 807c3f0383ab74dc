"""Loading a dataset file or folder: :func:`load_dataset` (the formats live in
:mod:`diffrec.data.formats`, one registered ``data_format`` part each)."""

from diffrec.data.formats import choose_format, formats, load_dataset, resolve, supported_formats

__all__ = ["choose_format", "formats", "load_dataset", "resolve", "supported_formats"]
