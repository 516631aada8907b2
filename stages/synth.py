"""`r1v3 data synth`: synthetic visual reasoning problems as a dataset artifact."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Union

from r1v3 import data, synthetic
from r1v3.artifacts import Artifact, Store, check_name
from r1v3.config import to_dict
from r1v3.errors import UserError


@dataclass
class Config:
    name: str
    n: int = 500
    seed: int = 0
    # add `messages` for chat SFT in one of synthetic.MESSAGE_STYLES: think (reasoning prompt, a template
    # teacher's <think> over the full caption), brief (a short grounded <think>), direct (official prompt,
    # bare answer), caption (describe -> short caption, for connector alignment). true means think: the
    # flag this option started as.
    messages: Union[bool, Literal["think", "brief", "direct", "caption"]] = False
    tasks: list[str] = field(default_factory=list)  # a subset of synthetic.TASKS; default all
    difficulty: list[str] = field(default_factory=list)  # normal and/or hard; default both


def run(cfg: Config, store: Store) -> Artifact:
    check_name(cfg.name)
    if cfg.n < 10:
        raise UserError(f"n must be at least 10 to fill train/validation/test splits, got {cfg.n}")
    splits = synthetic.generate(cfg.n, seed=cfg.seed, tasks=cfg.tasks, difficulties=cfg.difficulty)
    if cfg.messages:
        style = "think" if cfg.messages is True else cfg.messages
        splits = {k: synthetic.with_solutions(v, style) for k, v in splits.items()}
    with store.publish(cfg.name, "dataset", stage="synth", config=to_dict(cfg)) as draft:
        data.write_splits(draft.path, splits)
        rows = [r for split in splits.values() for r in split]
        draft.metrics.update(
            splits={k: len(v) for k, v in splits.items()},
            subjects=dict(sorted(Counter(r["subject"] for r in rows).items())),
            question_types=dict(Counter(r["question_type"] for r in rows)),
            difficulty=dict(Counter(r["difficulty"] for r in rows)),
        )
    return draft.artifact
