"""Run `r1v3 ARGS` in this process and SIGKILL it at a chosen point (the store comes from R1V3_STORE).

    python tests/reliability/killer.py --kill MODULE:ATTR[@N][+after][~TEXT] -- ARGS...
    python tests/reliability/killer.py --torn N -- eval mmmu ...
    python tests/reliability/killer.py --sync DIR:K -- ARGS...

--kill   the N-th call (default 1) of MODULE.ATTR (ATTR may be Class.method) dies just before
         the call runs, or just after it returns with +after; with ~TEXT only calls that have
         TEXT in the str() of an argument count (e.g. os:rename~.staging, the publishing rename).
--torn   the N-th record appended to eval's predictions work file is written half, flushed,
         and the process dies: a torn write, as when a kill lands inside a large write.
--torn-append TEXT@N
         the N-th write to a file opened for appending whose path contains TEXT is cut in half,
         flushed, fsynced, and the process dies (distill's attempts, difficulty's responses).
--kill-open TEXT@N
         the N-th open for writing of a path containing TEXT truncates the file and dies (a kill
         inside a non-atomic rewrite).
--sync   before renaming its draft into place, wait until K processes reached the same point
         (a barrier of files in DIR), so that concurrent publishers race for the same version.

The process dies by a real SIGKILL (no exception handler, finally or atexit runs), so the exit
status seen by the parent is -9.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo: `stages` is importable


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def parse_spec(spec: str) -> dict:
    spec, _, text = spec.partition("~")
    after = spec.endswith("+after")
    spec = spec.removesuffix("+after")
    target, _, nth = spec.partition("@")
    module, _, attr = target.partition(":")
    return {"module": module, "attr": attr, "nth": int(nth or 1), "after": after, "text": text or None}


def install_kill(spec: str) -> None:
    s = parse_spec(spec)
    owner = importlib.import_module(s["module"])
    *path, name = s["attr"].split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    calls = [0]

    @functools.wraps(real)
    def hooked(*args, **kwargs):
        if s["text"] is None or any(s["text"] in str(a) for a in list(args) + list(kwargs.values())):
            calls[0] += 1
            if calls[0] == s["nth"] and not s["after"]:
                die()
            out = real(*args, **kwargs)
            if calls[0] == s["nth"]:
                die()
            return out
        return real(*args, **kwargs)

    setattr(owner, name, hooked)


class _TornFile:
    """The eval work file: its N-th write is cut in half and the process dies."""

    def __init__(self, f, nth: int):
        self._f, self._nth, self._writes = f, nth, 0

    def write(self, text: str):
        self._writes += 1
        if self._writes == self._nth:
            self._f.write(text[: len(text) // 2])
            self._f.flush()
            os.fsync(self._f.fileno())
            die()
        return self._f.write(text)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def install_torn(nth: int) -> None:
    import r1v3.generation.records as stage  # the loop that appends every generating stage's work file

    def torn_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        if str(file).endswith("predictions.partial.jsonl") and mode == "a":
            return _TornFile(f, nth)
        return f

    stage.open = torn_open  # the module's own `open`, shadowing the builtin


def install_torn_append(spec: str) -> None:
    """A torn write into any work file appended through `open(path, "a")`."""
    import io

    text, _, nth = spec.rpartition("@")
    real = builtins.open

    def hooked(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        return _TornFile(f, int(nth)) if mode.startswith("a") and text in str(file) else f

    builtins.open = io.open = hooked


def install_kill_open(spec: str) -> None:
    """The N-th open for writing of a file whose path contains TEXT truncates it and dies: a kill
    inside a non-atomic `write_text` (open truncates first, the data would come next)."""
    import io

    text, _, nth = spec.rpartition("@")
    real, calls = builtins.open, [0]

    def hooked(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if "w" in mode and text in str(file):
            calls[0] += 1
            if calls[0] == int(nth):
                f.close()
                die()
        return f

    builtins.open = io.open = hooked


def install_sync(spec: str) -> None:
    directory, _, count = spec.rpartition(":")
    barrier, count = Path(directory), int(count)
    real = os.rename
    waited = [False]

    def rename(src, dst, *args, **kwargs):
        if not waited[0] and ".staging" in str(src):
            waited[0] = True
            (barrier / str(os.getpid())).touch()
            deadline = time.monotonic() + 60
            while len(list(barrier.iterdir())) < count and time.monotonic() < deadline:
                time.sleep(0.005)
        return real(src, dst, *args, **kwargs)

    os.rename = rename


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    opts, args = argv[:split], argv[split + 1:]
    while opts:
        flag, value, opts = opts[0], opts[1], opts[2:]
        {"--kill": install_kill, "--torn": lambda v: install_torn(int(v)), "--sync": install_sync,
         "--kill-open": install_kill_open, "--torn-append": install_torn_append}[flag](value)
    from r1v3.cli import main as r1v3_main

    return r1v3_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
