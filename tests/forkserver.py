"""Run many `r1v3` commands from shell scripts without paying torch's import each time (tests only).

A recipe script runs 10 to 20 `$R1V3 ...` commands; as `python -m r1v3.cli` each spends seconds importing
torch, transformers, trl and datasets before doing a tiny-scale job that takes a fraction of that. The
server imports all of it once, then forks a child per command: the child takes the client's stdin, stdout,
stderr, working directory and environment, runs `r1v3.cli.main(argv)` and exits with its code, so a
script sees an ordinary command. Nothing heavy runs in the server before it forks (no thread pools yet).
What the libraries read once at import (HF_HUB_OFFLINE, HF_HOME, TRANSFORMERS_VERBOSITY, TQDM_DISABLE) is the
server's, set as `r1v3.cli.main` sets it; commands run one at a time, so `$R1V3 a | $R1V3 b` would wait
forever; a signal sent to the client does not reach its command.

    server = ForkServer.start(tmp_path / "r1v3.sock")   # in a fixture
    env["R1V3"] = server.command                          # "PYTHON tests/forkserver.py"
    ...
    server.stop()
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

SOCKET_ENV = "R1V3_FORKSERVER"
REPO = Path(__file__).resolve().parents[1]


def client(argv: list[str]) -> int:
    """Send one command (with our stdio, cwd and environment) and return its exit code."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(os.environ[SOCKET_ENV])
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        stdio = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]
        socket.send_fds(s, [len(request).to_bytes(8, "big") + request], stdio)
        reply = b""
        while chunk := s.recv(64):
            reply += chunk
    if not reply:
        return 1
    status = int(reply)
    if os.WIFSIGNALED(status):  # as the shell sees a killed command: die of the same signal
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    return os.waitstatus_to_exitcode(status)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = int.from_bytes(data[:8], "big")
    data = data[8:]
    while len(data) < size:
        data += conn.recv(size - len(data))
    return json.loads(data), fds


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the client's command, then exit with its code."""
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["r1v3", *request["argv"]]
    code = 1
    try:
        from r1v3.cli import main

        code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # an uncaught error prints its traceback, as `python -m r1v3.cli` would
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve(path: str) -> None:
    # what every command would import: paid once here (nothing runs, so no thread pool exists to fork)
    import importlib

    sys.path.insert(0, str(REPO))
    from r1v3.cli import quiet_libraries

    quiet_libraries()  # as main() would, before the libraries that read these settings at import
    stages = [f"stages.{p.stem}" for p in sorted((REPO / "stages").glob("[a-z]*.py"))]
    for name in ("torch", "torchvision", "transformers", "transformers.integrations", "trl", "trl.data_utils",
                 "trl.chat_template_utils", "datasets", *stages):
        importlib.import_module(name)
    # transformers and trl import most of themselves lazily, on first use of a name: use them all here
    import transformers
    import trl

    from r1v3.families import FAMILIES

    for name in ("AutoConfig", "AutoProcessor", "AutoImageProcessor", "AutoTokenizer", "AutoModelForCausalLM",
                 "AutoModelForImageTextToText", "PreTrainedTokenizerFast", "GenerationConfig", "LogitsProcessorList",
                 "TrainerCallback", "EarlyStoppingCallback", "Trainer", "Qwen2Config", "LlamaConfig"):
        getattr(transformers, name)
    for name in ("GRPOTrainer", "GRPOConfig", "SFTTrainer", "SFTConfig"):
        getattr(trl, name)
    for family in FAMILIES.values():
        for part in ("configuration", "modeling", "processing", "image_processing", "image_processing_fast"):
            try:
                importlib.import_module(f"transformers.models.{family.model_type}.{part}_{family.model_type}")
            except ImportError:
                pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(8)
        server.settimeout(5)
        parent = os.getppid()
        print("ready", flush=True)
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if os.getppid() != parent:  # the test session is gone without stopping us
                    return
                continue
            conn.settimeout(None)
            with conn:
                try:
                    _serve_one(server, conn)
                except (OSError, ValueError):  # a client gone or garbled: the next one is served all the same
                    pass


def _serve_one(server: socket.socket, conn: socket.socket) -> None:
    request, fds = _recv_request(conn)
    pid = os.fork()
    if pid == 0:
        server.close()
        conn.close()
        _run_child(request, fds)
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    conn.sendall(str(status).encode())  # the raw wait status: the client dies of the same signal, if any


class ForkServer:
    def __init__(self, proc: subprocess.Popen, path: Path):
        self.proc, self.path = proc, path
        self.command = f"{sys.executable} {Path(__file__).resolve()}"

    @classmethod
    def start(cls, path: Path) -> "ForkServer":
        env = dict(os.environ, TQDM_DISABLE="1")  # as a command whose output is not a terminal sets it
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(path)], env=env, stdout=subprocess.PIPE,
                                text=True, cwd=REPO)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"the fork server did not start: {line!r}")
        return cls(proc, path)

    def env(self) -> dict[str, str]:
        return {"R1V3": self.command, SOCKET_ENV: str(self.path)}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        sys.exit(client(sys.argv[1:]))
