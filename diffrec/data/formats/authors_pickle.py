"""The DiffuRec authors' ``dataset.pkl``, read without ever running code from it.

A dict with ``train``/``val``/``test`` (dicts from a 0-based user index to lists of item
ids; ``val`` and ``test`` hold one item each) and optional ``umap``/``smap`` (original user
/ item id -> internal id). The full sequence is ``train + val + test``; users come in index
order, labelled with their original id from ``umap``. The file is read with
:func:`diffrec.data.safe_pickle.safe_load`, which refuses code and bounds the work by the
file's size.
"""

from __future__ import annotations

import pathlib
from typing import Any

from diffrec.config import DataConfig
from diffrec.data.dataset import SequenceData
from diffrec.data.formats.base import DataFormat, UserSequences, check_int_id, short
from diffrec.data.safe_pickle import safe_load
from diffrec.errors import DataError
from diffrec.registry import register


@register("data_format", "pickle")
class AuthorsPickleFormat(DataFormat):
    """The DiffuRec authors' dataset.pkl (train/val/test/umap/smap), read as plain data only."""

    suffixes = (".pkl", ".pickle")
    preferred_names = ("dataset.pkl",)
    search_rank = 1
    any_name_in_folder = False
    is_log = False

    def load(self, file: pathlib.Path, options: DataConfig, name: str) -> SequenceData:
        if file.is_file() and file.stat().st_size == 0:
            raise DataError(f"{file}: empty file")
        data = safe_load(file)
        if not isinstance(data, dict):
            raise DataError(f"{file}: expected a dict with train/val/test, got {short(data)}")
        missing = [key for key in ("train", "val", "test") if key not in data]
        if missing:
            raise DataError(f"{file}: missing key(s) {', '.join(missing)} (expected train/val/test/umap/smap)")
        parts = {}
        for key in ("train", "val", "test", "umap", "smap"):
            value = data.get(key, {} if key in ("umap", "smap") else None)
            if not isinstance(value, dict):
                raise DataError(f"{file}: {key} must be a dict, got {short(value)}")
            parts[key] = value
        train, val, test = parts["train"], parts["val"], parts["test"]
        if not (train.keys() == val.keys() == test.keys()):
            raise DataError(f"{file}: train, val and test must have the same users ({len(train)}/{len(val)}/{len(test)})")
        user_label = _inverse_map(file, "umap", parts["umap"])
        item_label = _inverse_map(file, "smap", parts["smap"])
        keys = list(train.keys())
        if not all(type(u) is int for u in keys):
            raise DataError(f"{file}: train has a non-integer user key {short(next(u for u in keys if type(u) is not int))}")
        users = UserSequences(file, options)
        for u in sorted(keys):
            for key in ("val", "test"):
                value = parts[key][u]
                if not isinstance(value, list) or len(value) != 1:
                    raise DataError(f"{file}: {key}[{short(u)}] must be a list of one item, got {short(value)}")
            if not isinstance(train[u], list):
                raise DataError(f"{file}: train[{short(u)}] must be a list, got {short(train[u])}")
            seq = [check_int_id(file, i, f" (user {short(u)})") for i in train[u] + val[u] + test[u]]
            users.add(_label(user_label.get(u, u)), seq, f" (train[{short(u)}])")
        result = users.finish(name=name, fmt="pickle")
        if item_label:
            result.item_ids = [""] + [_label(item_label.get(int(i), i)) for i in result.item_ids[1:]]
        return result


def _label(value: Any) -> str:
    """An original id as text; ids that are not strings or small ints are shown bounded."""
    if isinstance(value, str):
        return value
    if type(value) is int and abs(value) < 10**30:
        return str(value)
    return short(value)


def _inverse_map(file: pathlib.Path, key: str, mapping: dict) -> dict[int, Any]:
    """Invert ``umap``/``smap`` (original id -> internal int id); ids must be unique."""
    inverse: dict[int, Any] = {}
    for original, internal in mapping.items():
        if type(internal) is not int:
            raise DataError(f"{file}: {key} maps {short(original)} to a non-integer {short(internal)}")
        if internal in inverse:
            raise DataError(f"{file}: {key} maps both {short(inverse[internal])} and {short(original)} to {short(internal)}")
        inverse[internal] = original
    return inverse
