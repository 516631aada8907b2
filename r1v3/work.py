"""Resumable runs: a run's scratch state lives in STORE/.work/<name>/<stage>/, locked while it runs,
kept after a failure for `--resume` (which must then see the same settings and input contents), and
removed when the run succeeds. Stages reach it through `Store.work(...)`; they never build these paths."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from r1v3 import jsonio
from r1v3.artifacts import write_atomic
from r1v3.errors import UserError

if TYPE_CHECKING:
    from r1v3.artifacts import Artifact, Store

def run_key(settings: dict, *inputs: "Artifact") -> str:
    """What must match for --resume to continue an interrupted run: its settings and the
    contents (digests) of the artifacts it reads."""
    blob = json.dumps({"settings": settings, "inputs": [a.digest for a in inputs]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_run_state(path: Path) -> dict | None:
    """What an interrupted run recorded (key, settings, inputs): None without the file, {} if it
    cannot be read or is not what we write."""
    if not path.exists():
        return None
    try:
        state = jsonio.read(path)
    except UserError:
        return {}
    return state if isinstance(state, dict) and isinstance(state.get("key"), str) else {}


def _show(value) -> str:
    return json.dumps(value) if value is not _UNSET else "(unset)"


_UNSET = object()


def _state_differences(old: dict, new: dict) -> list[str]:
    """What differs between a recorded run state and a new one, in words: 'seed 0 -> 1',
    'the model changed (tiny@v1 -> tiny@v2)'."""
    out = []
    if not isinstance(old.get("settings"), dict) or not isinstance(old.get("inputs"), dict):
        return ["(its state file predates recording them, so it cannot say which)"]
    for k in sorted(set(old["settings"]) | set(new["settings"])):
        a, b = old["settings"].get(k, _UNSET), new["settings"].get(k, _UNSET)
        if a != b:
            out.append(f"{k} {_show(a)} -> {_show(b)}")
    for role in sorted(set(old["inputs"]) | set(new["inputs"])):
        a, b = old["inputs"].get(role) or {}, new["inputs"].get(role) or {}
        if not isinstance(a, dict) or a.get("digest") != b.get("digest"):
            a_ref = a.get("ref") if isinstance(a, dict) else None
            refs = f"{a_ref} -> {b.get('ref')}" if a_ref != b.get("ref") else f"{a_ref}: other content"
            out.append(f"the {role} changed ({refs})")
    return out



WORK_STATE = "r1v3-run.json"  # a run's key, settings and input digests, beside its progress


def hold_lock(parent: Path, name: str, stage: str):
    path = parent / f"{stage}.lock"
    while True:
        parent.mkdir(parents=True, exist_ok=True)
        try:
            f = open(path, "a")
        except FileNotFoundError:
            continue  # a finishing run removed the empty .work/<name> between the two calls
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise UserError(
                f"another run of {name!r} ({stage}) is in progress in this store; wait for it or use another --name"
            ) from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return f
        # the holder finished and removed the file between our open and our lock: a third run could
        # lock a new file of that name, so lock the new one instead
        f.close()


class Work:
    """See `Store.work`."""

    def __init__(self, store: Store, name: str, stage: str, settings: dict, inputs: dict, resume: bool,
                 has_progress: Callable[[Path], bool]):
        self.name, self.stage, self.resume, self.has_progress = name, stage, resume, has_progress
        self.path = store.work_path(name, stage)
        self.key = run_key(settings, *inputs.values())  # the same key as before settings were recorded
        self.state = {
            "key": self.key,
            "settings": json.loads(json.dumps(settings, default=str)),  # as it reads back
            "inputs": {role: {"ref": a.ref, "digest": a.digest} for role, a in inputs.items()},
        }
        self.resumed = False  # on entry: whether an interrupted run's progress is continued
        self._entered: contextlib.ExitStack | None = None

    @contextlib.contextmanager
    def claim(self, main: bool = True) -> Iterator["Work"]:
        """Only the main process locks, compares and cleans up; the others just use the path."""
        if not main:
            yield self
            return
        made_root = not self.path.parent.parent.exists()
        lock = hold_lock(self.path.parent, self.name, self.stage)
        succeeded = False
        try:
            self._prepare()
            yield self
            succeeded = True
        finally:
            # on failure, what an interrupted run could resume from stays; anything else goes
            if succeeded or not (self.path.is_dir() and self.has_progress(self.path)):
                self._discard()
            if not self.path.exists():
                Path(lock.name).unlink(missing_ok=True)  # still held: see _hold_lock
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()  # .work/<name>, unless another stage keeps work there
                    if made_root:
                        self.path.parent.parent.rmdir()  # .work, if this run made it and nothing else is there
            lock.close()

    def __enter__(self) -> "Work":
        self._entered = contextlib.ExitStack()
        return self._entered.enter_context(self.claim())

    def __exit__(self, *exc):
        return self._entered.__exit__(*exc)

    def _prepare(self) -> None:
        state_file = self.path / WORK_STATE
        progress = self.path.is_dir() and self.has_progress(self.path)
        what = f"{self.stage} {self.name!r}"
        if self.resume and progress:
            recorded = _read_run_state(state_file)
            if not recorded:
                why = "is missing" if recorded is None else "is unreadable"
                raise UserError(f"cannot tell which settings the interrupted {what} used ({state_file} {why}); "
                                "drop --resume to start over")
            if recorded["key"] != self.key:
                raise UserError(
                    f"the interrupted {what} used other settings, model or data: "
                    f"{'; '.join(_state_differences(recorded, self.state))}; "
                    "rerun it with the same ones, or drop --resume to start over"
                )
            self.resumed = True
        else:
            if self.resume:
                print(f"note: {what} has no saved progress to resume; starting fresh")
            elif progress or self._leftovers():
                print(f"note: starting {self.name!r} over; what an interrupted {self.stage} saved was discarded "
                      "(use --resume to continue from it)")
            self._discard()
            self.path.mkdir(parents=True)
        write_atomic(state_file, json.dumps(self.state))

    def _leftovers(self) -> bool:
        if not self.path.is_dir():
            return False
        ours = {WORK_STATE, WORK_STATE + ".tmp"}
        return any(p.name not in ours and (p.is_dir() or p.stat().st_size) for p in self.path.iterdir())

    def _discard(self) -> None:
        """Delete the directory so that a kill midway leaves nothing half-deleted for --resume to
        trust: renamed aside first (atomic), then deleted, with what earlier killed discards left."""
        if self.path.exists():
            os.rename(self.path, self.path.with_name(f"{self.stage}.discarded-{os.getpid()}-{time.time_ns()}"))
        if self.path.parent.is_dir():
            for old in self.path.parent.glob(f"{self.stage}.discarded-*"):
                shutil.rmtree(old, ignore_errors=True)
