"""Problem schema, loaders, writers and the synthetic tasks (r1v3.data, r1v3.synthetic)."""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from r1v3 import data, synthetic  # noqa: E402
from r1v3.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def splits():
    return synthetic.generate(200, 3)


def all_rows(splits):
    return [r for rows in splits.values() for r in rows]


def digest(splits):
    h = hashlib.sha256()
    for name, rows in splits.items():
        for r in rows:
            h.update(json.dumps({k: v for k, v in r.items() if k != "images"}, sort_keys=True).encode())
            for img in r["images"]:
                h.update(data.png_bytes(img))
        h.update(name.encode())
    return h.hexdigest()


def png(color=(200, 10, 10), size=(8, 6)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def base_row(**over):
    row = {"id": "q1", "images": [png()], "question": "What is shown in <image 1>?",
           "options": ["a cat", "a dog"], "answer": "A", "question_type": "multiple-choice"}
    row.update(over)
    return row


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def same_rows(a, b):
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "images"} == {k: v for k, v in y.items() if k != "images"}
        assert len(x["images"]) == len(y["images"])
        for i, j in zip(x["images"], y["images"]):
            assert (i.mode, i.size) == (j.mode, j.size) and i.tobytes() == j.tobytes()
            assert data.png_bytes(i) == data.png_bytes(j)


# -----------------------------------------------------------------------------
# synthetic tasks

def test_generate_deterministic():
    a, b = synthetic.generate(60, 1), synthetic.generate(60, 1)
    assert digest(a) == digest(b)
    assert digest(a) != digest(synthetic.generate(60, 2))


def test_generate_deterministic_across_processes():
    # nothing may depend on Python's per-process string hashing (set order etc.)
    code = ("from r1v3 import synthetic;import hashlib,json;s=synthetic.generate(40,5);"
            "h=hashlib.sha256();"
            "[h.update(json.dumps({k:v for k,v in r.items() if k!='images'}).encode()+r['images'][0].tobytes())"
            " for v in s.values() for r in v];print(h.hexdigest())")
    outs = set()
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.add(out.stdout.strip())
    assert len(outs) == 1


def test_splits_sizes_and_disjoint(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train": 160, "validation": 20, "test": 20}
    rows = all_rows(splits)
    assert len({r["id"] for r in rows}) == len(rows)
    keys = [hashlib.sha256(r["question"].encode() + r["images"][0].tobytes()).hexdigest() for r in rows]
    assert len(set(keys)) == len(rows)
    # also with the open-form hint stripped: one problem never appears in two forms
    bare = [synthetic.problem_key(r["question"].split("?")[0] + "?", r["images"][0]) for r in rows]
    assert len(set(bare)) == len(rows)


def test_every_row_validates(splits):
    for name, rows in splits.items():
        for i, r in enumerate(rows):
            out = data.normalize_row(r, f"{name} row {i}")
            assert list(out) == list(data.KEYS)
            assert {k: v for k, v in out.items() if k != "images"} == {k: v for k, v in r.items() if k != "images"}
            assert r["source"] == "synthetic" and r["subject"] in synthetic.TASKS and r["caption"]
            assert r["messages"] == [] and r["pass_rate"] is None
            assert all(img.size == (synthetic.SIZE, synthetic.SIZE) for img in r["images"])


def test_coverage_forms_and_difficulties(splits):
    want = {(t, d, f) for t in synthetic.TASKS for d in ("normal", "hard") for f in ("multiple-choice", "open")}
    for rows in splits.values():  # every split of 20+ rows holds every combination
        assert {(r["subject"], r["difficulty"], r["question_type"]) for r in rows} == want


def test_multiple_choice_options(splits):
    letters = []
    for r in all_rows(splits):
        if r["question_type"] == "multiple-choice":
            assert len(r["options"]) == 4 and len(set(r["options"])) == 4
            letters.append(r["answer"])
        else:
            assert r["options"] == []
    assert set(letters) == set("ABCD")  # shuffled, not always the first option


def test_hard_is_harder(splits):
    # difficulty is a real parameter: hard images hold more objects
    def n_objects(r):
        return len(re.findall(r"\(x=\d+, y=\d+\)|\(height \d+\)", r["caption"]))
    for task in synthetic.TASKS:
        normal = [n_objects(r) for r in all_rows(splits) if r["subject"] == task and r["difficulty"] == "normal"]
        hard = [n_objects(r) for r in all_rows(splits) if r["subject"] == task and r["difficulty"] == "hard"]
        assert sum(hard) / len(hard) > sum(normal) / len(normal), task


SHAPE = re.compile(r"a (\w+) (\w+) at [a-z ]+ \(x=(\d+), y=(\d+)\)")
NUMBER = re.compile(r"(\d+) in (\w+) at [a-z ]+ \(x=(\d+), y=(\d+)\)")
BAR = re.compile(r"(\w+) \(height (\d+)\)")
SINGULAR = {p: k for k, p in synthetic.PLURAL.items()}


def solve_from_caption(r):
    """A text-only solver: if it gets every answer right, the captions carry the facts."""
    q, cap, task = r["question"], r["caption"], r["subject"]
    shapes = [(c, k, int(x), int(y)) for c, k, x, y in SHAPE.findall(cap)]
    if task == "counting":
        words = re.search(r"How many (.+?) are in the image", q).group(1).split()
        kind, color = SINGULAR[words[-1]], (words[0] if len(words) == 2 else None)
        return str(sum(k == kind and color in (None, c) for c, k, _, _ in shapes))
    if task == "color":
        m = re.search(r"What color is the (?:(\w+most) )?(\w+)\?", q)
        cands = [s for s in shapes if s[1] == m.group(2)]
        if m.group(1):
            axis = 2 if m.group(1) in ("leftmost", "rightmost") else 3
            cands.sort(key=lambda s: s[axis], reverse=m.group(1) in ("rightmost", "bottommost"))
            assert abs(cands[0][axis] - cands[1][axis]) > 10  # unambiguous from the caption
        else:
            assert len(cands) == 1
        return cands[0][0]
    if task == "spatial":
        ca, ka, cb, kb = re.search(r"Where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", q).groups()
        (a,), (b,) = [s for s in shapes if s[:2] == (ca, ka)], [s for s in shapes if s[:2] == (cb, kb)]
        dx, dy = a[2] - b[2], a[3] - b[3]
        if abs(dx) > abs(dy):
            return "left" if dx < 0 else "right"
        return "above" if dy < 0 else "below"
    if task == "arithmetic":
        nums = [(int(n), c) for n, c, _, _ in NUMBER.findall(cap)]
        vals = [n for n, _ in nums]
        if "sum of the numbers" in q:
            return str(sum(vals))
        if "larger number minus" in q:
            return str(max(vals) - min(vals))
        if "subtract the smallest" in q:
            return str(sum(vals) - min(vals))
        if "red numbers minus" in q:
            return str(sum(n for n, c in nums if c == "red") - sum(n for n, c in nums if c == "blue"))
    if task == "chart":
        bars = {c: int(h) for c, h in BAR.findall(cap)}
        ranked = sorted(bars, key=bars.get, reverse=True)
        if "the tallest?" in q:
            return ranked[0]
        if "the shortest?" in q:
            return ranked[-1]
        if "second tallest" in q:
            return ranked[1]
        if m := re.search(r"taller than the (\w+) bar", q):
            return str(sum(h > bars[m.group(1)] for h in bars.values()))
        if "units taller" in q:
            return str(max(bars.values()) - min(bars.values()))
    raise AssertionError(f"no solver for {task}: {q}")


def test_captions_are_enough_to_solve(splits):
    for r in all_rows(splits):
        want = r["options"]["ABCD".index(r["answer"])] if r["options"] else r["answer"]
        assert solve_from_caption(r) == want, (r["id"], r["question"], r["caption"])


def test_captions_match_pixels(splits):
    # every shape the caption names is drawn at the stated centre in the stated colour,
    # and nothing else of a palette colour is drawn far from a stated shape
    for r in all_rows(splits):
        shapes = SHAPE.findall(r["caption"])
        if r["subject"] not in ("counting", "color", "spatial"):
            continue
        img = r["images"][0]
        for color, _, x, y in shapes:
            assert img.getpixel((int(x), int(y))) == synthetic.COLORS[color], (r["id"], color, x, y)
        centres = [(int(x), int(y)) for _, _, x, y in shapes]
        for px in range(0, img.width, 3):
            for py in range(0, img.height, 3):
                if img.getpixel((px, py)) != (255, 255, 255):
                    assert min(abs(px - x) + abs(py - y) for x, y in centres) <= 24, (r["id"], px, py)


def test_generate_500_is_fast():
    t = time.perf_counter()
    s = synthetic.generate(500, 0)
    assert time.perf_counter() - t < 3
    assert sum(len(v) for v in s.values()) == 500


def test_generate_subset_of_tasks_and_difficulties():
    s = synthetic.generate(40, 0, tasks=["counting", "color"], difficulties=["normal"])
    rows = [r for split in s.values() for r in split]
    assert {r["subject"] for r in rows} == {"counting", "color"}
    assert {r["difficulty"] for r in rows} == {"normal"}
    # the order they are asked in does not change the rows
    assert s == synthetic.generate(40, 0, tasks=["color", "counting"], difficulties=["normal"])
    with pytest.raises(UserError, match="unknown task 'colour'"):
        synthetic.generate(40, 0, tasks=["colour"])
    with pytest.raises(UserError, match="given twice"):
        synthetic.generate(40, 0, difficulties=["hard", "hard"])


def test_interleave_images_places_each_image_once():
    texts = ["System mentions <image 2>.", "Compare <image 3> with <image 2>; again <image 3>."]
    parts, order = data.interleave_images(texts, 4, "row r", lead=1)
    assert parts[0] == [{"type": "text", "text": "System mentions "}, {"type": "image", "index": 1},
                        {"type": "text", "text": "."}]
    # unmentioned images (0 and 3) lead the lead text; a repeated mention stays text
    assert [p.get("index", p.get("text")) for p in parts[1]] == [0, 3, "Compare ", 2, " with <image 2>; again <image 3>."]
    assert order == [1, 0, 3, 2]
    with pytest.raises(UserError, match="row r: '<image 5>' refers to image 5 but the row has 4 image"):
        data.interleave_images(["<image 5>"], 4, "row r")


def test_generate_rejects_tiny_n():
    with pytest.raises(UserError, match="at least 3"):
        synthetic.generate(2, 0)


# -----------------------------------------------------------------------------
# writing and reading

def test_write_read_round_trip(tmp_path, splits):
    paths = data.write_splits(tmp_path / "a", splits)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["test.parquet", "train.parquet", "validation.parquet"]
    assert [p.name for p in paths] == ["train.parquet", "validation.parquet", "test.parquet"]
    for name, rows in splits.items():
        same_rows(rows, data.read_split(tmp_path / "a", name))
    assert data.list_splits(tmp_path / "a") == ["test", "train", "validation"]
    same_rows(splits["validation"], data.load_rows(tmp_path / "a", "validation"))
    same_rows(splits["test"], data.load_rows(tmp_path / "a" / "test.parquet"))
    # deterministic bytes: same rows (even after a round trip) -> same files
    data.write_splits(tmp_path / "b", {k: data.read_split(tmp_path / "a", k) for k in splits})
    for name in splits:
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() == (tmp_path / "b" / f"{name}.parquet").read_bytes()
    # the parquet schema carries the datasets features, so other tools see an Image column
    from datasets import Features
    assert Features.from_arrow_schema(pq.read_schema(tmp_path / "a" / "train.parquet")) == data.FEATURES
    with pytest.raises(UserError, match="splits test, train, validation; choose one"):
        data.load_rows(tmp_path / "a")
    with pytest.raises(UserError, match="no split 'dev'"):
        data.read_split(tmp_path / "a", "dev")


def test_write_embeds_png_and_keeps_multi_image_order(tmp_path):
    imgs = [Image.new("RGB", (5, 5), (i * 40, 0, 0)) for i in range(3)]
    jpeg = io.BytesIO()
    Image.new("RGB", (9, 9), "blue").save(jpeg, format="JPEG")
    row = base_row(images=imgs + [jpeg.getvalue()], question="<image 3> vs <image 1>?")
    data.write_splits(tmp_path, {"train": [row]})
    stored = pq.read_table(tmp_path / "train.parquet").to_pylist()[0]["images"]
    assert all(s["bytes"].startswith(b"\x89PNG") and s["path"] is None for s in stored)
    back = data.read_split(tmp_path, "train")[0]["images"]
    assert [i.getpixel((0, 0)) for i in back[:3]] == [(0, 0, 0), (40, 0, 0), (80, 0, 0)]
    assert back[3].size == (9, 9)


def test_write_refuses_bad_input(tmp_path, splits):
    with pytest.raises(UserError, match="split train: dataset is empty"):
        data.write_splits(tmp_path / "x", {"train": []})
    with pytest.raises(UserError, match="split name 'a/b'"):
        data.write_splits(tmp_path / "x", {"a/b": splits["test"]})
    with pytest.raises(UserError, match="is also in split train"):
        data.write_splits(tmp_path / "x", {"train": splits["test"], "test": splits["test"]})
    with pytest.raises(UserError, match=r"split train row 0: missing required field 'answer'"):
        data.write_splits(tmp_path / "x", {"train": [{k: v for k, v in base_row().items() if k != "answer"}]})
    data.write_splits(tmp_path / "y", {"old": splits["test"]})
    with pytest.raises(UserError, match="already holds old.parquet"):
        data.write_splits(tmp_path / "y", {"train": splits["test"]})


def test_to_dataset(splits):
    ds = data.to_dataset(splits["validation"])
    assert ds.features == data.FEATURES and len(ds) == 20
    assert ds[0]["images"][0].tobytes() == splits["validation"][0]["images"][0].tobytes()


def test_contact_sheet(tmp_path, splits):
    out = data.contact_sheet(splits["train"], tmp_path / "sheet.png", n=10)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (4 * 128, 3 * (128 + 26))


# -----------------------------------------------------------------------------
# loaders

def test_jsonl_with_relative_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png((1, 2, 3)))
    (tmp_path / "b.png").write_bytes(png((4, 5, 6), (3, 3)))
    f = write_jsonl(tmp_path / "train.jsonl", [
        base_row(images=["img/a.png", "b.png"], question="<image 2> or <image 1>?"),
        base_row(id="q2", images=[], question="2+2?", options=[], answer=4, question_type="open",
                 subject="math", difficulty="hard", pass_rate=1, extra="dropped"),
    ])
    rows = data.load_rows(f)
    assert rows[0]["images"][0].getpixel((0, 0)) == (1, 2, 3) and rows[0]["images"][1].size == (3, 3)
    assert rows[1] == {"id": "q2", "images": [], "question": "2+2?", "options": [], "answer": "4",
                       "question_type": "open", "subject": "math", "difficulty": "hard", "pass_rate": 1.0,
                       "source": "", "caption": "", "messages": [], "meta": {}}
    # and it survives writing
    data.write_splits(tmp_path / "ds", {"train": rows})
    same_rows(rows, data.read_split(tmp_path / "ds", "train"))


def test_mmmu_style_options_string(tmp_path):
    row = load_one(tmp_path, base_row(id="q2", options="['<image 1>', 'x', \"y's\"]", answer="c"))[1]
    assert row["options"] == ["<image 1>", "x", "y's"] and row["answer"] == "C"


def test_hf_save_to_disk_dirs(tmp_path, splits):
    import datasets
    data.to_dataset(splits["test"]).save_to_disk(str(tmp_path / "one"))
    same_rows(splits["test"], data.load_rows(tmp_path / "one"))
    datasets.DatasetDict({k: data.to_dataset(v) for k, v in splits.items() if k != "train"}).save_to_disk(
        str(tmp_path / "dict"))
    same_rows(splits["validation"], data.load_rows(tmp_path / "dict", "validation"))
    with pytest.raises(UserError, match="choose one"):
        data.load_rows(tmp_path / "dict")


def test_hub_layout_dir(tmp_path, splits):
    d = tmp_path / "hub" / "data"
    d.mkdir(parents=True)
    pq.write_table(data.to_table(splits["validation"]), d / "validation-00000-of-00001.parquet")
    pq.write_table(data.to_table(splits["test"]), d / "test-00000-of-00001.parquet")
    same_rows(splits["validation"], data.load_rows(tmp_path / "hub", "validation"))
    with pytest.raises(UserError, match="no split 'train'"):
        data.load_rows(tmp_path / "hub", "train")


# -----------------------------------------------------------------------------
# bad inputs: one line naming file, row and key

def load_one(directory, row):
    """Load a jsonl file of a good row and `row`; image bytes become files beside it (bytes are not JSON)."""
    rows = [base_row(id="ok"), row]
    for j, r in enumerate(rows):
        if isinstance(r.get("images"), list):
            r["images"] = list(r["images"])
            for i, img in enumerate(r["images"]):
                if isinstance(img, bytes):
                    (directory / f"r{j}i{i}.png").write_bytes(img)
                    r["images"][i] = f"r{j}i{i}.png"
    return data.load_rows(write_jsonl(directory / "bad.jsonl", rows))


def test_missing_required_field(tmp_path):
    row = base_row()
    del row["answer"]
    with pytest.raises(UserError) as e:
        load_one(tmp_path, row)
    assert str(e.value) == f"{tmp_path / 'bad.jsonl'} line 2: missing required field 'answer'"


def test_missing_field_in_parquet_names_row(tmp_path):
    rows = [data.normalize_row(base_row(id=f"q{i}"), "t") for i in range(3)]
    table = data.to_table(rows)
    table = table.set_column(table.schema.get_field_index("answer"), "answer", pa.array(["A", None, "B"]))
    pq.write_table(table, tmp_path / "x.parquet")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'x.parquet'} row 1: missing required field 'answer'")):
        data.load_rows(tmp_path / "x.parquet")


@pytest.mark.parametrize("over, message", [
    ({"question": ["not", "text"]}, "line 2: field 'question' must be a string, got list"),
    ({"id": 7}, "line 2: field 'id' must be a string, got int"),
    ({"images": "a.png"}, "line 2: field 'images' must be a list of images, got str"),
    ({"images": [3]}, "line 2: image 1 must be an image, image bytes or a path, got int"),
    ({"question_type": "mcq"}, "line 2: field 'question_type' is 'mcq'"),
    ({"options": 5}, "line 2: field 'options' must be a list of strings, got int"),
    ({"options": "a, b, c"}, "line 2: field 'options' is a string that is not a list literal"),
    ({"options": "__import__('os')"}, "line 2: field 'options' is a string that is not a list literal"),
    ({"options": "{'a': 1}"}, "line 2: field 'options' must be a list of strings, got dict"),
    ({"options": ["x", 2]}, "line 2: field 'options' item 1 must be a string, got int"),
    ({"answer": "E"}, "line 2: field 'answer' is 'E'; for a multiple-choice question it must be one of "
                      "the option letters A, B"),
    ({"answer": "a cat"}, "line 2: field 'answer' is 'a cat'"),
    ({"options": ["only"]}, "line 2: field 'options' has 1 items"),
    ({"question_type": "open"}, "line 2: field 'options' must be empty for an open question"),
    ({"question": "<image 3> and <image 1>", "images": [png(), png()]},
     "line 2: '<image 3>' refers to image 3 but the row has 2 image"),
    ({"options": ["<image 2>", "b"]}, "line 2: '<image 2>' refers to image 2 but the row has 1 image"),
    ({"pass_rate": 1.5}, "line 2: field 'pass_rate' must be a number in"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "line 2: field 'messages' item 0 has role 'bot'"),
    ({"id": "ok"}, "duplicate id 'ok' (rows 0 and 1)"),
])
def test_bad_fields(tmp_path, over, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        load_one(tmp_path, base_row(**over))
    assert str(tmp_path / "bad.jsonl") in str(e.value) and "\n" not in str(e.value)


def test_truncated_image_in_jsonl(tmp_path):
    (tmp_path / "ok.png").write_bytes(png())
    full = png(size=(64, 64))
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match=r"bad.jsonl line 2: image 2 unreadable: "):
        load_one(tmp_path, base_row(images=["ok.png", "cut.png"]))
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=r"bad.jsonl line 2: image 1 unreadable: cannot identify image file"):
        load_one(tmp_path, base_row(images=["junk.png"]))


def test_truncated_image_in_parquet(tmp_path):
    rows = [data.normalize_row(base_row(id=f"q{i}"), "t") for i in range(2)]
    table = data.to_table(rows).to_pylist()
    good = png(size=(64, 64))
    table[1]["images"] = [{"bytes": good[:-30], "path": None}]
    pq.write_table(pa.Table.from_pylist(table, schema=data.FEATURES.arrow_schema), tmp_path / "t.parquet")
    with pytest.raises(UserError, match=r"t.parquet row 1: image 1 unreadable: "):
        data.load_rows(tmp_path / "t.parquet")


def test_image_paths_must_stay_inside(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(png())
    d = tmp_path / "data"
    d.mkdir()
    (d / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    (d / "linkdir").symlink_to(tmp_path / "outside")
    secret = str(tmp_path / "outside" / "secret.png")
    cases = [
        ("../outside/secret.png", "image 1 path '../outside/secret.png' leaves"),
        ("sub/../../outside/secret.png", "leaves"),
        (secret, f"image 1 path '{secret}' is absolute"),
        ("link.png", "image 1 path 'link.png' resolves outside"),
        ("linkdir/secret.png", "image 1 path 'linkdir/secret.png' resolves outside"),
        ("missing.png", "image 1 not found"),
    ]
    for path, message in cases:
        with pytest.raises(UserError, match=re.escape(message)) as e:
            load_one(d, base_row(images=[path]))
        assert f"{d / 'bad.jsonl'} line 2:" in str(e.value)


def test_paths_not_allowed_without_base_dir():
    with pytest.raises(UserError, match="image 1 is a file path"):
        data.normalize_row(base_row(images=["a.png"]), "somewhere")


def test_empty_and_unreadable_sources(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="empty.jsonl: dataset is empty"):
        data.load_rows(tmp_path / "empty.jsonl")
    pq.write_table(data.to_table([]), tmp_path / "empty.parquet")
    with pytest.raises(UserError, match="empty.parquet: dataset is empty"):
        data.load_rows(tmp_path / "empty.parquet")
    (tmp_path / "broken.jsonl").write_text('{"id": "x",\n')
    with pytest.raises(UserError, match="broken.jsonl line 1: malformed JSON"):
        data.load_rows(tmp_path / "broken.jsonl")
    (tmp_path / "fake.parquet").write_bytes(b"nope")
    with pytest.raises(UserError, match="fake.parquet: not a readable parquet file"):
        data.load_rows(tmp_path / "fake.parquet")
    with pytest.raises(UserError, match="no such file or directory"):
        data.load_rows(tmp_path / "nothing")
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(UserError, match="unsupported file type"):
        data.load_rows(tmp_path / "x.csv")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(UserError, match="cannot read as a Hugging Face dataset directory"):
        data.load_rows(tmp_path / "emptydir")


# --- the reflect message style ------------------------------------------------------------------

def _rows_digest(module, styles):
    h = hashlib.sha256()
    for seed in (0, 7):
        rows = [r for v in module.generate(60, seed).values() for r in v]
        for style in styles:
            for r in module.with_solutions(rows, style):
                # "meta" came later and is {} here: the digest stays the one of the rows before it
                assert r["meta"] == {}
                h.update(json.dumps({k: v for k, v in r.items() if k not in ("images", "meta")}, sort_keys=True).encode())
                h.update(r["images"][0].tobytes())
    return h.hexdigest()


def test_existing_message_styles_are_unchanged_by_reflect():
    # the digest of these rows before the reflect style was added
    assert _rows_digest(synthetic, ("think", "brief", "direct", "caption")) == (
        "84e1406c70a12d43b20a20599a95b2783bf1a9b6826ed4c9e16490b414fba4e7")


def _trace(row):
    content = row["messages"][1]["content"]
    m = re.fullmatch(r"<think>(.*)</think>\n\\boxed\{(.*)\}", content, re.S)
    assert m and m.group(2) == row["answer"], content
    return m.group(1)


def test_reflect_corrections_are_right(splits):
    rows = all_rows(splits)
    seen = {"Wait": 0, "Alternatively": 0, "plain": 0}
    for r in synthetic.with_solutions(rows, "reflect", reflect_share=0.6):
        trace, value = _trace(r), solve_from_caption(r)
        grounded = synthetic.brief_reasoning(r)
        if " Wait, " in trace:
            seen["Wait"] += 1
            first, correction = trace.split(" Wait, ")
            assert correction.endswith(grounded), trace
            # the first look names a wrong value; the correction states the drawn one
            misread = re.search(r"(?:count|like|get) (\S+?)[ .]|seems (left|right|above|below)", first)
            wrong = misread.group(1) or misread.group(2)
            assert wrong != value and value in grounded, trace
            if r["subject"] == "counting":
                assert re.match(rf"There (?:are|is) {value} ", grounded), trace
        elif " Alternatively, " in trace:
            seen["Alternatively"] += 1
            first, alternative = trace.split(" Alternatively, ")
            assert first == grounded
            m = re.fullmatch(r"could the answer be (.+)\? No: checking again, it is (.+)\.", alternative)
            assert m and m.group(1) != value and m.group(2) == value, trace
        else:
            seen["plain"] += 1
            assert trace == grounded
    assert min(seen.values()) > 20, seen


def test_reflect_share_holds_and_rows_are_stable(splits):
    rows = all_rows(splits)

    def share(value):
        out = synthetic.with_solutions(rows, "reflect", reflect_share=value)
        return sum(_trace(r) != synthetic.brief_reasoning(r) for r in out) / len(out)

    assert share(0.0) == 0 and share(1.0) == 1
    for value in (0.25, 0.5):
        assert abs(share(value) - value) < 0.1
    # a row's trace depends on the row alone, not on which rows come with it
    assert synthetic.with_solutions(rows[5:6], "reflect") == synthetic.with_solutions(rows, "reflect")[5:6]
    with pytest.raises(UserError, match="between 0 and 1"):
        synthetic.with_solutions(rows[:1], "reflect", reflect_share=1.5)


def test_synth_reflect_style_from_the_cli(tmp_path):
    from r1v3.artifacts import Store
    from r1v3.cli import main

    store = tmp_path / "store"
    assert main(["--store", str(store), "data", "synth", "--name", "r", "--n", "40", "--messages", "reflect",
                 "--reflect-share", "1"]) == 0
    rows = data.read_split(Store(store).resolve("r").path, "train")
    assert all(re.search(r" (Wait|Alternatively), ", r["messages"][1]["content"]) for r in rows)
    for bad in (["--messages", "brief", "--reflect-share", "0.2"], ["--messages", "reflect", "--reflect-share", "2"]):
        assert main(["--store", str(store), "data", "synth", "--name", "bad", "--n", "20", *bad]) == 2
    assert not (store / "bad").exists()


def test_load_split_names_the_artifact_its_splits_and_the_option(tmp_path, splits):
    from r1v3.artifacts import Store

    store = Store(tmp_path / "store")
    with store.publish("ds", "dataset", stage="test") as draft:
        data.write_splits(draft.path, {"train": splits["train"][:3], "validation": splits["validation"][:2]})
    ds = store.resolve("ds", kind="dataset")
    same_rows(splits["validation"][:2], data.load_split(ds, "validation"))
    with pytest.raises(UserError, match=r"^ds@v1: no split 'test' \(has train, validation\); choose one with "
                                        r"--split \(key split\)$"):
        data.load_split(ds, "test")
    with pytest.raises(UserError, match=r"choose one with --splits \(key splits\)$"):
        data.load_split(ds, "dev", "--splits (key splits)")
