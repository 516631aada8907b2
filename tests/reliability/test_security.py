"""Untrusted inputs are data, never code; secrets never reach manifests, logs or errors; nothing
read from a dataset or a model directory can reach files outside it."""

import contextlib
import http.server
import io
import json
import logging
import pickle
import re
import socket
import threading
from pathlib import Path

import pytest

from r1v3 import models
from r1v3.artifacts import Store
from r1v3.cli import main
from r1v3.errors import UserError
from r1v3.generation import OpenAIBackend, Request, Sampling

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("r1v3", "stages") for p in (REPO / d).rglob("*.py"))
# files that may import code by name: the custom reward loader (`module:function`, named by the user)
# rewards.py: the user's own reward module, by the loader rules it documents; cli.py: the stage
# modules of its own STAGES table (literal names), imported only when their command runs
IMPORT_BY_NAME_ALLOWED = {"r1v3/rewards.py", "r1v3/cli.py"}
# yaml.load with one of these loaders is safe: each is checked below to be a SafeLoader subclass
SAFE_YAML_LOADERS = {"r1v3/config.py": "_Loader"}


def run(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--store", str(root), *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def _code_lines(path: Path):
    """(line number, code without comments and docstring-only lines) of a source file."""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if code.strip():
            yield i, code


# pattern -> why it is refused
FORBIDDEN = {
    r"\bimport\s+(pickle|dill|cloudpickle|joblib|shelve|marshal)\b|\bfrom\s+(pickle|dill|joblib)\s+import": "pickle-family import",
    r"\bpickle\.|\bdill\.|\bjoblib\.load": "unpickling",
    r"(?<![\w.])eval\(": "eval() of text",
    r"(?<![\w.])exec\(": "exec() of text",
    r"(?<![\w.])compile\(": "compile() of text",
    r"trust_remote_code\s*=\s*True": "remote code hard-wired on",
    r"\byaml\.(load|load_all|unsafe_load|full_load)\(": "non-safe YAML loader",
    r"allow_pickle\s*=\s*True": "numpy pickle loading",
    r"shell\s*=\s*True|os\.system\(|os\.popen\(": "a shell",
    r"(?<![\w.])__import__\(": "import by computed name",
}


def test_no_code_from_data_in_the_package_source():
    found = []
    for path in SOURCES:
        rel = path.relative_to(REPO).as_posix()
        for i, code in _code_lines(path):
            for pattern, why in FORBIDDEN.items():
                safe_loader = SAFE_YAML_LOADERS.get(rel)
                if why == "non-safe YAML loader" and safe_loader and f"Loader={safe_loader})" in code:
                    continue
                if re.search(pattern, code):
                    found.append(f"{rel}:{i}: {why}: {code.strip()}")
            # torch files may only be read with weights_only=True (same statement, possibly wrapped)
            if "torch.load(" in code:
                statement = " ".join(path.read_text().splitlines()[i - 1: i + 4])
                if not re.search(r"weights_only\s*=\s*True", statement):
                    found.append(f"{rel}:{i}: torch.load without weights_only=True")
            if re.search(r"\bimport_module\(", code) and rel not in IMPORT_BY_NAME_ALLOWED:
                found.append(f"{rel}:{i}: imports a module by computed name: {code.strip()}")
    assert not found, "\n".join(found)


def test_what_the_source_scan_allows_is_safe():
    import yaml

    from r1v3 import cli, config

    assert SAFE_YAML_LOADERS == {"r1v3/config.py": "_Loader"} and issubclass(config._Loader, yaml.SafeLoader)
    # the CLI imports by name only the stage modules of its own table
    assert cli.STAGES and all(module.startswith("stages.") for _, _, module, _ in cli.STAGES)


def test_the_source_scan_catches_what_it_looks_for(tmp_path):
    bad = ["import pickle", "x = pickle.loads(b)", "eval(text)", "exec(code)", "m.from_pretrained(p, trust_remote_code=True)",
           "yaml.load(f)", "np.load(p, allow_pickle=True)", "subprocess.run(c, shell=True)"]
    good = ["ast.literal_eval(s)", "model.eval()", "yaml.safe_load(f)", "trust_remote_code=cfg.trust_remote_code"]
    for line in bad:
        assert any(re.search(p, line) for p in FORBIDDEN), line
    for line in good:
        assert not any(re.search(p, line) for p in FORBIDDEN), line


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """Run the reading stages with every unpickling entry point booby-trapped (library internals included)."""
    import torch

    from tests.mmmu_fixture import write_sample_copy

    write_sample_copy(tmp_path / "mmmu", per_subject=1)
    root = tmp_path / "store"
    assert run(root, "init", "tiny", "--name", "m")[0] == 0

    def trap(*args, **kwargs):
        raise AssertionError("something unpickled while loading")

    monkeypatch.setattr(pickle, "load", trap)
    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "Unpickler", trap)
    monkeypatch.setattr(torch, "load", trap)
    for argv in (["data", "mmmu", "--path", tmp_path / "mmmu", "--name", "mm", "--subjects", "Art"],
                 ["import-model", root / "m" / "v1", "--name", "m2"],
                 ["eval", "mmmu", "--model", "m2", "--data", "mm", "--name", "e", "--limit", "2",
                  "--max-new-tokens", "2", "--temperature", "0"],
                 ["data", "show", "mm"]):
        code, _, err = run(root, *argv)
        assert code == 0, (argv, err)


# ---- trust_remote_code --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "model"
    model, processor = models.build_tiny("llava", seed=0)
    models.save_model(model, processor, d)
    return d


def test_trust_remote_code_is_off_by_default_and_recorded(hf_dir, tmp_path):
    root = tmp_path / "store"
    (hf_dir / "helper.py").write_text("raise SystemExit('model code ran')\n")
    try:
        assert run(root, "import-model", hf_dir, "--name", "plain")[0] == 0
        assert run(root, "import-model", hf_dir, "--name", "trusted", "--trust-remote-code")[0] == 0
    finally:
        (hf_dir / "helper.py").unlink()
    s = Store(root)
    plain, trusted = s.resolve("plain"), s.resolve("trusted")
    assert plain.manifest["config"]["trust_remote_code"] is False
    assert "helper.py" not in plain.manifest["files"] and "helper.py" in plain.metrics["skipped_files"]
    assert trusted.manifest["config"]["trust_remote_code"] is True
    assert "helper.py" in trusted.manifest["files"]  # kept only when asked for, and the manifest says so


def test_remote_code_is_not_run_without_the_flag(tmp_path):
    d = tmp_path / "remote"
    d.mkdir()
    marker = tmp_path / "RAN"
    (d / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (d / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.Cfg"}}))
    (d / "model.safetensors").write_bytes(b"\0" * 8)
    (d / "tokenizer.json").write_text("{}")
    code, _, err = run(tmp_path / "store", "import-model", d, "--name", "x")
    assert code == 2 and "--trust-remote-code" in err
    assert not marker.exists()


# ---- paths that could leave their directory ----------------------------------------------------


def test_import_model_follows_links_only_inside_the_model_or_its_hub_cache(hf_dir, tmp_path):
    # the hub cache layout: snapshots/<commit>/file -> ../../blobs/<hash>
    repo = tmp_path / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in hf_dir.iterdir():
        (blobs / f.name).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../../blobs") / f.name)
    root = tmp_path / "store"
    code, _, err = run(root, "import-model", snap, "--name", "cached")
    assert code == 0, err
    assert Store(root).check(Store(root).resolve("cached"), full=True) == []
    # the same layout pointing one level further out is refused
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    (snap / "tokenizer_config.json").unlink()
    (snap / "tokenizer_config.json").symlink_to(outside)
    code, _, err = run(root, "import-model", snap, "--name", "cached")
    assert code == 2 and "outside the model directory" in err and Store(root).versions("cached") == [1]


def test_importing_an_artifact_directory_leaves_the_source_intact(tmp_path):
    """import-model hard-links files; the new manifest must not be written through a link into the source."""
    root = tmp_path / "store"
    assert run(root, "init", "tiny", "--name", "src")[0] == 0
    s = Store(root)
    src = s.resolve("src")
    before = (src.path / "manifest.json").read_bytes()
    assert run(root, "import-model", src.path, "--name", "copy")[0] == 0
    assert (src.path / "manifest.json").read_bytes() == before
    assert s.check(s.resolve("src"), full=True) == [] and s.check(s.resolve("copy"), full=True) == []


# ---- secrets -------------------------------------------------------------------------------------


SECRET = "sk-test-" + "7f3a9c" * 8


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _serve(handler_cls):
    server = _Server(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _handler(status, body_of, seen, location=None, echo_header=False):
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(dict(self.headers))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = body_of(self.headers).encode()
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            if echo_header:
                self.send_header("X-Seen-Authorization", self.headers.get("Authorization", ""))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *args):
            pass

    return H


def _backend(url, **kw):
    return OpenAIBackend(url, "teacher", api_key_env="R1V3_TEST_KEY", max_retries=kw.pop("retries", 1),
                         backoff=0.01, progress=False, **kw)


REQ = [Request(id="q1", messages=[{"role": "user", "content": "2+2?"}])]


def _assert_secret_free(text):
    for i in range(0, len(SECRET) - 8):
        assert SECRET[i:i + 8] not in text, f"part of the API key leaked: {text[:300]}"


@pytest.mark.parametrize("status,pad", [(500, 0), (500, 265), (401, 0), (401, 265)])
def test_api_key_never_appears_in_errors(monkeypatch, status, pad):
    """Servers that echo the Authorization header back; with padding the key straddles the 300-character cut."""
    monkeypatch.setenv("R1V3_TEST_KEY", SECRET)
    seen = []
    server = _serve(_handler(status, lambda h: "x" * pad + f"bad key {h.get('Authorization')}", seen))
    try:
        with pytest.raises(UserError) as e:
            _backend(f"http://127.0.0.1:{server.server_port}/v1").generate_all(REQ, Sampling(max_new_tokens=4))
    finally:
        server.shutdown()
    assert seen and seen[0]["Authorization"] == f"Bearer {SECRET}"  # it was sent, to the right place
    message = str(e.value)
    assert len(message.splitlines()) == 1 and f"HTTP {status}" in message
    _assert_secret_free(message)
    if status == 401:
        assert "check $R1V3_TEST_KEY" in message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_api_key_does_not_follow_redirects(monkeypatch, status):
    monkeypatch.setenv("R1V3_TEST_KEY", SECRET)
    elsewhere_seen, seen = [], []
    elsewhere = _serve(_handler(200, lambda h: json.dumps({"choices": [{"message": {"content": "4"}}]}), elsewhere_seen))
    # the Location itself carries the key: the error that names it must not
    target = f"http://127.0.0.1:{elsewhere.server_port}/steal?k={SECRET}"
    server = _serve(_handler(status, lambda h: "", seen, location=target))
    try:
        with pytest.raises(UserError, match=rf"redirects \(HTTP {status}\) to http://127.0.0.1:\d+/steal") as e:
            _backend(f"http://127.0.0.1:{server.server_port}/v1", retries=3).generate_all(REQ, Sampling(max_new_tokens=4))
    finally:
        server.shutdown()
        elsewhere.shutdown()
    assert len(seen) == 1 and not elsewhere_seen  # asked once, not retried, nothing sent to the target
    _assert_secret_free(str(e.value))


def test_api_key_never_reaches_logs_or_answers(monkeypatch, caplog):
    """Every logger at DEBUG (the HTTP libraries log response headers there) while a server echoes the key
    in a header, in an error body and in the answer's text."""
    monkeypatch.setenv("R1V3_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    answer = lambda h: json.dumps({"choices": [{"message": {"content": f"key={h.get('Authorization')}"}}]})  # noqa: E731
    ok_seen, bad_seen = [], []
    ok = _serve(_handler(200, answer, ok_seen, echo_header=True))
    bad = _serve(_handler(503, lambda h: f"bad {h.get('Authorization')}", bad_seen, echo_header=True))
    try:
        got = _backend(f"http://127.0.0.1:{ok.server_port}/v1").generate_all(REQ, Sampling(max_new_tokens=4))
        with pytest.raises(UserError) as e:
            _backend(f"http://127.0.0.1:{bad.server_port}/v1").generate_all(REQ, Sampling(max_new_tokens=4))
    finally:
        ok.shutdown()
        bad.shutdown()
    assert ok_seen and bad_seen and got["q1"][0].text == "key=Bearer ***"
    assert "X-Seen-Authorization" in caplog.text or "x-seen-authorization" in caplog.text  # the headers were logged
    for text in (caplog.text, str(e.value), got["q1"][0].text):
        _assert_secret_free(text)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_errors_are_clear_and_one_line(monkeypatch):
    monkeypatch.setenv("R1V3_TEST_KEY", SECRET)
    with pytest.raises(UserError) as e:
        _backend(f"http://127.0.0.1:{_closed_port()}/v1").generate_all(REQ, Sampling(max_new_tokens=4))
    message = str(e.value)
    assert "gave up after 2 attempts" in message and "Connection refused" in message
    assert len(message.splitlines()) == 1
    _assert_secret_free(message)
    with pytest.raises(UserError, match="must start with http:// or https://"):
        OpenAIBackend("ftp://127.0.0.1/v1", "teacher")


def test_secrets_in_the_environment_never_reach_the_store_or_the_output(tmp_path, monkeypatch):
    from tests.mmmu_fixture import write_sample_copy

    secrets = {"OPENAI_API_KEY": SECRET, "HF_TOKEN": "hf_" + "Q" * 34, "R1V3_TEST_KEY": "tok-" + "z9" * 12}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    write_sample_copy(tmp_path / "mmmu", per_subject=1)
    root = tmp_path / "store"
    output = ""
    for argv in (["init", "tiny", "--name", "m"], ["data", "synth", "--name", "ds", "--n", "20"],
                 ["data", "mmmu", "--path", tmp_path / "mmmu", "--name", "mm", "--subjects", "Art"],
                 ["eval", "mmmu", "--model", "m", "--data", "mm", "--name", "e", "--limit", "1",
                  "--max-new-tokens", "2", "--temperature", "0"],
                 ["artifacts", "show", "e", "--json"], ["artifacts", "ls"]):
        code, out, err = run(root, *argv)
        assert code == 0, err
        output += out + err
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files)
    for value in secrets.values():
        assert value not in output
        for p in files:
            assert value.encode() not in p.read_bytes(), f"{value[:6]}... written to {p}"
