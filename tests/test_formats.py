"""The data-format registry, the raw formats users have (MovieLens, Amazon, Steam), hostile pickles, ``data prepare``."""

from __future__ import annotations

import gzip
import json
import pathlib
import pickle
import tracemalloc

import pytest

from diffrec.config import DataConfig
from diffrec.data import load_dataset
from diffrec.data.formats import DataFormat, choose_format, formats, resolve
from diffrec.data.prepare import prepare
from diffrec.data.safe_pickle import check_size, safe_load
from diffrec.errors import DataError, DiffrecError
from diffrec.registry import list_parts, register, registry


def write(path: pathlib.Path, data: str | bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# Three users, four items; every user has >= 3 interactions and every item >= 2 (a 2-core).
LOG = [("u1", "m10", 5), ("u1", "m20", 1), ("u1", "m30", 3), ("u2", "m20", 2), ("u2", "m10", 9), ("u2", "m40", 4), ("u3", "m30", 1), ("u3", "m40", 2), ("u3", "m10", 3)]
EXPECTED_USERS = ["u1", "u2", "u3"]
EXPECTED_ITEMS = ["", "m20", "m30", "m10", "m40"]  # by first appearance in time order
EXPECTED_SEQUENCES = [[1, 2, 3], [1, 4, 3], [2, 4, 3]]


def check(data) -> None:
    assert data.user_ids == EXPECTED_USERS
    assert data.item_ids == EXPECTED_ITEMS
    assert data.sequences == EXPECTED_SEQUENCES


# ------------------------------------------------------------------- registry
def test_every_format_is_a_registered_part_listed_with_its_suffixes():
    names = set(list_parts()["data_format"])
    assert {"sequences", "pickle", "csv", "tsv", "movielens", "inter", "amazon", "steam"} <= names
    for name, cls in formats().items():
        assert issubclass(cls, DataFormat) and cls.suffixes and registry("data_format").describe(name)


def test_a_plugin_format_is_detected_and_loaded(tmp_path):
    @register("data_format", "bars", overwrite=True)
    class Bars(DataFormat):
        """Test format: user|item|time rows in a .bars file."""

        suffixes = (".bars",)

        def load(self, file, options, name):
            from diffrec.data.formats.delimited import read_log
            from diffrec.data.formats.base import read_text

            return read_log(file, read_text(file), "|", options, name=name, fmt="bars")

    try:
        path = write(tmp_path / "folder" / "log.bars", "".join(f"{u}|{i}|{t}\n" for u, i, t in LOG))
        check(load_dataset(path.parent, min_core=2))  # found in a folder too
        assert isinstance(choose_format(path), Bars)
    finally:
        registry("data_format")._entries.pop("bars")


def test_folder_search_prefers_the_named_files(tmp_path):
    ml = tmp_path / "ml-1m"
    write(ml / "movies.dat", "1::Toy Story (1995)::Animation\n")
    write(ml / "users.dat", "1::F::1::10::48067\n")
    write(ml / "ratings.dat", "".join(f"{u[1:]}::{i[1:]}::4::{t}\n" for u, i, t in LOG))
    assert resolve(ml) == ml / "ratings.dat"
    data = load_dataset(ml, min_core=2)
    assert data.name == "ml-1m" and data.meta["format"] == "movielens"
    assert data.sequences == EXPECTED_SEQUENCES


# -------------------------------------------------------------- raw formats
def test_movielens_ratings_dat_by_every_route(tmp_path):
    path = write(tmp_path / "ratings.dat", "".join(f"{u}::{i}::4::{t}\n" for u, i, t in LOG))
    check(load_dataset(path, min_core=2))
    check(load_dataset(path, DataConfig(min_core=2)))
    other = write(tmp_path / "ratings.txt.log", "".join(f"{u}::{i}::4::{t}\n" for u, i, t in LOG))
    check(load_dataset(other, fmt="csv", delimiter="::", min_core=2))  # the delimiter option of the Python API
    check(load_dataset(other, fmt="csv", delimiter="::", header="no", user_field="0", item_field="1", time_field="3", min_core=2))


def test_column_positions_and_header_options(tmp_path):
    path = write(tmp_path / "log.csv", "".join(f"{t};x;{i};{u}\n" for u, i, t in LOG))
    check(load_dataset(path, user_field="3", item_field="2", time_field="0", min_core=2))
    headed = write(tmp_path / "headed.csv", "when,who,what\n" + "".join(f"{t},{u},{i}\n" for u, i, t in LOG))
    check(load_dataset(headed, header="yes", user_field="who", item_field="what", time_field="when", min_core=2))
    with pytest.raises(DataError, match="column 9 does not exist"):
        load_dataset(path, user_field="9", min_core=2)
    with pytest.raises(DataError, match="no header to find the user column"):
        load_dataset(path, header="no", user_field="who", min_core=2)


def test_min_length_drops_short_users(tmp_path):
    path = write(tmp_path / "log.csv", "".join(f"{u},{i},{t}\n" for u, i, t in LOG) + "u4,m10,1\nu4,m20,2\nu4,m30,3\nu4,m40,4\n")
    assert load_dataset(path, min_core=1).num_users == 4
    assert load_dataset(path, min_core=1, min_length=4).user_ids == ["u4"]
    with pytest.raises(DataError, match="min_length must be >= 3"):
        load_dataset(path, min_length=2)


def amazon_lines(version: int) -> list[str]:
    lines = []
    for u, i, t in LOG:
        if version == 2023:
            record = {"rating": 5.0, "text": "ok", "asin": "child-" + i, "parent_asin": i, "user_id": u, "timestamp": t * 1000, "images": []}
        else:
            record = {"reviewerID": u, "asin": i, "reviewerName": "N. N.", "helpful": [0, 0], "overall": 5.0, "unixReviewTime": t, "reviewTime": "01 1, 2014"}
        lines.append(json.dumps(record))
    return lines


@pytest.mark.parametrize("version", [2014, 2023])
@pytest.mark.parametrize("name", ["Beauty_5.json", "reviews.jsonl.gz"])
def test_amazon_review_dumps(tmp_path, version, name):
    text = "\n".join(amazon_lines(version)) + "\n"
    path = write(tmp_path / name, gzip.compress(text.encode()) if name.endswith(".gz") else text)
    data = load_dataset(path, min_core=2)
    check(data)
    assert data.meta["format"] == "amazon"


def test_steam_reviews_in_python_literal_lines(tmp_path):
    lines = [
        f"{{u'username': u'{u} name', u'hours': 0.1, u'products': 41, u'product_id': u'{i}', u'page_order': 0, u'date': u'2017-12-{t:02d}', u'text': u'it\\'s \"fine\"', u'early_access': False, u'page': 1}}"
        for u, i, t in LOG
    ]
    path = write(tmp_path / "steam_reviews.json.gz", gzip.compress(("\n".join(lines) + "\n").encode()))
    data = load_dataset(path, min_core=2)
    assert data.meta["format"] == "steam"
    assert data.user_ids == [f"{u} name" for u in EXPECTED_USERS] and data.item_ids == EXPECTED_ITEMS
    assert data.sequences == EXPECTED_SEQUENCES


def test_review_dump_errors_are_one_line(tmp_path):
    cases = {
        "a.json": ("amazon", "not json at all\n", "neither a JSON object nor a Python dict literal"),
        "b.json": ("amazon", '{"reviewerID": "u", "asin": "i"}\n', "no time field"),
        "c.json": ("amazon", '{"reviewerID": "u", "asin": "i", "unixReviewTime": 1}\n[1, 2]\n', "expected an object"),
        "d.json": ("amazon", '{"reviewerID": ["u"], "asin": "i", "unixReviewTime": 1}\n', "neither a string nor an integer"),
        "e.json": ("auto", '{"x": 1}\n', "matches none of the formats"),
        "f.json.gz": ("steam", b"\x1f\x8b\x08\x00garbage", "not a readable gzip file"),
    }
    for name, (fmt, content, message) in cases.items():
        with pytest.raises(DataError, match=message) as info:
            load_dataset(write(tmp_path / name, content), fmt=fmt)
        assert "\n" not in str(info.value)


def test_gzip_bombs_are_refused(tmp_path):
    bomb = gzip.compress(b'{"reviewerID": "u", "asin": "i", "unixReviewTime": 1}\n' * 2_000_000)
    assert len(bomb) < 400_000  # 110 MB of records
    with pytest.raises(DataError, match="decompression bomb"):
        load_dataset(write(tmp_path / "bomb.json.gz", bomb))


# ------------------------------------------------------------ hostile pickles
def authors(train: dict) -> dict:
    return {"train": train, "val": {u: [1] for u in train}, "test": {u: [2] for u in train}}


def test_memo_amplification_is_refused_in_memory_bounded_by_the_file(tmp_path):
    shared = list(range(1, 20_001))
    path = write(tmp_path / "dataset.pkl", pickle.dumps(authors({u: shared for u in range(2_000)}), protocol=4))
    assert path.stat().st_size < 120_000  # 40 million actions in about 100 KB
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="expands to more than"):
            load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * path.stat().st_size, f"peak {peak} bytes for a {path.stat().st_size}-byte file"


def test_honest_pickles_stay_far_below_the_budget():
    data = pickle.dumps(authors({u: list(range(1, 200)) for u in range(300)}), protocol=4)
    assert check_size(pickle.loads(data), 10**12) < len(data)


def test_deep_nesting_and_huge_ids_are_one_line(tmp_path):
    depth = 100_000
    template = pickle.dumps(authors({0: "PLACEHOLDER"}), protocol=2)
    marker = b"X" + len("PLACEHOLDER").to_bytes(4, "little") + b"PLACEHOLDER"
    assert marker in template
    nested = template.replace(marker, b"]" * depth + b"a" * (depth - 1))
    with pytest.raises(DataError, match="nest deeper than") as info:
        load_dataset(write(tmp_path / "deep" / "dataset.pkl", nested))
    assert len(str(info.value)) < 300
    huge = pickle.dumps(authors({0: [10**6000, 3]}), protocol=2)
    with pytest.raises(DataError, match="does not fit in 64 bits") as info:
        load_dataset(write(tmp_path / "huge" / "dataset.pkl", huge))
    assert len(str(info.value)) < 300
    with pytest.raises(DataError, match="does not fit in 64 bits") as info:
        load_dataset(write(tmp_path / "s.txt", "u1 " + "9" * 6000 + " 1 2\n"))
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("put", [b"r\xff\xff\xff\x7f", b"p175008097\n", b"q\x05"])
def test_a_memo_index_beyond_the_file_is_refused_before_the_unpickler_allocates_it(tmp_path, put):
    data = b"\x80\x02]" + put + b"."  # six bytes that would make the C unpickler allocate its memo up to the index
    if put == b"q\x05":
        assert safe_load(write(tmp_path / "ok.pkl", data)) == [], "a small index is fine"
        return
    with pytest.raises(DataError, match="memo index .* is beyond what a file of"):
        safe_load(write(tmp_path / "x.pkl", data))


def test_safe_load_takes_an_explicit_budget(tmp_path):
    path = write(tmp_path / "x.pkl", pickle.dumps([list(range(100))] * 10))
    assert len(safe_load(path)) == 10
    with pytest.raises(DataError, match="expands to more than 50"):
        safe_load(path, budget=50)


# ----------------------------------------------------------------- prepare
def test_prepare_writes_once_reuses_and_guards_its_folder(tmp_path):
    raw = write(tmp_path / "raw" / "ratings.csv", "user,item,ts\n" + "".join(f"{u} x,{i},{t}\n" for u, i, t in LOG))
    out = tmp_path / "prepared"
    record, reused = prepare(raw, out, DataConfig(min_core=2))
    assert not reused and sorted(p.name for p in out.iterdir()) == ["items.tsv", "prepared.json", "sequences.txt", "users.tsv"]
    data = load_dataset(out)
    assert data.item_ids == EXPECTED_ITEMS and data.user_ids == [f"{u} x" for u in EXPECTED_USERS]
    assert data.sequences == EXPECTED_SEQUENCES and data.meta["prepared"]
    from diffrec.checkpoint import data_fingerprint

    assert record["fingerprint"] == data_fingerprint(load_dataset(raw, min_core=2)), "runs on the raw log and the folder agree"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again, reused = prepare(raw, out, DataConfig(min_core=2))
    assert reused and again == record and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    with pytest.raises(DiffrecError, match="other data or with other options"):
        prepare(raw, out, DataConfig(min_core=1))
    assert prepare(raw, out, DataConfig(min_core=1), force=True)[0]["options"]["min_core"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging folder left"
    mine = tmp_path / "mine"
    write(mine / "notes.txt", "keep")
    with pytest.raises(DiffrecError, match="not a folder that diffrec data prepare or synth wrote"):
        prepare(raw, mine, DataConfig(min_core=2), force=True)
    assert (mine / "notes.txt").read_text() == "keep"
    lines = (out / "sequences.txt").read_text().splitlines()
    user, *items = lines[0].split()
    lines[0] = " ".join([user, *items[::-1]])  # the same items in another order
    (out / "sequences.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="changed since diffrec data prepare wrote it"):
        load_dataset(out)


def test_prepare_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from diffrec.cli.main import app

    raw = write(tmp_path / "ratings.dat", "".join(f"{u[1:]}::{i[1:]}::4::{t}\n" for u, i, t in LOG))
    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", str(raw), "--out", str(tmp_path / "p"), "--min-core", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reused"] is False
    result = runner.invoke(app, ["data", "prepare", str(raw), "--out", str(tmp_path / "p"), "--min-core", "2"])
    assert result.exit_code == 0 and "reusing" in result.stdout
    stats = runner.invoke(app, ["data", "stats", str(tmp_path / "p"), "--json"])
    assert json.loads(stats.stdout)["users"] == 3
    result = runner.invoke(app, ["data", "stats", str(raw), "--min-core", "2", "--delimiter", ";"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_data_synth_writes_a_zipf_catalogue_that_loads_with_every_item(tmp_path):
    from typer.testing import CliRunner

    from diffrec.cli.main import app
    from diffrec.data.synthetic import make_synthetic

    runner = CliRunner()
    out = tmp_path / "synth"
    result = runner.invoke(app, ["data", "synth", "--users", "300", "--items", "5000", "--out", str(out), "--zipf", "1.2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    data = load_dataset(out)
    assert data.num_items == 5000 and data.num_users == 300, "items no sequence holds still belong to the catalogue"
    counts = data.item_counts()
    assert counts[1:51].sum() > counts[-50:].sum() * 5, "Zipf: the low ids are the popular ones"
    assert data.sequences == make_synthetic(300, 5000, 3, zipf=1.2).sequences
    again = runner.invoke(app, ["data", "synth", "--users", "30", "--items", "100", "--out", str(out)])
    assert again.exit_code == 2 and "exists and is not empty" in again.stderr
    assert runner.invoke(app, ["data", "synth", "--users", "30", "--items", "100", "--out", str(out), "--force"]).exit_code == 0
    assert load_dataset(out).num_items == 100
    assert make_synthetic(50, 40, 1).sequences == make_synthetic(50, 40, 1, zipf=0.0).sequences, "zipf 0 is the data it always was"
