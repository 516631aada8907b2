"""Versioned artifact store.

    STORE/<name>/v<N>/           one published artifact: its files plus manifest.json
    STORE/.staging/<uuid>/       drafts being written; never read as artifacts
    STORE/.work/<name>/          checkpoints of unfinished runs (resumable stages)

Publishing writes everything into a staging directory, fsyncs it, and renames it to its
version directory. rename(2) is atomic and refuses to replace a non-empty directory, so a
reader never sees half an artifact and two publishers never get the same version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from r1v3 import __version__
from r1v3.errors import UserError

KINDS = ("model", "dataset", "run", "selection", "eval")
MANIFEST = "manifest.json"
# the manifest's own checksum (over its other keys), so a flipped byte in its config, kind or
# lineage is caught like one in any other file
MANIFEST_CHECKSUM = "manifest_sha256"
# used with fullmatch: `^...$` lets a trailing newline through ("name\n")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
VERSION_RE = re.compile(r"v([1-9][0-9]*)")
# Loading hashes every file except weight shards above this size, which get a size check unless
# verify=True (`r1v3 artifacts verify`): a flipped byte in a config, tokenizer or
# dataset is caught before use for little cost, and a 70 GB checkpoint is not read twice per load.
QUICK_HASH_LIMIT = 64 << 20
LARGE_SUFFIXES = (".safetensors",)
# What must be inside an artifact of each kind, so a manifest cannot pass one kind off as another.
KIND_SIGNATURE = {
    "model": ("config.json", "*.safetensors"),
    "dataset": ("*.parquet",),
    "eval": ("scores.json",),
}


def default_store() -> Path:
    return Path(os.environ.get("R1V3_STORE", "artifacts"))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(
            f"invalid artifact name {name!r}: use letters, digits, '.', '_' or '-' "
            "(no '/', no '..', at most 100 characters)"
        )
    if name.strip(".") == "":
        raise UserError(f"invalid artifact name {name!r}")
    return name


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _manifest_checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _bad_relpath(rel) -> bool:
    """A manifest file entry that would point outside its artifact directory."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return True
    p = PurePosixPath(rel)
    return p.is_absolute() or ".." in p.parts or rel == MANIFEST


# ---- resumable runs: a run's scratch state lives in STORE/.work/<name>/<stage>/ (Store.work_dir)


def run_key(settings: dict, *inputs: "Artifact") -> str:
    """What must match for --resume to continue an interrupted run: its settings and the
    contents (digests) of the artifacts it reads."""
    blob = json.dumps({"settings": settings, "inputs": [a.digest for a in inputs]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_run_key(path: Path) -> str | None:
    """The key an interrupted run recorded: None without the file, "" if it cannot be read."""
    if not path.exists():
        return None
    try:
        key = json.loads(path.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return ""
    return key if isinstance(key, str) else ""


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`, never rewrite it in place: a kill mid-write leaves the old
    file whole (an empty or torn state file once broke every later run)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)  # the rename itself must outlive a power cut


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Artifact:
    name: str
    version: int
    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    def file(self, relpath: str) -> Path:
        return self.path / relpath


def _digest(files: dict) -> str:
    """One hash for the whole content: the sorted (path, sha256) list."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    return h.hexdigest()


def _large(rel: str, size: int) -> bool:
    return size > QUICK_HASH_LIMIT and rel.endswith(LARGE_SUFFIXES)


def _scan(root: Path) -> dict:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise UserError(f"{p}: symlinks are not allowed inside an artifact")
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST:
            files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return files


@dataclass
class Draft:
    """An artifact being written. Put files under `path`; fill `metrics`."""

    store: "Store"
    name: str
    kind: str
    stage: str
    path: Path
    config: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    artifact: Artifact | None = None


class Store:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_store()

    # ---- reading -------------------------------------------------------------------------
    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        out = []
        for child in d.iterdir():
            m = VERSION_RE.fullmatch(child.name)
            if m and (child / MANIFEST).is_file():
                out.append(int(m.group(1)))
        return sorted(out)

    def list(self, damaged: list | None = None) -> list[Artifact]:
        """Published artifacts; those whose manifest cannot be read go to `damaged` (messages)."""
        if not self.root.is_dir():
            return []
        arts = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            for v in self.versions(d.name):
                try:
                    arts.append(self._open(d / f"v{v}"))
                except UserError as e:
                    if damaged is not None:
                        damaged.append(str(e))
        return arts

    def resolve(self, ref: str, kind: str | tuple[str, ...] | None = None, verify: bool = False) -> Artifact:
        """`name`, `name@vN` (or `name@N`), or a path to an artifact directory."""
        path = self._locate(ref)
        art = self._open(path, ref=ref)
        kinds = (kind,) if isinstance(kind, str) else kind
        if kinds and art.kind not in kinds:
            raise UserError(f"{ref}: is a {art.kind} artifact, expected {' or '.join(kinds)}")
        problems = self.check(art, full=verify)
        if problems:
            raise UserError(f"{ref}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        return art

    def _locate(self, ref: str) -> Path:
        if "/" in ref or ref.startswith(".") or os.sep in ref:
            p = Path(ref)
            if not p.is_dir():
                raise UserError(f"{ref}: no such artifact directory")
            if not (p / MANIFEST).is_file():
                raise UserError(f"{ref}: not an artifact (no {MANIFEST}); wrap a Hugging Face model directory with `r1v3 import-model`")
            return p
        name, _, ver = ref.partition("@")
        check_name(name)
        versions = self.versions(name)
        if not versions:
            raise UserError(f"{ref}: no artifact named {name!r} in store {self.root}")
        if not ver:
            return self.root / name / f"v{versions[-1]}"
        m = re.fullmatch(r"v?([1-9][0-9]*)", ver)
        if not m:
            raise UserError(f"{ref}: bad version {ver!r}, expected like {name}@v2")
        if int(m.group(1)) not in versions:
            have = ", ".join(f"v{v}" for v in versions)
            raise UserError(f"{ref}: {name} has no version v{m.group(1)} (has {have})")
        return self.root / name / f"v{int(m.group(1))}"

    def _open(self, path: Path, ref: str | None = None) -> Artifact:
        ref = ref or str(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: {e}") from None
        if not isinstance(manifest, dict):
            raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: not a JSON object")
        for key in ("kind", "name", "version", "files", "digest", MANIFEST_CHECKSUM):
            if key not in manifest:
                raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: missing key {key!r}")
        if manifest[MANIFEST_CHECKSUM] != _manifest_checksum(manifest):
            raise UserError(f"{ref}: file {MANIFEST} is corrupted (its checksum does not match its content)")
        if not isinstance(manifest["kind"], str) or manifest["kind"] not in KINDS:
            raise UserError(f"{ref}: manifest names unknown kind {manifest['kind']!r}")
        if not isinstance(manifest["name"], str) or type(manifest["version"]) is not int:
            raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: bad name or version")
        files = manifest["files"]
        if not isinstance(files, dict):
            raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: 'files' is not a mapping")
        for rel, meta in files.items():
            if _bad_relpath(rel):
                raise UserError(f"{ref}: manifest lists file {rel!r}, which is not a plain path inside the artifact")
            if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and type(meta.get("size")) is int):
                raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: bad entry for file {rel!r}")
        m = VERSION_RE.fullmatch(path.name)
        if m and (manifest["name"] != path.parent.name or manifest["version"] != int(m.group(1))):
            raise UserError(
                f"{ref}: manifest says {manifest['name']}@v{manifest['version']} "
                f"but the artifact sits at {path.parent.name}/{path.name}"
            )
        return Artifact(manifest["name"], int(manifest["version"]), path, manifest)

    def check(self, art: Artifact, full: bool = False) -> list[str]:
        """Problems with an artifact's files.

        Always: sizes, files not in the manifest (a stray *.parquet or *.safetensors would be
        used), symlinks, and the sha256 of every file but weight shards over QUICK_HASH_LIMIT;
        with `full`, those shards' sha256 too.
        """
        problems = []
        files = art.manifest["files"]
        root = os.path.realpath(art.path)
        for rel, meta in files.items():
            p = art.path / rel
            if p.is_symlink() or os.path.commonpath([root, os.path.realpath(p)]) != root:
                # a published artifact holds only its own regular files; a link could point anywhere
                problems.append(f"file {rel} is a symlink or lies outside the artifact")
            elif not p.is_file():
                problems.append(f"file {rel} is missing")
            elif p.stat().st_size != meta["size"]:
                problems.append(f"file {rel} has {p.stat().st_size} bytes, manifest says {meta['size']}")
            elif (full or not _large(rel, meta["size"])) and sha256_file(p) != meta["sha256"]:
                problems.append(f"file {rel} is corrupted (sha256 mismatch)")
        for p in art.path.rglob("*"):
            rel = p.relative_to(art.path).as_posix()
            if (p.is_file() or p.is_symlink()) and rel != MANIFEST and rel not in files:
                problems.append(f"file {rel} is not in the manifest")
        if _digest(files) != art.manifest["digest"]:
            problems.append("manifest digest does not match its file list")
        for pattern in KIND_SIGNATURE.get(art.kind, ()):
            if not any(Path(rel).match(pattern) for rel in files):
                problems.append(f"manifest says kind {art.kind!r} but there is no {pattern}")
        return problems

    def lineage(self, art: Artifact) -> dict:
        """{ref, kind, stage, inputs: [...]} back to imported models and raw data."""
        node = {"ref": art.ref, "kind": art.kind, "stage": art.manifest.get("stage", "?"), "inputs": []}
        for inp in art.manifest.get("inputs", []):
            try:
                parent = self._open(self._locate(inp["ref"]), ref=inp["ref"])
            except UserError:
                node["inputs"].append({"ref": inp["ref"], "missing": True, "inputs": []})
                continue
            child = self.lineage(parent)
            if parent.digest != inp.get("digest"):
                child["changed"] = True
            node["inputs"].append(child)
        return node

    # ---- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def publish(
        self,
        name: str,
        kind: str,
        *,
        stage: str,
        config: dict | None = None,
        inputs: list[Artifact] | None = None,
    ) -> Iterator[Draft]:
        """Write an artifact atomically: `with store.publish(...) as draft: write into draft.path`.

        If the body raises, the draft is removed and nothing is published.
        """
        check_name(name)
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        staging = self.root / ".staging" / f"{name}-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"store {self.root}: cannot create a draft in {staging.parent}: {e.strerror or e}") from None
        # Held for the draft's lifetime and released by the kernel when the writer dies (even by
        # SIGKILL): `abandoned_drafts` tells a crashed writer's leftovers from a live one by it.
        lock = os.open(staging, os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_EX)
        draft = Draft(self, name, kind, stage, staging, dict(config or {}), list(inputs or []))
        try:
            yield draft
            draft.artifact = self._commit(draft)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            os.close(lock)

    def abandoned_drafts(self, min_age: float = 60.0) -> list[Path]:
        """Drafts in .staging whose writer is gone (killed before publishing).

        A draft is abandoned when nobody holds its lock and it is older than `min_age` seconds
        (a new draft exists for an instant before its writer locks it). Only reliable where
        flock works across writers: a local disk, or NFS with working lockd.
        """
        d = self.root / ".staging"
        if not d.is_dir():
            return []
        now, found = time.time(), []
        for child in sorted(d.iterdir()):
            try:
                if now - child.stat().st_mtime < min_age:
                    continue
                fd = os.open(child, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            finally:
                os.close(fd)
            found.append(child)
        return found

    def clean_staging(self, min_age: float = 60.0) -> list[Path]:
        """Remove abandoned drafts (see `abandoned_drafts`); returns what was removed."""
        gone = self.abandoned_drafts(min_age)
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return gone

    def _commit(self, draft: Draft) -> Artifact:
        files = _scan(draft.path)
        if not files:
            raise RuntimeError(f"refusing to publish empty artifact {draft.name}")
        for rel in files:
            _fsync_path(draft.path / rel)
        manifest = {
            "kind": draft.kind,
            "name": draft.name,
            "version": 0,
            "stage": draft.stage,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "toolkit_version": __version__,
            "config": draft.config,
            "inputs": [{"ref": a.ref, "kind": a.kind, "digest": a.digest} for a in draft.inputs],
            "metrics": draft.metrics,
            "files": files,
            "digest": _digest(files),
        }
        parent = self.root / draft.name
        parent.mkdir(parents=True, exist_ok=True)
        _fsync_path(self.root)  # the name directory must outlive a power cut as much as its version
        version = (self.versions(draft.name) or [0])[-1] + 1
        while True:
            manifest["version"] = version
            # what is written is what a reader parses back (config values pass through str())
            manifest = json.loads(json.dumps(manifest, default=str))
            manifest[MANIFEST_CHECKSUM] = _manifest_checksum(manifest)
            mpath = draft.path / MANIFEST
            # a new file, never a write through an existing one: a manifest.json hard-linked from
            # an imported directory would otherwise be overwritten at its source
            mpath.unlink(missing_ok=True)
            mpath.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
            _fsync_path(mpath)
            _fsync_path(draft.path)
            target = parent / f"v{version}"
            try:
                os.rename(draft.path, target)
            except OSError as e:
                # Someone else took this version first (their directory is non-empty): next one.
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    version += 1
                    continue
                raise
            _fsync_path(parent)
            return Artifact(draft.name, version, target, manifest)

    def work_dir(self, name: str, key: str) -> Path:
        """A per-run scratch directory for checkpoints, kept across crashes until publish."""
        d = self.root / ".work" / check_name(name) / key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def lock_work(self, name: str, key: str):
        """Hold `.work/<name>/<key>.lock` for as long as the returned file stays open (or the
        process lives): two runs of one name would otherwise overwrite each other's progress."""
        path = self.work_dir(name, key).parent / f"{key}.lock"
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise UserError(f"another run of {name!r} ({key}) is in progress in this store; wait for it or use another --name") from None
        return f
