"""Hardening, round 3: six classes a hostile new user broke, each tested by several members.

1. secrets in error lines: the API key in any transformed spelling (CRLF, escaped, repr, URL);
2. sizes that build something in memory before checking it: every count-like setting of every stage;
3. (resume and reuse keys: elsewhere)
4. plug-ins that end the process: SystemExit and other BaseException from user code;
5. user text reaching a renderer that interprets it: plots, rich markup, terminals, the report;
6. a name of one kind shadowing another at publish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import time
import types
import typing
from pathlib import Path

import pytest

from r1v3 import cli, config, curriculum
from r1v3.cli import main

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]


def run(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--store", str(root), *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def one_line(code, out, err, fragment="", exit_code=2):
    lines = err.strip().splitlines()
    assert code == exit_code, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


def snapshot(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")) \
        if root.exists() else []


# ---- 2. sizes: every count-like setting of every stage is bounded at the config layer ---------


def stage_configs() -> dict[str, type]:
    """Every stage module's Config, by module name (stages/*.py)."""
    found = {}
    for path in sorted((REPO / "stages").glob("*.py")):
        module = importlib.import_module(f"stages.{path.stem}")
        if isinstance(getattr(module, "Config", None), type) and dataclasses.is_dataclass(module.Config):
            found[path.stem] = module.Config
    return found


def _base_types(tp) -> set:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return set().union(*(_base_types(a) for a in args if a is not type(None)))
    if typing.get_origin(tp) is list:
        return {("list", a) for a in args}
    return {tp}


def count_like(cls) -> list[dataclasses.Field]:
    """Int settings (ints, optional ints, lists of ints) and float counts (epochs)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        types_ = _base_types(hints[f.name])
        if int in types_ or ("list", int) in types_ or (float in types_ and "epoch" in f.name):
            out.append(f)
    return out


def test_every_count_like_setting_of_every_stage_is_bounded():
    configs = stage_configs()
    assert {"rl", "sft", "distill", "difficulty", "evaluate", "select_ckpt", "synth"} <= set(configs)
    unbounded, seen = [], 0
    for module, cls in configs.items():
        for f in count_like(cls):
            seen += 1
            if f.metadata.get("le") is None and f.metadata.get("lt") is None:
                unbounded.append(f"{module}.{f.name}")
    assert seen >= 40 and not unbounded, unbounded


def _commands() -> list[tuple[list[str], type, dict]]:
    """(command words, Config, fixed settings) of every stage command, one per stage module."""
    out, seen = [], set()
    for group, name, module, options in cli.STAGES:
        if module in seen:
            continue
        seen.add(module)
        cls = importlib.import_module(module).Config
        words = [w for w in (group, *name.split()) if w]
        out.append((words, cls, options.get("fixed") or {}))
    return out


def _argv(words, cls, fixed, flag, value) -> list[str]:
    """The command with every required setting given a plain value and `flag VALUE`."""
    argv, positional = list(words), []
    for f in dataclasses.fields(cls):
        m = config.meta(f)
        if f.name in fixed or m["default"] is not config.REQUIRED:
            continue
        if m.get("argument"):
            positional.append("x")
        else:
            argv += [config.flag_of(f), "x"]
    return [*argv, *positional, flag, value]


HUGE = [str(10**12), "9" * 5000]  # the last: more digits than int() converts


def _members():
    for words, cls, fixed in _commands():
        for f in count_like(cls):
            if f.name in fixed:
                continue
            for huge in HUGE:
                yield pytest.param(words, cls, fixed, f, huge, id=f"{' '.join(words)} {config.flag_of(f)} {len(huge)} digits")


@pytest.mark.parametrize("words, cls, fixed, f, huge", list(_members()))
def test_a_huge_count_is_refused_in_under_a_second(tmp_path, words, cls, fixed, f, huge):
    value = f"{huge},1" if ("list", int) in _base_types(typing.get_type_hints(cls)[f.name]) else huge
    argv = _argv(words, cls, fixed, config.flag_of(f), value)
    importlib.import_module(cls.__module__)  # imports (torch, transformers, the stage) are not what is timed
    run(tmp_path / "store", "--version")
    start = time.perf_counter()
    code, out, err = run(tmp_path / "store", *argv)
    took = time.perf_counter() - start
    one_line(code, out, err, f.name)
    assert took < 1.0, f"{took:.2f} s"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("text", ["max_steps: 1000000000\n", f"max_steps: {'9' * 5000}\n",
                                  "rl:\n  epochs: 1000000000\n", "curriculum_lengths: [1000000000000, 1]\n"
                                  "curriculum_unit: steps\n", "max_new_tokens: 1e400\n"])
def test_a_huge_count_in_a_recipe_is_refused(tmp_path, text):
    recipe = tmp_path / "rl.yaml"
    recipe.write_text(text)
    start = time.perf_counter()
    code, out, err = run(tmp_path / "store", "rl", "--model", "m", "--data", "d", "--name", "r", "-c", recipe)
    one_line(code, out, err, str(recipe))
    assert time.perf_counter() - start < 5.0  # the first call imports the stage module


def test_a_huge_count_as_an_override_is_refused(tmp_path):
    code, out, err = run(tmp_path / "store", "sft", "--model", "m", "--data", "d", "--name", "r", "--trainable", "llm",
                         f"max_steps={'9' * 5000}")
    one_line(code, out, err, "max_steps")


def _rows(n):
    return [{"id": f"r{i}", "difficulty": "normal" if i % 2 else "hard", "pass_rate": 0.5} for i in range(n)]


@pytest.mark.parametrize("settings", [
    dict(mode="none", unit="steps", lengths=(10**12,)),
    dict(mode="hard", unit="steps", lengths=(10**12, 1)),
    dict(mode="none", unit="epochs", lengths=(10**9,)),
    dict(mode="pass-rate", unit="epochs", lengths=(10**7,)),
    dict(mode="hard", unit="epochs", lengths=(1, 10**7)),
])
def test_the_schedule_size_is_checked_before_it_is_laid_out(settings):
    """What the config bounds let through one by one can still multiply: the plan refuses at once."""
    batching = curriculum.Batching(prompts=2, micro_steps=1, accumulation=1)
    start = time.perf_counter()
    with pytest.raises(curriculum.UserError, match="more than the 10,000,000 a schedule holds"):
        curriculum.plan(_rows(40), curriculum.Settings(**settings), batching, dataset="d@v1", split="train")
    assert time.perf_counter() - start < 0.5


def test_a_schedule_at_a_real_size_is_still_laid_out():
    batching = curriculum.Batching(prompts=2, micro_steps=1, accumulation=1)
    s = curriculum.plan(_rows(40), curriculum.Settings(mode="none", unit="steps", lengths=(5000,)), batching,
                        dataset="d@v1", split="train")
    assert s.total_steps == 5000 and len(s.order) == 10_000


# ---- 1. secrets: the API key in any spelling, validated before any request, scrubbed everywhere --

KEY = "sk-h21-" + "4b7e19" * 7  # plain ASCII: what a server echoes is the key itself, escaped or not
ODD_KEY = 'sk-h21"q\\b/s&p%<' + "9c2d" * 8  # printable ASCII a header carries, which every escaping changes
ENV = "R1V3_H21_KEY"


def _forms(key: str) -> list[str]:
    import html
    import json
    import urllib.parse

    return [key, json.dumps(key)[1:-1], json.dumps(json.dumps(key))[3:-3], repr(key)[1:-1],
            repr(key.encode())[2:-1], urllib.parse.quote(key, safe=""), html.escape(key)]


def assert_no_key(text: str, key: str = KEY) -> None:
    """No 10-character window of the key, in any spelling, is in `text`."""
    for form in _forms(key):
        for i in range(len(form) - 10):
            assert form[i:i + 10] not in text, f"part of the key ({form[i:i + 10]!r}) leaked: {text[:300]}"


def _echo_server(status: int, shape, seen: list):
    """A server echoing the Authorization header it got, shaped by `shape(header) -> body text`."""
    from .test_security import _handler, _serve

    return _serve(_handler(status, lambda h: shape(h.get("Authorization", "")), seen))


def _ask(port: int, retries: int = 0):
    from r1v3.generation import OpenAIBackend, Request, Sampling

    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "t", api_key_env=ENV, max_retries=retries, backoff=0.01,
                            progress=False)
    return backend.generate_all([Request(id="q", messages=[{"role": "user", "content": "2+2?"}])],
                                Sampling(max_new_tokens=4))


ANSWER = lambda text: __import__("json").dumps({"choices": [{"message": {"content": text}}]})  # noqa: E731


@pytest.mark.parametrize("raw", [KEY + "\r\n", KEY + "\n", KEY + "\r", "  " + KEY + "\t", " " + KEY])
def test_a_key_with_surrounding_whitespace_is_sent_stripped(monkeypatch, raw):
    monkeypatch.setenv(ENV, raw)
    seen = []
    server = _echo_server(200, lambda h: ANSWER(f"got {h!r}"), seen)
    try:
        got = _ask(server.server_port)
    finally:
        server.shutdown()
    assert seen[0]["Authorization"] == f"Bearer {KEY}"
    assert got["q"][0].text == "got 'Bearer ***'"


BAD_KEYS = {
    "non-ASCII letter": ("sk-h21-caf\u00e9" + "1" * 20, "non-ASCII"),
    "non-ASCII dash": ("sk\u2013h21-" + "2" * 24, "non-ASCII"),
    "inner line break": ("sk-h21-" + "3" * 12 + "\n" + "3" * 12, "control character"),
    "inner carriage return": ("sk-h21-" + "4" * 12 + "\r" + "4" * 12, "control character"),
    "DEL": ("sk-h21-" + "5" * 12 + "\x7f" + "5" * 12, "control character"),
    "escape sequence": ("sk-h21-\x1b[31m" + "6" * 20, "control character"),
    "zero-width space": ("sk-h21-" + "7" * 12 + "\u200b" + "7" * 12, "non-ASCII"),
    "blank": ("  \r\n", "blank"),
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_a_key_no_header_can_carry_is_refused_before_any_request(monkeypatch, case):
    from r1v3.errors import UserError

    value, fragment = BAD_KEYS[case]
    monkeypatch.setenv(ENV, value)
    seen = []
    server = _echo_server(200, ANSWER, seen)
    try:
        with pytest.raises(UserError) as e:
            _ask(server.server_port)
    finally:
        server.shutdown()
    message = str(e.value)
    assert not seen, "a request was sent"
    assert f"${ENV}" in message and fragment in message and len(message.splitlines()) == 1
    for part in value.strip().split():
        for i in range(len(part) - 6):
            assert part[i:i + 6] not in message


@pytest.fixture(scope="module")
def problems_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("h21-distill") / "store"
    code, _, err = run(root, "data", "synth", "--name", "p", "--problems", "10")
    assert code == 0, err
    return root


@pytest.mark.parametrize("case", ["non-ASCII letter", "inner line break", "escape sequence", "blank"])
def test_distill_refuses_a_bad_key_in_one_line_before_any_work(monkeypatch, problems_store, case):
    value, fragment = BAD_KEYS[case]
    monkeypatch.setenv(ENV, value)
    seen = []
    server = _echo_server(200, ANSWER, seen)
    before = snapshot(problems_store)
    try:
        code, out, err = run(problems_store, "distill", "--teacher", f"http://127.0.0.1:{server.server_port}/v1",
                             "--teacher-model", "t", "--data", "p", "--name", "traces", "--api-key-env", ENV)
    finally:
        server.shutdown()
    line = one_line(code, out, err, f"${ENV}")
    assert fragment in line and not seen and snapshot(problems_store) == before
    assert "\x1b" not in out + err


ECHOES = {
    "verbatim": lambda h: f"bad key {h}",
    "JSON": lambda h: __import__("json").dumps({"error": {"message": "denied", "authorization": h}}),
    "JSON in JSON": lambda h: __import__("json").dumps({"detail": __import__("json").dumps({"headers": {"auth": h}})}),
    "Python repr": lambda h: f"headers={ {'Authorization': h}!r}",
    "bytes repr": lambda h: f"Illegal header value {h.encode()!r}",
    "URL": lambda h: "see https://x.invalid/?auth=" + __import__("urllib.parse").parse.quote(h, safe=""),
    "HTML": lambda h: f"<p>{__import__('html').escape(h)}</p>",
}


@pytest.mark.parametrize("key", [KEY, ODD_KEY], ids=["plain key", "key with quote, backslash, slash"])
@pytest.mark.parametrize("shape", list(ECHOES))
@pytest.mark.parametrize("status", [401, 500])
def test_an_echoed_key_never_reaches_the_error(monkeypatch, key, shape, status):
    from r1v3.errors import UserError

    monkeypatch.setenv(ENV, key + "\r\n")  # read from a CRLF file: the raw value differs from what is sent
    seen = []
    server = _echo_server(status, ECHOES[shape], seen)
    try:
        with pytest.raises(UserError) as e:
            _ask(server.server_port)
    finally:
        server.shutdown()
    assert seen and seen[0]["Authorization"] == f"Bearer {key}"
    message = str(e.value)
    assert f"HTTP {status}" in message and len(message.splitlines()) == 1 and "***" in message
    assert_no_key(message, key)


@pytest.mark.parametrize("shape", list(ECHOES))
def test_an_echoed_key_never_reaches_answers_or_logs(monkeypatch, caplog, shape):
    import logging

    monkeypatch.setenv(ENV, ODD_KEY)
    caplog.set_level(logging.DEBUG)
    seen = []
    server = _echo_server(200, lambda h: ANSWER(ECHOES[shape](h)), seen)
    try:
        got = _ask(server.server_port)
    finally:
        server.shutdown()
    assert seen
    for text in (got["q"][0].text, caplog.text):
        assert_no_key(text, ODD_KEY)


def test_the_error_line_is_scrubbed_whoever_raised_it(monkeypatch, tmp_path):
    """The CLI's one error line scrubs the key's forms too, for a message no backend method made."""
    from r1v3 import generation
    from r1v3.errors import UserError

    monkeypatch.setenv(ENV, ODD_KEY)
    generation.api_key(ENV)

    def boom(*a, **k):
        raise UserError(f"a library said: {ODD_KEY!r} / {__import__('json').dumps(ODD_KEY)}")

    monkeypatch.setattr(cli, "store", boom)
    code, out, err = run(tmp_path / "s", "artifacts", "ls")
    one_line(code, out, err, "a library said")
    assert_no_key(err, ODD_KEY)


# ---- 4. plug-ins that end the process: a plug-in failure, never an exit ----------------------

ENDINGS = {
    "SystemExit(0)": "raise SystemExit(0)",
    "sys.exit('bye')": "import sys; sys.exit('bye')",
    "exit(3)": "exit(3)",
    "own BaseException": "class Stop(BaseException): pass\nraise Stop('halt')",
    "BaseExceptionGroup": "raise BaseExceptionGroup('g', [SystemExit(0)])",
}


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())


def _reward_module(when: str, ending: str) -> str:
    body = {"import": f"{ending}\n\ndef fn(prompts, completions, **kwargs):\n    return [1.0] * len(completions)\n",
            "call": f"def fn(prompts, completions, **kwargs):\n{_indent(ending)}\n",
            "lookup": f"def __getattr__(name):\n{_indent(ending)}\n"}[when]
    return body


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("when", ["import", "call", "lookup"])
@pytest.mark.parametrize("kind", ["file", "module"])
def test_a_plugin_ending_the_process_is_a_one_line_plugin_failure(tmp_path, monkeypatch, ending, when, kind):
    from r1v3 import rewards
    from r1v3.errors import UserError

    monkeypatch.chdir(tmp_path)
    name = f"h21_{kind}_{when}_{abs(hash(ending)) % 10**6}"
    if kind == "file":
        (tmp_path / "rw.py").write_text(_reward_module(when, ENDINGS[ending]))
        spec = "rw.py:fn"
    else:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "mod.py").write_text(_reward_module(when, ENDINGS[ending]))
        monkeypatch.syspath_prepend(str(tmp_path))
        spec = f"{name}.mod:fn"
    with pytest.raises(UserError) as e:
        reward = rewards.load_custom(spec, cwd=tmp_path)
        reward(prompts=["p"], completions=["c"])
    message = str(e.value)
    assert spec in message and len(message.splitlines()) == 1
    assert ending.split("(")[0].split("'")[0].replace("sys.exit", "SystemExit").replace("exit", "SystemExit") \
        .replace("own BaseException", "Stop") in message


def test_a_package_whose_init_exits_is_a_plugin_failure(tmp_path, monkeypatch):
    from r1v3 import rewards
    from r1v3.errors import UserError

    (tmp_path / "h21_exiting_pkg").mkdir()
    (tmp_path / "h21_exiting_pkg" / "__init__.py").write_text("raise SystemExit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"custom reward 'h21_exiting_pkg.mod:fn'.*SystemExit\(0\)"):
        rewards.load_custom("h21_exiting_pkg.mod:fn", cwd=tmp_path)


@pytest.mark.parametrize("when", ["import", "call"])
def test_ctrl_c_in_a_plugin_stays_an_interrupt(tmp_path, monkeypatch, when):
    from r1v3 import rewards

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rw.py").write_text(_reward_module(when, "raise KeyboardInterrupt"))
    with pytest.raises(KeyboardInterrupt):
        rewards.load_custom("rw.py:fn", cwd=tmp_path)(prompts=["p"], completions=["c"])


STOPPING_REWARD = '''
import os, sys


def fn(prompts, completions, trainer_state, **kwargs):
    if os.path.exists("STOP") and trainer_state.global_step >= 2:
        {ending}
    return [len(c[0]["content"]) / 10 for c in completions]
'''


@pytest.fixture(scope="module")
def rl_store(tmp_path_factory):
    from r1v3 import data, synthetic

    root = tmp_path_factory.mktemp("h21-rl") / "store"
    code, _, err = run(root, "init", "tiny", "--name", "tiny", "--family", "internvl")
    assert code == 0, err
    rows = synthetic.generate(40, seed=0)["train"][:8]
    from r1v3.artifacts import Store

    with Store(root).publish("probs", "dataset", stage="test") as draft:
        data.write_splits(draft.path, {"train": rows})
    return root


RL = ["rl", "--model", "tiny", "--data", "probs", "--num-generations", "2", "--batch-size", "4", "--grad-accum", "1",
      "--max-new-tokens", "4", "--lr", "5e-3", "--max-steps", "4", "--save-steps", "2", "--reward", "stop.py:fn"]


@pytest.mark.parametrize("ending, code", [("sys.exit(0)", 2),
                                          pytest.param("raise KeyboardInterrupt", 130, marks=pytest.mark.slow)])
def test_rl_with_a_reward_that_exits_fails_keeps_its_work_and_resumes(rl_store, tmp_path, monkeypatch, ending, code):
    from r1v3.artifacts import Store

    monkeypatch.chdir(tmp_path)
    (tmp_path / "stop.py").write_text(STOPPING_REWARD.format(ending=ending))
    (tmp_path / "STOP").write_text("")
    name = f"stopped{code}{len(ending)}"
    got, out, err = run(rl_store, *RL, "--name", name)
    if code == 2:
        line = one_line(got, out, err, "custom reward 'stop.py:fn'")
        assert "SystemExit(0)" in line
    else:
        assert got == 130, err  # Ctrl-C stays an interrupt
    s = Store(rl_store)
    assert not s.versions(name)
    assert (rl_store / ".work" / name / "rl" / "checkpoint-2").is_dir()  # kept for --resume
    (tmp_path / "STOP").unlink()
    got, out, err = run(rl_store, *RL, "--name", name, "--resume")
    assert got == 0, err
    assert s.resolve(name).metrics["resumed_from_step"] == 2


@pytest.mark.parametrize("ending", ["SystemExit(0)", "SystemExit(None)", "StopEverything('x')"])
def test_an_exit_from_code_a_stage_runs_is_a_one_line_failure(tmp_path, monkeypatch, ending):
    """The CLI's own guard, for user code no loader wraps (a model's own code with --trust-remote-code)."""
    from r1v3 import synthetic

    class StopEverything(BaseException):
        pass

    raised = {"SystemExit(0)": SystemExit(0), "SystemExit(None)": SystemExit(None),
              "StopEverything('x')": StopEverything("x")}[ending]

    def ends(*args, **kwargs):
        raise raised

    monkeypatch.setattr(synthetic, "iter_rows", ends)
    root = tmp_path / "store"
    code, out, err = run(root, "data", "synth", "--name", "s", "--problems", "10")
    line = one_line(code, out, err, "the run was ended by")
    assert ending.split("(")[0] in line and "nothing was published" in line
    assert not (root / "s").exists()


# ---- 5. user text reaching a renderer that interprets it -------------------------------------

HOSTILE_TEXT = {
    "math": "$^^^$",
    "unclosed math": "$\\frac{$",
    "markup": "[bold]loud[/bold]",
    "closing tag": "[/]",
    "emoji code": ":warning: fine",
    "terminal escape": "\x1b[31mred\x1b[0m",
    "carriage return": "ok\rFAKE",
    "10,000 characters": "L" * 10_000,
}


def _terminal_safe(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text, repr(text[:200])
    assert "L" * 200 not in text  # cut


@pytest.mark.parametrize("case", list(HOSTILE_TEXT))
def test_plots_draw_any_text_as_it_is(tmp_path, case):
    from r1v3 import plots

    text = HOSTILE_TEXT[case]
    start = time.perf_counter()
    with plots.figure(tmp_path / "f.png", figsize=(6, 3)) as (fig, ax):
        ax.barh([text, "other"], [1, 2])
        ax.set_title(text)
        ax.set_xlabel(text)
        ax.text(0.5, 0.5, text, transform=ax.transAxes)
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert time.perf_counter() - start < 10
    # math text is off for the figure only, not for the rest of the process
    import matplotlib

    assert matplotlib.rcParams["text.parse_math"] is True


def _scores(subject: str) -> dict:
    return {"disciplines": {}, "subjects": {subject: {"n": 2, "acc": 0.5}, "Other": {"n": 1, "acc": 1.0}},
            "overall": {"n": 3, "acc": 2 / 3}, "parse_failures": {"n": 0, "rate": 0.0}, "style": "reasoning",
            "samples": 1}


def _recorded(monkeypatch, fn, *args) -> str:
    from rich.console import Console

    console = Console(record=True, width=120, force_terminal=True, file=io.StringIO())
    monkeypatch.setattr(cli, "console", console)
    fn(*args)
    return console.export_text(styles=False)


@pytest.mark.parametrize("case", list(HOSTILE_TEXT))
def test_the_score_table_shows_a_subject_as_written(monkeypatch, case):
    text = HOSTILE_TEXT[case]
    from r1v3 import mmmu

    shown = _recorded(monkeypatch, lambda scores: mmmu.print_scores(scores, cli.console), _scores(text))
    _terminal_safe(shown)
    if case in ("markup", "closing tag", "emoji code", "math"):
        assert text in shown  # literally, not as style, emoji or math


@pytest.mark.parametrize("case", list(HOSTILE_TEXT))
def test_stage_reports_show_text_as_written(monkeypatch, capsys, case):
    from r1v3 import rewards
    from stages import distill

    text = HOSTILE_TEXT[case]
    group = {"problems": 1, "outputs": 2, "verified": 1, "kept": 1, "problems_kept": 1}
    metrics = {"subjects": {text: group}, "difficulty": {text: group}, "teacher": text, "pass_rate": 0.5,
               "chance_rate": 0.25, "kept": 1, "outputs": 2, "reasons": {"kept": 1, "wrong answer": 1},
               "multiple_choice": {"pass_rate": 0.5, "chance_rate": 0.25, "lucky_share": 0.2, "kept_lucky_estimate": 0.2,
                                   "kept": 1}}
    from rich.console import Console as RichConsole

    distill.report(types.SimpleNamespace(metrics=metrics, ref=f"{text}@v1", kind="dataset", path=text), RichConsole())

    def custom(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    custom.__name__ = text
    table = rewards.describe(rewards.Rewards([rewards.accuracy, custom], [1.0, 1.0]),
                             [{"completion": text, "answer": text, "question_type": "open", "options": []}])
    from rich.console import Console

    Console(force_terminal=True).print(table)
    out = capsys.readouterr().out
    assert "\x1b[31m" not in out and "ok\rFAKE" not in out
    if case == "markup":
        assert "[bold]loud[/bold]" in out


@pytest.fixture(scope="module")
def eval_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("h21-eval") / "store"
    code, _, err = run(root, "init", "tiny", "--name", "m")
    assert code == 0, err
    return root


@pytest.mark.parametrize("case", ["math", "unclosed math", "markup", "terminal escape", "10,000 characters"])
def test_eval_data_show_and_report_take_any_subject(eval_store, tmp_path, case):
    """The issue's case: a subject from `data import` killed `eval mmmu` after all generation, and
    --resume failed the same way; now it is data all the way to the chart, the table and the report."""
    import json

    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "a.png")
    subject = HOSTILE_TEXT[case]
    rows = [{"id": f"q{i}", "images": ["a.png"], "question": "How many?", "options": ["1", "2"], "answer": "A",
             "question_type": "multiple-choice", "subject": subject} for i in range(2)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    name = f"ds{len(case)}"
    code, out, err = run(eval_store, "data", "import", tmp_path / "rows.jsonl", "--name", name, "--as-split", "validation")
    assert code == 0, err
    code, out, err = run(eval_store, "eval", "mmmu", "--model", "m", "--data", name, "--name", f"ev{len(case)}",
                         "--max-new-tokens", "2", "--temperature", "0")
    assert code == 0, err
    _terminal_safe(out + err)
    assert not (eval_store / ".work" / f"ev{len(case)}").exists()
    code, show, err = run(eval_store, "data", "show", name)
    assert code == 0, err
    _terminal_safe(show + err)
    page = tmp_path / "r.html"
    code, out, err = run(eval_store, "report", f"ev{len(case)}", "--out", page)
    assert code == 0, err
    html = page.read_text()
    assert "\x1b" not in html and "L" * 1000 not in html


# ---- 6. a name of one kind shadowing another -------------------------------------------------


@pytest.fixture(scope="module")
def kinds_store(tmp_path_factory):
    """d: a dataset, t: a model, r: an rl run (hand-made: its checkpoints are what rl export reads)."""
    root = tmp_path_factory.mktemp("h21-kinds") / "store"
    for argv in (["data", "synth", "--name", "d", "--problems", "10"], ["init", "tiny", "--name", "t"]):
        code, _, err = run(root, *argv)
        assert code == 0, err
    return root


def _model_dir(root: Path) -> Path:
    return root / "t" / "v1"


SHADOWING = {
    "init tiny over a dataset": (["init", "tiny", "--name", "d"], "d", "dataset", "model"),
    "data synth over a model": (["data", "synth", "--name", "t", "--problems", "10"], "t", "model", "dataset"),
    "import-model over a dataset": (["import-model", "{model}", "--name", "d"], "d", "dataset", "model"),
    "data import over a model": (["data", "import", "{rows}", "--name", "t"], "t", "model", "dataset"),
    "eval over a dataset": (["eval", "mmmu", "--responses", "{responses}", "--name", "d"], "d", "dataset", "eval"),
    "init tiny-llm over a dataset": (["init", "tiny-llm", "--name", "d"], "d", "dataset", "model"),
}


def _fill(argv, root: Path, tmp_path: Path) -> list[str]:
    import json

    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "a", "images": [], "question": "q", "options": [],
                                                     "answer": "1", "question_type": "open"}) + "\n")
    (tmp_path / "responses.json").write_text(json.dumps([{"id": "validation_Art_1", "question_type": "open",
                                                          "answer": "1", "response": "1"}]))
    return [a.format(model=_model_dir(root), rows=tmp_path / "rows.jsonl", responses=tmp_path / "responses.json")
            for a in argv]


@pytest.mark.parametrize("case", list(SHADOWING))
def test_publishing_another_kind_under_a_name_is_refused_before_the_run(kinds_store, tmp_path, monkeypatch, case):
    from r1v3.artifacts import Store

    argv, name, held, new = SHADOWING[case]
    argv = _fill(argv, kinds_store, tmp_path)
    before = snapshot(kinds_store)
    ran = []
    module = importlib.import_module(next(m for g, n, m, _ in cli.STAGES if [w for w in (g, *n.split()) if w]
                                          == argv[:len([w for w in (g, *n.split()) if w])]))
    monkeypatch.setattr(module, "run", lambda *a, **k: ran.append(1))  # refused before the stage runs at all
    code, out, err = run(kinds_store, *argv)
    line = one_line(code, out, err, f"'{name}' already names {held}")
    assert f"publishing a {new}" in line and "--force-kind" in line
    assert not ran and snapshot(kinds_store) == before
    assert {a.kind for a in Store(kinds_store).list() if a.name == name} == {held}


def test_the_store_refuses_it_too_and_force_kind_publishes(tmp_path):
    """The check lives in Store.publish, for every stage (and any caller), not only in the CLI."""
    from r1v3.artifacts import Store
    from r1v3.errors import UserError

    s = Store(tmp_path / "s")
    with s.publish("x", "dataset", stage="test") as draft:
        (draft.path / "train.parquet").write_bytes(b"not read")
    for kind in ("model", "run", "selection", "eval"):
        with pytest.raises(UserError, match=f"'x' already names dataset \\(v1\\): publishing a {kind}"):
            with s.publish("x", kind, stage="test") as draft:
                (draft.path / "f").write_text("x")
    with s.publish("x", "dataset", stage="test") as draft:  # the same kind: a new version, as ever
        (draft.path / "train.parquet").write_bytes(b"not read either")
    forced = Store(tmp_path / "s", force_kind=True)
    with forced.publish("x", "run", stage="test") as draft:
        (draft.path / "f").write_text("x")
    assert s.kinds("x") == {1: "dataset", 2: "dataset", 3: "run"}
    assert not list((tmp_path / "s" / ".staging").iterdir())


def test_force_kind_publishes_and_ls_marks_the_mixed_name(tmp_path):
    root = tmp_path / "store"
    assert run(root, "data", "synth", "--name", "d", "--problems", "10")[0] == 0
    assert run(root, "data", "synth", "--name", "plain", "--problems", "10")[0] == 0
    code, out, err = run(root, "init", "tiny", "--name", "d", "--force-kind")
    assert code == 0 and "published d@v2 (model)" in out, err
    code, out, err = run(root, "artifacts", "ls")
    assert code == 0, err
    rows = {line.split()[1]: line for line in out.splitlines() if "@v" in line and line.startswith("│")}
    assert "*" in rows["d@v1"] and "*" in rows["d@v2"] and "*" not in rows["plain@v1"]
    assert "d holds more than one kind (dataset, model)" in out
    code, out, err = run(root, "artifacts", "ls", "--kind", "dataset")  # marked even when the other is not listed
    assert "*" in next(line for line in out.splitlines() if "d@v1" in line)


def test_every_publishing_command_declares_its_kinds():
    """The kinds the CLI checks early are the ones each stage passes to Store.publish."""
    import re

    declared = {}
    for _, _, module, options in cli.STAGES:
        declared.setdefault(module, {}).update(options.get("publishes") or {})
    for module, kinds in declared.items():
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        for key, kind in re.findall(r"store\.publish\(\s*cfg\.(\w+),\s*\"(\w+)\"", source):
            assert kinds.get(key) == kind, (module, key, kind, kinds)
    assert declared["stages.sft"] == {"name": "model"} and "stages.report" not in {m for m, k in declared.items() if k}


# ---- also: what a new user trips over --------------------------------------------------------


@pytest.mark.parametrize("extra, fragment", [
    (["--accuracy-weight", "-0.8"], "--accuracy-weight (accuracy_weight) is -0.8"),
    (["--format-weight", "-1"], "--format-weight (format_weight) is -1"),
    (["--reward", "rw.py:fn", "--reward-weight", "-0.5"], "--reward-weight (reward_weight) #1 is -0.5"),
    (["--reward", "rw.py:fn", "--reward", "rw.py:g", "--reward-weight", "1,-2"], "(reward_weight) #2 is -2"),
])
def test_negative_reward_weights_need_their_flag(tmp_path, extra, fragment):
    base = ["rl", "--model", "m", "--data", "d", "--name", "r", *extra]
    code, out, err = run(tmp_path / "store", *base)
    line = one_line(code, out, err, fragment)
    assert "--allow-negative-weights" in line and not (tmp_path / "store").exists()
    # with the flag the weights pass; the run stops at the next thing it checks (no model m here)
    code, out, err = run(tmp_path / "store", *base, "--allow-negative-weights")
    line = one_line(code, out, err, "no artifact named 'm'")


@pytest.fixture(scope="module")
def sft_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("h21-sft") / "store"
    for argv in (["init", "tiny", "--name", "vlm"], ["init", "tiny-llm", "--name", "llm"],
                 ["data", "synth", "--name", "plain", "--problems", "10"]):
        code, _, err = run(root, *argv)
        assert code == 0, err
    return root


@pytest.mark.parametrize("argv, fragments", [
    (["--model", "vlm", "--data", "plain", "--format", "text-rendering"],
     ["--format text-rendering (format) trains text-only LLMs", "vlm@v1 is a vision-language model"]),
    (["--model", "llm", "--data", "plain", "--format", "text-rendering"],
     ["no row has `messages`", "--format text-rendering takes each row's caption"]),
    (["--model", "vlm", "--data", "plain", "--format", "chat"], ["no row has `messages`", "--format chat needs"]),
])
def test_sft_format_mistakes_name_the_format(sft_store, argv, fragments):
    before = snapshot(sft_store)
    code, out, err = run(sft_store, "sft", *argv, "--name", "ft", "--trainable", "llm", "--max-steps", "1")
    line = one_line(code, out, err)
    assert all(f in line for f in fragments), line
    assert snapshot(sft_store) == before
