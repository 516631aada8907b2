"""A store someone else wrote into: crafted manifests, lineage cycles, a store that cannot be
written, file modes of what is published.

A crafted manifest may carry a matching checksum (anyone can compute it), so every check here
must hold on its shape alone: `ls` lists the rest and names it `damaged:`, `show`, `lineage`
and commands that use it stop with one line (exit 2), `verify` fails it (exit 1), and nothing
anywhere raises a traceback.
"""

import contextlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from r1v3 import artifacts
from r1v3.artifacts import MANIFEST, MAX_LINEAGE_DEPTH, Store, _manifest_checksum
from r1v3.cli import main
from r1v3.errors import UserError

pytestmark = pytest.mark.reliability

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 5_000


def run(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--store", str(root), *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def publish_text(store, name, text="hello", inputs=()):
    with store.publish(name, "run", stage="test", config={"text": text}, inputs=list(inputs)) as d:
        (d.path / "data.txt").write_text(text)
        d.metrics["chars"] = len(text)
    return d.artifact


@pytest.fixture
def small(store):
    """base and other, and `victim` whose manifest the test crafts, used by `child`."""
    base = publish_text(store, "base", "b")
    publish_text(store, "other", "o")
    victim = publish_text(store, "victim", "v", inputs=[base])
    publish_text(store, "child", "c", inputs=[victim])
    return store


def manifest_of(store, name):
    return json.loads((store.root / name / "v1" / MANIFEST).read_text())


def write_raw(store, name, manifest: dict, raw: str | None = None, key: str | None = None):
    """Write `manifest` for name@v1 with a matching checksum; with `raw`, the value of `key` is
    replaced by that text as is (what no JSON library would write: 100,000 brackets, NaN, ...)."""
    if raw is not None:
        manifest = {**manifest, key: "@@RAW@@"}
    manifest["manifest_sha256"] = _manifest_checksum(manifest)
    text = json.dumps(manifest)
    if raw is not None:
        text = text.replace('"@@RAW@@"', raw)
    (store.root / name / "v1" / MANIFEST).write_text(text)


def edit(store, name, path: tuple, value):
    """Set manifest[path...] = value for name@v1, checksum and all."""
    m = manifest_of(store, name)
    target = m
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    write_raw(store, name, m)


def files_of(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def expect_damaged_everywhere(store, fragment=""):
    """The crafted `victim` is refused by every reader, the rest of the store still works."""
    root = store.root
    with pytest.raises(UserError) as e:
        store.resolve("victim")
    assert len(str(e.value).splitlines()) == 1 and len(str(e.value)) < 600 and fragment in str(e.value), str(e.value)
    code, out, err = run(root, "artifacts", "ls")
    assert code == 0, err
    rows = [line.strip("│ ").split(" ")[0] for line in out.splitlines()]
    assert {"base@v1", "other@v1", "child@v1"} <= set(rows) and "victim@v1" not in rows, out
    damaged = [line for line in err.splitlines() if line.startswith("damaged:")]
    assert len(damaged) == 1 and "victim" in damaged[0] and len(damaged[0]) < 700, err
    for argv, expected in ((["artifacts", "show", "victim"], 2), (["artifacts", "show", "victim", "--json"], 2),
                           (["artifacts", "lineage", "victim"], 2), (["artifacts", "verify", "victim"], 1)):
        code, out, err = run(root, *argv)
        assert code == expected and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (argv, err)
        assert len(err) < 700
    code, out, err = run(root, "artifacts", "lineage", "child")
    assert code == 0 and "victim@v1" in out and "damaged" in out, (out, err)
    assert run(root, "artifacts", "verify", "base")[0] == 0


# ---- unparseable or out-of-bounds JSON, wherever in the manifest it sits -------------------------


@pytest.mark.parametrize("key", ["config", "metrics", "inputs", "files", "stage"])
def test_nesting_100000_deep_in_any_field(small, key):
    write_raw(small, "victim", manifest_of(small, "victim"), DEEP, key)
    expect_damaged_everywhere(small, "nested more than")


def test_nesting_deep_at_top_level_and_inside_objects(small):
    manifest = manifest_of(small, "victim")
    (small.root / "victim" / "v1" / MANIFEST).write_text(DEEP)
    expect_damaged_everywhere(small, "nested more than")
    write_raw(small, "victim", manifest, '{"a": ' * 70_000 + "1" + "}" * 70_000, "config")
    expect_damaged_everywhere(small, "nested more than")


@pytest.mark.parametrize("key", ["version", "metrics", "config", "created"])
def test_5000_digit_integer_in_any_field(small, key):
    raw = HUGE_INT if key in ("version", "created") else '{"n": %s}' % HUGE_INT
    write_raw(small, "victim", manifest_of(small, "victim"), raw, key)
    expect_damaged_everywhere(small, "unreadable JSON")


def test_5000_digit_integer_as_a_file_size(small):
    m = manifest_of(small, "victim")
    m["files"]["data.txt"]["size"] = "@@RAW@@"
    m["manifest_sha256"] = _manifest_checksum(m)
    (small.root / "victim" / "v1" / MANIFEST).write_text(json.dumps(m).replace('"@@RAW@@"', "-" + HUGE_INT))
    expect_damaged_everywhere(small, "unreadable JSON")


@pytest.mark.parametrize("raw,key", [("NaN", "metrics"), ('{"loss": NaN}', "metrics"), ("Infinity", "config"),
                                     ('{"x": -Infinity}', "config"), ("NaN", "version")])
def test_nan_and_infinity_are_not_json(small, raw, key):
    write_raw(small, "victim", manifest_of(small, "victim"), raw, key)
    expect_damaged_everywhere(small, "not valid JSON")


def test_manifest_that_is_not_utf8_huge_or_a_symlink(small, monkeypatch):
    path = small.root / "victim" / "v1" / MANIFEST
    original = path.read_bytes()
    path.write_bytes(b'{"kind": "\xff"}')
    expect_damaged_everywhere(small, "not UTF-8")
    path.write_bytes(original)
    edit(small, "victim", ("config",), {"pad": "x" * 20_000})
    monkeypatch.setattr(artifacts, "MAX_MANIFEST_BYTES", 10_000)  # the others stay below it
    expect_damaged_everywhere(small, "larger than")
    monkeypatch.undo()
    other = small.root / "other" / "v1" / MANIFEST
    path.unlink()
    path.symlink_to(other)
    expect_damaged_everywhere(small, "symlink")


# ---- parseable, checksum matches, but the wrong shape ---------------------------------------------

SHAPES = [
    (("inputs",), {"ref": "base@v1"}, "'inputs' must be a list, not dict"),
    (("inputs",), "base@v1", "'inputs' must be a list, not str"),
    (("inputs",), [{"kind": "run", "digest": "0" * 64}], "input 0"),
    (("inputs",), ["base@v1"], "input 0"),
    (("inputs",), [None], "input 0"),
    (("inputs", 0, "ref"), "/etc", "input 0"),
    (("inputs", 0, "ref"), "../base@v1", "input 0"),
    (("inputs", 0, "ref"), "base", "input 0"),
    (("inputs", 0, "ref"), "x" * 1_000_000 + "@v1", "input 0"),
    (("inputs", 0, "ref"), 7, "input 0"),
    (("inputs", 0, "digest"), None, "input 0"),
    (("inputs", 0, "digest"), "z" * 10_000, "input 0"),
    (("inputs", 0, "kind"), ["model"], "input 0"),
    (("metrics",), [1, 2], "'metrics' must be a dict, not list"),
    (("config",), "seed=3", "'config' must be a dict, not str"),
    (("created",), 1700000000, "'created' must be a str, not int"),
    (("stage",), {"a": 1}, "'stage' must be a str, not dict"),
    (("toolkit_version",), None, "'toolkit_version' must be a str, not NoneType"),
    (("files",), ["data.txt"], "'files' is not a mapping"),
    (("files", "data.txt", "size"), -1, "bad entry for file 'data.txt'"),
    (("files", "data.txt", "size"), 1.0, "bad entry for file 'data.txt'"),
    (("files", "data.txt", "sha256"), None, "bad entry for file 'data.txt'"),
    (("files", "data.txt"), [], "bad entry for file 'data.txt'"),
    (("files", "x" * 300), {"sha256": "0" * 64, "size": 1}, "not a plain path"),
    (("files", "a/" * 600 + "b"), {"sha256": "0" * 64, "size": 1}, "not a plain path"),
    (("files", "./data.txt"), {"sha256": "0" * 64, "size": 1}, "not a plain path"),
    (("files", "a\nb"), {"sha256": "0" * 64, "size": 1}, "not a plain path"),
    (("files", "\x1b[2Jx"), {"sha256": "0" * 64, "size": 1}, "not a plain path"),
    (("digest",), 5, "'digest' is not a sha256"),
    (("digest",), "d" * 1_000_000, "'digest' is not a sha256"),
    (("name",), "n" * 1_000_000, "bad name"),
    (("name",), ["victim"], "bad name"),
    (("version",), True, "bad version"),
    (("version",), 10**50, "bad version"),
    (("kind",), "k" * 1_000_000, "unknown kind"),
    (("kind",), {"model": 1}, "unknown kind"),
]


@pytest.mark.parametrize("path,value,fragment", SHAPES, ids=[f"{'.'.join(map(str, p))[:30]}={str(v)[:20]}"
                                                              for p, v, _ in SHAPES])
def test_crafted_shapes_are_damaged_not_tracebacks(small, path, value, fragment):
    edit(small, "victim", path, value)
    expect_damaged_everywhere(small, fragment)


def test_manifest_not_an_object_or_missing_keys(small):
    write_raw(small, "victim", {})
    expect_damaged_everywhere(small, "missing key")
    (small.root / "victim" / "v1" / MANIFEST).write_text('["kind", "name"]')
    expect_damaged_everywhere(small, "not a JSON object")


def test_stray_fifo_or_oddly_named_file_in_an_artifact(small):
    """Only listed files may sit in an artifact: a FIFO named like a split would hang a reader."""
    victim = small.root / "victim" / "v1"
    os.mkfifo(victim / "extra.parquet")
    expect_damaged_everywhere_but_ls(small, "file extra.parquet is not in the manifest")
    (victim / "extra.parquet").unlink()
    (victim / "odd\nname").write_text("x")
    expect_damaged_everywhere_but_ls(small, "file odd?name is not in the manifest")


def expect_damaged_everywhere_but_ls(store, fragment):
    """Damage to the files (not the manifest): `ls` lists it, using or verifying it fails."""
    with pytest.raises(UserError, match=re.escape(fragment)):
        store.resolve("victim")
    code, _, err = run(store.root, "artifacts", "verify", "victim")
    assert code == 1 and fragment in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run(store.root, "artifacts", "show", "victim")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert run(store.root, "artifacts", "ls")[0] == 0


# ---- text that is valid but hostile to a terminal or to rich markup --------------------------------


@pytest.mark.parametrize("stage", ["[/bold]", "[red]x[/]", "\x1b[2J\x1b[31mred", "line\nbreak", "s" * 1_000_000])
def test_hostile_text_fields_are_printed_cut_and_inert(small, stage):
    edit(small, "victim", ("stage",), stage)
    edit(small, "victim", ("created",), stage)
    edit(small, "victim", ("config",), {"text": stage, "[/x]": 1})
    for argv in (["artifacts", "ls"], ["artifacts", "show", "victim"], ["artifacts", "lineage", "child"],
                 ["artifacts", "verify", "victim"]):
        code, out, err = run(small.root, *argv)
        assert code == 0 and not err, (argv, err)
        assert "\x1b" not in out and len(out) < 20_000, argv
    code, out, _ = run(small.root, "artifacts", "show", "victim", "--json")
    assert code == 0 and json.loads(out)["stage"] == stage  # --json prints the manifest as it is


def test_many_inputs_are_listed_cut(store):
    base = publish_text(store, "base")
    wide = publish_text(store, "wide", inputs=[base] * 500)
    assert len(wide.manifest["inputs"]) == 500
    code, out, _ = run(store.root, "artifacts", "ls")
    assert code == 0 and "(+496 more)" in out
    code, out, _ = run(store.root, "artifacts", "show", "wide")
    assert code == 0 and "and 450 more inputs" in out and out.count("input: base@v1") == 50
    code, out, _ = run(store.root, "artifacts", "lineage", "wide")
    assert code == 0 and out.count("base@v1") == 500 and out.count("inputs shown above") == 499


# ---- lineage cycles and depth ------------------------------------------------------------------


def cite(store, name, *refs):
    arts = [store.resolve(r) for r in refs]
    edit(store, name, ("inputs",), [{"ref": a.ref, "kind": a.kind, "digest": a.digest} for a in arts])


def test_manifest_citing_itself(store):
    publish_text(store, "a")
    cite(store, "a", "a")
    tree = store.lineage(store.resolve("a"))
    assert tree["inputs"] == [{"ref": "a@v1", "cycle": True, "inputs": []}]
    code, out, err = run(store.root, "artifacts", "lineage", "a")
    assert code == 0 and "cycle" in out, err
    assert run(store.root, "artifacts", "verify", "a")[0] == 0  # a lie in lineage, not damage to files
    assert run(store.root, "artifacts", "ls")[0] == 0


@pytest.mark.parametrize("length", [2, 3])
def test_cycle_through_other_artifacts(store, length):
    names = [f"c{i}" for i in range(length)]
    for n in names:
        publish_text(store, n, n)
    for i, n in enumerate(names):  # c0 -> c1 -> ... -> c0
        cite(store, n, names[(i + 1) % length])
    tree = store.lineage(store.resolve("c0"))
    for _ in range(length - 1):
        tree = tree["inputs"][0]
    assert tree["inputs"] == [{"ref": "c0@v1", "cycle": True, "inputs": []}]
    for n in names:
        code, out, err = run(store.root, "artifacts", "lineage", n)
        assert code == 0 and "cycle" in out and out.count("@v1") == length + 1, (out, err)


def test_lineage_deeper_than_the_cap_is_cut(store):
    prev = publish_text(store, "l0")
    for i in range(1, MAX_LINEAGE_DEPTH + 5):
        prev = publish_text(store, f"l{i}", inputs=[prev])
    tree, depth = store.lineage(prev), 0
    while tree["inputs"]:
        tree, depth = tree["inputs"][0], depth + 1
    assert depth == MAX_LINEAGE_DEPTH and tree.get("truncated") is True
    code, out, err = run(store.root, "artifacts", "lineage", prev.ref)
    assert code == 0 and "l0@v1" not in out, err


def test_diamond_lineage_does_not_explode(store):
    """40 levels, each citing both artifacts of the level below: 2**40 paths, 80 artifacts."""
    level = [publish_text(store, "d0a"), publish_text(store, "d0b")]
    for i in range(1, 40):
        level = [publish_text(store, f"d{i}{s}", f"{i}{s}", inputs=level) for s in "ab"]
    start = time.monotonic()
    tree = store.lineage(level[0])
    code, out, err = run(store.root, "artifacts", "lineage", level[0].ref)
    assert code == 0 and time.monotonic() - start < 20, err

    def refs(node):
        return [node["ref"]] + [r for child in node["inputs"] for r in refs(child)]

    assert len(refs(tree)) == 79 + 2 * 38  # each artifact once, and the second of each level: 2 "shown above"
    assert {"d0a@v1", "d0b@v1"} <= set(refs(tree))


def test_lineage_reports_missing_and_changed_inputs(store):
    base = publish_text(store, "base")
    top = publish_text(store, "top", inputs=[base])
    edit(store, "top", ("inputs", 0, "digest"), "0" * 64)
    assert store.lineage(store.resolve("top"))["inputs"][0]["changed"] is True
    edit(store, "top", ("inputs", 0, "ref"), "gone@v3")
    assert store.lineage(store.resolve("top"))["inputs"] == [{"ref": "gone@v3", "missing": True, "inputs": []}]
    assert top.ref == "top@v1"


# ---- a store that cannot be written: one exit code whichever command, nothing left behind ------------


@contextlib.contextmanager
def read_only(root):
    """Make `root` unwritable: permissions for a user, the immutable attribute for root (which
    ignores permissions). Skips where neither holds."""
    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")]}
    immutable = False
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "-R", "+i", str(root)], capture_output=True).returncode:
            pytest.skip("running as root without chattr: cannot make a read-only store")
        immutable = True
    else:
        for p in modes:
            os.chmod(p, stat.S_IMODE(modes[p]) & ~0o222)
    try:
        try:
            (root / ".probe").mkdir()
        except OSError:
            pass
        else:
            pytest.skip("this file system lets us write despite the read-only setting")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-R", "-i", str(root)], check=True)
        else:
            for p, mode in modes.items():
                os.chmod(p, stat.S_IMODE(mode))


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ro") / "store"
    for argv in (["init", "tiny", "--name", "m"], ["data", "synth", "--name", "ds", "--n", "10", "--messages", "brief"]):
        code, _, err = run(root, *argv)
        assert code == 0, err
    return root


READ_ONLY_COMMANDS = {
    "data synth": ["data", "synth", "--name", "x", "--n", "10"],
    "init tiny": ["init", "tiny", "--name", "x"],
    "eval mmmu": ["eval", "mmmu", "--model", "m", "--data", "ds", "--name", "x", "--limit", "2",
                  "--max-new-tokens", "2", "--temperature", "0"],
    "sft": ["sft", "--model", "m", "--data", "ds", "--name", "x", "--trainable", "connector", "--max-steps", "1",
            "--batch-size", "2"],
}


def test_read_only_store_gives_one_exit_code_for_every_command(model_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(model_store, root)
    before = files_of(root)
    results = {}
    with read_only(root):
        for label, argv in READ_ONLY_COMMANDS.items():
            code, out, err = run(root, *argv)
            results[label] = code
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (label, err)
            assert str(root) in err, (label, err)  # names where it could not write
        code, out, _ = run(root, "artifacts", "ls")  # reading still works
        assert code == 0 and "m@v1" in out
    assert results == dict.fromkeys(READ_ONLY_COMMANDS, 2), results
    assert files_of(root) == before


def test_disk_errors_are_exit_1_and_one_line(store, monkeypatch):
    import errno

    real_mkdir = artifacts.Path.mkdir

    def mkdir(self, *a, **k):  # the disk fills up just as the draft is made
        if ".staging" in self.parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(artifacts.Path, "mkdir", mkdir)
    code, _, err = run(store.root, "data", "synth", "--name", "x", "--n", "10")
    assert code == 1 and err.startswith("error: ") and "No space left" in err and len(err.strip().splitlines()) == 1


def test_empty_store_variable_is_an_error_not_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("", "  "):
        monkeypatch.setenv("R1V3_STORE", value)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["data", "synth", "--name", "x", "--n", "10"])
        assert code == 2 and "R1V3_STORE" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
        assert list(tmp_path.iterdir()) == []
    monkeypatch.delenv("R1V3_STORE")
    assert artifacts.default_store() == artifacts.Path("artifacts")


# ---- file modes of published files ---------------------------------------------------------------


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_every_file_of_a_published_model_has_one_mode(tmp_path, mask):
    root = tmp_path / "store"
    with umask(mask):
        code, _, err = run(root, "init", "tiny", "--name", "m")
    assert code == 0, err
    art = Store(root).resolve("m")
    modes = {p.relative_to(art.path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in art.path.rglob("*")}
    assert "model.safetensors" in modes and MANIFEST in modes
    assert modes == {rel: (0o777 if (art.path / rel).is_dir() else 0o666) & ~mask for rel in modes}
    assert stat.S_IMODE(art.path.stat().st_mode) == 0o777 & ~mask


def test_publish_normalizes_modes_of_any_file_but_leaves_hard_links_alone(store, tmp_path):
    outside = tmp_path / "user-file"
    outside.write_text("mine")
    os.chmod(outside, 0o600)
    with umask(0o022):
        with store.publish("x", "run", stage="test") as d:
            (d.path / "private.txt").write_text("p")
            os.chmod(d.path / "private.txt", 0o600)
            (d.path / "exec.sh").write_text("e")
            os.chmod(d.path / "exec.sh", 0o777)
            (d.path / "sub").mkdir(mode=0o700)
            (d.path / "sub" / "f").write_text("f")
            os.link(outside, d.path / "linked")
    art = d.artifact
    assert {rel: stat.S_IMODE((art.path / rel).stat().st_mode) for rel in ("private.txt", "exec.sh", "sub", "sub/f")} \
        == {"private.txt": 0o644, "exec.sh": 0o644, "sub": 0o755, "sub/f": 0o644}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600  # the user's own file is not changed


def test_nan_metrics_publish_a_readable_manifest(store):
    with store.publish("x", "run", stage="test") as d:
        (d.path / "f").write_text("f")
        d.metrics.update(loss=float("nan"), best=float("inf"), worst=-float("inf"), ok=1.5)
    assert d.artifact.metrics == {"loss": None, "best": None, "worst": None, "ok": 1.5}
    assert store.resolve("x").metrics == d.artifact.metrics
    assert run(store.root, "artifacts", "ls")[0] == 0
