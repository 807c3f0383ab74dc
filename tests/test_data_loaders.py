"""Tests for the dataset loaders, the restricted unpickler and the interaction-log pipeline."""

from __future__ import annotations

import collections
import copyreg
import io
import os
import pathlib
import pickle

import numpy as np
import pytest
from conftest import shared_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffrec.data.dataset import SequenceData
from diffrec.data.interactions import kcore_filter, log_to_sequence_data, to_sequences
from diffrec.data.loaders import load_dataset
from diffrec.data.safe_pickle import RestrictedUnpickler, check_opcodes, safe_load
from diffrec.errors import DataError, UnsafePickleError

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_pickle(path: pathlib.Path, obj: object, protocol: int = 4) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


# ---------------------------------------------------------------- safe pickle
class _CreatesMarker:
    """Unpickling this with plain pickle would create the marker file via open()."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsShell:
    """Unpickling this with plain pickle would run a shell command that creates the marker."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


PLAIN = {"train": {0: [1, 2, 3]}, "t": (1, "x", None, True, False), "f": -2.5, "big": 10**40, "u": "é✓"}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_load_reads_plain_data_in_every_protocol(tmp_path, protocol):
    path = write_pickle(tmp_path / "plain.pkl", PLAIN, protocol)
    assert safe_load(path) == PLAIN
    with open(path, "rb") as fh:
        assert safe_load(fh) == PLAIN


def test_safe_load_reads_sets_bytes_and_bytearrays_in_protocol_5():
    obj = {"s": {1, 2}, "f": frozenset({"a"}), "b": b"\x00\xff", "ba": bytearray(b"xy")}
    assert safe_load(io.BytesIO(pickle.dumps(obj, protocol=5))) == obj


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("payload", [_CreatesMarker, _RunsShell])
def test_safe_load_refuses_reduce_to_code_without_running_it(tmp_path, protocol, payload):
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "evil.pkl", {"train": [payload(marker)]}, protocol)
    expected = "open" if payload is _CreatesMarker else "system"
    with pytest.raises(UnsafePickleError, match=rf"evil\.pkl: refused unsafe pickle: it asks for the global \w+\.{expected}"):
        safe_load(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_each_guard_refuses_globals_on_its_own(tmp_path, protocol):
    """The opcode scan and the restricted unpickler each stop the payload by themselves."""
    marker = tmp_path / "pwned"
    data = pickle.dumps([_RunsShell(marker), _RunsShell(marker)], protocol=protocol)
    with pytest.raises(UnsafePickleError, match=r"global \w+\.system"):
        check_opcodes(data, "scan")
    with pytest.raises(UnsafePickleError, match=r"global \w+\.system"):
        RestrictedUnpickler(io.BytesIO(data), label="unpickler").load()
    assert not marker.exists()
    assert check_opcodes(pickle.dumps(PLAIN, protocol=protocol)) == len(pickle.dumps(PLAIN, protocol=protocol))


def test_safe_load_refuses_inst_opcode(tmp_path):
    marker = tmp_path / "pwned"
    data = b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."
    with pytest.raises(UnsafePickleError, match=r"global os\.system"):
        safe_load(io.BytesIO(data))
    assert not marker.exists()


def test_safe_load_refuses_numpy_arrays():
    with pytest.raises(UnsafePickleError, match=r"numpy"):
        safe_load(io.BytesIO(pickle.dumps({"train": np.arange(5)})))


def test_safe_load_refuses_persistent_ids():
    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj):
            return "ref" if obj == "secret" else None

    buffer = io.BytesIO()
    WithPersistentId(buffer, protocol=2).dump(["secret"])
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_load(io.BytesIO(buffer.getvalue()))
    with pytest.raises(UnsafePickleError, match="persistent id"):
        RestrictedUnpickler(io.BytesIO(buffer.getvalue())).load()


def test_safe_load_refuses_cached_extension_codes():
    """The C unpickler serves cached extension codes without calling find_class."""
    code = 0x7A31
    copyreg.add_extension("builtins", "len", code)
    try:
        data = b"\x80\x02\x83" + code.to_bytes(2, "little") + b"X\x02\x00\x00\x00ab\x85R."
        assert pickle.loads(data) == 2  # a plain unpickler resolves (and caches) the code
        with pytest.raises(UnsafePickleError, match=f"extension code {code}"):
            safe_load(io.BytesIO(data))
    finally:
        copyreg.remove_extension("builtins", "len", code)


@pytest.mark.parametrize(
    "data, message",
    [
        (pickle.dumps({"a": [1, 2, 3]})[:-4], "truncated or corrupt"),
        (b"\x80\x04garbage", "truncated or corrupt"),
        (pickle.dumps([1]) + b"junk", "unexpected bytes after the end"),
    ],
)
def test_safe_load_reports_corrupt_pickles_as_data_errors(tmp_path, data, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message) as info:
        safe_load(path)
    assert not isinstance(info.value, UnsafePickleError)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_safe_load_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        safe_load(tmp_path / "nope.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        safe_load(tmp_path / "empty.pkl")


# ---------------------------------------------------------- sequences.txt files
def test_sequences_txt_keeps_contiguous_ids(tmp_path):
    path = write(tmp_path / "toy" / "sequences.txt", "1 1 2 3\n\n2 3 4 1 2\n7\t4 4 2\n")
    data = load_dataset(path)
    assert data.sequences == [[1, 2, 3], [3, 4, 1, 2], [4, 4, 2]]
    assert data.num_items == 4 and data.user_ids == ["1", "2", "7"]
    assert data.item_ids == ["", "1", "2", "3", "4"]
    assert data.name == "toy" and data.meta["reindexed"] is False


@pytest.mark.parametrize(
    "text, expected, originals",
    [
        ("a 0 1 2\nb 2 0 0\n", [[1, 2, 3], [3, 1, 1]], ["0", "1", "2"]),
        ("a 10 30 20\nb 30 -5 10\n", [[2, 4, 3], [4, 1, 2]], ["-5", "10", "20", "30"]),
        ("a 2 3 4\nb 4 3 2\n", [[1, 2, 3], [3, 2, 1]], ["2", "3", "4"]),
    ],
)
def test_sequences_txt_reindexes_other_ids_in_numeric_order(tmp_path, text, expected, originals):
    data = load_dataset(write(tmp_path / "s.txt", text))
    assert data.sequences == expected
    assert data.item_ids == [""] + originals
    assert data.meta["reindexed"] is True and data.name == "s"


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 1 2 3\n2 4 x 5\n", r"s\.txt:2: item id 'x' is not an integer"),
        ("1 1 2 3\n2 4 5 6\n\n1 7 8 9\n", r"s\.txt:4: duplicate user id 1 \(first on line 1\)"),
        ("1 1 2 3\n\n9 4 5\n", r"s\.txt:3: user 9 has 2 item\(s\)"),
        ("1 1 2 3\n5\n", r"s\.txt:2: user 5 has 0 item\(s\)"),
        ("1 1 2.5 3\n", r"s\.txt:1: item id '2.5'"),
        ("  \n\n", r"s\.txt: empty file"),
    ],
)
def test_sequences_txt_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message) as info:
        load_dataset(write(tmp_path / "s.txt", text))
    assert "\n" not in str(info.value)


def test_sequences_txt_drop_short_drops_short_users(tmp_path):
    path = write(tmp_path / "s.txt", "1 1 2 3\n2 4 5\n3 3 2 1 5\n")
    data = load_dataset(path, drop_short=True)
    assert data.user_ids == ["1", "3"]
    assert data.sequences == [[1, 2, 3], [3, 2, 1, 4]]
    assert data.meta["dropped_short_users"] == 1
    with pytest.raises(DataError, match="at least 3"):
        load_dataset(write(tmp_path / "t.txt", "1 1 2\n"), drop_short=True)


seq_strategy = st.lists(
    st.tuples(st.integers(0, 10**6), st.lists(st.integers(-50, 10**9), min_size=3, max_size=12)),
    min_size=1,
    max_size=15,
    unique_by=lambda row: row[0],
)


@PROPERTY
@given(rows=seq_strategy)
def test_sequences_txt_round_trip_property(tmp_path, rows):
    path = write(tmp_path / "prop.txt", "".join(f"{u} {' '.join(map(str, items))}\n" for u, items in rows))
    data = load_dataset(path)
    originals = [int(x) for x in data.item_ids[1:]]
    assert originals == sorted(set(originals)), "re-indexing must be order preserving and one-to-one"
    assert set(originals) == {i for _, items in rows for i in items}
    assert data.user_ids == [str(u) for u, _ in rows]
    assert [[originals[i - 1] for i in seq] for seq in data.sequences] == [items for _, items in rows]
    if set(originals) == set(range(1, len(originals) + 1)):
        assert data.sequences == [items for _, items in rows] and not data.meta["reindexed"]


# ------------------------------------------------------------- authors' pickles
def authors_dict(sequences: dict[int, list[int]]) -> dict:
    return {
        "train": {u: s[:-2] for u, s in sequences.items()},
        "val": {u: [s[-2]] for u, s in sequences.items()},
        "test": {u: [s[-1]] for u, s in sequences.items()},
        "umap": {f"U{u}": u for u in sequences},
        "smap": {f"I{i}": i for i in range(1, 6)},
    }


def test_authors_pickle_concatenates_train_val_test(tmp_path):
    path = write_pickle(tmp_path / "demo" / "dataset.pkl", authors_dict({1: [5, 4, 3, 2], 0: [1, 2, 3]}))
    data = load_dataset(path)
    assert data.sequences == [[1, 2, 3], [5, 4, 3, 2]]
    assert data.user_ids == ["U0", "U1"]
    assert data.item_ids == ["", "I1", "I2", "I3", "I4", "I5"]
    assert data.name == "demo" and data.meta["format"] == "pickle"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: [1, 2], "expected a dict"),
        (lambda d: {k: v for k, v in d.items() if k != "val"}, "missing key.*val"),
        (lambda d: {**d, "val": {0: [1, 2], 1: [3]}}, r"val\[0\] must be a list of one item"),
        (lambda d: {**d, "test": {0: [1]}}, "same users"),
        (lambda d: {**d, "train": {0: [1, "2"], 1: [1, 2]}}, "non-integer item"),
        (lambda d: {**d, "train": {0: [], 1: [1, 2]}}, r"user U0 has 2 item\(s\)"),
        (lambda d: {**d, "smap": {"a": 1, "b": 1}}, "smap maps both"),
        (lambda d: {**d, "umap": [1]}, "umap must be a dict"),
    ],
)
def test_authors_pickle_structure_errors(tmp_path, mutate, message):
    path = write_pickle(tmp_path / "dataset.pkl", mutate(authors_dict({0: [1, 2, 3], 1: [3, 4, 5]})))
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_load_dataset_refuses_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    write_pickle(tmp_path / "dataset.pkl", {"train": {0: _RunsShell(marker)}, "val": {}, "test": {}}, 2)
    with pytest.raises(UnsafePickleError, match="dataset.pkl: refused unsafe pickle"):
        load_dataset(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------ interaction logs
def test_csv_with_header_in_any_order_sorts_chronologically_and_kcore_filters(tmp_path):
    rows = [
        ("ts", "item_id", "rating", "user_id"),
        (30, "b", 5, "u1"),
        (10, "a", 5, "u1"),
        (20, "c", 5, "u1"),
        (5, "c", 5, "u2"),
        (5, "a", 5, "u2"),
        (7, "b", 5, "u2"),
        (1, "a", 5, "u3"),
        (2, "z", 5, "u3"),
    ]
    path = write(tmp_path / "log.csv", "".join(",".join(map(str, r)) + "\n" for r in rows))
    data = load_dataset(path, min_core=2)
    # u3 has 2 rows and z one: both go; ties at ts 5 keep file order (c before a).
    assert data.user_ids == ["u1", "u2"]
    assert data.item_ids == ["", "a", "c", "b"]
    assert data.sequences == [[1, 2, 3], [2, 1, 3]]
    assert data.name == "log" and data.meta["kcore"] == 2 and data.meta["rows"] == 8


@pytest.mark.parametrize(
    "filename, text",
    [
        ("log.csv", "u1,i1,3\nu1,i2,1\nu1,i3,2\nu2,i3,1\nu2,i1,2\nu2,i2,3\n"),
        ("log.csv", "u1,i1,4.0,3\nu1,i2,4.0,1\nu1,i3,4.0,2\nu2,i3,1.0,1\nu2,i1,1.0,2\nu2,i2,1.0,3\n"),
        ("log.tsv", "u1\ti1\t3\nu1\ti2\t1\nu1\ti3\t2\nu2\ti3\t1\nu2\ti1\t2\nu2\ti2\t3\n"),
        ("log.csv", "u1;i1;3\nu1;i2;1\nu1;i3;2\nu2;i3;1\nu2;i1;2\nu2;i2;3\n"),
        (
            "log.csv",
            "user,item,time\nu1,i1,2020-01-03\nu1,i2,2020-01-01\nu1,i3,2020-01-02T00:00\nu2,i3,2019-12-01\nu2,i1,2020-01-02\nu2,i2,2020-02-01\n",
        ),
        (
            "log.inter",
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
            "u1\ti1\t1\t3\nu1\ti2\t1\t1\nu1\ti3\t1\t2\nu2\ti3\t1\t1\nu2\ti1\t1\t2\nu2\ti2\t1\t3\n",
        ),
    ],
)
def test_log_formats_give_the_same_sequences(tmp_path, filename, text):
    data = load_dataset(write(tmp_path / filename, text), min_core=2)
    assert data.user_ids == ["u1", "u2"]
    assert data.item_ids == ["", "i2", "i3", "i1"]
    assert data.sequences == [[1, 2, 3], [2, 3, 1]]


def test_log_without_timestamp_uses_file_order(tmp_path):
    data = load_dataset(write(tmp_path / "log.csv", "u,b\nu,a\nu,c\nv,c\nv,a\nv,b\n"), min_core=0)
    assert data.item_ids == ["", "b", "a", "c"]
    assert data.sequences == [[1, 2, 3], [3, 2, 1]]


def test_log_column_overrides(tmp_path):
    text = "who,what,when\nu,x,3\nu,y,2\nu,z,1\n"
    data = load_dataset(write(tmp_path / "log.csv", text), min_core=1, user_field="who", item_field="what", time_field="when")
    assert data.item_ids == ["", "z", "y", "x"] and data.sequences == [[1, 2, 3]]
    with pytest.raises(DataError, match="no column named 'nope'"):
        load_dataset(tmp_path / "log.csv", user_field="nope")


@pytest.mark.parametrize(
    "filename, text, message",
    [
        ("log.csv", "u,i,1\nu,j,2\nu,k,later\n", r"log\.csv:3: timestamp 'later' is not a number"),
        ("log.csv", "a,b,c\nu,j,2\n", r"log\.csv:1: timestamp 'c' is not a number \(a header must name"),
        ("log.csv", "u,i,1\nu,j\n", r"log\.csv:2: expected at least 3 columns, got 2"),
        ("log.csv", "u,i,1,2,3\n", r"log\.csv:1: 5 columns without a header"),
        ("log.csv", "user_id,item_id\n", r"no interactions \(only a header\)"),
        ("log.csv", "u,i,1\nu,j,nan\n", r"log\.csv:2: timestamp 'nan' is not a finite number"),
        ("log.csv", "u,i,1\nu,j,2\n", r"no interactions left after 5-core filtering"),
        ("log.inter", "user_id\titem_id\nu\ti\n", r"log\.inter:1: a RecBole \.inter header must name every column"),
        ("log.inter", "user_id:token\trating:float\nu\t1\n", r"log\.inter:1: header .* has no item column"),
        ("log.tsv", "", r"log\.tsv: empty file"),
    ],
)
def test_log_errors(tmp_path, filename, text, message):
    with pytest.raises(DataError, match=message) as info:
        load_dataset(write(tmp_path / filename, text))
    assert "\n" not in str(info.value)


def naive_kcore(users: list, items: list, k: int, user_k: int) -> set[int]:
    """Reference: repeatedly drop one offending row group at a time."""
    alive = set(range(len(users)))
    changed = True
    while changed:
        changed = False
        ucount = collections.Counter(users[r] for r in alive)
        icount = collections.Counter(items[r] for r in alive)
        for r in sorted(alive):
            if ucount[users[r]] < user_k or icount[items[r]] < k:
                alive.discard(r)
                changed = True
                break
    return alive


log_strategy = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 8)), min_size=0, max_size=60)


@PROPERTY
@given(rows=log_strategy, k=st.integers(0, 4), user_k=st.integers(0, 5))
def test_kcore_filter_matches_reference_and_satisfies_thresholds(rows, k, user_k):
    users = [u for u, _ in rows]
    items = [i for _, i in rows]
    keep = kcore_filter(np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), k, user_k=user_k)
    kept = set(np.flatnonzero(keep).tolist())
    assert kept == naive_kcore(users, items, k, user_k)
    ucount = collections.Counter(users[r] for r in kept)
    icount = collections.Counter(items[r] for r in kept)
    assert all(c >= user_k for c in ucount.values()) and all(c >= k for c in icount.values())


@PROPERTY
@given(rows=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5)), min_size=1, max_size=40))
def test_to_sequences_is_a_stable_chronological_sort(rows):
    users = [u for u, _ in rows]
    times = [t for _, t in rows]
    order, sequences = to_sequences(np.array(users), np.arange(len(rows)), np.array(times))
    assert order == list(dict.fromkeys(users)), "users in order of first appearance"
    for user, seq in zip(order, sequences):
        expected = sorted((r for r in range(len(rows)) if users[r] == user), key=lambda r: times[r])
        assert seq == expected


@PROPERTY
@given(
    rows=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 3)), min_size=1, max_size=80),
    k=st.integers(0, 3),
)
def test_log_pipeline_is_kcore_then_stable_chronological_sort(rows, k):
    users, items, times = (np.array(col) for col in zip(*rows))
    keep = kcore_filter(users, items, k, user_k=max(k, 3))
    if not keep.any():
        with pytest.raises(DataError, match="no interactions left"):
            log_to_sequence_data(users, items, times, k=k)
        return
    data = log_to_sequence_data(users, items, times, k=k)
    expected_users = list(dict.fromkeys(str(users[r]) for r in range(len(rows)) if keep[r]))
    assert data.user_ids == expected_users
    for user, seq in zip(data.user_ids, data.sequences):
        kept_rows = sorted((r for r in range(len(rows)) if keep[r] and str(users[r]) == user), key=lambda r: times[r])
        assert [data.item_ids[i] for i in seq] == [str(items[r]) for r in kept_rows]
        assert len(seq) >= max(k, 3)
    counts = data.item_counts()[1:]
    assert (counts >= max(k, 1)).all(), "every item id 1..N is used, at least k times"
    flat = [i for seq in data.sequences for i in seq]
    assert list(dict.fromkeys(flat)) == list(range(1, data.num_items + 1)), "ids 1..N by first appearance"
    assert len(set(data.item_ids[1:])) == data.num_items, "one original id per internal id"


# --------------------------------------------------------- dispatch and errors
def test_folder_prefers_sequences_txt_then_pickle_then_single_log(tmp_path):
    write(tmp_path / "ds" / "sequences.txt", "1 1 2 3\n")
    write_pickle(tmp_path / "ds" / "dataset.pkl", authors_dict({0: [3, 2, 1]}))
    assert load_dataset(tmp_path / "ds").meta["format"] == "sequences"
    (tmp_path / "ds" / "sequences.txt").unlink()
    assert load_dataset(tmp_path / "ds").meta["format"] == "pickle"
    write(tmp_path / "logs" / "a.inter", "user_id:token\titem_id:token\nu\tx\nu\ty\nu\tz\n")
    data = load_dataset(tmp_path / "logs", min_core=1)
    assert data.meta["format"] == "inter" and data.name == "a"
    write(tmp_path / "logs" / "b.csv", "u,x,1\n")
    with pytest.raises(DataError, match="several interaction logs"):
        load_dataset(tmp_path / "logs")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no dataset file in folder"):
        load_dataset(tmp_path / "none")


def test_missing_empty_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="nope.txt: dataset not found"):
        load_dataset(tmp_path / "nope.txt")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path / "empty.pkl")
    write(tmp_path / "data.xml", "<a/>")
    with pytest.raises(DataError, match=r"unknown dataset file type '\.xml'; supported: sequences \(\.txt\).*inter \(\.inter\)"):
        load_dataset(tmp_path / "data.xml")
    with pytest.raises(DataError, match="unknown format 'xml'"):
        load_dataset(tmp_path / "data.xml", fmt="xml")


def test_explicit_format_overrides_suffix(tmp_path):
    path = write(tmp_path / "data.log", "7 3 2 1\n")
    data = load_dataset(path, fmt="sequences", name="custom")
    assert data.sequences == [[3, 2, 1]] and data.name == "custom"


# ------------------------------------------------------------ shipped datasets
EXPECTED = {"beauty": (22363, 12101, 198502), "toys": (19412, 11924, 167597), "ml-1m": (6040, 3706, 1000209)}


@pytest.mark.dataset
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_datasets_match_reference_counts_in_both_formats(name):
    text = load_dataset(shared_dataset(name, "sequences.txt"))
    pkl = load_dataset(shared_dataset(name, "dataset.pkl"))
    for data in (text, pkl):
        assert isinstance(data, SequenceData) and data.name == name
        assert (data.num_users, data.num_items, data.num_actions) == EXPECTED[name]
        assert not data.meta["reindexed"], "shipped ids are already 1..N and must be kept"
    assert text.sequences == pkl.sequences
    assert text.user_ids == pkl.user_ids


@pytest.mark.dataset
def test_shipped_pickle_is_plain_data():
    raw = safe_load(shared_dataset("beauty", "dataset.pkl"))
    assert sorted(raw) == ["smap", "test", "train", "umap", "val"]
    assert all(len(v) == 1 for v in raw["test"].values())
