"""RL rewards: accuracy, format, overlong penalty, their weighting as GRPOTrainer does it,
bounded time on adversarial completions, and loading the user's own rewards."""

import math
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from r1v3 import UserError, answers, rewards
from r1v3.rewards import FormatReward, OverlongPenalty, accuracy, build, completion_text, load_custom, score

OPTIONS = ["red", "blue", "green", "yellow"]
FMT = FormatReward()


def acc(completion, answer, question_type="open", options=()):
    return accuracy([""], [completion], answer=[answer], question_type=[question_type], options=[list(options)])[0]


def fmt(completion, **kwargs):
    return FormatReward(**kwargs)([""], [completion])[0]


# --- accuracy -------------------------------------------------------------------------


@pytest.mark.parametrize("completion, gold, expected", [
    (r"<think>the second bar is blue</think> \boxed{B}", "B", 1.0),
    (r"<think>it is blue</think> \boxed{blue}", "B", 1.0),  # the option's text maps to its letter
    (r"<think>hm</think> The answer is (B).", "B", 1.0),  # eval's rules: a stated answer counts
    (r"<think>hm</think> \boxed{C}", "B", 0.0),
    (r"<think>\boxed{B}</think> \boxed{C}", "B", 0.0),  # only the text after </think> is read
    (r"<think>still thinking \boxed{B}", "B", 0.0),  # unclosed: no final answer
    ("", "B", 0.0),
])
def test_accuracy_multiple_choice(completion, gold, expected):
    assert acc(completion, gold, "multiple-choice", OPTIONS) == expected


@pytest.mark.parametrize("completion", [
    r"\boxed{0.5}", r"\boxed{\frac{1}{2}}", r"\boxed{1/2}", r"\boxed{50\%}", r"\boxed{5 \times 10^{-1}}",
    r"\boxed{5e-1}", r"\boxed{\dfrac{1}{2}}", "The answer is 0.50.",
])
def test_accuracy_open_number_in_any_notation(completion):
    assert acc("<think>half of it</think> " + completion, "0.5") == 1.0


@pytest.mark.parametrize("completion, gold", [
    (r"<think>t</think> \boxed{0.6}", "0.5"),
    (r"<think>t</think> \boxed{9^9^9^9}", "0.5"),
    (r"<think>t</think> \boxed{12 cm}", "12 m"),  # units that disagree
    (r"<think>t</think> \boxed{}", "0.5"),
])
def test_accuracy_open_wrong(completion, gold):
    assert acc(completion, gold) == 0.0


def test_accuracy_is_the_eval_rule():
    """The reward is answers.extract + answers.verify, exactly what eval's reasoning style uses."""
    cases = [(r"<think>a</think>\boxed{3}", "3"), ("no tags, so the answer is 3", "3"), (r"\boxed{3} then 4", "4")]
    for text, gold in cases:
        found = answers.extract(text, question_type="open")
        assert acc(text, gold) == float(answers.verify(found.answer, gold, question_type="open"))


def test_accuracy_conversational_and_reasoning_fields():
    assert acc([{"role": "assistant", "content": r"<think>x</think>\boxed{7}"}], "7") == 1.0
    # content parts, and a trace returned apart from the answer
    assert acc([{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{7}"}]}], "7") == 1.0
    message = {"role": "assistant", "content": r"\boxed{7}", "reasoning_content": r"maybe \boxed{8}"}
    assert completion_text([message]) == r"<think>maybe \boxed{8}</think>\boxed{7}"
    assert acc([message], "7") == 1.0 and fmt([message]) == 1.0
    assert acc(None, "7") == 0.0 and acc([{"role": "user", "content": r"\boxed{7}"}], "7") == 0.0


def test_accuracy_gold_missing_is_none_and_columns_are_required():
    assert acc(r"\boxed{7}", None) is None
    with pytest.raises(UserError, match="needs the dataset column 'answer'"):
        accuracy([""], [r"\boxed{7}"], question_type=["open"])
    with pytest.raises(UserError, match="row 0 of the batch has question_type 'essay'"):
        accuracy([""], [r"\boxed{7}"], answer=["7"], question_type=["essay"])
    with pytest.raises(UserError, match="column 'answer' has 2 values for 1 completions"):
        accuracy([""], [r"\boxed{7}"], answer=["7", "8"], question_type=["open"])


# --- format ---------------------------------------------------------------------------


@pytest.mark.parametrize("completion, expected", [
    (r"<think>reasoning</think> so \boxed{B}.", 1.0),
    (r"  <think>a \boxed{1} b</think>\boxed{2}", 1.0),  # boxes inside the reasoning are fine
    (r"\boxed{B}", 0.0),  # no think
    (r"<think></think>\boxed{B}", 0.0),  # empty reasoning
    (r"<think>  </think>\boxed{B}", 0.0),
    (r"<think>a</think>\boxed{B} \boxed{C}", 0.0),  # two boxes
    (r"<think>a \boxed{B}</think> B", 0.0),  # box before </think> only
    (r"<think>a</think> B", 0.0),
    (r"<think>a \boxed{B}", 0.0),  # unclosed think
    (r"<think>a</think><think>b</think>\boxed{B}", 0.0),
    (r"<think>a</think>\boxed{B}</think>", 0.0),
    (r"Sure! <think>a</think>\boxed{B}", 0.0),  # text before the think block
    (r"</think><think>a\boxed{B}", 0.0),
    (r"<think>a</think>\boxed{B", 0.0),  # unclosed box
    (r"<think>a</think>\boxed{ }", 0.0),
    (r"<think>a</think>\fbox{B}", 0.0),
    (r"<think>a</think>\boxed{B}\fbox{B}", 0.0),
    (r"a</think>\boxed{B}", 0.0),  # the template did not open the block
])
def test_format(completion, expected):
    assert fmt(completion) == expected


def test_format_when_the_prompt_opens_the_think_block():
    assert fmt(r"reasoning</think>\boxed{B}", think_in_prompt=True) == 1.0
    assert fmt(r"<think>reasoning</think>\boxed{B}", think_in_prompt=True) == 1.0
    assert fmt(r"</think>\boxed{B}", think_in_prompt=True) == 0.0
    assert fmt(r"\boxed{B}", think_in_prompt=True) == 0.0


# --- overlong and weighting -----------------------------------------------------------


def test_overlong_penalty_is_linear_in_the_buffer():
    penalty = OverlongPenalty(max_len=100, buffer=20)
    assert [penalty.penalty(n) for n in (0, 80, 85, 90, 100, 150)] == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    ids = [[1] * 80, [1] * 90, [1] * 100]
    assert penalty(["", "", ""], ["a", "b", "c"], completion_ids=ids) == [0.0, -0.5, -1.0]
    assert OverlongPenalty(10, 10).penalty(5) == -0.5
    with pytest.raises(UserError, match="needs completion_ids"):
        penalty([""], ["a"])


@pytest.mark.parametrize("max_len, buffer, message", [
    (0, 1, "max_len must be a positive"), (100, 0, "buffer must be a positive"), (10, 20, "must not exceed"),
    (10.5, 2, "max_len must be"), (True, 1, "max_len must be"),
])
def test_overlong_settings_are_checked(max_len, buffer, message):
    with pytest.raises(UserError, match=message):
        OverlongPenalty(max_len, buffer)


def test_weighted_sum_is_the_paper_default():
    rs = build()
    assert rs.names == ["accuracy", "format"] and rs.weights == [0.8, 0.2]
    completions = [r"<think>t</think>\boxed{4}", r"<think>t</think>\boxed{5}", r"\boxed{4}", "no"]
    columns = dict(answer=["4"] * 4, question_type=["open"] * 4, options=[[]] * 4)
    out = score(rs, [""] * 4, completions, **columns)
    assert out["accuracy"] == [1.0, 0.0, 1.0, 0.0] and out["format"] == [1.0, 1.0, 0.0, 0.0]
    assert out["total"] == pytest.approx([1.0, 0.2, 0.8, 0.0])
    with_penalty = build(overlong=(10, 5), accuracy_weight=1.0, format_weight=0.5)
    ids = [[0] * 3, [0] * 10, [0] * 8, [0] * 3]
    assert score(with_penalty, [""] * 4, completions, completion_ids=ids, **columns)["total"] == pytest.approx(
        [1.5, -0.5, 1.0 - 0.6, 0.0])


def test_build_refuses_duplicate_names_and_bad_weights(tmp_path):
    (tmp_path / "mine.py").write_text("def accuracy(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    with pytest.raises(UserError, match="two rewards are named 'accuracy'"):
        build(custom=[("mine.py:accuracy", 1.0)], cwd=tmp_path)
    with pytest.raises(UserError, match="'format': weight must be a finite number"):
        build(format_weight=float("nan"))


# --- bounded time on adversarial completions ------------------------------------------

MB = 1_000_000
# name: (completion, its format score, its accuracy against the open gold "7")
ADVERSARIAL = {
    "power tower": (r"<think>t</think>\boxed{9^9^9^9}", 1.0, 0.0),
    "long power tower": (r"<think>t</think>\boxed{" + "^".join(["9"] * 200_000) + "}", 0.0, 0.0),
    "nested braces": (r"<think>t</think>\boxed{" + "{" * MB + "}" * MB + "}", 0.0, 0.0),
    "open braces": ("<think>t</think>" + "{" * MB, 0.0, 0.0),
    "10k digits": (r"<think>t</think>\boxed{" + "7" * 10_000 + "}", 1.0, 0.0),
    "10k digits, stated": ("<think>t</think> the answer is " + "7" * 10_000, 0.0, 0.0),
    "boxed 100k times": ("\\boxed{" * 100_000, 0.0, 0.0),
    "boxed 100k times after think": ("<think>t</think>" + "\\boxed{" * 100_000, 0.0, 0.0),
    "1 MB line": ("<think>t</think>" + "x" * MB, 0.0, 0.0),
    "1 MB of digits": ("<think>t</think>" + "9" * MB, 0.0, 0.0),
    "backslashes": ("<think>t</think>" + "\\" * MB, 0.0, 0.0),
    "think tags": ("<think>" * 150_000, 0.0, 0.0),
    "close tags": ("</think>" * 150_000, 0.0, 0.0),
    "stated answers": ("<think>t</think>" + "the answer is " * 70_000, 0.0, 0.0),
    "lone letters": ("<think>t</think>" + " A " * 300_000, 0.0, 0.0),
    "numbers with commas": ("<think>t</think>" + "1," * 500_000, 0.0, 0.0),
    "unit after blanks": ("<think>t</think>" + "9" * 300 + " " * MB + "m", 0.0, 0.0),
    "huge reasoning, right box": ("<think>" + "{" * MB + r"</think>\boxed{7}", 1.0, 1.0),
    "answer at the end of 1 MB": ("<think>t</think>" + "x " * (MB // 2) + r"\boxed{7}", 1.0, 1.0),
    "10 MB, past the cap": ("<think>t</think>" + "x" * (10 * MB) + r"\boxed{7}", 0.0, 0.0),
}
LIMIT = 1.0  # seconds per reward call; calls take tens of ms on an idle machine


def best_time(fn):
    """Best of three wall-clock times: a slow input is slow every time, a busy machine is not."""
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
        if best < LIMIT / 4:
            break
    return best, out


@pytest.mark.parametrize("name", list(ADVERSARIAL))
@pytest.mark.parametrize("question_type, gold, options", [
    ("open", "7", []), ("multiple-choice", "B", OPTIONS), ("multiple-choice", "B", []),
])
def test_adversarial_completions_are_scored_in_bounded_time(name, question_type, gold, options):
    text, format_score, open_accuracy = ADVERSARIAL[name]
    rs = build(overlong=(4096, 1024))
    columns = dict(answer=[gold], question_type=[question_type], options=[options], completion_ids=[[0] * 4096])
    elapsed, out = best_time(lambda: score(rs, [""], [text], **columns))
    assert elapsed < LIMIT, f"{name}: {elapsed:.2f} s"
    assert out["format"] == [format_score] and out["overlong"] == [-1.0]
    assert out["accuracy"] == [open_accuracy if question_type == "open" else 0.0]


def test_rewards_are_bounded_off_the_main_thread():
    """GRPOTrainer may score in a worker thread, where signal-based timeouts never fire."""
    results = {}

    def work():
        start = time.perf_counter()
        results["out"] = score(build(), [""], [ADVERSARIAL["nested braces"][0]], answer=["7"], question_type=["open"])
        results["elapsed"] = time.perf_counter() - start

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive() and results["out"]["total"] == [0.0]
    assert results["elapsed"] < 3 * LIMIT  # one try, no best-of: a looser bound


def test_a_completion_past_the_cap_scores_zero():
    text = r"<think>t</think>\boxed{7}" + " " * rewards.MAX_COMPLETION_CHARS
    assert acc(text, "7") == 0.0 and fmt(text) == 0.0
    assert acc(text[:1000], "7") == 1.0 and fmt(text[:1000]) == 1.0


# --- custom rewards -------------------------------------------------------------------

GOOD = '''
def length_bonus(prompts, completions, answer, **kwargs):
    return [min(len(c), 10) / 10 for c in completions]

def one(prompts, completions, **kwargs):
    return [1.0] * len(completions)

def raises(prompts, completions, **kwargs):
    raise KeyError("columnX")

def short(prompts, completions, **kwargs):
    return [1.0]

def strings(prompts, completions, **kwargs):
    return ["1.0"] * len(completions)

def nan(prompts, completions, **kwargs):
    return [float("nan")] + [0.0] * (len(completions) - 1)

def inf(prompts, completions, **kwargs):
    return [float("inf")] * len(completions)

def not_a_list(prompts, completions, **kwargs):
    return 1.0

def nones(prompts, completions, **kwargs):
    return [None] * len(completions)

def no_kwargs(prompts, completions):
    return [0.0] * len(completions)

def no_prompts(completions, **kwargs):
    return [0.0] * len(completions)

async def later(prompts, completions, **kwargs):
    return [0.0] * len(completions)

NOT_CALLABLE = 3
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(GOOD)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(GOOD)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "pkg" or m.startswith(("pkg.", "r1v3_reward_", "stored"))]:
        del sys.modules[name]


def call(reward, n=2):
    return reward(prompts=["p"] * n, completions=["abc", "abcdefghijkl"][:n], answer=["1"] * n,
                  completion_ids=[[1]] * n, trainer_state=None)


@pytest.mark.parametrize("spec", ["my_rewards.py:length_bonus", "pkg.mod:length_bonus", "./my_rewards.py:length_bonus"])
def test_custom_reward_loads_from_a_module_or_a_file(workdir, spec):
    reward = load_custom(spec)
    assert reward.__name__ == "length_bonus"
    assert call(reward) == [0.3, 1.0]
    assert call(load_custom(spec.replace("length_bonus", "nones"))) == [None, None]


@pytest.mark.parametrize("spec, message", [
    ("no_such_module:fn", "no module named 'no_such_module'"),
    ("pkg.nope:fn", "no module named 'pkg.nope'"),
    ("missing.py:fn", "no file missing.py in"),
    ("my_rewards.py:absent", "my_rewards.py has no attribute 'absent'"),
    ("pkg.mod:absent", "pkg.mod has no attribute 'absent'"),
    ("my_rewards.py:NOT_CALLABLE", "is a int, not a function"),
    ("my_rewards.py:no_kwargs", r"must take \(prompts, completions, \*\*kwargs\): TRL also passes"),
    ("my_rewards.py:no_prompts", "it has no parameter 'prompts'"),
    ("my_rewards.py:later", "async reward functions are not supported"),
    ("broken.py:fn", "running broken.py failed: ModuleNotFoundError"),
    ("my_rewards.py", "expected module:function"),
    ("my_rewards.py:a.b", "expected module:function"),
    ("a b:fn", "neither a module name nor a .py file"),
    ("../outside.py:fn", "relative path inside the working directory, without '..'"),
    ("pkg/../my_rewards.py:one", "without '..'"),
    ("/etc/x.py:fn", "relative path inside the working directory"),
])
def test_custom_reward_load_errors_are_one_line(workdir, spec, message):
    with pytest.raises(UserError, match=message) as info:
        load_custom(spec)
    assert "\n" not in str(info.value) and spec in str(info.value)


def test_custom_reward_refuses_symlink_escapes_and_the_artifact_store(workdir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "evil.py").write_text("raise SystemExit('ran')\n")
    (workdir / "link.py").symlink_to(outside / "evil.py")
    with pytest.raises(UserError, match="leads out of the working directory"):
        load_custom("link.py:fn")
    store = workdir / "artifacts"
    (store / "model" / "v1").mkdir(parents=True)
    (store / "model" / "v1" / "r.py").write_text("raise SystemExit('ran')\n")
    (store / "stored").mkdir()
    (store / "stored" / "__init__.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(UserError, match="inside the artifact store"):
        load_custom("artifacts/model/v1/r.py:fn", store_root="artifacts")
    sys.path.insert(0, str(store))
    try:
        with pytest.raises(UserError, match="module stored is inside the artifact store"):
            load_custom("stored:fn", store_root=store)
    finally:
        sys.path.remove(str(store))
    assert "stored" not in sys.modules


@pytest.mark.parametrize("name, message", [
    ("raises", r"on its first batch raised KeyError: 'columnX'"),
    ("short", "on its first batch returned 1 values for 2 completions"),
    ("strings", "on its first batch returned str '1.0' at position 0, not a number"),
    ("nan", "on its first batch returned nan at position 0"),
    ("inf", "returned inf at position 0"),
    ("not_a_list", "returned a float, not a list of numbers"),
])
def test_custom_reward_bad_first_batch_is_one_clear_error(workdir, name, message):
    reward = load_custom(f"my_rewards.py:{name}")
    with pytest.raises(UserError, match=message) as info:
        call(reward)
    assert f"custom reward 'my_rewards.py:{name}'" in str(info.value) and "\n" not in str(info.value)


def test_custom_reward_in_a_reward_set(workdir):
    rs = build(custom=[("my_rewards.py:one", 0.5)])
    assert rs.names == ["accuracy", "format", "one"] and rs.weights == [0.8, 0.2, 0.5]
    out = score(rs, [""], [r"<think>t</think>\boxed{1}"], answer=["1"], question_type=["open"], options=[[]])
    assert out["total"] == [1.5]


# --- called the way GRPOTrainer calls them --------------------------------------------


def test_rewards_through_grpo_trainers_own_scoring_code(workdir):
    """Run TRL's GRPOTrainer._calculate_rewards (the code that calls reward functions) on our
    rewards, with conversational completions and every dataset column as keyword arguments,
    then combine them with the trainer's formula (weights times values, NaN skipped)."""
    from trl import GRPOTrainer

    rs = build(overlong=(8, 4), custom=[("my_rewards.py:nones", 1.0)])
    logged = {}
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        reward_funcs=rs.funcs, reward_processing_classes=[None] * len(rs.funcs),
        reward_func_names=rs.names, state=SimpleNamespace(global_step=0), environments=None,
        _log_completion_extra=lambda column, values: logged.setdefault(column, values),
        _log_metric=lambda name, value: None, args=SimpleNamespace(report_to=[]),
    )
    trainer.accelerator.is_main_process = True
    rows = [
        dict(id="a", answer="B", question_type="multiple-choice", options=OPTIONS, subject="s", images=[]),
        dict(id="b", answer="12", question_type="open", options=[], subject="s", images=[]),
    ]
    inputs = [dict(row, prompt=[{"role": "user", "content": "q"}]) for row in rows]
    completions = [
        [{"role": "assistant", "content": r"<think>blue</think>\boxed{B}"}],
        [{"role": "assistant", "content": r"<think>6+6</think>\boxed{13}"}],
    ]
    per_func = GRPOTrainer._calculate_rewards.__wrapped__(
        trainer, inputs, [i["prompt"] for i in inputs], completions, [[1] * 3, [1] * 7])
    assert per_func.shape == (2, 4)
    assert per_func[:, :3].tolist() == [[1.0, 1.0, 0.0], [0.0, 1.0, -0.75]]
    assert torch.isnan(per_func[:, 3]).all()
    total = (per_func * torch.tensor(rs.weights)).nansum(dim=1)
    assert total.tolist() == pytest.approx([1.0, 0.2 - 0.75])
    ours = score(rs, [i["prompt"] for i in inputs], completions, completion_ids=[[1] * 3, [1] * 7],
                 **{k: [r[k] for r in rows] for k in rows[0]})
    assert ours["total"] == pytest.approx(total.tolist())


# --- describe -------------------------------------------------------------------------


def test_describe_shows_each_component_and_flags_a_constant_reward():
    from rich.console import Console

    samples = [
        dict(completion=r"<think>t</think>\boxed{C}", answer="B", question_type="multiple-choice", options=OPTIONS),
        dict(completion=[{"role": "assistant", "content": "[bold]B[/bold]"}], answer="B",
             question_type="multiple-choice", options=OPTIONS),
        dict(completion=r"<think>t</think>\boxed{A}", answer="B", question_type="multiple-choice", options=OPTIONS),
    ]
    console = Console(width=160, record=True)
    console.print(rewards.describe(build(), samples, limit=2))
    shown = console.export_text()
    for column in ("accuracy", "format", "total", "gold"):
        assert column in shown
    assert "[bold]B[/bold]" in shown  # completions are shown as text, never as markup
    assert "accuracy is 0 on every sample" in shown
    assert r"\boxed{A}" not in shown  # only `limit` rows


@pytest.mark.integration
def test_one_grpo_step_on_a_tiny_vlm_logs_each_component(workdir):
    """A real GRPOTrainer step: every reward is logged under its own name and the logged
    reward is the weighted sum of the components."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1v3 import models, synthetic

    model, processor = models.build_tiny("internvl")
    rows = synthetic.generate(10, seed=0)["train"][:2]
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["question"]}]}],
         "image": r["images"][0], "answer": r["answer"], "question_type": r["question_type"], "options": r["options"]}
        for r in rows])
    rs = build(overlong=(8, 4), custom=[("my_rewards.py:length_bonus", 0.5)])
    args = GRPOConfig(output_dir=str(workdir / "out"), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=8, max_steps=1, reward_weights=rs.weights, report_to=[], use_cpu=True,
                      logging_steps=1, save_strategy="no")
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=rs.funcs, args=args,
                          train_dataset=dataset)
    trainer.train()
    logged = trainer.state.log_history[0]
    means = {name: logged[f"rewards/{name}/mean"] for name in ("accuracy", "format", "overlong", "length_bonus")}
    assert means["overlong"] == -1.0  # 8 of 8 tokens: at max_len
    assert 0.0 < means["length_bonus"] <= 1.0
    assert logged["reward"] == pytest.approx(sum(w * means[n] for n, w in zip(rs.names, rs.weights)))
