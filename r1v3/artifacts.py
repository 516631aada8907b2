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
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterator

from r1v3 import __version__, jsonio
from r1v3.errors import UserError

if TYPE_CHECKING:
    from r1v3.work import Work

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
# A manifest lists files, not data: even a 100,000-file model repository stays far below this.
# A bigger one is hostile, and reading it whole would cost memory before any check could run.
MAX_MANIFEST_BYTES = 64 << 20
# How far `lineage` follows inputs; a real chain (import, align, SFT rounds, eval) is a handful deep.
MAX_LINEAGE_DEPTH = 50
# An input is recorded as Artifact.ref: never a path, so a manifest cannot send lineage elsewhere.
INPUT_REF_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,99})@v([1-9][0-9]{0,8})")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Manifest keys that `ls`, `show` and `lineage` read besides the required ones, and their types.
OPTIONAL_KEYS = {"stage": str, "created": str, "toolkit_version": str, "config": dict, "metrics": dict, "inputs": list,
                 "seconds": float}


def default_store() -> Path:
    value = os.environ.get("R1V3_STORE")
    if value is None:
        return Path("artifacts")
    if not value.strip():
        # Path("") is the current directory: an unset-by-mistake variable would publish there
        raise UserError("R1V3_STORE is set but empty: give it a store directory, or unset it for ./artifacts")
    return Path(value)


def clip(value, limit: int = 80) -> str:
    """`value` as text for one line of output, cut to `limit` characters: a manifest may hold anything."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    # no newlines or terminal escapes from a crafted field
    return "".join(c if c.isprintable() else "?" for c in text)


# what a terminal acts on rather than shows: C0/C1 controls (escape sequences, carriage return,
# backspace), and the invisible and bidirectional format characters that reorder or hide text
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: str) -> str:
    """`text` for one line of terminal output: every control character shown as its escape (\\x1b)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def published(art: Artifact, console) -> None:
    """A stage's `report` when the artifact it published is all there is to say."""
    from rich.text import Text

    # a store directory may hold [brackets]: shown as written, never read as markup
    console.print(Text.assemble(("published", "green"), printable(f" {art.ref} ({art.kind}) at {art.path}")),
                  highlight=False, soft_wrap=True)


def shown(value, limit: int = 80, style: str = ""):
    """`value` for a rich console or table: a Text, so neither [markup] nor :emoji: codes in it are
    read, cut to `limit` characters, control characters shown as escapes."""
    from rich.text import Text

    text = value if isinstance(value, str) else str(value)
    return Text(printable(text if len(text) <= limit else text[: limit - 3] + "..."), style=style)


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
    """A manifest file entry that would point outside its artifact directory, or that no file
    system could hold (an over-long name makes every stat() of it raise)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or not rel.isprintable() or len(rel) > 1024:
        return True
    p = PurePosixPath(rel)
    if p.as_posix() != rel or any(len(part.encode(errors="replace")) > 255 for part in p.parts):
        return True  # "./x", "a//b", "x/": not the form _scan records
    return p.is_absolute() or ".." in p.parts or rel == MANIFEST


def _read_manifest(path: Path, ref: str):
    """A manifest's parsed JSON, read through the bounded reader: a crafted one (nested 100,000
    deep, a 5,000-digit number, NaN, gigabytes) is one UserError, never a traceback or a stall."""
    try:
        if path.is_symlink():
            raise UserError(f"{ref}: {MANIFEST} is a symlink; an artifact holds only its own files")
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise UserError(f"{ref}: cannot read manifest {path}: {e.strerror or e}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise UserError(f"{ref}: corrupted manifest {path}: larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        return jsonio.loads(raw, f"{ref}: corrupted manifest {path}")
    except RecursionError:  # the checksum is computed over the parsed value: bounded, but be sure
        raise UserError(f"{ref}: corrupted manifest {path}: nested too deep") from None


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with the shape of a manifest (its checksum already matches), or None.

    Everything a reader indexes is checked here once, so `ls`, `show`, `lineage` and `verify`
    can trust the types instead of each guarding every field."""
    if not (isinstance(manifest["name"], str) and NAME_RE.fullmatch(manifest["name"])):
        return f"bad name {clip(repr(manifest['name']), 40)}"
    if type(manifest["version"]) is not int or not 0 < manifest["version"] < 10**9:
        return f"bad version {clip(repr(manifest['version']), 40)}"
    if not (isinstance(manifest["digest"], str) and SHA256_RE.fullmatch(manifest["digest"])):
        return "'digest' is not a sha256"
    files = manifest["files"]
    if not isinstance(files, dict):
        return "'files' is not a mapping"
    for rel, meta in files.items():
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
                and type(meta.get("size")) is int and 0 <= meta["size"] < 1 << 63):
            return f"bad entry for file {clip(repr(rel))}"
    for key, type_ in OPTIONAL_KEYS.items():
        if key in manifest and not isinstance(manifest[key], type_):
            return f"{key!r} must be a {type_.__name__}, not {type(manifest[key]).__name__}"
    for i, inp in enumerate(manifest.get("inputs", [])):
        if not (isinstance(inp, dict) and isinstance(inp.get("ref"), str) and INPUT_REF_RE.fullmatch(inp["ref"])
                and inp.get("kind") in KINDS and isinstance(inp.get("digest"), str)
                and SHA256_RE.fullmatch(inp["digest"])):
            return f"input {i} is not a {{ref: NAME@vN, kind, digest}} entry: {clip(inp)}"
    return None


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`, never rewrite it in place: a kill mid-write leaves the old
    file whole (an empty or torn state file once broke every later run)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)  # the rename itself must outlive a power cut


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to disk (a directory: the names in it, so renames last)."""
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


def _file_problem(p: Path, rel: str, meta: dict, root: str, full: bool) -> str | None:
    if p.is_symlink() or os.path.commonpath([root, os.path.realpath(p)]) != root:
        # a published artifact holds only its own regular files; a link could point anywhere
        return f"file {rel} is a symlink or lies outside the artifact"
    if not p.is_file():
        return f"file {rel} is missing"
    if p.stat().st_size != meta["size"]:
        return f"file {rel} has {p.stat().st_size} bytes, manifest says {meta['size']}"
    if (full or not _large(rel, meta["size"])) and sha256_file(p) != meta["sha256"]:
        return f"file {rel} is corrupted (sha256 mismatch)"
    return None


def _umask() -> int:
    try:  # read, not set: os.umask() changes it for every thread for an instant
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normalize_modes(root: Path) -> None:
    """Give every file and directory of a draft the mode a plain write would: 0666/0777 less the
    umask. Libraries write some files through private temporary files (safetensors weights came
    out 0600 while their config was 0644), and copies keep their source's mode.

    A hard-linked file (import-model --link) keeps its mode: it is the user's own file too."""
    mask = _umask()
    for p in [root, *root.rglob("*")]:  # _scan has refused symlinks already
        st = p.lstat()
        is_dir = stat.S_ISDIR(st.st_mode)
        want = (0o777 if is_dir else 0o666) & ~mask
        if stat.S_IMODE(st.st_mode) != want and (is_dir or st.st_nlink == 1):
            os.chmod(p, want)


def _scan(root: Path) -> dict:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise UserError(f"{p}: symlinks are not allowed inside an artifact")
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST:
            if _bad_relpath(rel):  # a manifest listing it would be refused on every load
                raise UserError(f"{clip(repr(rel))}: a file name an artifact cannot hold (control characters or too long)")
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
    def __init__(self, root: str | os.PathLike | None = None, started: float | None = None, force_kind: bool = False):
        """`started`: time.monotonic() when the command writing through this store began; each
        artifact it publishes then records its wall time as `seconds` (a recipe's table reads it,
        so a re-run that reuses the artifact still shows what it cost to make). `force_kind`:
        publish under a name whose versions are of another kind (see `check_kind`)."""
        if root is not None and not str(root).strip():
            # Path("  ") is a directory named by spaces, beside wherever the command ran
            raise UserError(f"store directory {str(root)!r} is blank: give a path (--store or R1V3_STORE)")
        self.root = Path(root) if root is not None else default_store()
        self.started = started
        self.force_kind = force_kind

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

    def kinds(self, name: str) -> dict[int, str]:
        """The kind of each readable version of `name` (a damaged one is left out: it says nothing)."""
        out = {}
        for v in self.versions(name):
            try:
                out[v] = self._open(self.root / name / f"v{v}").kind
            except UserError:
                continue
        return out

    def check_kind(self, name: str, kind: str) -> None:
        """Refuse publishing a `kind` artifact as `name` when its versions are of another kind: the
        new version would shadow them, and every reference by name (`--data d`) would then find
        the wrong kind. Unless the store was opened with force_kind (the commands' --force-kind)."""
        if self.force_kind:
            return
        other: dict[str, list[int]] = {}
        for v, k in self.kinds(name).items():
            if k != kind:
                other.setdefault(k, []).append(v)
        if other:
            held = ", ".join(f"{k} ({', '.join(f'v{v}' for v in vs[:3])}{', ...' if len(vs) > 3 else ''})"
                             for k, vs in sorted(other.items()))
            raise UserError(f"{name!r} already names {held}: publishing a {kind} under it would shadow "
                            f"{'it' if sum(map(len, other.values())) == 1 else 'them'} for every reference by "
                            "name; choose another --name, or give --force-kind to publish it anyway")

    def list(self, damaged: list | None = None) -> list[Artifact]:
        """Published artifacts; those whose manifest cannot be read go to `damaged` (messages)."""
        if not self.root.is_dir():
            return []
        arts = []
        for d in sorted(self.root.iterdir()):
            try:
                if d.name.startswith(".") or not d.is_dir():
                    continue
                versions = self.versions(d.name)
            except OSError as e:  # one unreadable directory must not hide the rest of the store
                if damaged is not None:
                    damaged.append(f"{d}: cannot read: {e.strerror or e}")
                continue
            for v in versions:
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
        ref = clip(ref or str(path), 200)
        manifest = _read_manifest(path / MANIFEST, ref)
        if not isinstance(manifest, dict):
            raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: not a JSON object")
        for key in ("kind", "name", "version", "files", "digest", MANIFEST_CHECKSUM):
            if key not in manifest:
                raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: missing key {key!r}")
        if manifest[MANIFEST_CHECKSUM] != _manifest_checksum(manifest):
            raise UserError(f"{ref}: file {MANIFEST} is corrupted (its checksum does not match its content)")
        if not isinstance(manifest["kind"], str) or manifest["kind"] not in KINDS:
            raise UserError(f"{ref}: manifest names unknown kind {clip(repr(manifest['kind']), 40)}")
        problem = _manifest_problem(manifest)
        if problem:
            raise UserError(f"{ref}: corrupted manifest {path / MANIFEST}: {problem}")
        for rel in manifest["files"]:
            if _bad_relpath(rel):
                raise UserError(f"{ref}: manifest lists file {clip(repr(rel))}, which is not a plain path inside the artifact")
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
            try:
                problem = _file_problem(art.path / rel, rel, meta, root, full)
            except OSError as e:  # unreadable: a problem with this file, not a crash of the check
                problem = f"file {rel} cannot be read: {e.strerror or e}"
            if problem:
                problems.append(problem)
        for p in art.path.rglob("*"):
            rel = p.relative_to(art.path).as_posix()
            # anything but a directory: a FIFO named train.parquet would hang the reader that globs it
            if (p.is_symlink() or not p.is_dir()) and rel != MANIFEST and rel not in files:
                problems.append(f"file {clip(rel, 200)} is not in the manifest")
        if _digest(files) != art.manifest["digest"]:
            problems.append("manifest digest does not match its file list")
        for pattern in KIND_SIGNATURE.get(art.kind, ()):
            if not any(Path(rel).match(pattern) for rel in files):
                problems.append(f"manifest says kind {art.kind!r} but there is no {pattern}")
        return problems

    def lineage(self, art: Artifact, _path: tuple = (), _seen: set | None = None) -> dict:
        """{ref, kind, stage, inputs: [...]} back to imported models and raw data.

        Each artifact's inputs are expanded once per tree (later mentions say `repeated`), an
        input already on the path down is a `cycle` (only a crafted manifest can make one), and
        the walk stops at MAX_LINEAGE_DEPTH (`truncated`): a hostile store cannot make this
        recurse forever or grow exponentially.
        """
        seen = set() if _seen is None else _seen
        seen.add(art.ref)
        node = {"ref": art.ref, "kind": art.kind, "stage": art.manifest.get("stage", "?"), "inputs": []}
        path = (*_path, art.ref)
        for inp in art.manifest.get("inputs", []):
            ref = inp["ref"]  # NAME@vN: checked when the manifest was opened
            if ref in path:
                node["inputs"].append({"ref": ref, "cycle": True, "inputs": []})
            elif ref in seen:
                node["inputs"].append({"ref": ref, "repeated": True, "inputs": []})
            elif len(path) >= MAX_LINEAGE_DEPTH:
                node["inputs"].append({"ref": ref, "truncated": True, "inputs": []})
            else:
                node["inputs"].append(self._lineage_input(inp, path, seen))
        return node

    def _lineage_input(self, inp: dict, path: tuple, seen: set) -> dict:
        name, _, version = inp["ref"].partition("@v")
        try:
            if int(version) not in self.versions(name):
                return {"ref": inp["ref"], "missing": True, "inputs": []}
            parent = self._open(self.root / name / f"v{int(version)}", ref=inp["ref"])
        except UserError as e:
            return {"ref": inp["ref"], "damaged": clip(str(e), 200), "inputs": []}
        except OSError as e:
            return {"ref": inp["ref"], "damaged": f"cannot read: {e.strerror or e}", "inputs": []}
        child = self.lineage(parent, path, seen)
        if parent.digest != inp["digest"]:
            child["changed"] = True
        return child

    def verify(self, ref: str) -> tuple[Artifact | None, list[str]]:
        """(artifact, problems) after hashing every file, large shards included. A damaged
        manifest is a problem like a damaged file (the artifact is then None); a reference that
        names nothing is a UserError, as for any other command."""
        path = self._locate(ref)
        try:
            art = self._open(path, ref=ref)
        except UserError as e:
            return None, [str(e)]
        return art, [f"{art.ref}: {p}" for p in self.check(art, full=True)]

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
        self.check_kind(name, kind)
        staging = self.root / ".staging" / f"{name}-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir(parents=True)
        except OSError as e:
            # still an OSError of the same errno: the CLI gives it the exit code of any other write
            # into the store (a work directory, a lock), read-only store or full disk alike
            raise OSError(e.errno, f"cannot create a draft in the store: {e.strerror}", e.filename) from None
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
        _normalize_modes(draft.path)
        for rel in files:
            fsync_path(draft.path / rel)
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
        if self.started is not None:
            manifest["seconds"] = round(time.monotonic() - self.started, 1)
        self.check_kind(draft.name, draft.kind)  # again: another kind may have come while the draft was written
        parent = self.root / draft.name
        parent.mkdir(parents=True, exist_ok=True)
        fsync_path(self.root)  # the name directory must outlive a power cut as much as its version
        version = (self.versions(draft.name) or [0])[-1] + 1
        while True:
            manifest["version"] = version
            # what is written is what a reader parses back (config values pass through str(),
            # a NaN or infinite metric, such as a diverged loss, becomes null: not JSON otherwise)
            manifest = json.loads(json.dumps(manifest, default=str), parse_constant=lambda _: None)
            manifest[MANIFEST_CHECKSUM] = _manifest_checksum(manifest)
            mpath = draft.path / MANIFEST
            # a new file, never a write through an existing one: a manifest.json hard-linked from
            # an imported directory would otherwise be overwritten at its source
            mpath.unlink(missing_ok=True)
            mpath.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
            fsync_path(mpath)
            fsync_path(draft.path)
            target = parent / f"v{version}"
            try:
                os.rename(draft.path, target)
            except OSError as e:
                # Someone else took this version first (their directory is non-empty): next one.
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    version += 1
                    continue
                raise
            fsync_path(parent)
            return Artifact(draft.name, version, target, manifest)

    # ---- work directories of resumable runs (STORE/.work/<name>/<stage>/) -----------------
    def up_to_date(self, cfg) -> list["Artifact"] | None:
        """What the stage of `cfg` would publish, when the latest artifact of each name it publishes
        (its `artifact="output"` settings) already holds it: the same stage, the same settings that
        the result depends on (`config.reuse_settings`: declared roles, and the digests of files read
        outside the store), and the same content of every artifact it read, as the settings resolve
        them now (`data` naming a newer version counts as a change). None when anything differs, is
        undigestible or cannot be read: then the stage runs."""
        from r1v3 import config

        if config.undigested(cfg):
            return None
        settings = json.loads(json.dumps(config.reuse_settings(cfg), default=str))  # as a manifest reads back
        outputs = list(config.artifact_settings(cfg, "output").values())
        refs = list(config.artifact_settings(cfg, "input").values())
        found: list[Artifact] = []
        try:
            for name in outputs:
                if not self.versions(check_name(name)):
                    return None
                art = self.resolve(name)
                recorded = art.manifest.get("config")
                if art.manifest.get("stage") != cfg.STAGE or not isinstance(recorded, dict) or any(
                        recorded.get(k, _ABSENT) != v for k, v in settings.items()):
                    return None
                if not all(self._same_input(inp, refs, outputs, found) for inp in art.manifest.get("inputs", [])):
                    return None
                found.append(art)
        except UserError:  # damaged or gone: the stage says what is wrong when it runs
            return None
        return found or None

    def _same_input(self, inp: dict, refs: list[str], outputs: list[str], found: list["Artifact"]) -> bool:
        """Whether an input recorded in a manifest is what the settings name now (by artifact name,
        NAME@vN or directory); an input no setting names (a run's starting model) must still hold the
        recorded content, and one this same command publishes must be the artifact just matched."""
        name = inp["ref"].rpartition("@v")[0]
        if name in outputs:
            return any(a.ref == inp["ref"] for a in found)
        for ref in refs:
            if ref == name or ref.startswith(name + "@v") or (
                    os.sep in ref and Path(ref).is_dir() and Path(ref).resolve().parent.name == name):
                return self.resolve(ref).digest == inp["digest"]
        return self.resolve(inp["ref"]).digest == inp["digest"]

    def work(
        self,
        name: str,
        stage: str,
        *,
        settings: dict,
        inputs: dict[str, Artifact],
        resume: bool,
        has_progress: Callable[[Path], bool],
    ) -> Work:
        """The scratch directory of run `name` of `stage`: `with store.work(...) as work:` (or
        `with work.claim(main=...)` under several processes) locks it, keeps or discards what an
        interrupted run saved, and removes it with its lock once the body succeeds. Nothing is
        touched before entering, so `work.path` can be handed to a trainer beforehand."""
        from r1v3.work import Work

        return Work(self, check_name(name), stage, settings, inputs, resume, has_progress)

    def work_path(self, name: str, stage: str) -> Path:
        """Where run `name` of `stage` keeps its scratch state (only named: nothing is created)."""
        return self.root / ".work" / check_name(name) / stage

    def lock_work(self, name: str, stage: str):
        """Hold `.work/<name>/<stage>.lock` for as long as the returned file stays open (or the
        process lives): two runs of one name would otherwise overwrite each other's progress."""
        from r1v3.work import hold_lock

        return hold_lock(self.root / ".work" / check_name(name), name, stage)


_ABSENT = object()  # a setting a manifest does not record (written before the setting existed)
