"""Problem rows: the schema, validation, loaders and writers shared by every stage.

A problem row is a plain dict with exactly the keys of FEATURES, in that order:

    id            str, unique within a dataset
    images        list of PIL images, fully decoded (may be empty for a text-only problem)
    question      str; "<image N>" (1-based) refers to images[N-1]
    options       list of str; empty for open questions
    answer        str; the option letter "A".."Z" for multiple-choice, the answer text for open
    question_type "multiple-choice" | "open"
    subject       str ("" if unknown)
    difficulty    "normal" | "hard" | ""
    pass_rate     float in [0, 1] or None (measured by later stages)
    source        str
    caption       str, a text rendering of the image(s) for text-only teachers
    messages      list of {"role", "content"} (SFT data), else []
    meta          dict: a benchmark's own fields the columns above have no place for (MathVista's
                  answer_type, precision and metadata), kept so its official scorer can read them;
                  {} for others. Stored as JSON text.

Every loader returns list[dict] of such rows (not a datasets.Dataset): images are decoded and
validated at load time, so a broken file fails with its file/row/key before any training
starts. `to_dataset(rows)` builds a datasets.Dataset with FEATURES when a trainer wants one.

On disk a dataset is a directory of `<split>.parquet` files written by `write_splits`, with
images embedded as PNG bytes (an artifact directory also holds manifest.json).
"""

import ast
import io
import json
import math
import os
import re
import warnings
from pathlib import Path, PurePath

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image, List, Value
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont, ImageOps

from r1v3 import jsonio
from r1v3.errors import UserError

FEATURES = Features({
    "id": Value("string"),
    "images": List(Image()),
    "question": Value("string"),
    "options": List(Value("string")),
    "answer": Value("string"),
    "question_type": Value("string"),
    "subject": Value("string"),
    "difficulty": Value("string"),
    "pass_rate": Value("float64"),
    "source": Value("string"),
    "caption": Value("string"),
    "messages": List({"role": Value("string"), "content": Value("string")}),
    "meta": Value("string"),
})
KEYS = tuple(FEATURES)
REQUIRED = ("id", "images", "question", "options", "answer", "question_type")
QUESTION_TYPES = ("multiple-choice", "open")
ROLES = ("system", "user", "assistant")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
IMAGE_REF = re.compile(r"<image\s*(\d+)>")
SPLIT_NAME = re.compile(r"^\w+$")
# modes PNG stores losslessly; anything else (CMYK, YCbCr, F, ...) is converted first
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")
PARQUET_ROW_GROUP = 100  # small row groups: image rows are big, and readers stream by group
# Image limits at import. 50 MP is far above what any VLM processor keeps (it resizes to a few MP
# at most) and below Pillow's 89 MP bomb warning; Qwen-VL processors refuse sides more than 200
# times apart (mid-run, in eval); an image with a 1-pixel side is a placeholder, not a picture.
MAX_IMAGE_PIXELS = 50_000_000
MAX_ASPECT_RATIO = 200
MIN_IMAGE_SIDE = 2


def interleave_images(texts: list[str], n_images: int, where: str, lead: int = 0) -> tuple[list[list[dict]], list[int]]:
    """Texts (the turns of one conversation) as content parts with the images in place.

    The first `<image N>` across the texts becomes {"type": "image", "index": N-1} where it
    stands; a later mention of the same image stays text, so each image is sent once. Images no
    text mentions go first in texts[lead]. Returns the parts of each text (adjacent text merged,
    empty text dropped) and the image indices in the order their parts appear.
    """
    mentioned = set()
    for text in texts:
        for m in IMAGE_REF.finditer(text):
            n = int(m.group(1))
            if not 1 <= n <= n_images:
                raise UserError(f"{where}: '{m.group(0)}' refers to image {n} but the row has {n_images} image(s)")
            mentioned.add(n - 1)
    sent, out = set(), []
    for t, text in enumerate(texts):
        parts = [{"type": "image", "index": k} for k in range(n_images) if k not in mentioned] if t == lead else []
        pos = 0
        for m in IMAGE_REF.finditer(text):
            k = int(m.group(1)) - 1
            if k in sent:
                continue
            sent.add(k)
            parts += [{"type": "text", "text": text[pos:m.start()]}, {"type": "image", "index": k}]
            pos = m.end()
        parts.append({"type": "text", "text": text[pos:]})
        merged = []
        for part in parts:
            if part["type"] == "text":
                if not part["text"]:
                    continue
                if merged and merged[-1]["type"] == "text":
                    merged[-1] = {"type": "text", "text": merged[-1]["text"] + part["text"]}
                    continue
            merged.append(part)
        out.append(merged)
    order = [p["index"] for parts in out for p in parts if p["type"] == "image"]
    return out, order


# -----------------------------------------------------------------------------
# validation

def _one_line(e):
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _string(row, key, where, default=None, nonempty=False):
    value = row.get(key)
    if value is None:
        if default is None:
            raise UserError(f"{where}: missing required field '{key}'")
        return default
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise UserError(f"{where}: field '{key}' is empty")
    return value


def _options(value, where):
    if isinstance(value, str):
        # MMMU stores options as the repr of a Python list; literal_eval parses it without
        # running anything
        try:
            value = ast.literal_eval(value.strip() or "[]")
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise UserError(f"{where}: field 'options' is a string that is not a list literal: {value[:60]!r}")
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise UserError(f"{where}: field 'options' must be a list of strings, got {type(value).__name__}")
    for i, option in enumerate(value):
        if not isinstance(option, str):
            raise UserError(f"{where}: field 'options' item {i} must be a string, got {type(option).__name__}")
        if not option.strip():
            # an empty text is a substring of every response: scoring would credit it
            raise UserError(f"{where}: field 'options' item {i} ({LETTERS[i] if i < len(LETTERS) else i}) is empty")
    return value


def _messages(value, where):
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{where}: field 'messages' must be a list of {{role, content}}, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: field 'messages' item {i} must be {{'role': str, 'content': str}}")
        if m["role"] not in ROLES:
            raise UserError(f"{where}: field 'messages' item {i} has role {m['role']!r}; "
                            f"expected one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _meta(value, where):
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = jsonio.loads(value, f"{where}: field 'meta'")
    if not isinstance(value, dict):
        raise UserError(f"{where}: field 'meta' must be an object of a benchmark's fields, got {type(value).__name__}")
    try:  # a copy that is plain JSON, as it will be stored and read back
        return json.loads(_meta_text(value))
    except (TypeError, ValueError, RecursionError) as e:
        raise UserError(f"{where}: field 'meta' is not JSON data: {_one_line(e)}") from None


def _meta_text(meta):
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, allow_nan=False)


def _resolve_path(path, k, where, base_dir):
    # an image path may only name a file inside the data file's own directory: a dataset
    # must not be able to make us read (and embed into an artifact) arbitrary local files
    if base_dir is None:
        raise UserError(f"{where}: image {k} is a file path ({path!r}); paths are allowed only in jsonl files")
    if not path:
        raise UserError(f"{where}: image {k} path is empty")
    if "\0" in path:  # the OS refuses such a name with a ValueError, not an OSError
        raise UserError(f"{where}: image {k} path {path!r} contains a NUL byte")
    if os.path.isabs(path) or PurePath(path).drive:
        raise UserError(f"{where}: image {k} path {path!r} is absolute; give a path relative to {base_dir}")
    if ".." in PurePath(path).parts:
        raise UserError(f"{where}: image {k} path {path!r} leaves {base_dir} ('..' is not allowed)")
    base = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(base, path))
    if os.path.commonpath([base, full]) != base:
        raise UserError(f"{where}: image {k} path {path!r} resolves outside {base_dir} (symlink to {full})")
    if not os.path.isfile(full):
        raise UserError(f"{where}: image {k} not found: {os.path.join(base_dir, path)}")
    with open(full, "rb") as f:
        return f.read()


def _image(value, k, where, base_dir):
    """Decode one image (PIL image, bytes, {"bytes", "path"} dict or path) and load every pixel."""
    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
        if value is None:
            raise UserError(f"{where}: image {k} has neither bytes nor path")
    if isinstance(value, str):
        value = _resolve_path(value, k, where, base_dir)
    if not isinstance(value, (PILImage.Image, bytes, bytearray, memoryview)):
        raise UserError(f"{where}: image {k} must be an image, image bytes or a path, got {type(value).__name__}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its bomb limit: ours is lower anyway, but no image
            # gets decoded with a warning on the terminal
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            img = value if isinstance(value, PILImage.Image) else PILImage.open(io.BytesIO(value))
            _check_size(img.size, f"{where}: image {k}")  # from the header, before decoding
            # load() decodes every pixel now, so a truncated file fails here with its row
            # instead of in the middle of a training step
            img.load()
            if img.getexif().get(PILImage.ExifTags.Base.Orientation, 1) != 1:
                img = ImageOps.exif_transpose(img)
    except UserError:
        raise
    except (PILImage.DecompressionBombWarning, PILImage.DecompressionBombError) as e:
        raise UserError(f"{where}: image {k} is too large ({_one_line(e)}); the limit is "
                        f"{MAX_IMAGE_PIXELS // 1_000_000} MP")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ... for bad data
        raise UserError(f"{where}: image {k} unreadable: {_one_line(e)}")
    return img


def _check_size(size, where):
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise UserError(f"{where} is {w}x{h} ({w * h / 1e6:.0f} MP); the limit is {MAX_IMAGE_PIXELS // 1_000_000} MP: "
                        "scale it down")
    if min(w, h) < MIN_IMAGE_SIDE:
        raise UserError(f"{where} is {w}x{h}; each side must be at least {MIN_IMAGE_SIDE} pixels")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise UserError(f"{where} is {w}x{h}, sides {max(w, h) / min(w, h):.0f} times apart; image processors take "
                        f"at most {MAX_ASPECT_RATIO}: crop or pad it")


def check_images(rows, processor, where):
    """Refuse, before any generation or training, an image the model's processor cannot take.

    Each distinct image size is tried once on a blank image of that size, so the cost is a few
    processor calls however many rows there are. `processor` None (a remote backend) checks nothing.
    """
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return
    tried = set()
    for i, row in enumerate(rows):
        for k, img in enumerate(row["images"], 1):
            if img.size in tried:
                continue
            try:
                image_processor(images=[PILImage.new("RGB", img.size)], return_tensors="pt")
            except Exception as e:  # processors raise ValueError, RuntimeError, ... on sizes they cannot take
                raise UserError(f"{where} row {i} (id {row['id']}): image {k} ({img.width}x{img.height}) cannot be "
                                f"taken by the model's image processor: {_one_line(e)[:200]}") from None
            tried.add(img.size)


def normalize_row(row, where, base_dir=None):
    """Validate one problem row and return it in canonical form (all keys, defaults filled).

    `where` names the row in messages, e.g. "data/train.jsonl line 18". `base_dir` is the
    directory that relative image paths are resolved in (jsonl loading); None forbids paths.
    Keys outside the schema are dropped.
    """
    if not isinstance(row, dict):
        raise UserError(f"{where}: a row must be an object of field names to values, got {type(row).__name__}")
    for key in REQUIRED:
        if row.get(key) is None:
            raise UserError(f"{where}: missing required field '{key}'")
    out = {}
    out["id"] = _string(row, "id", where, nonempty=True)

    images = row["images"]
    if isinstance(images, tuple):
        images = list(images)
    if not isinstance(images, list):
        raise UserError(f"{where}: field 'images' must be a list of images, got {type(images).__name__}")

    question = _string(row, "question", where, nonempty=True)
    options = _options(row["options"], where)
    qtype = _string(row, "question_type", where)
    if qtype not in QUESTION_TYPES:
        raise UserError(f"{where}: field 'question_type' is {qtype!r}; expected 'multiple-choice' or 'open'")

    answer = row["answer"]
    if isinstance(answer, float) and not math.isfinite(answer):
        raise UserError(f"{where}: field 'answer' is {answer!r}, not an answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)  # JSON numbers are a natural way to write open answers
    if not isinstance(answer, str):
        raise UserError(f"{where}: field 'answer' must be a string, got {type(answer).__name__}")
    answer = answer.strip()
    if not answer:
        raise UserError(f"{where}: field 'answer' is empty")
    if qtype == "multiple-choice":
        if len(options) < 2 or len(options) > len(LETTERS):
            raise UserError(f"{where}: field 'options' has {len(options)} items; "
                            "a multiple-choice question needs 2 to 26")
        if len(answer) != 1 or answer.upper() not in LETTERS[:len(options)]:
            raise UserError(f"{where}: field 'answer' is {answer!r}; for a multiple-choice question it must be one "
                            f"of the option letters {', '.join(LETTERS[:len(options)])}")
        answer = answer.upper()
    elif options:
        raise UserError(f"{where}: field 'options' must be empty for an open question (it has {len(options)} items)")

    # placeholders may sit in the question or in an option (MMMU has image options)
    for text in [question] + options:
        for m in IMAGE_REF.finditer(text):
            n = int(m.group(1))
            if n < 1 or n > len(images):
                raise UserError(f"{where}: '{m.group(0)}' refers to image {n} but the row has {len(images)} image(s)")

    out["images"] = [_image(v, k + 1, where, base_dir) for k, v in enumerate(images)]
    out["question"] = question
    out["options"] = options
    out["answer"] = answer
    out["question_type"] = qtype
    out["subject"] = _string(row, "subject", where, default="")
    # A free label: the curriculum uses normal/hard, imported benchmarks bring their own (MMMU: Easy/Medium/Hard).
    out["difficulty"] = _string(row, "difficulty", where, default="")
    rate = row.get("pass_rate")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or not 0 <= rate <= 1:
            raise UserError(f"{where}: field 'pass_rate' must be a number in [0, 1] or null, got {rate!r}")
        rate = float(rate)
    out["pass_rate"] = rate
    out["source"] = _string(row, "source", where, default="")
    out["caption"] = _string(row, "caption", where, default="")
    out["messages"] = _messages(row.get("messages"), where)
    out["meta"] = _meta(row.get("meta"), where)
    return out


def _check_rows(rows, where):
    if not rows:
        raise UserError(f"{where}: dataset is empty (no rows)")
    seen = {}
    for i, row in enumerate(rows):
        if row["id"] in seen:
            raise UserError(f"{where}: duplicate id {row['id']!r} (rows {seen[row['id']]} and {i})")
        seen[row["id"]] = i
    return rows


# -----------------------------------------------------------------------------
# loading

def _rows_from_table(table, where, base_dir):
    rows, i = [], 0
    for batch in table.to_batches():
        for raw in batch.to_pylist():
            rows.append(normalize_row(raw, f"{where} row {i}", base_dir))
            i += 1
    return rows


def _read_parquet(path):
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file: {_one_line(e)}")
    return _rows_from_table(table, str(path), os.path.dirname(os.path.abspath(path)))


def _read_jsonl(path):
    base_dir = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, "rb") as f:
        for lineno, raw_line in enumerate(f, 1):
            where = f"{path} line {lineno}"
            try:  # per line, so that bad bytes are reported with their line
                line = raw_line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{where}: not UTF-8 text (bad byte at column {e.start + 1})")
            if not line.strip():
                continue
            raw = jsonio.loads(line, where)
            rows.append(normalize_row(raw, where, base_dir))
    return rows


def _pick_split(splits, split, path):
    if split is None:
        if len(splits) != 1:
            raise UserError(f"{path}: holds splits {', '.join(sorted(splits))}; choose one")
        return next(iter(splits))
    if split not in splits:
        raise UserError(f"{path}: no split {split!r}; it has {', '.join(sorted(splits)) or 'none'}")
    return split


def _read_hf_dir(path, split):
    import tempfile

    import datasets

    is_saved = (path / "dataset_dict.json").exists() or (path / "state.json").exists()
    # datasets' progress bars would break the one-line error on stderr
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="r1v3-hf-") as cache:
        try:
            if is_saved:
                ds = datasets.load_from_disk(str(path))
            else:
                # a hub-layout folder; the cache goes to a temporary directory because the
                # rows are copied into memory below and the cache would only be litter
                ds = datasets.load_dataset(str(path), cache_dir=cache)
        except Exception as e:  # datasets raises many types for a folder it cannot read
            raise UserError(f"{path}: cannot read as a Hugging Face dataset directory: {_one_line(e)}")
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()
        if isinstance(ds, datasets.DatasetDict):
            split = _pick_split(set(ds), split, path)
            ds = ds[split]
            where = f"{path} split {split}"
        else:
            where = str(path)
        # raw arrow rows: we decode images ourselves so errors carry the row number
        table = ds.with_format("arrow")[:]
        return _rows_from_table(table, where, str(path))


def _split_files(path):
    # our artifact layout: top-level <split>.parquet files; hub shards are named like
    # train-00000-of-00001.parquet and go to load_dataset instead
    files = sorted(path.glob("*.parquet"))
    if files and all(SPLIT_NAME.match(f.stem) for f in files):
        return {f.stem: f for f in files}
    return None


def load_rows(path, split=None):
    """Load, validate and return the problem rows of one split, images decoded.

    `path` is a .parquet file, a .jsonl file (image paths relative to its directory), a
    directory of `<split>.parquet` files, or a local Hugging Face dataset directory
    (save_to_disk output or a hub-layout folder). `split` picks a split of a directory;
    it may be None when there is only one, and is ignored for a single file.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file or directory")
    if p.is_file():
        if p.suffix == ".parquet":
            rows, where = _read_parquet(p), str(p)
        elif p.suffix == ".jsonl":
            rows, where = _read_jsonl(p), str(p)
        else:
            raise UserError(f"{path}: unsupported file type; expected .parquet, .jsonl or a dataset directory")
    elif (files := _split_files(p)) is not None:
        split = _pick_split(files, split, p)
        rows, where = _read_parquet(files[split]), str(files[split])
    else:
        rows, where = _read_hf_dir(p, split), str(p)
    return _check_rows(rows, where)


def read_split(directory, split):
    """Read `<directory>/<split>.parquet` written by write_splits."""
    path = Path(directory) / f"{split}.parquet"
    if not path.is_file():
        have = sorted(f.stem for f in Path(directory).glob("*.parquet"))
        raise UserError(f"{directory}: no split {split!r}; it has {', '.join(have) or 'none'}")
    return _check_rows(_read_parquet(path), str(path))


def list_splits(directory):
    """Names of the `<split>.parquet` files in a dataset directory, sorted."""
    return sorted(f.stem for f in Path(directory).glob("*.parquet"))


def load_split(dataset, split, option="--split (key split)"):
    """The rows of `split` of a dataset artifact; a split it lacks is one line naming the
    artifact, the splits it has and `option`, the setting that chose the split."""
    splits = list_splits(dataset.path)
    if split not in splits:
        raise UserError(f"{dataset.ref}: no split {split!r} (has {', '.join(splits) or 'none'}); "
                        f"choose one with {option}")
    return read_split(dataset.path, split)


# -----------------------------------------------------------------------------
# writing

def png_bytes(img):
    """Encode a PIL image as PNG: lossless, and the same bytes for the same pixels."""
    if img.mode not in PNG_MODES:
        img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _arrow_row(row):
    out = dict(row)
    out["images"] = [{"bytes": png_bytes(img), "path": None} for img in row["images"]]
    out["meta"] = _meta_text(row.get("meta") or {})
    return out


def to_table(rows):
    """Rows -> pyarrow Table with the FEATURES schema (images as embedded PNG bytes)."""
    return pa.Table.from_pylist([_arrow_row(r) for r in rows], schema=FEATURES.arrow_schema)


def to_dataset(rows):
    """Rows -> in-memory datasets.Dataset with FEATURES (images decode to PIL on access)."""
    import datasets
    from datasets.table import InMemoryTable

    return datasets.Dataset(InMemoryTable(to_table(rows)))


def write_splits(directory, splits):
    """Write {split: rows} as `<directory>/<split>.parquet`; returns the written paths.

    Rows are validated first, ids must be unique across all splits, and the bytes are the
    same for the same rows. Parquet files of other splits already in the directory are an
    error: a dataset directory holds exactly its splits.
    """
    directory = Path(directory)
    if not splits:
        raise UserError(f"{directory}: no splits to write")
    checked, owner = {}, {}
    for split, rows in splits.items():
        if not isinstance(split, str) or not SPLIT_NAME.match(split):
            raise UserError(f"{directory}: split name {split!r} must be letters, digits or '_'")
        where = f"{directory} split {split}"
        rows = [normalize_row(r, f"{where} row {i}") for i, r in enumerate(rows)]
        _check_rows(rows, where)
        for i, r in enumerate(rows):
            if r["id"] in owner:
                raise UserError(f"{where} row {i}: id {r['id']!r} is also in split {owner[r['id']]}")
            owner[r["id"]] = split
        checked[split] = rows
    directory.mkdir(parents=True, exist_ok=True)
    stray = [f.name for f in directory.glob("*.parquet") if f.stem not in checked]
    if stray:
        raise UserError(f"{directory}: already holds {', '.join(sorted(stray))}; write into an empty directory")
    paths = []
    for split, rows in checked.items():
        path = directory / f"{split}.parquet"
        tmp = directory / f".{split}.parquet.tmp"
        pq.write_table(to_table(rows), tmp, row_group_size=PARQUET_ROW_GROUP)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def write_split_stream(directory, split, rows, owner):
    """Write `rows` (any iterable, e.g. a generator) as `<directory>/<split>.parquet`, one row group
    of PARQUET_ROW_GROUP rows in memory at a time: the same bytes write_splits gives the same rows.

    `owner` maps the ids already written (other splits) to their split; it is checked and
    updated, so ids stay unique across the splits of one directory. Returns the row count.
    """
    directory = Path(directory)
    if not isinstance(split, str) or not SPLIT_NAME.match(split):
        raise UserError(f"{directory}: split name {split!r} must be letters, digits or '_'")
    where = f"{directory} split {split}"
    directory.mkdir(parents=True, exist_ok=True)
    tmp, n, group = directory / f".{split}.parquet.tmp", 0, []
    with pq.ParquetWriter(tmp, FEATURES.arrow_schema) as writer:
        for row in rows:
            row = normalize_row(row, f"{where} row {n}")
            if row["id"] in owner:
                raise UserError(f"{where} row {n}: id {row['id']!r} is also in split {owner[row['id']]}")
            owner[row["id"]], n = split, n + 1
            group.append(row)
            if len(group) == PARQUET_ROW_GROUP:
                writer.write_table(to_table(group), row_group_size=PARQUET_ROW_GROUP)
                group = []
        if group or not n:
            writer.write_table(to_table(group), row_group_size=PARQUET_ROW_GROUP)
    if not n:
        raise UserError(f"{where}: dataset is empty (no rows)")
    os.replace(tmp, directory / f"{split}.parquet")
    return n


def contact_sheet(rows, path, n=16, cell=128):
    """Save a PNG grid of the first n rows' first images, each labelled with its id and answer."""
    rows = list(rows)[:n]
    if not rows:
        raise UserError(f"{path}: no rows to draw a contact sheet from")
    font = ImageFont.load_default(size=10)
    label_h = 26
    cols = math.ceil(math.sqrt(len(rows)))
    nrows = math.ceil(len(rows) / cols)
    sheet = PILImage.new("RGB", (cols * cell, nrows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x, y = (i % cols) * cell, (i // cols) * (cell + label_h)
        if row["images"]:
            thumb = row["images"][0].convert("RGB")
            thumb.thumbnail((cell - 4, cell - 4))
            sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        else:
            draw.text((x + 4, y + cell // 2), "(no image)", fill="gray", font=font)
        draw.rectangle([x, y, x + cell - 1, y + cell + label_h - 1], outline=(200, 200, 200))
        draw.text((x + 3, y + cell), _fit(str(row["id"]), font, cell - 6), fill="black", font=font)
        draw.text((x + 3, y + cell + 12), _fit(f"answer: {row['answer']}", font, cell - 6), fill="black", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return Path(path)


def _fit(text, font, width):
    # the default font has no ellipsis glyph, hence "..."
    text = text.replace("\n", " ")
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."
