"""Bad inputs across the CLI: each gives one `error: ...` line naming the problem, exit code 2,
and leaves the store exactly as it was (artifacts, .staging and .work included).

These extend the table in tests/test_cli.py (22 cases) with different ones; TOTAL_BAD_INPUTS
counts both, plus the endpoint cases of test_security.py, for the README.
"""

import contextlib
import io
import json
import struct
import zlib
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from r1v3.cli import main

pytestmark = pytest.mark.reliability


def png(path, size=(8, 8), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path)


def bomb_png(path):
    """A valid PNG header announcing 40000 x 40000 pixels in a few dozen bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def row(images=(), **fields):
    base = {"id": "a", "images": list(images), "question": "How many?", "options": [], "answer": "1",
            "question_type": "open"}
    return json.dumps(base | fields) + "\n"


def make_files(t: Path) -> dict:
    """Every bad file the table needs, under t; returns named paths."""
    f = {}
    (t / "cfgdir").mkdir()
    f["cfgdir"] = t / "cfgdir"
    f["latin_yaml"] = t / "latin.yaml"
    f["latin_yaml"].write_bytes(b"n: \xff\xfe\n")
    f["section_yaml"] = t / "section.yaml"
    f["section_yaml"].write_text("synth:\n  nn: 3\n")
    f["type_yaml"] = t / "type.yaml"
    f["type_yaml"].write_text("n: abc\n")

    d = t / "ds"
    d.mkdir()
    png(d / "ok.png")
    bomb_png(d / "bomb.png")
    (d / "notimage.png").write_text("this is text, not a picture")
    (d / "link.png").symlink_to("/etc/hostname")
    outside = t / "outside"
    outside.mkdir()
    png(outside / "x.png")
    (d / "dirlink").symlink_to(outside)
    files = {
        "latin": b'{"id": "a", "question": "caf\xe9"}\n',
        "empty": b"",
        "dup": (row(["ok.png"]) + row(["ok.png"])).encode(),
        "mc": row(options=["x", "y"], answer="Q", question_type="multiple-choice").encode(),
        "badjson": b'{"id": "a", \n',
        "bomb": row(["bomb.png"]).encode(),
        "abs": row(["/etc/passwd"]).encode(),
        "symlink": row(["link.png"]).encode(),
        "dirlink": row(["dirlink/x.png"]).encode(),
        "notimage": row(["notimage.png"]).encode(),
        "nul": row(["ok\u0000.png"]).encode(),
        "id_type": row(id=7).encode(),
        "rate": row(pass_rate=1.5).encode(),
    }
    for name, data in files.items():
        (d / f"{name}.jsonl").write_bytes(data)
        f[name] = d / f"{name}.jsonl"
    f["garbage_parquet"] = t / "garbage.parquet"
    f["garbage_parquet"].write_bytes(b"PAR1 not really")
    f["csv"] = t / "rows.csv"
    f["csv"].write_text("id,question\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    f["schema_parquet"] = t / "schema.parquet"
    pq.write_table(pa.table({"foo": [1, 2]}), f["schema_parquet"])
    (t / "pq").mkdir()
    f["escape_parquet"] = t / "pq" / "escape.parquet"
    pq.write_table(pa.table({"id": ["a"], "images": [[{"bytes": None, "path": "../outside/x.png"}]],
                             "question": ["q"], "options": [[]], "answer": ["1"], "question_type": ["open"]}),
                   f["escape_parquet"])
    f["splits"] = t / "splits"
    f["splits"].mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.table({"id": [split]}), f["splits"] / f"{split}.parquet")
    f["script_ds"] = t / "script_ds"
    f["script_ds"].mkdir()
    (f["script_ds"] / "script_ds.py").write_text(f"open({str(t / 'PWNED')!r}, 'w')\n")
    (f["script_ds"] / "data.jsonl").write_text(row())

    r = t / "responses"
    r.mkdir()
    for name, content in {
        "empty": [],
        "nonstring": [{"id": "validation_Art_1", "question_type": "open", "answer": "1", "response": 5}],
        "no_choices": [{"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "A", "response": "A"}],
    }.items():
        (r / f"{name}.json").write_text(json.dumps(content))
        f[f"resp_{name}"] = r / f"{name}.json"
    f["resp_badjson"] = r / "bad.json"
    f["resp_badjson"].write_text("[{")
    f["resp_dir"] = t / "respdir"
    (f["resp_dir"] / "Astrology").mkdir(parents=True)
    (f["resp_dir"] / "Astrology" / "output.json").write_text("[]")

    def model_dir(name, config, extra=()):
        m = t / name
        m.mkdir()
        (m / "config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
        (m / "model.safetensors").write_bytes(b"\0" * 16)
        for e in extra:
            (m / e).write_text("{}")
        f[name] = m

    model_dir("remote", {"model_type": "llava", "auto_map": {"AutoConfig": "conf.Conf"}}, ["tokenizer.json"])
    model_dir("unknown_type", {"model_type": "nonexistent_zz"}, ["tokenizer.json"])
    model_dir("list_config", b"[1]")
    model_dir("latin_config", b"\xff\xfe")
    model_dir("no_tokenizer", {"model_type": "llava"})
    model_dir("linked", {"model_type": "llava"}, ["tokenizer.json"])
    secret = t / "secret.txt"
    secret.write_text("do not import me")
    (f["linked"] / "tokenizer_config.json").symlink_to(secret)
    (t / "notadir.txt").write_text("x")
    f["store_file"] = t / "notadir.txt"

    mm = t / "mmmu_empty"
    mm.mkdir()
    f["mmmu_empty"] = mm
    return f


def cases(f: dict) -> list:
    """(id, argv, expected fragment of the one error line)."""
    EVAL = ["eval", "mmmu", "--model", "m", "--data", "mm", "--name", "e", "--max-new-tokens", "4"]
    return [
        # configs and overrides
        ("config is a directory", ["data", "synth", "--name", "x", "--config", f["cfgdir"]], "cannot read config"),
        ("config not UTF-8", ["data", "synth", "--name", "x", "--config", f["latin_yaml"]], "cannot read config"),
        ("unknown key in a recipe section", ["data", "synth", "--name", "x", "--config", f["section_yaml"]],
         "unknown key 'nn'"),
        ("wrong type in a recipe", ["data", "synth", "--name", "x", "--config", f["type_yaml"]],
         "type.yaml: n must be int, got 'abc'"),
        ("override without key", ["data", "synth", "--name", "x", "=5"], "expected key=value"),
        ("override into a scalar", ["data", "synth", "--name", "x", "n.x=3"], "n must be int, got {'x': 3}"),
        ("override overflows to inf", ["data", "synth", "--name", "x", "n=1e400"], "n must be int"),
        ("override out of range", ["data", "synth", "--name", "x", "n=5"], "n must be at least 10"),
        ("override unknown choice", ["init", "tiny", "--name", "x", "model=huge"], "model must be one of tiny, smol"),
        # references and names
        ("version zero", ["data", "show", "ds@v0"], "bad version 'v0'"),
        ("version 'latest'", EVAL[:3] + ["m@latest"] + EVAL[4:], "bad version 'latest'"),
        ("directory without manifest", ["data", "show", f["cfgdir"]], "not an artifact (no manifest.json)"),
        ("missing directory reference", ["data", "show", "./no-such-dir"], "no such artifact directory"),
        ("missing split", ["data", "show", "ds", "--split", "nope"], "no split 'nope'"),
        ("verify a missing artifact", ["artifacts", "verify", "nope"], "no artifact named 'nope'"),
        ("name with trailing newline", ["data", "synth", "--name", "ab\n", "--n", "10"], "invalid artifact name"),
        ("name too long", ["data", "synth", "--name", "x" * 101, "--n", "10"], "invalid artifact name"),
        ("store is a file", ["--store", f["store_file"], "data", "synth", "--name", "x", "--n", "10"],
         "cannot create a draft"),
        # datasets
        ("jsonl not UTF-8", ["data", "import", f["latin"], "--name", "x"], "line 1: not UTF-8 text"),
        ("parquet is garbage", ["data", "import", f["garbage_parquet"], "--name", "x"], "not a readable parquet file"),
        ("unsupported file type", ["data", "import", f["csv"], "--name", "x"], "unsupported file type"),
        ("empty jsonl", ["data", "import", f["empty"], "--name", "x"], "dataset is empty"),
        ("duplicate ids", ["data", "import", f["dup"], "--name", "x"], "duplicate id 'a'"),
        ("answer not an option letter", ["data", "import", f["mc"], "--name", "x"], "must be one of the option letters"),
        ("invalid JSON line", ["data", "import", f["badjson"], "--name", "x"], "line 1: malformed JSON"),
        ("id not a string", ["data", "import", f["id_type"], "--name", "x"], "field 'id' must be a string"),
        ("pass_rate out of range", ["data", "import", f["rate"], "--name", "x"], "'pass_rate' must be a number in [0, 1]"),
        ("parquet without the schema", ["data", "import", f["schema_parquet"], "--name", "x"],
         "missing required field 'id'"),
        ("several splits, none chosen", ["data", "import", f["splits"], "--name", "x"], "holds splits test, train; choose one"),
        ("HF dir with a loading script", ["data", "import", f["script_ds"], "--name", "x"],
         "Dataset scripts are no longer supported"),
        # images
        ("decompression bomb", ["data", "import", f["bomb"], "--name", "x"], "could be decompression bomb"),
        ("absolute image path", ["data", "import", f["abs"], "--name", "x"], "is absolute"),
        ("image symlink out of the directory", ["data", "import", f["symlink"], "--name", "x"], "resolves outside"),
        ("image under a symlinked directory", ["data", "import", f["dirlink"], "--name", "x"], "resolves outside"),
        ("image is not an image", ["data", "import", f["notimage"], "--name", "x"], "image 1 unreadable"),
        ("image path with a NUL byte", ["data", "import", f["nul"], "--name", "x"], "image 1 path"),
        ("parquet image path with ..", ["data", "import", f["escape_parquet"], "--name", "x"], "'..' is not allowed"),
        # responses files
        ("responses: empty list", ["eval", "mmmu", "--responses", f["resp_empty"]], "holds no responses"),
        ("responses: response not text", ["eval", "mmmu", "--responses", f["resp_nonstring"]],
         "'response' must be a string"),
        ("responses: no all_choices", ["eval", "mmmu", "--responses", f["resp_no_choices"]],
         "needs a non-empty list 'all_choices'"),
        ("responses: invalid JSON", ["eval", "mmmu", "--responses", f["resp_badjson"]], "malformed JSON"),
        ("responses: not a subject folder", ["eval", "mmmu", "--responses", f["resp_dir"]], "is not an MMMU subject"),
        ("responses with --model", ["eval", "mmmu", "--responses", f["resp_empty"], "--model", "m"],
         "model do not apply to it"),
        # model directories
        ("remote code without the flag", ["import-model", f["remote"], "--name", "x"], "pass --trust-remote-code"),
        ("unknown model_type", ["import-model", f["unknown_type"], "--name", "x"], "transformers cannot read this config"),
        ("config.json not an object", ["import-model", f["list_config"], "--name", "x"], "no model_type key"),
        ("config.json not UTF-8", ["import-model", f["latin_config"], "--name", "x"], "not valid JSON"),
        ("no tokenizer", ["import-model", f["no_tokenizer"], "--name", "x"], "no tokenizer files"),
        ("file symlinked from outside", ["import-model", f["linked"], "--name", "x"], "outside the model directory"),
        # eval settings
        ("zero samples", EVAL + ["--samples", "0"], "--samples (samples) must be at least 1"),
        ("k greedy samples", EVAL + ["--samples", "2", "--temperature", "0"], "identical greedy answers"),
        ("top_p above 1", EVAL + ["--top-p", "2"], "--top-p (top_p) must be in (0, 1]"),
        ("limit zero", EVAL + ["--limit", "0"], "(limit) must be at least 1"),
        ("split the data lacks", EVAL + ["--split", "test"], "no split 'test'"),
        ("unknown subject", EVAL + ["--subjects", "Astrology"], "unknown MMMU subject 'Astrology'"),
        ("unknown style", EVAL + ["--style", "bogus"], "--style (style) must be one of"),
        ("vLLM backend absent", EVAL + ["--backend", "vllm"], "needs vLLM"),
        ("dataset given as model", ["eval", "mmmu", "--model", "ds", "--data", "mm", "--name", "e"],
         "is a dataset artifact, expected model"),
        # MMMU import and the hub endpoint
        ("mmmu: no source", ["data", "mmmu", "--name", "x"], "give exactly one of --path DIR"),
        ("mmmu: hub unreachable", ["data", "mmmu", "--name", "x", "--from-hub"], "cannot download MMMU/MMMU"),
        ("mmmu: no subject folders", ["data", "mmmu", "--name", "x", "--path", f["mmmu_empty"]],
         "subject folder missing from the local MMMU copy"),
    ]


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path):
    """Every path under the store with its size: artifacts, drafts, work files."""
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    t = tmp_path_factory.mktemp("bad")
    from tests.mmmu_fixture import write_sample_copy

    store = t / "store"
    write_sample_copy(t / "mmmu", per_subject=1)
    for argv in (["data", "synth", "--name", "ds", "--n", "20"], ["init", "tiny", "--name", "m"],
                 ["data", "mmmu", "--path", t / "mmmu", "--name", "mm", "--subjects", "Art", "--subjects", "Math"]):
        code, _, err = run(["--store", store, *argv])
        assert code == 0, err
    return t, store, make_files(t)


CASE_IDS = [c[0] for c in cases(defaultdict(Path))]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_one_line_exit_2_nothing_written(env, case):
    t, store, files = env
    _, argv, fragment = next(c for c in cases(files) if c[0] == case)
    before = snapshot(store)
    code, out, err = run(["--store", store, *argv] if argv[0] != "--store" else argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert snapshot(store) == before
    assert not (t / "PWNED").exists(), "a dataset's loading script ran"
    if argv[0] == "--store":
        assert Path(argv[1]).is_file() and Path(argv[1]).read_text() == "x"


N_CLI_TABLE = 22  # tests/helpers.py::bad_cli_inputs
N_ENDPOINTS = 4  # test_security.py: closed port, bad scheme, redirect, 401
TOTAL_BAD_INPUTS = N_CLI_TABLE + len(CASE_IDS) + N_ENDPOINTS


def test_bad_input_count(tmp_path):
    """Keeps TOTAL_BAD_INPUTS (quoted in the README) honest when tests/test_cli.py's table changes."""
    from tests.helpers import bad_cli_inputs

    assert len(bad_cli_inputs(tmp_path)) == N_CLI_TABLE
    assert len(set(CASE_IDS)) == len(CASE_IDS)
    assert TOTAL_BAD_INPUTS >= 30
