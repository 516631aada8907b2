import json
import multiprocessing as mp
import subprocess
import sys
import textwrap
import time

import pytest

from r1v3.artifacts import Store, _manifest_checksum
from r1v3.errors import UserError


def publish_text(store, name, text="hello", kind="run", inputs=()):
    with store.publish(name, kind, stage="test", config={"text": text}, inputs=list(inputs)) as d:
        (d.path / "data.txt").write_text(text)
        d.metrics["chars"] = len(text)
    return d.artifact


def test_publish_versions_and_resolve(store):
    a1 = publish_text(store, "x", "one")
    a2 = publish_text(store, "x", "two")
    assert (a1.version, a2.version) == (1, 2)
    assert store.resolve("x").version == 2
    assert store.resolve("x@v1").file("data.txt").read_text() == "one"
    assert store.resolve("x@1").version == 1
    assert store.resolve(str(a1.path)).ref == "x@v1"
    m = json.loads((a2.path / "manifest.json").read_text())
    assert m["kind"] == "run" and m["name"] == "x" and m["version"] == 2
    assert m["files"]["data.txt"]["size"] == 3 and len(m["files"]["data.txt"]["sha256"]) == 64
    assert m["config"] == {"text": "two"} and m["metrics"] == {"chars": 3}
    assert m["toolkit_version"]


def test_a_store_with_a_clock_records_each_publish_wall_time(tmp_path):
    assert "seconds" not in publish_text(Store(tmp_path), "x", "one").manifest  # a library user's store: no clock
    art = publish_text(Store(tmp_path, started=time.monotonic() - 12.5), "y", "two")
    assert 12.5 <= art.manifest["seconds"] < 60
    assert Store(tmp_path).resolve("y").manifest["seconds"] == art.manifest["seconds"]  # and it reads back


def test_failed_body_publishes_nothing(store):
    with pytest.raises(RuntimeError):
        with store.publish("x", "run", stage="test") as d:
            (d.path / "partial.txt").write_text("half")
            raise RuntimeError("boom")
    assert store.list() == []
    assert not any((store.root / ".staging").iterdir())


def test_crash_between_write_and_rename_leaves_no_artifact(store):
    # A real process dies (SIGKILL-like os._exit) right before the rename that publishes.
    code = textwrap.dedent(f"""
        import os, sys
        from r1v3.artifacts import Store
        store = Store({str(store.root)!r})
        real_rename = os.rename
        def crash(src, dst):
            os._exit(9)
        os.rename = crash
        with store.publish("x", "run", stage="test") as d:
            (d.path / "data.txt").write_text("never published")
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == 9
    assert store.list() == []
    with pytest.raises(UserError, match="no artifact named 'x'"):
        store.resolve("x")
    assert publish_text(store, "x").version == 1  # the leftover draft does not block a later publish


def _publisher(root, i, q):
    store = Store(root)
    with store.publish("shared", "run", stage="test") as d:
        (d.path / "data.txt").write_text(f"writer {i}" * 1000)
    q.put(d.artifact.version)


def test_concurrent_publishers_get_distinct_versions(store):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_publisher, args=(str(store.root), i, q)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    versions = sorted(q.get() for _ in procs)
    assert versions == [1, 2, 3, 4]
    for v in versions:
        art = store.resolve(f"shared@v{v}", verify=True)
        assert store.check(art, full=True) == []


def test_verify_catches_flipped_byte_and_truncation(store):
    art = publish_text(store, "x", "abcdef")
    f = art.file("data.txt")
    f.write_bytes(b"abcdeX")  # same size: a small file is hashed on every load
    with pytest.raises(UserError, match="data.txt is corrupted"):
        store.resolve("x")
    with pytest.raises(UserError, match="data.txt is corrupted"):
        store.resolve("x", verify=True)
    f.write_bytes(b"abc")
    with pytest.raises(UserError, match="data.txt has 3 bytes"):
        store.resolve("x")


def test_kind_and_manifest_checks(store):
    art = publish_text(store, "x")
    with pytest.raises(UserError, match="is a run artifact, expected model"):
        store.resolve("x", kind="model")
    m = json.loads((art.path / "manifest.json").read_text())
    m["kind"] = "dataset"  # a lie: there is no parquet file
    (art.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="manifest.json is corrupted"):  # an edit without the checksum
        store.resolve("x")
    m["manifest_sha256"] = _manifest_checksum(m)  # a deliberate lie, checksum and all
    (art.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="manifest says kind 'dataset' but there is no"):
        store.resolve("x")
    m["kind"] = "run"
    m["version"] = 7
    m["manifest_sha256"] = _manifest_checksum(m)
    (art.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="manifest says x@v7 but the artifact sits at x/v1"):
        store.resolve("x")
    (art.path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupted manifest"):
        store.resolve(str(art.path))


@pytest.mark.parametrize("ref,msg", [
    ("nope", "no artifact named 'nope'"),
    ("x@v9", "x has no version v9 .has v1."),
    ("x@latest", "bad version 'latest'"),
    ("../etc", "no such artifact directory"),
    ("bad name", "invalid artifact name"),
])
def test_bad_references(store, ref, msg):
    publish_text(store, "x")
    with pytest.raises(UserError, match=msg):
        store.resolve(ref)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "..", "/abs", "x" * 101])
def test_names_cannot_escape_the_store(store, name):
    with pytest.raises(UserError, match="invalid artifact name"):
        with store.publish(name, "run", stage="test") as d:
            (d.path / "f").write_text("x")
    assert not (store.root.parent / "escape").exists()


def test_lineage_tree(store):
    base = publish_text(store, "base", "b")
    raw = publish_text(store, "raw", "r")
    mid = publish_text(store, "mid", "m", inputs=[base, raw])
    top = publish_text(store, "top", "t", inputs=[mid])
    tree = store.lineage(top)
    assert tree["ref"] == "top@v1"
    assert [c["ref"] for c in tree["inputs"][0]["inputs"]] == ["base@v1", "raw@v1"]
    # an input removed from the store is reported, not fatal
    import shutil
    shutil.rmtree(raw.path)
    tree = store.lineage(store.resolve("top"))
    assert tree["inputs"][0]["inputs"][1]["missing"] is True


def test_cli_artifacts_commands(cli):
    art = publish_text(cli.store, "x", "hello world")
    base = publish_text(cli.store, "base", "b")
    publish_text(cli.store, "y", "y", inputs=[art, base])
    code, out, _ = cli("artifacts", "ls")
    assert code == 0 and "x@v1" in out and "y@v1" in out
    code, out, _ = cli("artifacts", "show", "x", "--json")
    assert code == 0 and json.loads(out)["name"] == "x"
    code, out, _ = cli("artifacts", "verify", "x")
    assert code == 0 and "ok" in out
    code, out, _ = cli("artifacts", "lineage", "y")
    assert code == 0 and "x@v1" in out and "base@v1" in out
    art.file("data.txt").write_bytes(b"hello World")
    code, _, err = cli("artifacts", "verify", "x")
    assert code == 1 and "data.txt is corrupted" in err
    code, _, err = cli("artifacts", "show", "missing")
    assert code == 2 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1


def test_verify_returns_the_artifact_and_its_problems(store):
    art = publish_text(store, "x", "abcdef")
    assert store.verify("x") == (store.resolve("x"), [])
    art.file("data.txt").write_bytes(b"abcdeX")
    found, problems = store.verify("x@v1")
    assert found.ref == "x@v1" and problems == ["x@v1: file data.txt is corrupted (sha256 mismatch)"]
    (art.path / "manifest.json").write_text("{")
    found, problems = store.verify("x")
    assert found is None and len(problems) == 1 and "corrupted manifest" in problems[0]
    with pytest.raises(UserError, match="no artifact named 'nope'"):
        store.verify("nope")


def test_blank_store_is_refused(tmp_path, monkeypatch):
    from r1v3.artifacts import default_store

    monkeypatch.setenv("R1V3_STORE", "")
    with pytest.raises(UserError, match="R1V3_STORE is set but empty"):
        Store()
    monkeypatch.setenv("R1V3_STORE", str(tmp_path / "s"))
    assert default_store() == tmp_path / "s"
    with pytest.raises(UserError, match="is blank"):
        Store("  ")


@pytest.mark.parametrize("rel", ["line\nbreak.txt", "esc\x1b.txt", "/".join(["d" * 200] * 6) + "/deep.txt"])
def test_publish_refuses_file_names_a_manifest_could_not_hold(store, rel):
    with pytest.raises(UserError, match="a file name an artifact cannot hold"):
        with store.publish("x", "run", stage="test") as d:
            (d.path / "ok.txt").write_text("x")
            try:
                (d.path / rel).parent.mkdir(parents=True, exist_ok=True)
                (d.path / rel).write_text("x")
            except OSError:  # a file system that refuses the name itself: nothing to test
                pytest.skip(f"cannot create {rel!r} here")
    assert store.versions("x") == []


def test_lineage_marks_repeated_inputs_once_expanded(store):
    base = publish_text(store, "base", "b")
    mid = publish_text(store, "mid", "m", inputs=[base])
    top = publish_text(store, "top", "t", inputs=[mid, base])
    tree = store.lineage(top)
    assert tree["inputs"][0]["inputs"][0]["ref"] == "base@v1" and "repeated" not in tree["inputs"][0]["inputs"][0]
    assert tree["inputs"][1] == {"ref": "base@v1", "repeated": True, "inputs": []}
