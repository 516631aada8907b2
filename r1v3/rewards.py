"""Rewards for GRPO as TRL reward functions: accuracy, format, an overlong penalty, and rewards
loaded from the user's own code.

How TRL 1.16's GRPOTrainer uses a reward function (`_calculate_rewards` in
trl/trainer/grpo_trainer.py): once per batch, as

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=...,
       log_metric=..., **columns)

where `columns` are all dataset columns but "prompt"/"completion" (for problem rows:
`answer`, `question_type`, `options`, ...), one value per completion. Completions are strings,
or conversations `[{"role": "assistant", "content": ...}]` when the prompts are. A function
returns one number per completion, or None where it does not apply (TRL makes that NaN, which
its sums skip). The trainer multiplies the outputs by `GRPOConfig.reward_weights`, sums them
into the reward, and logs `rewards/<fn.__name__>/mean` and `/std` for each function.

So every component here is its own function, and the weights go to TRL as `reward_weights`
(`Rewards.weights`), not into one combined function: TRL then logs `rewards/accuracy/mean`,
`rewards/format/mean` (and `rewards/overlong/mean`, custom ones by their names) next to the
weighted total `reward`, with no logging code of ours. The paper's total is
0.8 * accuracy + 0.2 * format.

Bounded work: GRPOTrainer may call rewards off the main thread, where signal-based timeouts
(math-verify's) do not work, so the bound holds by construction. A completion longer than
MAX_COMPLETION_CHARS scores 0; below that only C-level scans (count/find) see the whole text,
and the Python-level parsing in `answers` sees capped tails (answers.MAX_FINAL_CHARS,
answers.MAX_ANSWER_CHARS). Nothing evaluates what it reads (`9^9^9^9` stays text).
User-supplied rewards cannot be bounded this way; they are only checked for what they return.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import os
import re
import sys
from pathlib import Path, PurePath
from typing import Callable, NamedTuple, Sequence

from rich.table import Table
from rich.text import Text

from r1v3 import answers
from r1v3.artifacts import shown
from r1v3.errors import UserError, error_text, plugin_failed

# Far beyond what any token budget can decode to; it caps the C-level scans and their copies.
MAX_COMPLETION_CHARS = 4_000_000
PAPER_WEIGHTS = {"accuracy": 0.8, "format": 0.2}
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


# --------------------------------------------------------------------------------------
# completions and columns
# --------------------------------------------------------------------------------------


def completion_text(completion) -> str:
    """The text of a completion: a string as is; for a conversation, its assistant messages
    joined, each with a separately returned reasoning trace put back inside <think> tags.
    Anything else is "" (scores 0).
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        return ""
    texts = [_message_text(m) for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
    return "\n".join(texts)


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, (list, tuple)):  # content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    text = content if isinstance(content, str) else ""
    for key in _REASONING_KEYS:
        reasoning = message.get(key)
        if isinstance(reasoning, str) and reasoning and answers.THINK_OPEN not in text:
            return f"{answers.THINK_OPEN}{reasoning}{answers.THINK_CLOSE}{text}"
    return text


def _column(reward: str, name: str, values, n: int) -> list:
    if values is None:
        raise UserError(f"reward {reward!r} needs the dataset column {name!r}, which the training rows lack")
    values = list(values)
    if len(values) != n:
        raise UserError(f"reward {reward!r}: column {name!r} has {len(values)} values for {n} completions")
    return values


# --------------------------------------------------------------------------------------
# the built-in rewards
# --------------------------------------------------------------------------------------


def accuracy(prompts, completions, answer=None, question_type=None, options=None, **_) -> list[float | None]:
    """1.0 when the final answer (`answers.extract`, as eval reads it) is equivalent to the gold
    `answer` (`answers.verify`), else 0.0; None for a row without a gold answer."""
    n = len(completions)
    golds = _column("accuracy", "answer", answer, n)
    qtypes = _column("accuracy", "question_type", question_type, n)
    option_lists = _column("accuracy", "options", options, n) if options is not None else [None] * n
    scores = []
    for i, (completion, gold, qtype, opts) in enumerate(zip(completions, golds, qtypes, option_lists)):
        if qtype not in answers.QUESTION_TYPES:
            raise UserError(f"reward 'accuracy': row {i} of the batch has question_type {qtype!r}, "
                            f"not one of {', '.join(answers.QUESTION_TYPES)}")
        if gold is None:
            scores.append(None)
            continue
        text = completion_text(completion)
        if len(text) > MAX_COMPLETION_CHARS:
            scores.append(0.0)
            continue
        opts = list(opts) if opts is not None else None
        found = answers.extract(text, options=opts, question_type=qtype)
        scores.append(1.0 if answers.verify(found.answer, gold, question_type=qtype, options=opts) else 0.0)
    return scores


def well_formed(text: str, think_in_prompt: bool = False) -> bool:
    """`<think>` + non-blank reasoning + `</think>`, each tag exactly once and nothing but blanks
    before `<think>`, then exactly one `\\boxed{...}` (closed, not empty) after `</think>`.

    think_in_prompt: the chat template's generation prompt already opened the think block
    (as R1-style templates do), so the completion may start straight with the reasoning.
    """
    if not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS or text.count(answers.THINK_CLOSE) != 1:
        return False
    close = text.find(answers.THINK_CLOSE)
    opens = text.count(answers.THINK_OPEN)
    if opens == 1:
        start = text.find(answers.THINK_OPEN)
        if start > close or (start and not text[:start].isspace()):
            return False
        start += len(answers.THINK_OPEN)
    elif opens == 0 and think_in_prompt:
        start = 0
    else:
        return False
    if close == start or text[start:close].isspace():
        return False
    final = text[close + len(answers.THINK_CLOSE):]
    if final.count("\\boxed") != 1 or "\\fbox" in final:
        return False
    boxed = answers.last_boxed(final[-answers.MAX_FINAL_CHARS:])
    return bool(boxed and boxed.strip())


class FormatReward:
    """1.0 for a well-formed completion (see `well_formed`), else 0.0."""

    def __init__(self, think_in_prompt: bool = False):
        self.__name__ = "format"
        self.think_in_prompt = think_in_prompt

    def __call__(self, prompts, completions, **_) -> list[float]:
        return [1.0 if well_formed(completion_text(c), self.think_in_prompt) else 0.0 for c in completions]


class OverlongPenalty:
    """DAPO's soft overlong punishment, on completion lengths in tokens: 0 up to
    `max_len - buffer`, then linearly down to -1 at `max_len`, and -1 beyond."""

    def __init__(self, max_len: int, buffer: int):
        for name, value in (("max_len", max_len), ("buffer", buffer)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"overlong penalty: {name} must be a positive number of tokens, got {value!r}")
        if buffer > max_len:
            raise UserError(f"overlong penalty: buffer ({buffer}) must not exceed max_len ({max_len})")
        self.__name__ = "overlong"
        self.max_len, self.buffer = max_len, buffer

    def penalty(self, length: int) -> float:
        start = self.max_len - self.buffer
        if length <= start:
            return 0.0
        return -min(1.0, (length - start) / self.buffer)

    def __call__(self, prompts, completions, completion_ids=None, **_) -> list[float]:
        if completion_ids is None:
            raise UserError("reward 'overlong' needs completion_ids (completion lengths in tokens)")
        lengths = _column("overlong", "completion_ids", completion_ids, len(completions))
        return [self.penalty(len(ids)) for ids in lengths]


def coin(prompts, completions, **_) -> list[float]:
    """A fair coin per completion, blind to correctness: the control run of an RL experiment (a gain
    that this reward also gives does not come from being right). Seeded by the completion's text, so a
    resumed run scores the same completion the same."""
    import hashlib

    return [float(hashlib.sha256(completion_text(c).encode(errors="replace")).digest()[0] & 1) for c in completions]


# --------------------------------------------------------------------------------------
# rewards from the user's code
# --------------------------------------------------------------------------------------

_MODULE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_NAME = re.compile(r"[A-Za-z_]\w*")


class CustomReward:
    """A user's reward function, checked on every call (cheap): it must not raise and must
    return one finite number or None per completion. Named as the function, so TRL logs it as
    `rewards/<name>/mean`."""

    def __init__(self, fn: Callable, spec: str):
        self.fn, self.spec = fn, spec
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.calls = 0

    def _where(self) -> str:
        when = "its first batch" if self.calls == 1 else f"batch {self.calls}"
        return f"custom reward {self.spec!r} on {when}"

    def __call__(self, prompts, completions, **kwargs) -> list[float | None]:
        self.calls += 1
        try:
            out = self.fn(prompts=prompts, completions=completions, **kwargs)
        except BaseException as e:
            if not plugin_failed(e):
                raise
            raise UserError(f"{self._where()} raised {error_text(e)}") from e
        if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):
            out = out.tolist()  # numpy arrays and tensors
        if not isinstance(out, (list, tuple)):
            raise UserError(f"{self._where()} returned a {type(out).__name__}, not a list of numbers")
        if len(out) != len(completions):
            raise UserError(f"{self._where()} returned {len(out)} values for {len(completions)} completions")
        for i, value in enumerate(out):
            if value is None:
                continue
            if not isinstance(value, numbers.Real):
                raise UserError(f"{self._where()} returned {type(value).__name__} {str(value)[:40]!r} at "
                                f"position {i}, not a number (None means: does not apply)")
            if not math.isfinite(value):
                raise UserError(f"{self._where()} returned {value} at position {i} "
                                "(return None where a reward does not apply)")
        return [None if v is None else float(v) for v in out]


def load_custom(spec: str, *, store_root: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None) -> CustomReward:
    """Load a reward function from `package.module:function` (importable from sys.path) or
    `path/to/file.py:function` (a relative path to a file inside the working directory).

    Refused: absolute paths, `..`, paths leading out of the working directory through a
    symlink, and any code inside the artifact store (`store_root`, which may itself sit in the
    working directory): artifacts are data and never run. The function must accept
    `prompts`, `completions` and `**kwargs` (TRL also passes completion_ids, trainer_state and
    every dataset column) and return one float (or None) per completion.
    """
    where = f"custom reward {spec!r}"
    target, sep, attr = str(spec).rpartition(":")
    if not sep or not target or not _NAME.fullmatch(attr):
        raise UserError(f"{where}: expected module:function or path/to/file.py:function")
    store = Path(store_root).resolve() if store_root is not None else None
    if target.endswith(".py"):
        module = _load_file(target, where, Path(cwd or os.getcwd()).resolve(), store)
    elif _MODULE.fullmatch(target):
        module = _import_module(target, where, store)
    else:
        raise UserError(f"{where}: {target!r} is neither a module name nor a .py file")
    try:
        fn = getattr(module, attr)  # a module __getattr__ is user code too
    except AttributeError:
        raise UserError(f"{where}: {target} has no attribute {attr!r}") from None
    except BaseException as e:
        if not plugin_failed(e):
            raise
        raise UserError(f"{where}: looking up {attr} in {target} failed: {error_text(e)}") from e
    if not callable(fn):
        raise UserError(f"{where}: {target}:{attr} is a {type(fn).__name__}, not a function")
    _check_signature(fn, where)
    return CustomReward(fn, spec)


def source_digests(specs: Sequence[str]) -> dict[str, str | None]:
    """For --resume and --reuse (`setting(reads=...)`): each custom reward's source by content. A
    `file.py:fn` counts by the file's sha256 (not by the files it imports); a `module:fn` by nothing
    (None): an installed module cannot be digested without importing it, so a run naming one is never
    reused."""
    from r1v3.artifacts import sha256_file

    out: dict[str, str | None] = {}
    for spec in specs:
        target = str(spec).rpartition(":")[0]
        path = Path(target)
        out[str(spec)] = sha256_file(path) if target.endswith(".py") and not path.is_absolute() and path.is_file() \
            else None
    return out


def _inside(path: Path, root: Path | None) -> bool:
    return root is not None and path.is_absolute() and path.resolve().is_relative_to(root)


def _load_file(target: str, where: str, cwd: Path, store: Path | None):
    rel = PurePath(target)
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"{where}: the file must be a relative path inside the working directory, without '..'")
    path = (cwd / rel).resolve()
    if not path.is_relative_to(cwd):
        raise UserError(f"{where}: {target} leads out of the working directory {cwd}")
    if _inside(path, store):
        raise UserError(f"{where}: {target} is inside the artifact store {store}; rewards never run code from artifacts")
    if not path.is_file():
        raise UserError(f"{where}: no file {target} in {cwd}")
    name = "r1v3_reward_" + re.sub(r"\W", "_", str(rel.with_suffix("")))
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # pickle finds the function by reference, as for an import
    try:
        module_spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(name, None)
        if not plugin_failed(e):
            raise
        raise UserError(f"{where}: running {target} failed: {error_text(e)}") from e
    return module


def _import_module(target: str, where: str, store: Path | None):
    parts = target.split(".")
    # find each package level before importing it, so nothing inside the store ever runs
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(name)
        except BaseException as e:  # find_spec imports the parent package, which may fail or exit
            if not plugin_failed(e):
                raise
            raise UserError(f"{where}: importing {name} failed: {error_text(e)}") from e
        if found is None:
            raise UserError(f"{where}: no module named {name!r} "
                            "(for a file in the working directory write path/to/file.py:function)")
        for location in [found.origin, *(found.submodule_search_locations or [])]:
            if location and _inside(Path(location), store):
                raise UserError(f"{where}: module {name} is inside the artifact store {store}; "
                                "rewards never run code from artifacts")
    try:
        return importlib.import_module(target)
    except BaseException as e:
        if not plugin_failed(e):
            raise
        raise UserError(f"{where}: importing {target} failed: {error_text(e)}") from e


def _check_signature(fn: Callable, where: str) -> None:
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
        raise UserError(f"{where}: async reward functions are not supported; write a plain function")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # builtins without a signature: the first batch will tell
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise UserError(f"{where}: the function must take (prompts, completions, **kwargs): TRL also passes "
                        "completion_ids, trainer_state and every dataset column")
    names = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    missing = [n for n in ("prompts", "completions") if n not in names]
    if missing:
        raise UserError(f"{where}: the function must take (prompts, completions, **kwargs); "
                        f"it has no parameter {missing[0]!r}")


# --------------------------------------------------------------------------------------
# the set of rewards a run uses
# --------------------------------------------------------------------------------------


class Rewards(NamedTuple):
    """Reward functions and their weights, ready for GRPOTrainer(reward_funcs=funcs) and
    GRPOConfig(reward_weights=weights)."""

    funcs: list
    weights: list[float]

    @property
    def names(self) -> list[str]:
        return [f.__name__ for f in self.funcs]


def build(*, accuracy_weight: float = PAPER_WEIGHTS["accuracy"], format_weight: float = PAPER_WEIGHTS["format"],
          think_in_prompt: bool = False, overlong: tuple[int, int] | None = None, overlong_weight: float = 1.0,
          custom: Sequence[tuple[str, float]] = (), store_root=None, cwd=None, control: bool = False) -> Rewards:
    """accuracy and format (paper weights by default), the overlong penalty when
    `overlong=(max_len, buffer)` is given, and custom rewards as (spec, weight) pairs. `control`: a
    fair `coin` takes accuracy's place and weight."""
    funcs: list = [coin if control else accuracy, FormatReward(think_in_prompt)]
    weights = [accuracy_weight, format_weight]
    if overlong is not None:
        funcs.append(OverlongPenalty(*overlong))
        weights.append(overlong_weight)
    for spec, weight in custom:
        funcs.append(load_custom(spec, store_root=store_root, cwd=cwd))
        weights.append(weight)
    names = [f.__name__ for f in funcs]
    for name, weight in zip(names, weights):
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise UserError(f"reward {name!r}: weight must be a finite number, got {weight!r}")
        if names.count(name) > 1:
            raise UserError(f"two rewards are named {name!r}: TRL would log them as one; rename the function")
    return Rewards(funcs, [float(w) for w in weights])


def score(rewards: Rewards, prompts, completions, **kwargs) -> dict[str, list[float]]:
    """Each reward's values and their weighted sum ("total") for one batch, computed as
    GRPOTrainer does: None becomes NaN, NaN terms are skipped, a row where every reward is
    NaN has a NaN total. kwargs are what TRL passes: completion_ids and the dataset columns.
    """
    table = {}
    for fn in rewards.funcs:
        values = fn(prompts=prompts, completions=completions, **kwargs)
        table[fn.__name__] = [math.nan if v is None else float(v) for v in values]
    totals = []
    for row in zip(*table.values()):
        terms = [w * v for w, v in zip(rewards.weights, row) if not math.isnan(v)]
        totals.append(sum(terms) if terms else math.nan)
    table["total"] = totals
    return table


def describe(rewards: Rewards, samples: Sequence[dict], *, limit: int = 4, width: int = 70) -> Table:
    """A rich table of sample completions with each reward and the total, for a look at step 0.

    samples: dicts with "completion" (string or conversation), optionally "prompt" and
    "completion_ids", and the dataset columns. All samples are scored, the first `limit` shown;
    the caption names any reward that is the same on every sample (an always-0 accuracy shows
    at once).
    """
    samples = list(samples)
    skip = ("prompt", "completion")
    columns = {k: [s.get(k) for s in samples] for k in dict.fromkeys(k for s in samples for k in s) if k not in skip}
    table_values = score(rewards, [s.get("prompt", "") for s in samples], [s["completion"] for s in samples], **columns)
    # a custom reward's name and the completions are anyone's text: Text cells, never markup
    table = Table(title=shown(f"rewards on {len(samples)} sample completions (weights "
                              + ", ".join(f"{n} {w:g}" for n, w in zip(rewards.names, rewards.weights)) + ")", 400))
    table.add_column("#", justify="right")
    table.add_column("gold")
    table.add_column("completion (start ... end)", overflow="fold")
    for name in table_values:
        table.add_column(shown(name, 40), justify="right")
    for i, sample in enumerate(samples[:limit]):
        cells = [Text(str(i)), shown(sample.get("answer", ""), 20), shown(_preview(completion_text(sample["completion"]), width), 4 * width)]
        cells += [Text(f"{values[i]:.2f}") for values in table_values.values()]
        table.add_row(*cells)
    flat = [f"{name} is {values[0]:g} on every sample" for name, values in table_values.items()
            if name != "total" and values and all(v == values[0] or (math.isnan(v) and math.isnan(values[0])) for v in values)]
    if flat:
        table.caption = shown("; ".join(flat), 400, style="bold yellow")
    return table


def _preview(text: str, width: int) -> str:
    text = " ".join(text[:width].split()) if len(text) <= width else (
        " ".join(text[: width // 3].split()) + " ... " + " ".join(text[-(2 * width) // 3:].split()))
    return text
