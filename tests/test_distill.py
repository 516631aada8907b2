"""`r1v3 distill`: filters, a scripted OpenAI-compatible teacher on loopback, a tiny local teacher,
failures, resume and extension."""

import json
import time

import pytest

from r1v3 import answers, data, mmmu, prompts, rewards, synthetic
from stages import distill
from stages.sft import THINK

from tests.scripted_teacher import SCRIPT, Teacher, prose, put_dataset, row


@pytest.fixture
def teacher(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-distill-test")
    t = Teacher()
    yield t
    t.close()


@pytest.fixture
def problems(cli):
    put_dataset(cli.store, "probs", [row(q, t, a) for q, (t, a, _) in SCRIPT.items()])
    return cli


def http(teacher, *extra):
    return ["distill", "--teacher", teacher.url, "--teacher-model", "scripted", "--data", "probs",
            "--api-key-env", "TEACHER_KEY", "--max-retries", "0", "--max-think-chars", "2000", *extra]


# ---------------------------------------------------------------------------------------------
# the filters, one by one


def cfg(**kw):
    return distill.Config(teacher="smol", data="d", name="n", **kw)


def test_think_block_mapping():
    assert distill.think_block("<think> a b </think>\n\\boxed{1}") == ("a b", "")
    assert distill.think_block("a b </think>\\boxed{1}") == ("a b", "")  # the chat template opened the block
    assert distill.think_block("First 2+2. Then 4.\nSo the answer is \\boxed{4}.") == ("First 2+2. Then 4.", "")
    assert distill.think_block("So it is 2+2 = \\boxed{4}") == ("So it is 2+2 =", "")
    assert distill.think_block("<think>still thinking") == (None, "unclosed think")
    assert distill.think_block("<think>a</think><think>b</think>\\boxed{1}") == (None, "malformed think")
    assert distill.think_block("hi <think>a</think>\\boxed{1}") == (None, "malformed think")
    assert distill.think_block("</think>a<think>\\boxed{1}") == (None, "malformed think")
    assert distill.think_block("<think>a</think> the answer is 4") == (None, "no boxed answer")
    assert distill.think_block("<think>a \\boxed{4}</think> 4") == (None, "no boxed answer")  # a box inside only
    assert distill.think_block("no answer at all") == (None, "no boxed answer")
    assert distill.think_block("cut off \\boxed{4") == (None, "no boxed answer")


def test_repetition_measure():
    assert distill.compression_ratio(prose(3000)) < 3
    assert distill.compression_ratio("I count the circles again. " * 80) > 10
    assert distill.compression_ratio("") == 0


def test_leak_rewrites_and_rejections():
    assert distill.rewrite_leaks("The caption says 2 squares; the given description shows a red one.") == \
        "The image shows 2 squares; the image shows a red one."
    assert distill.rewrite_leaks("From the image description of the image, as described, 3.") == \
        "From the image, as shown, 3."
    for leaky in ("Per caption, 3.", "The captions list 3.", "A description of it: 3.", "Its text rendering: 3."):
        assert distill.LEAK.search(distill.rewrite_leaks(leaky)), leaky
    assert not distill.LEAK.search(distill.rewrite_leaks("The caption mentions three circles."))


@pytest.mark.parametrize("text, reason", [
    ("<think>three red circles, hence 3</think>\\boxed{3}", "passed"),
    ("<think>three red circles, hence 3</think>\\boxed{4}", "wrong answer"),
    ("<think>three red circles, hence 3</think>\\boxed{ }", "no boxed answer"),
    ("<think>3</think>\\boxed{3}", "too short"),
    ("<think>" + prose(200) + "</think>\\boxed{3}", "too long"),
    ("<think>" + "3 3 3 " * 20 + "</think>\\boxed{3}", "repetition"),
    ("<think>its text rendering has three circles</think>\\boxed{3}", "caption leak"),
    ("<think>three red circles, hence 3", "unclosed think"),
])
def test_judge_reasons(text, reason):
    r = {"question_type": "open", "answer": "3", "options": []}
    assert distill.judge(text, r, cfg(max_think_chars=150)).reason == reason


def test_multiple_choice_box_without_an_option_is_no_answer():
    r = {"question_type": "multiple-choice", "answer": "B", "options": ["red", "blue"]}
    assert distill.judge("<think>three red circles, hence 3</think>\\boxed{purple}", r, cfg()).reason == "no answer"


def test_adversarial_answer_is_bounded_and_rejected():
    r = {"question_type": "open", "answer": "3", "options": []}
    for power, reason in ((1_000, "wrong answer"), (200_000, "no boxed answer")):  # the latter's box opens too far back
        text = "<think>Counting all the circles gives it.</think>\\boxed{" + "9^" * power + "9}"
        start = time.perf_counter()
        assert distill.judge(text, r, cfg()).reason == reason
        assert time.perf_counter() - start < 2


def test_verification_is_the_accuracy_rewards(monkeypatch):
    """distill judges with the very functions the RL accuracy reward (and eval) call."""
    assert distill.answers is rewards.answers
    seen = []
    real_extract, real_verify = answers.extract, answers.verify
    monkeypatch.setattr(answers, "extract", lambda *a, **k: seen.append("extract") or real_extract(*a, **k))
    monkeypatch.setattr(answers, "verify", lambda *a, **k: seen.append("verify") or real_verify(*a, **k))
    text = "<think>The square is blue: D.</think>\\boxed{D}"
    r = {"question_type": "multiple-choice", "answer": "D", "options": ["a", "b", "c", "d"]}
    assert distill.judge(text, r, cfg()).correct
    n = len(seen)
    assert rewards.accuracy([None], [text], answer=["D"], question_type=[r["question_type"]],
                            options=[r["options"]]) == [1.0]
    assert seen == ["extract", "verify"] * 2 and n == 2


def test_template_placeholders_and_prompt():
    r = row(1, "multiple-choice", "B")
    text = prompts.teacher_prompt(r, "{caption}|{question}|{options}|{{x}}|\\boxed{}")
    assert text == "shapes of problem 1|Q1: what is shown?|(A) circle\n(B) square\n(C) triangle\n(D) cross\n|{x}|\\boxed{}"
    with pytest.raises(distill.UserError, match=r"unknown placeholder \{image\}"):
        cfg(template="See {image}")


def test_user_turn_is_the_synthetic_messages_turn():
    rows = synthetic.generate(20, seed=3)["train"]
    for r in rows:
        assert mmmu.prompt_text(r, "reasoning") == synthetic._turns(r, "brief")[0]


def test_lucky_share():
    assert distill.lucky_share(0.25, 0.25) == 1.0  # at chance: every pass is luck
    assert distill.lucky_share(1.0, 0.25) == 0.0
    assert distill.lucky_share(0.75, 0.25) == pytest.approx(1 / 9)
    assert distill.lucky_share(0.1, 0.25) == 1.0 and distill.lucky_share(0.0, 0.25) == 0.0


# ---------------------------------------------------------------------------------------------
# end to end with the scripted teacher


def test_scripted_teacher_end_to_end(problems, teacher):
    code, out, err = problems(*http(teacher, "--name", "traces", "--samples", "2", "--keep", "2",
                                    "--concurrency", "3"))
    assert code == 0, err
    assert "published traces@v1" in out and "pass rate" in out and "wrong answer" in out
    art = problems.store.resolve("traces", kind="dataset", verify=True)
    assert sorted(teacher.calls) == sorted((q, s) for q in SCRIPT for s in (0, 1))
    assert set(teacher.keys) == {"Bearer sk-distill-test"}
    attempts = [json.loads(line) for line in art.file("attempts.jsonl").read_text().splitlines()]
    reasons = {(a["id"], a["sample"]): a["reason"] for a in attempts}
    expect = {1: ("kept", "duplicate"), 2: ("kept", "duplicate"), 3: ("wrong answer",) * 2,
              4: ("no boxed answer",) * 2, 5: ("unclosed think",) * 2, 6: ("kept", "duplicate"),
              7: ("caption leak",) * 2, 8: ("repetition",) * 2, 9: ("too long",) * 2, 10: ("wrong answer",) * 2,
              11: ("kept", "kept")}
    assert reasons == {(f"p{q}", j): expect[q][j] for q in SCRIPT for j in (0, 1)}
    rows = data.read_split(art.path, "train")
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == ["p1", "p11", "p11~2", "p2", "p6"]
    assert by_id["p11"]["messages"][1]["content"] == "<think>The square is blue: D.</think>\n\\boxed{D}"  # shortest
    assert "The blue shape" in by_id["p11~2"]["messages"][1]["content"]
    assert by_id["p2"]["messages"][1]["content"] == \
        "<think>I count the squares: there are 4 squares in the image.</think>\n\\boxed{4}"
    assert by_id["p6"]["messages"][1]["content"].startswith("<think>The image shows there are 2 blue squares")
    for r in rows:
        source = row(int(r["id"][1:].split("~")[0]), r["question_type"], r["answer"])
        assert r["messages"][0] == {"role": "user", "content": mmmu.prompt_text(source, "reasoning")}
        assert r["images"][0].size == source["images"][0].size and r["caption"] == source["caption"]
        assert THINK.match(r["messages"][1]["content"])  # what sft --preset cold-start demands
        assert rewards.accuracy([None], [r["messages"][1]["content"]], answer=[r["answer"]],
                                question_type=[r["question_type"]], options=[r["options"]]) == [1.0]
    m = art.metrics
    assert (m["outputs"], m["kept"], m["problems"]) == (22, 5, 11)
    assert m["pass_rate"] == round(14 / 22, 4) and m["chance_rate"] == round(8 * 0.25 / 22, 4)
    mc = m["multiple_choice"]
    assert (mc["outputs"], mc["pass_rate"], mc["chance_rate"], mc["kept"]) == (8, 0.75, 0.25, 3)
    assert mc["lucky_share"] == round(1 / 9, 4) and mc["kept_lucky_estimate"] == round(3 / 9, 1)
    assert m["reasons"]["duplicate"] == 3 and m["reasons"]["kept"] == 5 and sum(m["reasons"].values()) == 22
    assert m["subjects"]["counting"] == {"problems": 6, "outputs": 12, "verified": 8, "kept": 3, "problems_kept": 2}
    assert m["difficulty"]["hard"]["kept"] == 2 and m["splits"] == {"train": 5}
    assert art.file("lengths.png").stat().st_size > 1000
    assert json.loads(art.file("report.json").read_text())["kept"] == 5
    assert [i["ref"] for i in art.manifest["inputs"]] == ["probs@v1"]
    assert not (problems.store.root / ".work").exists()


def test_endpoint_failure_keeps_work_then_resume_asks_only_the_rest(problems, teacher):
    teacher.fail_after = 4
    code, _, err = problems(*http(teacher, "--name", "t", "--samples", "1", "--concurrency", "1"))
    assert code == 2 and "HTTP 500" in err and "rerun with --resume" in err and err.count("\n") == 1
    saved = distill.read_attempts(problems.store.root / ".work" / "t" / "distill" / "attempts.jsonl")
    assert len(saved) == 4
    first_calls = list(teacher.calls)
    teacher.fail_after = None
    code, _, err = problems(*http(teacher, "--name", "t", "--samples", "1", "--concurrency", "1", "--resume"))
    assert code == 0, err
    again = teacher.calls[len(first_calls):]
    assert sorted(q for q, _ in again) == sorted(q for q in SCRIPT if f"p{q}" not in saved)
    assert problems.store.resolve("t").metrics["outputs_generated"] == len(SCRIPT) - 4


def test_interrupted_run_resumes_and_more_samples_ask_only_the_missing(problems, teacher, monkeypatch):
    from r1v3 import generation

    real = generation.OpenAIBackend.generate

    def dies_after_three(self, requests, sampling, on_result=None):
        for i, item in enumerate(real(self, requests, sampling, on_result)):
            yield item
            if i == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(generation.OpenAIBackend, "generate", dies_after_three)
    code, _, _ = problems(*http(teacher, "--name", "t", "--samples", "1", "--concurrency", "1"))
    assert code == 130
    monkeypatch.setattr(generation.OpenAIBackend, "generate", real)
    done = distill.read_attempts(problems.store.root / ".work" / "t" / "distill" / "attempts.jsonl")
    assert len(done) == 3 and all(list(s) == [0] for s in done.values())
    # in-process, the interrupted run's queued calls may still reach the server (a killed process's would not)
    before = -1
    while before != len(teacher.calls):
        before = len(teacher.calls)
        time.sleep(0.3)
    # a larger --samples on resume: sample 1 for the three done problems, samples 0 and 1 for the rest
    code, _, err = problems(*http(teacher, "--name", "t", "--samples", "2", "--keep", "2", "--resume",
                                  "--concurrency", "2"))
    assert code == 0, err
    asked = sorted(teacher.calls[before:])
    want = sorted([(int(i[1:]), 1) for i in done] + [(q, s) for q in SCRIPT if f"p{q}" not in done for s in (0, 1)])
    assert asked == want
    assert problems.store.resolve("t").metrics["outputs"] == 22


def test_extend_a_published_run_asks_only_new_samples(problems, teacher):
    assert problems(*http(teacher, "--name", "t", "--samples", "1"))[0] == 0
    n = len(teacher.calls)
    code, _, err = problems(*http(teacher, "--name", "t", "--samples", "3", "--keep", "2", "--extend", "t"))
    assert code == 0, err
    assert sorted(teacher.calls[n:]) == sorted((q, s) for q in SCRIPT for s in (1, 2))
    art = problems.store.resolve("t@v2")
    assert art.metrics["outputs"] == 33 and [i["ref"] for i in art.manifest["inputs"]] == ["probs@v1", "t@v1"]
    code, _, err = problems(*http(teacher, "--name", "u", "--temperature", "0.5", "--extend", "t@v1"))
    assert code == 2 and "other settings temperature" in err


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs(problems, teacher, monkeypatch):
    put_dataset(problems.store, "nocap", [row(1, "open", "3"), row(2, "open", "3", caption=False)])
    code, _, err = problems(*http(teacher, "--name", "x", "--data", "nocap"))
    assert code == 2 and "nocap@v1 [train] row 1 (id 'p2'): no caption" in err
    code, _, err = problems(*http(teacher, "--name", "x", "--samples", "0"))
    assert code == 2 and "--samples" in err and "at least 1" in err
    code, _, err = problems(*http(teacher, "--name", "x", "--template", "{caption} {image}"))
    assert code == 2 and "unknown placeholder {image}" in err
    monkeypatch.delenv("TEACHER_KEY")
    code, _, err = problems(*http(teacher, "--name", "x"))
    assert code == 2 and "$TEACHER_KEY is not set" in err and "--api-key-env ''" in err
    assert teacher.calls == []
    code, _, err = problems(*http(teacher, "--name", "x", "--samples", "1", "--api-key-env", ""))
    assert code == 0, err
    assert set(teacher.keys) == {None}
    code, _, err = problems("distill", "--teacher", teacher.url, "--data", "probs", "--name", "x")
    assert code == 2 and "--teacher-model" in err and err.count("\n") == 1


def test_vlm_teacher_refused(problems):
    assert problems("init", "tiny", "--name", "vlm", "--family", "internvl")[0] == 0
    code, _, err = problems("distill", "--teacher", "vlm", "--data", "probs", "--name", "x")
    assert code == 2 and "vision-language model" in err and "text-only" in err


# ---------------------------------------------------------------------------------------------
# a tiny local teacher


def test_tiny_local_teacher(problems, tmp_path, monkeypatch):
    """A random tiny LLM through the batched transformers backend: it is rarely right, so the run
    keeps nothing, says so, and keeps its outputs; --resume then asks the model nothing."""
    import torch
    from tests.helpers import tiny_llm

    from r1v3 import models

    model, tok = tiny_llm("qwen2")
    model.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    assert problems("import-model", tmp_path / "llm", "--name", "textlm")[0] == 0
    args = ["distill", "--teacher", "textlm", "--data", "probs", "--name", "loc", "--samples", "2",
            "--max-new-tokens", "12", "--batch-size", "4"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = problems(*args)
    finally:
        torch.set_num_threads(before)  # later tests compare in-process runs with subprocesses
    assert code == 3 and "no trace of 22 teacher outputs passed" in err, err
    work = problems.store.root / ".work" / "loc" / "distill" / "attempts.jsonl"
    done = distill.read_attempts(work)
    assert sorted(done) == sorted(f"p{q}" for q in SCRIPT) and all(sorted(s) == [0, 1] for s in done.values())
    assert all(0 < r["n_tokens"] <= 12 for s in done.values() for r in s.values())
    monkeypatch.setattr(models, "load_llm", lambda *a, **k: pytest.fail("the teacher was loaded again"))
    code, _, err = problems(*args, "--resume", "--min-think-chars", "1")
    assert code == 3 and "no trace of 22" in err
