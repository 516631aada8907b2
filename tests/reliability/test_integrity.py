"""Integrity of published artifacts: a flipped byte or a truncated file in any artifact kind made
today (model, dataset, eval) is caught before use, naming the file; a manifest that lies about its
kind, name, version or files is refused.

Policy (r1v3.artifacts): loading hashes every file except weight shards over QUICK_HASH_LIMIT
(64 MiB), which get a size check; `r1v3 artifacts verify` and resolve(verify=True) hash those too.
"""

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from r1v3 import artifacts
from r1v3.artifacts import Store, _manifest_checksum
from r1v3.cli import main
from r1v3.errors import UserError

pytestmark = pytest.mark.reliability


def run(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--store", str(root), *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A store with one artifact of each kind made today: model m, datasets ds and mm, eval ev."""
    from tests.mmmu_fixture import write_sample_copy

    t = tmp_path_factory.mktemp("integrity")
    write_sample_copy(t / "mmmu", per_subject=1)
    root = t / "store"
    for argv in (["init", "tiny", "--name", "m"], ["data", "synth", "--name", "ds", "--n", "20"],
                 ["data", "mmmu", "--path", t / "mmmu", "--name", "mm"],
                 ["eval", "mmmu", "--model", "m", "--data", "mm", "--name", "ev", "--limit", "3",
                  "--max-new-tokens", "4", "--temperature", "0"]):
        code, _, err = run(root, *argv)
        assert code == 0, err
    return root


@pytest.fixture
def store(template, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(template, root)
    return Store(root)


# which command uses an artifact, and how it is named there
USES = {
    "m": ("model", ["eval", "mmmu", "--model", "m", "--data", "mm", "--name", "e2", "--limit", "1",
                    "--max-new-tokens", "2", "--temperature", "0"]),
    "ds": ("dataset", ["data", "show", "ds"]),
    "mm": ("dataset", ["eval", "mmmu", "--model", "m", "--data", "mm", "--name", "e2", "--limit", "1",
                       "--max-new-tokens", "2", "--temperature", "0"]),
    "ev": ("eval", ["artifacts", "show", "ev"]),
}


def flip(path: Path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def all_files(template):
    s = Store(template)
    return [(name, rel) for name in USES for rel in s.resolve(name).manifest["files"]] + [
        (name, "manifest.json") for name in USES
    ]


def _expect_caught(store, name, rel):
    kind, _ = USES[name]
    with pytest.raises(UserError) as e:
        store.resolve(name, kind=kind)
    assert rel in str(e.value), str(e.value)


def test_every_file_of_every_kind_is_hashed_on_load(store):
    """A same-size flip in any file (weights, configs, tokenizer, parquet, predictions, chart,
    manifest) is refused by resolve() with the file named, and the artifact works once restored."""
    s = store
    for name in USES:
        art = s.resolve(name)
        for rel in list(art.manifest["files"]) + ["manifest.json"]:
            path = art.path / rel
            original = path.read_bytes()
            offset = None
            if rel == "manifest.json":  # inside a config value: still valid JSON, so only a checksum sees it
                offset = original.index(b'"stage": "') + len('"stage": "')
            flip(path, offset)
            _expect_caught(s, name, rel)
            path.write_bytes(original)
            # truncation: caught by the size check even without hashing
            path.write_bytes(original[: len(original) // 2])
            _expect_caught(s, name, rel)
            path.write_bytes(original)
            assert s.resolve(name).ref == f"{name}@v1"


@pytest.mark.parametrize("name", list(USES))
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_commands_refuse_damaged_artifacts_before_use(store, name, damage):
    """The command that uses the artifact stops with one line naming the file; verify lists it."""
    art = store.resolve(name)
    rel = max(art.manifest["files"], key=lambda r: art.manifest["files"][r]["size"])  # weights, parquet, ...
    path = art.path / rel
    if damage == "flip":
        flip(path)
    else:
        path.write_bytes(path.read_bytes()[:-1])
    _, argv = USES[name]
    before = sorted(p.name for p in store.root.iterdir())
    code, out, err = run(store.root, *argv)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert rel in err, err
    assert sorted(p.name for p in store.root.iterdir()) == before  # nothing published
    code, _, err = run(store.root, "artifacts", "verify", name)
    assert code == 1 and f"{name}@v1: file {rel}" in err


def test_large_weights_are_checked_by_size_on_load_and_fully_by_verify(store, monkeypatch):
    """The DESIGN's trade-off for 70 GB checkpoints: a same-size flip in a big weight shard passes the
    quick load check and is caught by `artifacts verify` / --verify."""
    monkeypatch.setattr(artifacts, "QUICK_HASH_LIMIT", 0)
    art = store.resolve("m")
    flip(art.path / "model.safetensors")
    assert store.resolve("m", kind="model").ref == "m@v1"
    with pytest.raises(UserError, match="model.safetensors is corrupted"):
        store.resolve("m", kind="model", verify=True)
    code, _, err = run(store.root, "artifacts", "verify", "m")
    assert code == 1 and "file model.safetensors is corrupted" in err
    # the config, tokenizer and processor files are still hashed on every load
    flip(art.path / "config.json", offset=5)
    with pytest.raises(UserError, match="config.json is corrupted"):
        store.resolve("m", kind="model")


def _rewrite(art, **changes):
    m = json.loads((art.path / "manifest.json").read_text())
    m.update(changes)
    m["manifest_sha256"] = _manifest_checksum(m)  # a deliberate lie, consistent checksum and all
    (art.path / "manifest.json").write_text(json.dumps(m))
    return m


@pytest.mark.parametrize("name,lie,expected", [
    ("ds", "model", "manifest says kind 'model' but there is no config.json"),
    ("m", "dataset", "manifest says kind 'dataset' but there is no *.parquet"),
    ("ev", "dataset", "manifest says kind 'dataset' but there is no *.parquet"),
    ("ds", "eval", "manifest says kind 'eval' but there is no scores.json"),
    ("m", "weights", "manifest names unknown kind 'weights'"),
])
def test_manifest_lying_about_kind_is_refused(store, name, lie, expected):
    _rewrite(store.resolve(name), kind=lie)
    with pytest.raises(UserError, match=expected.replace("*", r"\*")):
        store.resolve(name)
    code, _, err = run(store.root, "artifacts", "verify", name)
    assert code in (1, 2) and expected in err


def test_manifest_lying_about_name_or_version_is_refused(store):
    art = store.resolve("ds")
    _rewrite(art, version=3)
    with pytest.raises(UserError, match="manifest says ds@v3 but the artifact sits at ds/v1"):
        store.resolve("ds")
    _rewrite(art, version=1, name="mm")
    with pytest.raises(UserError, match="manifest says mm@v1 but the artifact sits at ds/v1"):
        store.resolve("ds", kind="dataset")
    code, _, err = run(store.root, "data", "show", "ds")
    assert code == 2 and "manifest says mm@v1" in err


def test_lie_without_checksum_is_reported_as_a_corrupted_manifest(store):
    art = store.resolve("m")
    m = json.loads((art.path / "manifest.json").read_text())
    m["config"]["seed"] = 99
    (art.path / "manifest.json").write_text(json.dumps(m))
    code, _, err = run(store.root, *USES["m"][1])
    assert code == 2 and "file manifest.json is corrupted" in err


@pytest.mark.parametrize("rel", ["../../outside.txt", "/etc/hostname", "a/../../x", "sub\\..\\x", "manifest.json"])
def test_manifest_listing_paths_outside_the_artifact_is_refused(store, rel):
    art = store.resolve("ds")
    m = json.loads((art.path / "manifest.json").read_text())
    _rewrite(art, files={**m["files"], rel: {"sha256": "0" * 64, "size": 1}})
    with pytest.raises(UserError, match="not a plain path inside the artifact"):
        store.resolve("ds")


def test_stray_and_linked_files_in_a_published_artifact_are_refused(store, tmp_path):
    art = store.resolve("ds")
    # an extra split dropped in after publishing would be read as part of the dataset
    shutil.copy(art.path / "train.parquet", art.path / "extra.parquet")
    with pytest.raises(UserError, match="file extra.parquet is not in the manifest"):
        store.resolve("ds")
    (art.path / "extra.parquet").unlink()
    # a listed file replaced by a symlink to a same-content file elsewhere
    outside = tmp_path / "train.parquet"
    shutil.move(art.path / "train.parquet", outside)
    (art.path / "train.parquet").symlink_to(outside)
    with pytest.raises(UserError, match="file train.parquet is a symlink"):
        store.resolve("ds")
    code, _, err = run(store.root, "artifacts", "verify", "ds")
    assert code == 1 and "train.parquet is a symlink" in err


def test_a_draft_with_a_symlink_is_not_published(store, tmp_path):
    (tmp_path / "secret").write_text("s")
    with pytest.raises(UserError, match="symlinks are not allowed"):
        with store.publish("x", "run", stage="test") as d:
            (d.path / "data.txt").symlink_to(tmp_path / "secret")
    assert store.versions("x") == [] and not any((store.root / ".staging").iterdir())
