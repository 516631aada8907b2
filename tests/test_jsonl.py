"""The jsonl work files of resumable stages (r1v3.jsonl): read up to a torn or misshapen line,
append with fsync, rewrite with exactly what was read back."""

import json

import pytest

from r1v3 import jsonl
from r1v3.errors import UserError


def is_rec(rec) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("id"), str)


def test_missing_file_reads_as_no_records(tmp_path):
    assert jsonl.read(tmp_path / "none.jsonl", is_rec) == []


def test_append_then_read_round_trips_in_order(tmp_path):
    path = tmp_path / "w.jsonl"
    with open(path, "a") as f:
        jsonl.append(f, [{"id": "a", "x": 1}])
        jsonl.append(f, [{"id": "b"}, {"id": "c", "t": "é\n"}])
    assert path.read_text() == jsonl.lines([{"id": "a", "x": 1}, {"id": "b"}, {"id": "c", "t": "é\n"}])
    assert [r["id"] for r in jsonl.read(path, is_rec)] == ["a", "b", "c"]
    assert jsonl.read(path, is_rec)[2]["t"] == "é\n"


def test_lines_are_one_json_dump_per_record():
    recs = [{"id": "a", "n": [1, 2]}, {"id": "b"}]
    assert jsonl.lines(recs) == "".join(json.dumps(r) + "\n" for r in recs)
    assert jsonl.lines([]) == ""


@pytest.mark.parametrize("tail", [
    b'{"id": "c", "sam',  # a torn append
    b'{"id": 3}\n',  # the wrong shape
    b'[1, 2]\n',  # not an object: refused by the predicate, not an AttributeError
    b'\xff\xfe\n',  # not UTF-8
    b'[' * 10_000 + b'\n',  # deeper than the bounded reader allows (json would raise RecursionError)
    b'{"id": "c", "n": NaN}\n',  # not JSON
    b'\n',
])
def test_reading_stops_at_the_first_bad_line(tmp_path, tail):
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n' + tail + b'{"id": "d"}\n')
    assert [r["id"] for r in jsonl.read(path, is_rec)] == ["a", "b"]


def test_strict_reading_names_the_file_and_line(tmp_path):
    path = tmp_path / "pub.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": 3}\n')
    with pytest.raises(UserError, match=r"pub\.jsonl line 2: not a record with an id$"):
        jsonl.read(path, is_rec, strict="a record with an id")
    path.write_bytes(b'{"id": "a"}\n{"id": "b\n')
    with pytest.raises(UserError, match=r"pub\.jsonl line 2: malformed JSON"):
        jsonl.read(path, is_rec, strict="a record with an id")


def test_rewrite_drops_a_torn_tail_so_appends_stay_readable(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b", "x')
    kept = jsonl.read(path, is_rec)
    jsonl.rewrite(path, kept)
    with open(path, "a") as f:
        jsonl.append(f, [{"id": "c"}])
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "c"}\n'
    assert [r["id"] for r in jsonl.read(path, is_rec)] == ["a", "c"]
    assert not (tmp_path / "w.jsonl.tmp").exists()


def test_append_fsyncs_after_its_single_write(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(jsonl.os, "fsync", lambda fd: calls.append(("fsync", fd)))

    class File:
        def write(self, text):
            calls.append(("write", text))

        def flush(self):
            calls.append(("flush",))

        def fileno(self):
            return 7

    jsonl.append(File(), [{"id": "a"}, {"id": "b"}])
    assert calls == [("write", '{"id": "a"}\n{"id": "b"}\n'), ("flush",), ("fsync", 7)]
