"""Hostile inputs, by class: each member gets one `error: ...` line naming where, exit code 2, and
an untouched store. Classes: models that cannot load, empty options and bad answers, hostile
JSON structure, unbounded sizes, and images a model's processor cannot take."""

import json
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.mmmu_fixture import hub_features
from r1v3 import data, mmmu, models, synthetic
from r1v3.errors import UserError

pytestmark = pytest.mark.reliability


def snapshot(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def refused(cli, *argv, fragment):
    root = cli.store.root
    root.mkdir(parents=True, exist_ok=True)
    before = snapshot(root)
    code, out, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert snapshot(root) == before
    return lines[0]


# ---- models that cannot load ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "ok"
    model, processor = models.build_tiny("llava", seed=0)
    models.save_model(model, processor, d)
    return d


def _resave(path, change):
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _rewrite_header(path, change):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def _first_mlp(tensors):
    return next(k for k in tensors if "mlp" in k and k != "__metadata__")


def _shard(d, drop_second):
    tensors = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[:20], "model-00002-of-00002.safetensors": keys[20:]}
    for name, part in list(halves.items())[: 1 if drop_second else 2]:
        save_file({k: tensors[k] for k in part}, d / name, metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}))


BAD_MODELS = {
    "truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
                  "model.safetensors: the tensors fill"),
    "header claims 2^62 bytes": (
        lambda d: (d / "model.safetensors").write_bytes((2**62).to_bytes(8, "little")
                                                        + (d / "model.safetensors").read_bytes()[8:]),
        "announce a 4611686018427387904-byte header"),
    "pickle renamed": (lambda d: (d / "model.safetensors").write_bytes(pickle.dumps({"w": [1.0] * 10})),
                       "model.safetensors: not a safetensors file"),
    "torch zip renamed": (lambda d: torch.save({"w": torch.zeros(4)}, d / "model.safetensors"),
                          "model.safetensors: not a safetensors file"),
    "header not JSON": (lambda d: (d / "model.safetensors").write_bytes(b"\x05" + b"\0" * 7 + b"{]   "),
                        "safetensors header: malformed JSON"),
    "deeply nested header": (lambda d: (d / "model.safetensors").write_bytes(
        (200000).to_bytes(8, "little") + b"[" * 100000 + b"]" * 100000), "nested more than"),
    "dtype lies about size": (lambda d: _rewrite_header(
        d / "model.safetensors", lambda h: h[_first_mlp(h)].update(dtype="F16")), "needs"),
    "unknown dtype": (lambda d: _rewrite_header(
        d / "model.safetensors", lambda h: h[_first_mlp(h)].update(dtype="Q4")), "has dtype 'Q4'"),
    "overlapping tensors": (lambda d: _rewrite_header(d / "model.safetensors", lambda h: [
        h[k].update(data_offsets=[0, h[k]["data_offsets"][1] - h[k]["data_offsets"][0]])
        for k in [sorted((v["data_offsets"][0], k) for k, v in h.items() if k != "__metadata__")[-1][1]]]),
        "gap or overlap"),
    "wrong shape": (lambda d: _resave(d / "model.safetensors", lambda t: t.update({_first_mlp(t): torch.zeros(3, 3)})),
                    "has shape [3, 3] but the config's model expects"),
    "missing tensor": (lambda d: _resave(d / "model.safetensors", lambda t: t.pop(_first_mlp(t))),
                       "the weights lack 1 tensor(s)"),
    "unexpected tensor": (lambda d: _resave(d / "model.safetensors", lambda t: t.update({"bogus.weight": torch.zeros(2)})),
                          "tensor 'bogus.weight' is not part of the config's model"),
    "index names a missing shard": (lambda d: _shard(d, drop_second=True),
                                    "which is not in the model directory"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_import_model_refuses_models_that_cannot_load(cli, good_model, tmp_path, case):
    damage, fragment = BAD_MODELS[case]
    d = tmp_path / "m"
    shutil.copytree(good_model, d)
    damage(d)
    line = refused(cli, "import-model", d, "--name", "x", fragment=fragment)
    assert str(d) in line


def test_import_model_still_takes_sharded_and_whole_models(cli, good_model, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(good_model, d)
    _shard(d, drop_second=False)
    for src, name in ((good_model, "whole"), (d, "sharded")):
        code, _, err = cli("import-model", src, "--name", name)
        assert code == 0, err


# ---- empty options and bad answers ----------------------------------------------------------------


def _row(**fields):
    return {"id": "a", "images": [], "question": "Which?", "options": ["x", "y"], "answer": "A",
            "question_type": "multiple-choice"} | fields


BAD_ROWS = [
    (dict(options=["", ""]), "field 'options' item 0 (A) is empty"),
    (dict(options=["x", "  "]), "field 'options' item 1 (B) is empty"),
    (dict(answer="C"), "must be one of the option letters A, B"),
    (dict(answer="Z"), "must be one of the option letters A, B"),
    (dict(answer=None), "missing required field 'answer'"),
    (dict(answer=1), "must be one of the option letters"),
    (dict(answer=["A"]), "field 'answer' must be a string, got list"),
    (dict(answer=True), "field 'answer' must be a string, got bool"),
    (dict(options=[], question_type="open", answer=None), "missing required field 'answer'"),
    (dict(options=[], question_type="open", answer={"v": 1}), "field 'answer' must be a string, got dict"),
]


@pytest.mark.parametrize("fields, fragment", BAD_ROWS)
def test_data_import_refuses_empty_options_and_bad_answers(cli, tmp_path, fields, fragment):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps(_row(id="ok")) + "\n" + json.dumps(_row(**fields)) + "\n")
    assert fragment in refused(cli, "data", "import", jsonl, "--name", "x", fragment="rows.jsonl line 2: ")
    if isinstance(fields.get("answer", ""), (str, type(None))):  # a parquet column of text answers
        import pyarrow as pa

        parquet = tmp_path / "rows.parquet"
        pq.write_table(pa.Table.from_pylist([_row(id="ok"), _row(**fields)]), parquet)
        assert fragment in refused(cli, "data", "import", parquet, "--name", "x", fragment="rows.parquet row 1: ")


def test_a_nan_answer_in_parquet_is_refused(cli, tmp_path):
    import pyarrow as pa

    parquet = tmp_path / "nan.parquet"
    pq.write_table(pa.Table.from_pylist([_row(options=[], question_type="open", answer=float("nan"))]), parquet)
    refused(cli, "data", "import", parquet, "--name", "x", fragment="nan.parquet row 0: field 'answer' is nan")


def _mmmu_copy(root, **fields):
    import datasets

    row = {c: None for c in mmmu.HUB_COLUMNS}
    row.update(id="validation_Music_1", question="Which?", options="['a', 'b']", answer="A",
               question_type="multiple-choice", image_1=Image.new("RGB", (8, 8)))
    row.update(fields)
    (root / "Music").mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()  # its bar would land on the stderr the test reads
    try:
        datasets.Dataset.from_dict({c: [row[c]] for c in mmmu.HUB_COLUMNS}, features=hub_features()).to_parquet(
            str(root / "Music" / "validation-00000-of-00001.parquet"))
    finally:
        datasets.enable_progress_bars()
    return root


@pytest.mark.parametrize("fields, fragment", [
    (dict(options="['', '']"), "field 'options' item 0 (A) is empty"),
    (dict(options="['a', ' ']"), "field 'options' item 1 (B) is empty"),
    (dict(answer="C"), "field 'answer' is 'C'; for a multiple-choice question it must be one of the option letters A, B"),
    (dict(answer=None), "field 'answer' is empty"),
    (dict(image_1=Image.new("RGB", (4000, 4))), "image 1 is 4000x4, sides 1000 times apart"),
    (dict(image_1=Image.new("RGB", (1, 1))), "image 1 is 1x1; each side must be at least 2"),
])
def test_data_mmmu_refuses_empty_options_bad_answers_and_images(cli, tmp_path, fields, fragment):
    root = _mmmu_copy(tmp_path / "mmmu", **fields)
    refused(cli, "data", "mmmu", "--path", root, "--name", "x", "--subjects", "Music",
            fragment=f"validation-00000-of-00001.parquet row 0 (id validation_Music_1): {fragment}")


def _responses(tmp_path, **fields):
    row = {"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "A", "response": "(A)",
           "all_choices": ["A", "B"], "index2ans": {"A": "red", "B": "blue"}} | fields
    path = tmp_path / "responses.json"
    path.write_text(json.dumps([row]))
    return path


@pytest.mark.parametrize("fields, fragment", [
    (dict(index2ans={"A": "", "B": "blue"}), "'index2ans' option A must be a non-empty text"),
    (dict(index2ans={"A": "red", "B": "  "}), "'index2ans' option B must be a non-empty text"),
    (dict(index2ans={"A": "red", "B": None}), "'index2ans' option B must be a non-empty text"),
    (dict(answer="C"), "'answer' 'C' is not one of the option letters A, B"),
    (dict(answer=None), "'answer' must be a non-empty string or list of strings, got None"),
    (dict(answer=1), "'answer' must be a non-empty string or list of strings, got 1"),
    (dict(answer=[]), "'answer' must be a non-empty string or list of strings"),
    (dict(question_type="open", answer=None), "'answer' must be a non-empty string"),
    (dict(question_type="open", answer=[1, 2]), "'answer' must be a non-empty string"),
    (dict(question_type="open", answer=" "), "'answer' must be a non-empty string"),
])
def test_responses_refuse_empty_options_and_bad_answers(cli, tmp_path, fields, fragment):
    path = _responses(tmp_path, **fields)
    refused(cli, "eval", "mmmu", "--responses", path, fragment=f"responses.json row 0 (id validation_Art_1): {fragment}")


def test_responses_keep_official_list_answers(tmp_path):
    rows = mmmu.load_responses(_responses(tmp_path, question_type="open", answer=["1.2", "1.20"], response="1.2"))
    assert mmmu.judge_responses(rows)[0]["correct"]


@pytest.mark.parametrize("style", mmmu.STYLES)
def test_the_scorer_never_credits_an_empty_option(style):
    long = "I looked at every part of the picture and I am not sure at all about it"
    for options in (["", "blue"], ["red", " "]):
        blank = "A" if not options[0].strip() else "B"
        row = {"id": "validation_Art_1", "subject": "Art", "question_type": "multiple-choice",
               "options": options, "answer": blank}
        assert not mmmu.judge(row, long, style)["correct"]
        # the letter itself still counts
        assert mmmu.judge(row, f"\\boxed{{{blank}}} ({blank})", style)["correct"]


# ---- hostile JSON structure -------------------------------------------------------------------------

HOSTILE_JSON = [
    ("[" * 100000 + "]" * 100000, "nested more than"),
    ('{"id": "a", "x": ' + "[" * 100000 + "]" * 100000 + "}", "nested more than"),
    ('{"id": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
    ('{"id": "a", "pass_rate": NaN}', "NaN is not valid JSON"),
]


@pytest.mark.parametrize("text, fragment", HOSTILE_JSON)
def test_hostile_json_in_jsonl_is_one_line(cli, tmp_path, text, fragment):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row(id="ok")) + "\n" + text + "\n")
    assert fragment in refused(cli, "data", "import", path, "--name", "x", fragment="rows.jsonl line 2: ")


@pytest.mark.parametrize("text, fragment", HOSTILE_JSON)
def test_hostile_json_in_responses_is_one_line(cli, tmp_path, text, fragment):
    path = tmp_path / "responses.json"
    path.write_text("[" + text + "]")
    refused(cli, "eval", "mmmu", "--responses", path, fragment="responses.json")
    (tmp_path / "Art").mkdir()
    (tmp_path / "Art" / "output.json").write_text("[" + text + "]")
    line = refused(cli, "eval", "mmmu", "--responses", tmp_path, fragment=str(tmp_path / "Art" / "output.json"))
    assert fragment in line or "expected an object" in line or "missing key" in line


def test_hostile_json_in_a_model_config(cli, good_model, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(good_model, d)
    (d / "config.json").write_text('{"model_type": "llava", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    refused(cli, "import-model", d, "--name", "x", fragment="config.json: not valid JSON: JSON nested more than")


# ---- sizes without bounds -----------------------------------------------------------------------------


def test_synth_refuses_above_its_limit_at_once(cli):
    refused(cli, "data", "synth", "--name", "x", "--n", str(synthetic.MAX_N + 1), fragment="at most 1,000,000")
    refused(cli, "data", "synth", "--name", "x", "--n", "100000000", fragment="at most 1,000,000")


def test_synth_writes_a_row_group_at_a_time_with_the_same_bytes(cli, tmp_path, monkeypatch):
    """The streaming writer holds one row group; its files are byte for byte those of write_splits."""
    import hashlib

    code, _, err = cli("data", "synth", "--name", "s", "--n", "230", "--seed", "4", "--messages", "brief")
    assert code == 0, err
    art = cli.store.resolve("s", kind="dataset", verify=True)
    splits = synthetic.generate(230, seed=4)
    splits = {k: synthetic.with_solutions(v, "brief") for k, v in splits.items()}
    data.write_splits(tmp_path / "ref", splits)
    for split in splits:
        assert hashlib.sha256((art.path / f"{split}.parquet").read_bytes()).digest() == \
            hashlib.sha256((tmp_path / "ref" / f"{split}.parquet").read_bytes()).digest()
    assert art.metrics["splits"] == {"train": 184, "validation": 23, "test": 23}
    assert pq.ParquetFile(art.path / "train.parquet").num_row_groups == 2


def _png(path, size):
    Image.new("RGB", size, (200, 30, 30)).save(path)


def _sparse_png(path, w, h):
    """A valid PNG header announcing w x h pixels in a few dozen bytes (decoding would be huge)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("make, fragment", [
    (lambda p: _sparse_png(p, 10000, 10000), "image 1 is too large"),  # 100 MP: Pillow would only warn
    (lambda p: _sparse_png(p, 8000, 8000), "image 1 is 8000x8000 (64 MP); the limit is 50 MP"),
    (lambda p: _sparse_png(p, 40000, 40000), "image 1 is too large (Image size (1600000000 pixels)"),
    (lambda p: _png(p, (4000, 4)), "image 1 is 4000x4, sides 1000 times apart"),
    (lambda p: _png(p, (3, 700)), "image 1 is 3x700, sides 233 times apart"),
    (lambda p: _png(p, (1, 1)), "image 1 is 1x1; each side must be at least 2"),
    (lambda p: _png(p, (1, 50)), "image 1 is 1x50; each side must be at least 2"),
])
def test_data_import_refuses_images_outside_the_limits(cli, tmp_path, recwarn, make, fragment):
    make(tmp_path / "img.png")
    (tmp_path / "rows.jsonl").write_text(json.dumps(_row(images=["img.png"])) + "\n")
    refused(cli, "data", "import", tmp_path / "rows.jsonl", "--name", "x", fragment=f"rows.jsonl line 1: {fragment}")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_images_at_the_limits_are_taken(tmp_path):
    rows = [data.normalize_row(_row(id=str(s), images=[Image.new("RGB", s)]), "row") for s in [(2, 2), (400, 2), (2, 400)]]
    assert [r["images"][0].size for r in rows] == [(2, 2), (400, 2), (2, 400)]


def test_check_images_tries_each_size_on_the_processor():
    _, processor = models.build_tiny("qwen2_vl")
    rows = [{"id": f"r{i}", "images": [Image.new("RGB", (40, 30))]} for i in range(3)]
    data.check_images(rows, processor, "ds split validation")  # fine sizes pass
    data.check_images(rows, None, "remote")  # a backend without a processor checks nothing
    rows.append({"id": "wide", "images": [Image.new("RGB", (40, 30)), Image.new("RGB", (4000, 4))]})
    with pytest.raises(UserError, match=r"^ds split validation row 3 \(id wide\): image 2 \(4000x4\) cannot be "
                                        r"taken by the model's image processor: absolute aspect ratio"):
        data.check_images(rows, processor, "ds split validation")


def test_eval_refuses_an_image_its_model_cannot_take_before_generating(cli, tmp_path, monkeypatch):
    """An image inside the import limits that this model's processor refuses stops eval up front."""
    monkeypatch.setattr(data, "MAX_ASPECT_RATIO", 2000)  # a dataset imported under looser limits
    _png(tmp_path / "wide.png", (4000, 4))
    _png(tmp_path / "ok.png", (40, 30))
    rows = [_row(id="validation_Art_1", images=["ok.png"], subject="Art"),
            _row(id="validation_Art_2", images=["wide.png"], subject="Art")]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli("data", "import", tmp_path / "rows.jsonl", "--name", "mm", "--as-split", "validation")[0] == 0
    assert cli("init", "tiny", "--name", "m", "--family", "qwen2_vl")[0] == 0
    line = refused(cli, "eval", "mmmu", "--model", "m", "--data", "mm", "--name", "e", "--max-new-tokens", "2",
                   fragment="(id validation_Art_2): image 1 (4000x4) cannot be taken by the model's image processor")
    assert line.startswith("error: mm@v1 split validation row 1")
