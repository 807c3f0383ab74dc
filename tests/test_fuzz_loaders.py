"""Property-based fuzzing of the restricted unpickler and of every dataset loader.

For every input, valid or not: the only exception is the project's one-line
:class:`DataError`, no code from a pickle ever runs, and the memory a load takes stays
within a bound proportional to the file's size. 1,000 examples per target, derandomised
so that CI sees the same inputs every run.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import pickle
import tempfile
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffrec.data import load_dataset
from diffrec.data.dataset import SequenceData
from diffrec.data.safe_pickle import safe_load
from diffrec.errors import DataError

EXAMPLES = 1000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: allowed peak of traced memory: a fixed allowance plus this many bytes per byte of input
BASE_BYTES, PER_BYTE = 4 << 20, 400

WORKDIR = pathlib.Path(tempfile.mkdtemp(prefix="diffrec-fuzz-"))
#: a fixed path, so that the pickled payloads (and so the examples) are the same every run
MARKER = pathlib.Path(tempfile.gettempdir()) / "diffrec-fuzz-code-ran"


class _RunsCode:
    """Plain pickle would call open(MARKER, "w") while loading this."""

    def __reduce__(self):
        return (open, (str(MARKER), "w"))


def _authors() -> dict:
    train = {0: [1, 2, 3], 1: [2, 3, 4, 5], 2: [5, 4, 3]}
    return {"train": train, "val": {u: [1] for u in train}, "test": {u: [2] for u in train}, "umap": {"a": 0, "b": 1, "c": 2}, "smap": {"x": 1}}


LOG = [("u1", "i1", 3), ("u1", "i2", 1), ("u1", "i3", 2), ("u2", "i3", 1), ("u2", "i1", 2), ("u2", "i2", 3), ("u3", "i2", 5), ("u3", "i1", 4), ("u3", "i3", 6)]

#: format -> (file name, a valid sample)
SAMPLES: dict[str, tuple[str, bytes]] = {
    "sequences": ("sequences.txt", b"u1 1 2 3\nu2 2 3 4 5\n\nu3 5 4 3 2 1\n"),
    "pickle": ("dataset.pkl", pickle.dumps(_authors(), protocol=4)),
    "csv": ("log.csv", ("user_id,item_id,rating,timestamp\n" + "".join(f'{u},"{i}",4.0,{t}\n' for u, i, t in LOG)).encode()),
    "tsv": ("log.tsv", "".join(f"{u}\t{i}\t{t}\n" for u, i, t in LOG).encode()),
    "movielens": ("ratings.dat", "".join(f"{u[1:]}::{i[1:]}::4::{t}\n" for u, i, t in LOG).encode()),
    "inter": ("log.inter", ("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in LOG)).encode()),
    "amazon": ("reviews.json", "".join(json.dumps({"reviewerID": u, "asin": i, "overall": 5.0, "unixReviewTime": t}) + "\n" for u, i, t in LOG).encode()),
    "steam": ("steam.json", "".join(f"{{u'username': u'{u}', u'product_id': u'{i}', u'date': u'2017-01-{t:02d}', u'text': u'ok'}}\n" for u, i, t in LOG).encode()),
}

#: fragments that make mutations meaningful to the parsers
TOKENS = [
    b"\n", b"\r\n", b" ", b"\t", b",", b";", b"::", b'"', b"'", b"{", b"}", b"[", b"]", b":", b"u'", b"0", b"-1", b"1e999", b"nan",
    b"9" * 30, b"\xff\xfe", b"\x00", b"user_id", b"timestamp", b"2020-01-01", b"null", b"true", b"\x1f\x8b",
]  # fmt: skip

PICKLE_OPS = [
    b"]", b"}", b")", b"(", b"e", b"a", b"u", b"s", b"t", b"l", b"d", b"0", b"1", b"2", b"N", b"\x88", b"\x89",
    b"K\x05", b"M\xff\xff", b"J\xff\xff\xff\x7f", b"\x8a\x01\xff", b"G@\x00\x00\x00\x00\x00\x00\x00",
    b"X\x01\x00\x00\x00a", b"\x8c\x01b", b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"\x94", b"p0\n", b"g0\n",
    b"\x85", b"\x86", b"\x87", b"\x8f", b"\x90", b"\x91", b"\x95\x00\x00\x00\x00\x00\x00\x00\x00",
    b"r\xff\xff\xff\x7f", b"r\x00\x00\x00\x01", b"p99999999\n", b"j\xff\xff\xff\x7f", b"g123456789\n",
    b"cposix\nsystem\n", b"cbuiltins\nopen\n", b"R", b"\x93", b"\x81", b"\x82\x01", b"b", b"P0\n", b"Q", b"i__main__\nX\n", b"o",
]  # fmt: skip


@st.composite
def mutated(draw, sample: bytes) -> bytes:
    """``sample`` with a few random insertions, deletions, replacements and duplications."""
    data = bytearray(sample)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 12))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end] * draw(st.integers(1, 4))
    return bytes(data)


def contents(sample: bytes) -> st.SearchStrategy[bytes]:
    text = st.text(alphabet=st.sampled_from(list(" \n\t,;:'\"{}[]0123456789-.eanuidxX")), max_size=200).map(str.encode)
    plain = mutated(sample) | st.binary(max_size=200) | text | st.just(sample)
    return plain | plain.map(gzip.compress)


def _bounded_load(load, size: int):
    """Run ``load()`` under tracemalloc; return its result (or the DataError) and the peak bytes."""
    tracemalloc.start()
    try:
        try:
            result = load()
        except DataError as exc:
            assert "\n" not in str(exc), f"a multi-line error: {exc!r}"
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= BASE_BYTES + PER_BYTE * size, f"peak {peak:,} bytes for {size:,} bytes of input"
    return result


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_every_loader_survives_fuzzing(fmt):
    name, sample = SAMPLES[fmt]
    assert isinstance(load_dataset(_write(name, sample), fmt=fmt, min_core=2), SequenceData), "the sample itself loads"
    counted = []

    @FUZZ
    @given(data=contents(sample), min_core=st.integers(0, 3), drop_short=st.booleans())
    def fuzz(data, min_core, drop_short):
        path = _write(name, data)
        result = _bounded_load(lambda: load_dataset(path, fmt=fmt, min_core=min_core, drop_short=drop_short), len(data))
        assert isinstance(result, (SequenceData, DataError))
        if isinstance(result, SequenceData):
            result.validate()
        counted.append(1)

    fuzz()
    assert len(counted) >= EXAMPLES


@st.composite
def pickles(draw) -> bytes:
    kind = draw(st.sampled_from(["plain", "mutated", "soup", "code"]))
    if kind == "plain":
        leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) | st.binary(max_size=4)
        obj = draw(st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.integers() | st.text(max_size=3), c, max_size=4) | st.tuples(c, c), max_leaves=20))
        return pickle.dumps(obj, protocol=draw(st.integers(0, 5)))
    if kind == "mutated":
        return draw(mutated(pickle.dumps(_authors(), protocol=draw(st.integers(0, 5)))))
    if kind == "code":
        payload = pickle.dumps({"train": _RunsCode(), "x": [_RunsCode()]}, protocol=draw(st.integers(0, 5)))
        return draw(mutated(payload))
    ops = draw(st.lists(st.sampled_from(PICKLE_OPS), max_size=60))
    return draw(st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"\x80\x05"])) + b"".join(ops) + b"."


def test_restricted_unpickler_survives_fuzzing():
    MARKER.unlink(missing_ok=True)
    counted = []

    @FUZZ
    @given(data=pickles())
    def fuzz(data):
        path = _write("fuzz.pkl", data)
        result = _bounded_load(lambda: safe_load(path), len(data))
        assert not MARKER.exists(), "a pickle ran code"
        del result
        counted.append(1)

    fuzz()
    assert len(counted) >= EXAMPLES


def _write(name: str, data: bytes) -> pathlib.Path:
    path = WORKDIR / name
    path.write_bytes(data)
    return path


def teardown_module() -> None:
    for p in WORKDIR.iterdir():
        os.remove(p)
    WORKDIR.rmdir()
