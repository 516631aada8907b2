"""The resumable generate-to-records loop that every generating stage runs (eval, difficulty,
distill, select-ckpt), each with its own requests and its own record of one sample.

The work file holds one JSON record per sample, `{"id": request id, "sample": k, ...}` plus what
the stage's `record` keeps, appended and fsynced as each request's samples arrive (r1v3/jsonl.py:
read back up to a torn last line). Resuming reads it back, rewrites it with what was read, and asks
the backend only for what is missing: a request holding samples 0..first-1 is asked for
first..n-1 (Sampling.first), so those are the samples a run from scratch would draw and a larger
`--samples` asks only for the new ones. One progress bar (stderr) covers the whole run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from r1v3 import jsonl
from r1v3.generation.base import Backend, Completion, Progress, Request, Sampling

Records = dict[str, dict[int, dict]]  # {request id: {sample index: record}}


def _is_sample(rec) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("id"), str) and isinstance(rec.get("sample"), int)
            and not isinstance(rec["sample"], bool) and rec["sample"] >= 0)


def read_records(path: Path, valid: Callable[[dict], bool] | None = None, strict: str | None = None) -> Records:
    """The sample records of `path` that `valid` accepts, up to the first line a kill cut short (what
    follows was never acknowledged); with `strict` (a published file), that line is an error instead."""
    done: Records = {}
    for rec in jsonl.read(path, lambda r: _is_sample(r) and (valid is None or valid(r)), strict):
        done.setdefault(rec["id"], {})[rec["sample"]] = rec
    return done


def has_records(file: str, valid: Callable[[dict], bool] | None = None) -> Callable[[Path], bool]:
    """`store.work`'s has_progress for a work directory holding the records file `file`."""
    return lambda work: bool(read_records(work / file, valid))


def sampling_of(cfg, **extra) -> Sampling:
    """The Sampling of a stage's GenerationSettings: all `cfg.samples` of every request."""
    return Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.samples,
                    seed=cfg.seed, **extra)


def missing(ids: list[str], done: Records, samples: int) -> dict[int, list[str]]:
    """Requests still short of `samples`, by the first sample index they lack (samples are saved in
    order, so what a request has is always 0..first-1)."""
    todo: dict[int, list[str]] = {}
    for rid in ids:
        have = done.get(rid, {})
        first = next((j for j in range(samples) if j not in have), samples)
        if first < samples:
            todo.setdefault(first, []).append(rid)
    return todo


def generate_records(
    path: Path,
    requests: list[Request],
    sampling: Sampling,
    record: Callable[[Request, int, Completion], dict],
    open_backend: Callable[[], Backend],
    *,
    resumed: bool = False,
    valid: Callable[[dict], bool] | None = None,
    previous: Records | None = None,
    done: Records | None = None,
    description: str = "generating",
    progress: bool = True,
) -> tuple[Records, dict]:
    """Every request's `sampling.n` samples as records, generating only what `path` (when `resumed`)
    and `previous` (another run's records of the same settings) do not hold yet, and the run's counts.

    `record(request, k, completion)` is sample k's record without its id and sample index;
    `open_backend()` is called only when something is missing. `done`, when given, is filled in place,
    so a caller that catches a failure sees what was saved."""
    done = {} if done is None else done
    done.update(read_records(path, valid) if resumed else {})
    for rid, recs in (previous or {}).items():
        done.setdefault(rid, {}).update({k: r for k, r in recs.items() if k not in done[rid]})
    jsonl.rewrite(path, (r for recs in done.values() for _, r in sorted(recs.items())))
    by_id = {q.id: q for q in requests}
    todo = missing(list(by_id), done, sampling.n)
    counts = {"requests_asked": sum(len(ids) for ids in todo.values()), "outputs_generated": 0,
              "generated_tokens": 0, "seconds": 0.0}
    counts["requests_resumed"] = len(requests) - counts["requests_asked"]
    if not todo:
        return done, counts
    backend = open_backend()
    start = time.perf_counter()  # generation only: loading the model is not part of the rates
    bar = Progress(len(requests), progress, description, counts["requests_resumed"])
    try:
        with open(path, "a") as out:
            for first, ids in sorted(todo.items()):
                rest = dataclasses.replace(sampling, n=sampling.n - first, first=first)
                # saved as the backend yields: what it has yielded is what the run has acknowledged
                for rid, completions in backend.generate([by_id[i] for i in ids], rest):
                    recs = [{"id": rid, "sample": first + j} | record(by_id[rid], first + j, c)
                            for j, c in enumerate(completions)]
                    jsonl.append(out, recs)
                    done.setdefault(rid, {}).update({r["sample"]: r for r in recs})
                    tokens = sum(c.n_tokens for c in completions)
                    counts["outputs_generated"] += len(recs)
                    counts["generated_tokens"] += tokens
                    bar.advance(1, tokens)
    finally:
        bar.close()
        getattr(backend, "close", lambda: None)()
        counts["seconds"] = round(time.perf_counter() - start, 2)
    return done, counts
