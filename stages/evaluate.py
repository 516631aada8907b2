"""`r1v3 eval BENCHMARK`: generate answers to a benchmark's rows and score them by its official rules.

The stage is the same for every benchmark (r1v3/benchmarks.py: a module with its rows, prompts and
scorer); `Config` is `eval mmmu`'s, `MathVistaConfig` `eval mathvista`'s. Two modes:
- model mode (`--model REF --data REF`): prompts every row, generates `samples` responses each,
  judges them, and publishes an eval artifact (predictions.jsonl, scores.json, chart.png).
  Responses are appended to a work file as batches finish; `--resume` continues from it.
- responses mode (`--responses PATH`): re-scores saved responses in the benchmark's official
  output layout without a model.

`eval mmmu` works on any problem dataset: subjects outside MMMU's 30 count per subject and overall.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

from r1v3 import benchmarks, config, data, jsonl, mathvista, mmmu, models, plots
from r1v3.artifacts import Artifact, Store, check_name, published
from r1v3.config import BackendSettings, retold, setting, to_dict
from r1v3.errors import UserError

PAPER_BUDGET = 16384  # R1V3's MMMU setting for the think template


@dataclass
class Config(BackendSettings):
    """`run` returns (artifact or None, scores): with --responses and no --name it scores without publishing."""

    STAGE = "eval-mmmu"
    SECTIONS = ("eval",)  # the section name of recipes written before it matched the stage name
    BENCHMARK: ClassVar[str] = "mmmu"
    RESCORING: ClassVar[tuple[str, ...]] = ("responses", "name", "style")  # the settings --responses takes
    DEFAULTS = {
        "max_new_tokens": lambda c: PAPER_BUDGET if c.style == "reasoning" else c.benchmark().OFFICIAL_BUDGET,
        "temperature": lambda c: 1.0 if c.style == "reasoning" else 0.0,
    }

    model: Optional[str] = setting(None, help="Model artifact to evaluate.", artifact="input")
    data: Optional[str] = setting(None, help="Dataset artifact (from `r1v3 data mmmu`, or any problem dataset).", artifact="input")
    name: Optional[str] = setting(None, help="Eval artifact name (optional with --responses: publish only if given).", artifact="output")
    responses: Optional[str] = setting(
        None, metavar="PATH", help="Re-score saved responses: <Subject>/output.json dir or one JSON list.", reads=config.path_digests)
    split: str = setting("validation", help="Dataset split.")
    subjects: list[str] = setting([], shown="all in the split", help="Only these subjects, comma-separated.")
    limit: Optional[int] = retold(BackendSettings, "limit", help="Only the first N items (after --subjects), for quick checks.")
    style: Literal["official", "reasoning"] = setting(
        lambda c: "official" if c.responses else "reasoning", shown="reasoning; official with --responses",
        help="official: the benchmark's prompt; reasoning: <think> + \\boxed{}.")
    max_new_tokens: int = retold(BackendSettings, "max_new_tokens", shown=f"{PAPER_BUDGET} reasoning, {mmmu.OFFICIAL_BUDGET} official")
    temperature: float = retold(BackendSettings, "temperature", shown="1.0 reasoning (the paper), 0 official")
    samples: int = retold(BackendSettings, "samples", help="Responses per item k; reports mean@k and pass@k (the paper: 5).")
    ban_words: list[str] = setting([], metavar="WORD,..", shown="none", help=(
        "Words the model may not write, banned while decoding (the paper's NoWait: Wait,Alternatively,Hmm): each "
        "word as given and with its first letter's case swapped, alone and after a space, as the model's "
        "tokenizer spells them (transformers bad_words_ids, vLLM bad_words); another tokenization of the same "
        "letters is not refused."))
    resume: bool = retold(BackendSettings, "resume", help="Continue an interrupted eval of the same name without redoing finished items.")
    blank_images: bool = setting(False, help=(
        "Replace every image with a white one of its size: the score without looking (a blind baseline), so a "
        "gain can be told apart from learning the answer format and the answer priors."))

    def check(self) -> None:
        if self.name:
            check_name(self.name)
        if self.responses:
            fields = config.fields_by_name(self)
            ignored = [k for k in fields if k in self._given and k not in self.RESCORING
                       and (callable(d := config.default_of(type(self), fields[k])) or getattr(self, k) != d)]
            if ignored:
                raise UserError(f"--responses re-scores saved responses: {', '.join(ignored)} do not apply to it")
            return
        if not (self.model and self.data):
            raise UserError("give --model REF and --data REF (or --responses PATH to re-score saved responses)")
        if not self.name:
            raise UserError("give --name for the eval artifact")
        if self.samples > 1 and self.temperature == 0:
            raise UserError("--samples > 1 with --temperature 0 gives k identical greedy answers; set temperature > 0")
        bad = [w for w in self.ban_words if not w.strip() or w != w.strip()]
        if bad:
            raise UserError(f"{self.label('ban_words')}: {bad[0]!r} is not a word; give words without blanks, "
                            "e.g. Wait,Alternatively,Hmm")

    @classmethod
    def benchmark(cls):
        return benchmarks.get(cls.BENCHMARK)

    def scoring(self) -> dict:
        """The benchmark's own scoring options (judge's keyword arguments)."""
        return {}


@dataclass
class MathVistaConfig(Config):
    """`r1v3 eval mathvista`: the same stage on MathVista rows, scored by the official calculate_score.py."""

    STAGE = "eval-mathvista"
    SECTIONS = ()
    BENCHMARK: ClassVar[str] = "mathvista"
    RESCORING: ClassVar[tuple[str, ...]] = (*Config.RESCORING, "integer_answers")

    data: Optional[str] = retold(Config, "data", help="Dataset artifact (from `r1v3 data mathvista`).")
    responses: Optional[str] = retold(Config, "responses", help=(
        "Re-score saved responses: the official output JSON (pid -> problem); an `extraction` field is scored "
        "as the official script scores it, else the response is read by our rules."))
    split: str = retold(Config, "split", default="testmini")
    subjects: list[str] = retold(Config, "subjects", help=(
        "Only these tasks (MathVista's metadata task, e.g. 'geometry problem solving'), comma-separated."))
    max_new_tokens: int = retold(Config, "max_new_tokens", shown=f"{PAPER_BUDGET} reasoning, {mathvista.OFFICIAL_BUDGET} official")
    integer_answers: Literal["float", "int"] = setting("float", help=(
        "How the official scorer reads an integer answer: float = int(float(x)), calculate_score.py as published "
        "('1.5' counts as 1); int = int(x) ('1.5' is no answer), the scorer that wrote most of the repository's "
        "results/ scores."))

    def scoring(self) -> dict:
        return {"integer": self.integer_answers}


def load_rows(cfg: Config, dataset: Artifact) -> list[dict]:
    rows = data.load_split(dataset, cfg.split)
    if cfg.subjects:
        present = {r["subject"] for r in rows}
        wanted = set()
        for s in cfg.subjects:
            name = s if s in present else cfg.benchmark().subject_name(s)
            if name not in present:
                raise UserError(f"{dataset.ref} [{cfg.split}]: no rows of subject {name!r}")
            wanted.add(name)
        rows = [r for r in rows if r["subject"] in wanted]
    rows = rows[: cfg.limit] if cfg.limit else rows
    if not rows:
        raise UserError(f"{dataset.ref} [{cfg.split}]: no rows to evaluate")
    if cfg.blank_images:
        from PIL import Image

        rows = [dict(r, images=[Image.new("RGB", im.size, "white") for im in r["images"]]) for r in rows]
    return rows


PARTIAL = "predictions.partial.jsonl"  # raw responses, one line per sample, appended as batches finish


def _is_response(rec) -> bool:
    return (isinstance(rec.get("response"), str) and isinstance(rec.get("n_tokens"), int)
            and isinstance(rec.get("finish_reason"), str))


def _response(request, sample: int, c) -> dict:
    # raw responses only: judging happens once, at the end, so a resumed run is scored by one version
    # of the rules
    return {"response": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason}


def _inputs(cfg: Config, store: Store) -> tuple[Artifact, Artifact, list[dict], list]:
    model = store.resolve(cfg.model, kind="model")
    dataset = store.resolve(cfg.data, kind="dataset")
    models.vlm_config(model.path, model.ref, f"eval {cfg.BENCHMARK}")
    rows = load_rows(cfg, dataset)
    requests = [cfg.benchmark().request(r, cfg.style) for r in rows]  # every prompt checked before any work
    return model, dataset, rows, requests


def generate(cfg: Config, work, model: Artifact, rows: list[dict], requests: list,
             where: str) -> tuple[dict[str, list[dict]], dict]:
    """Each request's samples, the interrupted run's included when `work` resumed it; and timing.
    `where` names the rows in errors (dataset and split)."""
    from r1v3.generation import generate_records, open_backend, sampling_of

    done, n = generate_records(work.path / PARTIAL, requests, sampling_of(cfg, ban_words=tuple(cfg.ban_words)),
                               _response, lambda: open_backend(cfg, model.path, rows, where), resumed=work.resumed,
                               valid=_is_response)
    timing = {"generation_seconds": n["seconds"], "generated_tokens": n["generated_tokens"],
              "items_generated": n["requests_asked"], "items_resumed": n["requests_resumed"]}
    return {q.id: [done[q.id][k] for k in range(cfg.samples)] for q in requests}, timing


def judge_all(cfg: Config, rows: list[dict], done: dict[str, dict]) -> list[dict]:
    judge, options = cfg.benchmark().judge, cfg.scoring()
    return [
        judge(r, s["response"], cfg.style, **options)
        | {"sample": i, "n_tokens": s["n_tokens"], "finish_reason": s["finish_reason"]}
        for r in rows
        for i, s in enumerate(done[r["id"]])
    ]


def scores_for(benchmark, predictions: list[dict], samples: int) -> dict:
    scores = benchmark.aggregate(predictions)
    runs = {}
    for p in predictions:
        runs.setdefault(p.get("sample", 0), []).append(bool(p["correct"]))
    scores["samples"] = samples
    scores[f"mean@{samples}"] = mmmu.mean_at_k(predictions)
    scores[f"pass@{samples}"] = mmmu.pass_at_k(predictions, samples)
    scores["per_sample_acc"] = [sum(v) / len(v) for _, v in sorted(runs.items())]
    return scores


def chart(benchmark, scores: dict, path: Path, title: str) -> None:
    groups = (benchmarks.groups(benchmark, scores) or [("", {})])[0][1]
    names = list(groups) + ["Overall"]
    accs = [groups[n][0] * 100 for n in groups] + [scores["overall"]["acc"] * 100]
    with plots.figure(path, figsize=(8, 0.45 * len(names) + 1.2)) as (fig, ax):
        bars = ax.barh(names[::-1], accs[::-1], color=["#444"] + ["#4c72b0"] * (len(names) - 1))
        for bar, acc in zip(bars, accs[::-1]):
            ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, f"{acc:.1f}", va="center", fontsize=8)
        ax.set_xlim(0, 105)
        ax.set_xlabel("accuracy (%)")
        ax.set_title(title, fontsize=10)


def run(cfg: Config, store: Store) -> tuple[Optional[Artifact], dict]:
    bench = cfg.benchmark()
    if cfg.responses:
        predictions = bench.judge_responses(bench.load_responses(cfg.responses), cfg.style, **cfg.scoring())
        samples = max(p["sample"] for p in predictions) + 1
        return publish(cfg, store, predictions, samples, {}, [])
    from r1v3.generation import has_records, resolve_backend

    model, dataset, rows, requests = _inputs(cfg, store)
    # the store is touched only from here; on success the work directory and its lock go
    with store.work(cfg.name, "eval", settings=config.resume_settings(
        cfg, backend=resolve_backend(cfg.backend)),  # vLLM and transformers sample differently for one seed
                    inputs={"model": model, "data": dataset}, resume=cfg.resume,
                    has_progress=has_records(PARTIAL, _is_response)) as work:
        done, timing = generate(cfg, work, model, rows, requests, f"{dataset.ref} split {cfg.split}")
        return publish(cfg, store, judge_all(cfg, rows, done), cfg.samples, timing, [model, dataset])


def publish(cfg: Config, store: Store, predictions: list[dict], samples: int, timing: dict,
            inputs: list[Artifact]) -> tuple[Optional[Artifact], dict]:
    scores = scores_for(cfg.benchmark(), predictions, samples)
    scores["style"] = cfg.style
    scores["benchmark"] = cfg.BENCHMARK  # which module's tables `report` prints
    if not cfg.name:
        return None, scores
    with store.publish(cfg.name, "eval", stage=cfg.STAGE, config=to_dict(cfg), inputs=inputs) as draft:
        (draft.path / "predictions.jsonl").write_text(jsonl.lines(predictions))
        (draft.path / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
        chart(cfg.benchmark(), scores, draft.path / "chart.png", f"{cfg.name}: {cfg.style}, {samples} sample(s), n={scores['overall']['n']}")
        draft.metrics.update(
            acc=scores["overall"]["acc"], n=scores["overall"]["n"],
            parse_failure_rate=scores["parse_failures"]["rate"], **timing,
        )
    return draft.artifact, scores


def report(result: tuple[Optional[Artifact], dict], console, as_json: bool = False) -> None:
    """The benchmark's score tables (or, with --json, its figures on stdout) and what was published."""
    art, scores = result  # scores without an artifact: --responses without --name publishes nothing
    bench = benchmarks.get(scores["benchmark"])
    if as_json:
        print(json.dumps({k: scores[k] for k in bench.JSON_KEYS} | {k: v for k, v in scores.items() if "@" in k},
                         indent=2))
        return
    bench.print_scores(scores, console)
    if art is not None:
        published(art, console)
