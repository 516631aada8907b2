"""`r1v3 distill`: verified reasoning traces for cold-start SFT from a text-only teacher.

The teacher never sees pixels: for each problem row it reads the prompt `template` filled with
the row's `caption` (the image's text rendering), question, options and an instruction to reason
and answer in \\boxed{}. Teachers: `smol` (SmolLM2-135M-Instruct, packaged), a text-only model
artifact (transformers, or vLLM with --backend vllm), or an OpenAI-compatible endpoint
(`--teacher http://host:port/v1 --teacher-model NAME`; the key is read from $`api_key_env`, and
`api_key_env: ""` means the endpoint takes no key).

Rejection sampling, up to `samples` outputs per problem, each judged in this order (the first
failed check is the reason recorded in attempts.jsonl):
- think block. An R1-style output `[<think>]reasoning</think> final`: the reasoning is the
  block's content (the opening tag may be missing, as when the chat template opened it); one
  `</think>`, at most one `<think>` before it, nothing but blanks before `<think>`, else
  "malformed think"; `<think>` without `</think>` is "unclosed think". A plain instruct output
  without tags: the reasoning is the text before the sentence (or line) holding the last \\boxed{}.
  Either way the final part needs a \\boxed{} ("no boxed answer").
- the answer: `answers.extract` then `answers.verify` against the row's answer, the very calls
  of the RL accuracy reward and the reasoning eval ("no answer", "wrong answer").
- length of the reasoning in characters within [min_think_chars, max_think_chars].
- runaway repetition: the reasoning's zlib compression ratio (bytes / compressed bytes) at most
  `max_compression_ratio` (prose compresses 2-3x; a loop compresses far more).
- leak of the text rendering: phrases such as "the caption says" / "the given description" are
  rewritten to "the image shows" / "the image" (LEAK_REWRITES); a trace that still says
  caption/description/text rendering is rejected ("caption leak"): the student sees only pixels.
Of the traces that pass, at most `keep` per problem are kept, shortest reasoning first (an exact
repeat of a kept one is "duplicate", the rest "beyond keep").

Output rows: the problem row (images, ids) with `messages` in the think template: the reasoning
prompt of `r1v3 eval mmmu --style reasoning` as the user turn, `<think>reasoning</think>` then
\\boxed{row answer} as the assistant turn; the k-th kept trace of a problem gets id `ID~k` (k>1).
Every teacher output with its verdict is published in attempts.jsonl, the report in report.json
(and the manifest), a length histogram in lengths.png.

Resuming: outputs are appended and fsynced to the work directory as they arrive; `--resume`
continues an interrupted run without asking again for the samples it has, and a larger
`--samples` asks only for the missing ones (Sampling.first). After publishing, `--extend REF`
starts from REF's attempts.jsonl (same teacher, template, sampling and data) the same way.
`samples`, `keep`, the filters and the transport settings are not part of the resume key:
judging happens once, at the end, over everything generated.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Optional

from r1v3 import answers, config, data, jsonl, mmmu, models, plots, prompts, smol
from r1v3.artifacts import Artifact, Store, check_name, printable, published, sha256_file, shown
from r1v3.config import BackendSettings, retold, setting, to_dict
from r1v3.errors import NothingKept, UserError

SMOL = "smol"
DEFAULT_TEMPLATE = prompts.TEACHER_TEMPLATE
ATTEMPTS = "attempts.jsonl"


@dataclass
class Config(BackendSettings):
    STAGE = "distill"
    DEFAULTS = {"samples": 4, "max_new_tokens": 4096}

    teacher: str = setting(help=f"{SMOL} (SmolLM2-135M-Instruct), a text-only model artifact, or an "
                                "OpenAI-compatible endpoint http(s)://host:port/v1.", artifact="input")
    data: str = setting(help="Problem dataset artifact; every row needs a caption (the image's text rendering).", artifact="input")
    name: str = setting(help="Artifact name for the trace dataset.", artifact="output")
    teacher_model: Optional[str] = setting(None, help="Model name at the endpoint (with an http(s) --teacher).")
    split: str = setting("train", help="Dataset split to distill; the traces are published under the same split.")
    # judging happens once, at the end, over everything generated: more samples or problems continue a run
    limit: Optional[int] = retold(BackendSettings, "limit", help="Only the first N problems, for quick checks.",
                                  resumable=True)
    samples: int = retold(BackendSettings, "samples", help="Teacher outputs per problem k (rejection sampling).",
                          resumable=True)
    temperature: float = retold(BackendSettings, "temperature", help="Sampling temperature; 0 is greedy (then --samples 1).")
    backend: Literal["auto", "transformers", "vllm"] = retold(BackendSettings, "backend", help=(
        "Local teachers: auto = vllm when CUDA and vLLM are present, else transformers."))
    # distill counts it with the transport settings (concurrency, timeout): not part of its resume key
    tensor_parallel_size: int = retold(BackendSettings, "tensor_parallel_size", result=False)
    keep: int = setting(1, ge=1, help="At most this many verified traces per problem, shortest first.", resumable=True, le=config.MAX_SAMPLES)
    template: str = setting(DEFAULT_TEMPLATE, shown="a description-reading prompt", help=(
        "Teacher prompt; placeholders {caption}, {question}, {options} (one '(A) text' line each), "
        "{instruction} (reason, then \\boxed{} answer); {{ and }} are literal braces."))
    min_think_chars: int = setting(20, ge=1, help="Shortest reasoning kept, in characters.", resumable=True, le=config.MAX_CHARS)
    max_think_chars: int = setting(32000, ge=1, help="Longest reasoning kept, in characters.", resumable=True, le=config.MAX_CHARS)
    max_compression_ratio: float = setting(4.0, gt=1, help=(
        "Runaway-repetition filter: a reasoning whose zlib compression ratio exceeds this is rejected."), resumable=True)
    extend: Optional[str] = setting(None, metavar="REF", help=(
        "A previous distill dataset of the same teacher, template, sampling and data: reuse its "
        "attempts and ask only for missing samples."), artifact="input", resumable=True)
    api_key_env: str = setting("OPENAI_API_KEY", help="Environment variable holding the endpoint's API key; "
                                                      "empty: the endpoint takes no key.", result=False)
    concurrency: int = setting(4, ge=1, help="HTTP teacher: calls in flight at once.", result=False, le=config.MAX_DEVICES)
    max_retries: int = setting(3, ge=0, help="HTTP teacher: retries of a failed call, with back-off.", result=False, le=100)
    timeout: float = setting(600.0, gt=0, help="HTTP teacher: seconds per call (connect and whole answer).", result=False)

    def check(self) -> None:
        check_name(self.name)
        prompts.fill(self.template, {k: "" for k in prompts.PLACEHOLDERS})
        if is_url(self.teacher):
            if not self.teacher_model:
                raise UserError(f"--teacher {self.teacher} is an endpoint: give --teacher-model NAME (teacher_model)")
            if self.backend != "auto":
                raise UserError(f"--backend {self.backend} (backend) applies to local teachers, not to an endpoint")
        elif self.teacher_model:
            raise UserError("--teacher-model (teacher_model) names a model at an endpoint; "
                            f"--teacher {self.teacher} is not an http(s) URL")
        if self.teacher == SMOL and self.backend == "vllm":
            raise UserError(f"--teacher {SMOL} runs on the transformers backend (a GGUF file); drop --backend vllm")
        if self.samples > 1 and self.temperature == 0:
            raise UserError("--samples > 1 with --temperature 0 gives k identical greedy outputs; set temperature > 0")
        if self.min_think_chars > self.max_think_chars:
            raise UserError(f"--min-think-chars {self.min_think_chars} exceeds --max-think-chars {self.max_think_chars}")


def is_url(teacher: str) -> bool:
    return teacher.startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------------
# the filters


class Verdict(NamedTuple):
    reason: str  # "passed" or why it was rejected
    reasoning: str  # the think block, leaks rewritten ("" when rejected before it was read)
    answer: Optional[str]  # the extracted answer
    correct: bool  # the answer verifies, whatever the other checks say


def think_block(text: str) -> tuple[Optional[str], str]:
    """(reasoning, "") or (None, why not): see the module docstring for the mapping."""
    opens, closes = text.count(answers.THINK_OPEN), text.count(answers.THINK_CLOSE)
    if closes == 0:
        if opens:
            return None, "unclosed think"
        box = max(text.rfind(marker) for marker in ("\\boxed", "\\fbox"))
        if box < 0 or not _boxed(text):
            return None, "no boxed answer"
        before = text[:box]
        cut = max(before.rfind("\n"), *(before.rfind(end) + 1 for end in (". ", "? ", "! ")))
        reasoning = before[:cut] if cut > 0 and before[:cut].strip() else before
        return reasoning.strip(), ""
    close = text.find(answers.THINK_CLOSE)
    start = text.find(answers.THINK_OPEN)
    if closes > 1 or opens > 1 or start > close or (start > 0 and text[:start].strip()):
        return None, "malformed think"
    start = start + len(answers.THINK_OPEN) if opens else 0
    if not _boxed(text[close:]):
        return None, "no boxed answer"
    return text[start:close].strip(), ""


def _boxed(final: str) -> bool:
    """A closed, non-blank last \\boxed{} (an empty box is no answer, as for the format reward)."""
    found = answers.last_boxed(final[-answers.MAX_FINAL_CHARS:])
    return bool(found and found.strip())


def compression_ratio(text: str) -> float:
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw, 6)) if raw else 0.0


_RENDERING = r"(?:the|this|that)\s+(?:given\s+|provided\s+|above\s+)?(?:image\s+)?(?:caption|description|text rendering)"
_OF_IMAGE = r"(?:\s+of\s+the\s+image)?"
LEAK_REWRITES = (
    (re.compile(rf"\b{_RENDERING}{_OF_IMAGE}\s+(?:says|states|mentions|tells us|reads|indicates|shows|lists)\b",
                re.IGNORECASE), "the image shows"),
    (re.compile(rf"\b{_RENDERING}{_OF_IMAGE}\b", re.IGNORECASE), "the image"),
    (re.compile(r"\bas described\b", re.IGNORECASE), "as shown"),
)
LEAK = re.compile(r"\b(?:captions?|descriptions?|text rendering)\b", re.IGNORECASE)


def rewrite_leaks(text: str) -> str:
    """The documented rewrites, keeping a capital at a sentence start."""
    for pattern, plain in LEAK_REWRITES:
        text = pattern.sub(lambda m, plain=plain: plain.capitalize() if m.group(0)[0].isupper() else plain, text)
    return text


def judge(text: str, row: dict, cfg: Config) -> Verdict:
    opts = list(row["options"]) or None
    found = answers.extract(text, options=opts, question_type=row["question_type"])
    correct = answers.verify(found.answer, row["answer"], question_type=row["question_type"], options=opts)
    reasoning, why = think_block(text)
    if reasoning is None:
        return Verdict(why, "", found.answer, correct)
    if not correct:
        return Verdict("no answer" if found.answer is None else "wrong answer", "", found.answer, correct)
    if len(reasoning) < cfg.min_think_chars:
        return Verdict("too short", "", found.answer, correct)
    if len(reasoning) > cfg.max_think_chars:
        return Verdict("too long", "", found.answer, correct)
    if compression_ratio(reasoning) > cfg.max_compression_ratio:
        return Verdict("repetition", "", found.answer, correct)
    reasoning = rewrite_leaks(reasoning)
    if LEAK.search(reasoning):
        return Verdict("caption leak", "", found.answer, correct)
    return Verdict("passed", reasoning, found.answer, correct)


def assistant_turn(reasoning: str, row: dict) -> str:
    return f"{answers.THINK_OPEN}{reasoning}{answers.THINK_CLOSE}\n\\boxed{{{row['answer']}}}"


# ---------------------------------------------------------------------------------------------
# inputs and the teacher


def load_rows(cfg: Config, dataset: Artifact) -> list[dict]:
    rows = data.load_split(dataset, cfg.split)[: cfg.limit]
    if not rows:
        raise UserError(f"{dataset.ref} [{cfg.split}]: no rows to distill")
    for i, row in enumerate(rows):
        if not row["caption"].strip():
            raise UserError(
                f"{dataset.ref} [{cfg.split}] row {i} (id {row['id']!r}): no caption; a text-only teacher reads the "
                "image's text rendering: import the rows with a `caption` field, or distill a dataset that has one")
    return rows


class Teacher(NamedTuple):
    label: str  # how errors and the report name it
    settings: dict  # what identifies its outputs, for the resume key
    artifact: Optional[Artifact]


def resolve_teacher(cfg: Config, store: Store) -> Teacher:
    """Everything checkable without loading weights (or calling the endpoint)."""
    if is_url(cfg.teacher):
        from r1v3.generation import api_key

        if cfg.api_key_env and cfg.api_key_env not in os.environ:
            raise UserError(f"--teacher {cfg.teacher}: the API key variable ${cfg.api_key_env} is not set; export "
                            "it, or give --api-key-env '' (api_key_env) for an endpoint that takes no key")
        try:
            api_key(cfg.api_key_env)  # a key no header can carry is refused before any work
        except UserError as e:
            raise UserError(f"--teacher {cfg.teacher}: {e}") from None
        return Teacher(f"{cfg.teacher_model} at {cfg.teacher}",
                       {"endpoint": cfg.teacher.rstrip("/"), "model": cfg.teacher_model, "backend": "http"}, None)
    if cfg.teacher == SMOL:
        gguf = smol.smol_gguf_path()
        return Teacher("smol (SmolLM2-135M-Instruct)",
                       {"file": gguf.name, "sha256": sha256_file(gguf), "backend": "transformers"}, None)
    art = store.resolve(cfg.teacher, kind="model")
    try:
        model_config = models.read_config(art.path, trust_remote_code=cfg.trust_remote_code)
    except UserError as e:
        raise UserError(f"--teacher {cfg.teacher}: {e}") from None
    if models.is_vlm_config(model_config) or art.metrics.get("model_class") == "vlm":
        raise UserError(f"--teacher {cfg.teacher}: {art.ref} is a vision-language model ({model_config.model_type}); "
                        f"distill takes a text-only LLM (import-model of a causal LM, or {SMOL})")
    from r1v3.generation import resolve_backend

    return Teacher(art.ref, {"backend": resolve_backend(cfg.backend)}, art)


def open_backend(cfg: Config, teacher: Teacher):
    from r1v3.generation import OpenAIBackend, TransformersBackend, open_backend

    if is_url(cfg.teacher):
        return OpenAIBackend(cfg.teacher, cfg.teacher_model, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                             max_retries=cfg.max_retries, concurrency=cfg.concurrency, progress=False)
    if teacher.artifact is None:
        return TransformersBackend.on_device(*smol.load_smol_llm(), batch_size=cfg.batch_size, progress=False)
    return open_backend(cfg, teacher.artifact.path, text_only=True)


def generation_settings(cfg: Config, teacher: Teacher) -> dict:
    """What decides the teacher's outputs: the resume key, and what --extend must match."""
    return config.resume_settings(cfg, teacher_settings=teacher.settings)


# ---------------------------------------------------------------------------------------------
# attempts: one line per teacher output, appended as they arrive


RAW_KEYS = ("id", "sample", "response", "n_tokens", "finish_reason")


def _is_attempt(rec) -> bool:
    return (isinstance(rec.get("response"), str) and isinstance(rec.get("n_tokens"), int)
            and isinstance(rec.get("finish_reason"), str))


def _attempt(request, sample: int, c) -> dict:
    return {"response": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason}


def read_attempts(path: Path, strict: bool = False) -> dict[str, dict[int, dict]]:
    """{problem id: {sample index: record}}. A line a crash cut short ends the reading (what
    follows was never acknowledged); with `strict` (a published file) it is an error instead."""
    from r1v3.generation import read_records

    found = read_records(path, _is_attempt,
                         "an attempt record (id, sample, response, n_tokens, finish_reason)" if strict else None)
    return {rid: {k: {key: r[key] for key in RAW_KEYS} for k, r in recs.items()} for rid, recs in found.items()}


def _extend_from(cfg: Config, store: Store, dataset: Artifact, settings: dict) -> tuple[Artifact, dict]:
    prev = store.resolve(cfg.extend, kind="dataset")
    if prev.manifest.get("stage") != "distill" or not prev.file(ATTEMPTS).is_file():
        raise UserError(f"--extend {cfg.extend}: {prev.ref} is not a distill dataset (no {ATTEMPTS})")
    theirs = (prev.manifest.get("config") or {}).get("generation") or {}
    differ = sorted(k for k in settings.keys() | theirs.keys() if settings.get(k) != theirs.get(k))
    used = [i.get("digest") for i in prev.manifest.get("inputs", []) if i.get("ref", "").split("@")[0] == dataset.name]
    if differ or dataset.digest not in used:
        what = f"settings {', '.join(differ)}" if differ else f"data (not {dataset.ref})"
        raise UserError(f"--extend {cfg.extend}: {prev.ref} was made with other {what}; its attempts do not "
                        "continue this run")
    return prev, read_attempts(prev.file(ATTEMPTS), strict=True)


def generate(cfg: Config, work, teacher: Teacher, rows: list[dict], previous: dict) -> tuple[dict, dict]:
    """Every problem's samples (the interrupted run's and `previous` ones included), asking the
    teacher only for the missing ones; and what this run asked for."""
    from r1v3.generation import Request, generate_records, sampling_of

    requests = [Request(r["id"], [{"role": "user", "content": prompts.teacher_prompt(r, cfg.template)}]) for r in rows]
    done: dict = {}
    try:
        _, n = generate_records(work.path / ATTEMPTS, requests, sampling_of(cfg), _attempt,
                                lambda: open_backend(cfg, teacher), resumed=work.resumed, valid=_is_attempt,
                                previous=previous, done=done)
    except UserError as e:
        kept = (f"the outputs of {len(done)} problems are saved in {work.path}: rerun with --resume to continue"
                if done else "nothing was saved")
        raise UserError(f"teacher {teacher.label}: {e}; {kept}") from None
    return done, {"problems_asked": n["requests_asked"], "outputs_generated": n["outputs_generated"]}


# ---------------------------------------------------------------------------------------------
# judging, the dataset and the report


def judge_all(cfg: Config, rows: list[dict], done: dict) -> tuple[list[dict], list[dict]]:
    """(published rows, attempt records with their verdicts), samples 0..k-1 of each row."""
    out_rows, attempts = [], []
    for row in rows:
        recs = [done[row["id"]][j] for j in range(cfg.samples)]
        verdicts = [judge(r["response"], row, cfg) for r in recs]
        order = sorted((j for j, v in enumerate(verdicts) if v.reason == "passed"),
                       key=lambda j: (len(verdicts[j].reasoning), j))
        status, kept = {}, []
        for j in order:
            if verdicts[j].reasoning in kept:
                status[j] = ("duplicate", None)
            elif len(kept) >= cfg.keep:
                status[j] = ("beyond keep", None)
            else:
                new_id = row["id"] if not kept else f"{row['id']}~{len(kept) + 1}"
                kept.append(verdicts[j].reasoning)
                status[j] = ("kept", new_id)
                out_rows.append(dict(row, id=new_id, messages=[
                    {"role": "user", "content": mmmu.prompt_text(row, "reasoning")},
                    {"role": "assistant", "content": assistant_turn(verdicts[j].reasoning, row)}]))
        for j, (rec, v) in enumerate(zip(recs, verdicts)):
            reason, new_id = status.get(j, (v.reason, None))
            attempts.append(rec | {"verdict": "kept" if new_id else "rejected", "reason": reason, "answer": v.answer,
                                   "correct": v.correct, "kept_as": new_id, "subject": row["subject"],
                                   "difficulty": row["difficulty"], "chance": chance(row)})
    return out_rows, attempts


def chance(row: dict) -> float:
    """A blind guess's pass rate: 1/options for multiple choice, 0 for open answers."""
    return 1 / len(row["options"]) if row["question_type"] == "multiple-choice" else 0.0


def lucky_share(p: float, c: float) -> float:
    """Of verified multiple-choice answers, the share a guess explains: a teacher that knows a
    fraction q of the problems and guesses the rest passes p = q + (1-q)c, so q = (p-c)/(1-c) and
    the lucky share of its passes is (1-q)c/p."""
    if p <= 0 or c >= 1:
        return 0.0
    q = min(1.0, max(0.0, (p - c) / (1 - c)))
    return min(1.0, (1 - q) * c / p)


def _groups(attempts: list[dict], key) -> dict:
    out: dict[str, dict] = {}
    for a in attempts:
        g = out.setdefault(key(a) or "(none)", {"problems": set(), "outputs": 0, "verified": 0, "kept": 0,
                                                "problems_kept": set()})
        g["problems"].add(a["id"])
        g["outputs"] += 1
        g["verified"] += a["correct"]
        g["kept"] += a["verdict"] == "kept"
        if a["verdict"] == "kept":
            g["problems_kept"].add(a["id"])
    return {k: {"problems": len(g["problems"]), "outputs": g["outputs"], "verified": g["verified"],
                "kept": g["kept"], "problems_kept": len(g["problems_kept"])} for k, g in sorted(out.items())}


def summarize(attempts: list[dict], teacher: Teacher, timing: dict) -> dict:
    n = len(attempts)
    mc = [a for a in attempts if a["chance"] > 0]
    p_mc = sum(a["correct"] for a in mc) / len(mc) if mc else 0.0
    c_mc = sum(a["chance"] for a in mc) / len(mc) if mc else 0.0
    share = lucky_share(p_mc, c_mc)
    kept_mc = sum(a["verdict"] == "kept" for a in mc)
    return {
        "teacher": teacher.label,
        "problems": len({a["id"] for a in attempts}),
        "outputs": n,
        "kept": sum(a["verdict"] == "kept" for a in attempts),
        "pass_rate": round(sum(a["correct"] for a in attempts) / n, 4) if n else 0.0,
        "chance_rate": round(sum(a["chance"] for a in attempts) / n, 4) if n else 0.0,
        "multiple_choice": {"outputs": len(mc), "pass_rate": round(p_mc, 4), "chance_rate": round(c_mc, 4),
                            "lucky_share": round(share, 4), "kept": kept_mc,
                            "kept_lucky_estimate": round(share * kept_mc, 1)},
        "reasons": dict(Counter(a["reason"] for a in attempts).most_common()),
        "subjects": _groups(attempts, lambda a: a["subject"]),
        "difficulty": _groups(attempts, lambda a: a["difficulty"]),
        **timing,
    }


def length_chart(attempts: list[dict], path: Path, title: str) -> None:
    kept = [a["n_tokens"] for a in attempts if a["verdict"] == "kept"]
    rest = [a["n_tokens"] for a in attempts if a["verdict"] != "kept"]
    with plots.figure(path, figsize=(7, 3.5)) as (fig, ax):
        bins = 30 if max(kept + rest, default=0) > 30 else None
        ax.hist([rest, kept], bins=bins or 10, stacked=True, color=["#bbb", "#4c72b0"], label=["rejected", "kept"])
        ax.set_xlabel("teacher output length (tokens)")
        ax.set_ylabel("outputs")
        ax.legend()
        ax.set_title(title, fontsize=10)


# ---------------------------------------------------------------------------------------------


def run(cfg: Config, store: Store) -> Artifact:
    dataset = store.resolve(cfg.data, kind="dataset")
    rows = load_rows(cfg, dataset)
    for row in rows:
        prompts.teacher_prompt(row, cfg.template)  # every prompt before any work
    teacher = resolve_teacher(cfg, store)
    settings = generation_settings(cfg, teacher)
    prev, previous = _extend_from(cfg, store, dataset, settings) if cfg.extend else (None, {})
    inputs = {"data": dataset} | ({"teacher": teacher.artifact} if teacher.artifact else {})
    from r1v3.generation import has_records

    with store.work(cfg.name, "distill", settings=settings, inputs=inputs, resume=cfg.resume,
                    has_progress=has_records(ATTEMPTS, _is_attempt)) as work:
        done, timing = generate(cfg, work, teacher, rows, previous)
        out_rows, attempts = judge_all(cfg, rows, done)
        summary = summarize(attempts, teacher, timing)
        if not out_rows:
            raise NothingKept(f"no trace of {len(attempts)} teacher outputs passed ({_reasons(summary)}): nothing to "
                            f"publish; the outputs stay in {work.path} for --resume with a larger --samples")
        extra = [prev] if prev else []
        return publish(cfg, store, out_rows, attempts, summary, settings, [*inputs.values(), *extra])


def _reasons(summary: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in summary["reasons"].items())


def publish(cfg: Config, store: Store, rows: list[dict], attempts: list[dict], summary: dict, settings: dict,
            inputs: list[Artifact]) -> Artifact:
    with store.publish(cfg.name, "dataset", stage="distill", config=to_dict(cfg) | {"generation": settings},
                       inputs=inputs) as draft:
        data.write_splits(draft.path, {cfg.split: rows})
        (draft.path / ATTEMPTS).write_text(jsonl.lines(attempts))
        (draft.path / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
        length_chart(attempts, draft.path / "lengths.png",
                     f"{cfg.name}: {summary['kept']} of {summary['outputs']} teacher outputs kept")
        draft.metrics.update(summary, splits={cfg.split: len(rows)})
    return draft.artifact


def report(art: Artifact, console) -> None:
    """The published dataset's teacher outputs by subject and difficulty, pass rate against chance, why rows went."""
    from rich.table import Table

    metrics = art.metrics
    for by in ("subjects", "difficulty"):
        table = Table(title=f"distill: teacher outputs by {by.rstrip('s')}")
        for col in (by.rstrip("s"), "problems", "outputs", "verified", "kept", "problems kept"):
            table.add_column(col, justify="left" if col == by.rstrip("s") else "right")
        for name, g in metrics[by].items():  # the dataset's subjects: any text
            table.add_row(shown(name), *(str(g[k]) for k in ("problems", "outputs", "verified", "kept", "problems_kept")))
        console.print(table)
    mc = metrics["multiple_choice"]
    console.print(
        f"teacher {printable(metrics['teacher'])}: pass rate {100 * metrics['pass_rate']:.1f}% (chance "
        f"{100 * metrics['chance_rate']:.1f}%); multiple choice {100 * mc['pass_rate']:.1f}% vs chance "
        f"{100 * mc['chance_rate']:.1f}%: about {100 * mc['lucky_share']:.0f}% of its verified answers are lucky "
        f"guesses, ~{mc['kept_lucky_estimate']:g} of the {mc['kept']} kept multiple-choice traces",
        markup=False, highlight=False)
    console.print(f"kept {metrics['kept']} of {metrics['outputs']} outputs; reasons: {_reasons(metrics)}",
                  markup=False, highlight=False)
    published(art, console)
