"""Property tests: functions that see untrusted text (model output, override strings, names,
dataset fields, server answers, work files) never raise anything but UserError and stay fast.
(answers.extract/verify/parse_* are covered in tests/test_answers.py.)"""

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1v3 import answers, artifacts, config, data, mmmu, rewards
from r1v3.errors import UserError

pytestmark = pytest.mark.reliability

# R1V3_HYPOTHESIS_EXAMPLES=5000 for a deeper hunt than CI's
FAST = settings(max_examples=int(os.environ.get("R1V3_HYPOTHESIS_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMIT = 0.1  # seconds per call on up to 5k characters

_TOKENS = st.sampled_from([
    "\\boxed{", "}", "{", "(A)", " B ", "C.", "<think>", "</think>", "The answer is ", "Answer:", "1", "2.5",
    ",", "\n", " ", "$", "\\frac{1}{2}", "%", "cm", "red", "<image 1>", "is ", "=", "\\", "é", "\x00",
])
TEXT = st.one_of(st.text(max_size=5000), st.lists(_TOKENS, max_size=600).map("".join))
OPTIONS = st.one_of(st.just([]), st.lists(st.text(max_size=30), min_size=2, max_size=8))


def timed(fn, *args, **kwargs):
    """fn(*args), asserting it is fast: the best of three tries, so that a busy 2-core machine's
    scheduling hiccup is not mistaken for a slow input (a slow input is slow every time)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
        if best < LIMIT:
            return out
    raise AssertionError(f"{fn.__name__} took {best:.3f} s on {str(args)[:80]}...")


@FAST
@given(TEXT, OPTIONS, st.sampled_from(mmmu.STYLES), st.sampled_from(["A", "B", "3", "['1', '1.0']", "red"]))
def test_judge_never_raises_and_is_fast(response, options, style, gold):
    qtype = "multiple-choice" if options else "open"
    row = {"id": "validation_Art_1", "subject": "Art", "question_type": qtype, "options": options, "answer": gold}
    out = timed(mmmu.judge, row, response, style)
    assert isinstance(out["correct"], bool) and out["method"] in answers.METHODS
    assert out["parse_failure"] == (out["method"] == "none")


@FAST
@given(st.text(max_size=2000))
def test_gold_answer_and_number_parsing_never_raise(text):
    timed(answers.gold_answer, text)
    timed(answers.normalize_str, text)
    timed(answers.check_is_number, text)


@FAST
@given(st.text(max_size=300))
def test_parse_override_only_raises_user_errors(text):
    try:
        key, _ = config.parse_override(text)
    except UserError:
        return
    assert key and key == key.strip() and "=" not in key


@FAST
@given(st.lists(st.text(max_size=60), max_size=4))
def test_config_load_only_raises_user_errors(overrides):
    from stages import synth

    try:
        cfg = config.load(synth.Config, stage="synth", options={"name": "x"}, overrides=overrides)
    except UserError:
        return
    assert isinstance(cfg.n, int) and isinstance(cfg.seed, int) and isinstance(cfg.name, str)


@FAST
@given(st.one_of(st.text(max_size=120), st.from_regex(r"[A-Za-z0-9._/\\-]{0,12}\n?", fullmatch=True)))
def test_check_name_accepts_only_names_that_stay_in_the_store(name):
    try:
        artifacts.check_name(name)
    except UserError:
        return
    assert "/" not in name and "\\" not in name and "\n" not in name and "\0" not in name
    assert name not in (".", "..") and not name.startswith(".") and len(name) <= 100
    root = Path("/store")
    assert (root / name).parent == root and ".." not in (root / name).parts


_STORE = None  # a store holding one artifact, x@v1 (made once for the module)


@pytest.fixture(scope="module", autouse=True)
def _one_artifact_store(tmp_path_factory):
    global _STORE
    _STORE = tmp_path_factory.mktemp("props") / "store"
    s = artifacts.Store(_STORE)
    with s.publish("x", "run", stage="test") as d:
        (d.path / "f.txt").write_text("x")


@FAST
@given(st.text(max_size=120))
def test_references_resolve_inside_the_store_or_fail_cleanly(ref):
    store = artifacts.Store(_STORE)
    try:
        art = store.resolve(ref)
    except UserError:
        return
    # only the one artifact, by name or by its own directory
    assert art.path.resolve().parent.parent == _STORE.resolve()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@FAST
@given(st.fixed_dictionaries({k: JSON for k in data.REQUIRED}, optional={k: JSON for k in data.KEYS if k not in data.REQUIRED}))
def test_normalize_row_only_raises_user_errors(row):
    try:
        out = data.normalize_row(row, "row 0", base_dir=str(_STORE))
    except UserError:
        return
    assert list(out) == list(data.KEYS)


@FAST
@given(st.text(max_size=300))
def test_options_strings_are_parsed_without_running_code(text):
    try:
        out = data._options(text, "row 0")
    except UserError:
        return
    assert isinstance(out, list) and all(isinstance(o, str) for o in out)


@FAST
@given(JSON)
def test_response_files_only_raise_user_errors(value):
    try:
        rows = mmmu._response_rows(value, "r.json", None)
    except UserError:
        return
    for r in rows:
        assert isinstance(r["response"], str)


@FAST
@given(st.binary(max_size=2000))
def test_resume_reads_any_work_file(blob):
    from r1v3.generation import read_records

    path = _STORE.parent / "partial.jsonl"
    path.write_bytes(blob)
    done = read_records(path)
    assert all(isinstance(k, str) and all(isinstance(j, int) and r["id"] == k and r["sample"] == j
                                          for j, r in v.items()) for k, v in done.items())


@FAST
@given(JSON)
def test_openai_answers_only_raise_user_errors(answer):
    from r1v3.generation import Completion, OpenAIBackend, Sampling

    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", progress=False)
    backend._post = lambda payload: answer
    try:
        out = backend._one([{"role": "user", "content": "hi"}], Sampling(), 0)
    except UserError:
        return
    assert isinstance(out, Completion) and isinstance(out.text, str) and isinstance(out.n_tokens, int)


@FAST
@given(st.dictionaries(st.sampled_from(["content", "reasoning_content", "reasoning"]), JSON),
       st.one_of(st.none(), JSON, st.fixed_dictionaries({"completion_tokens": JSON})))
def test_openai_answers_with_a_message_only_raise_user_errors(message, usage):
    from r1v3.generation import OpenAIBackend, Sampling

    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", progress=False)
    backend._post = lambda payload: {"choices": [{"message": message, "finish_reason": "stop"}], "usage": usage}
    out = backend._one([{"role": "user", "content": "hi"}], Sampling(), 0)
    assert isinstance(out.text, str) and isinstance(out.n_tokens, int) and out.n_tokens >= 0


_COMPLETION = st.one_of(
    TEXT,
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["assistant", "user"]),
                                     "content": st.one_of(TEXT, st.none(), st.integers())}), max_size=3),
    st.none(),
    st.integers(),
)


@FAST
@given(_COMPLETION, OPTIONS, st.sampled_from(["A", "B", "3", "['1', '1.0']", "red", ""]), st.integers(0, 5000))
def test_rewards_never_raise_stay_in_range_and_are_fast(completion, options, gold, length):
    qtype = "multiple-choice" if options else "open"
    rs = rewards.build(overlong=(4096, 1024))
    columns = dict(answer=[gold], question_type=[qtype], options=[options], completion_ids=[[0] * length])
    out = timed(rewards.score, rs, [""], [completion], **columns)
    assert out["accuracy"][0] in (0.0, 1.0) and out["format"][0] in (0.0, 1.0)
    assert -1.0 <= out["overlong"][0] <= 0.0
    assert out["total"][0] == 0.8 * out["accuracy"][0] + 0.2 * out["format"][0] + out["overlong"][0]
