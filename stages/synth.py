"""`r1v3 data synth`: synthetic visual reasoning problems as a dataset artifact."""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import Literal, Union

from r1v3 import config, data, synthetic
from r1v3.artifacts import Artifact, Store, check_name, published
from r1v3.config import Settings, setting, to_dict
from r1v3.errors import UserError


@dataclass
class Config(Settings):
    STAGE = "synth"

    name: str = setting(help="Artifact name for the dataset.", artifact="output")
    n: int = setting(500, flag="--problems", aliases=("--n",), ge=10, help=(
        "Number of problems over all splits (at least 10, to fill train/validation/test)."), le=synthetic.MAX_N)
    seed: int = setting(0, ge=0, le=config.MAX_SEED, help="Random seed.")
    # true means think: the flag this option started as
    messages: Union[bool, Literal["think", "brief", "direct", "caption", "reflect"]] = setting(
        False, metavar="STYLE", help=(
        "Add a `messages` conversation per problem for chat SFT. think: the reasoning prompt and a template "
        "teacher's <think> trace + \\boxed{answer}; brief: the same with a one-line trace; direct: the official "
        "prompt and the bare answer; caption: describe the image -> its short caption (connector alignment); "
        "reflect: brief traces of which --reflect-share first misread the image and correct themselves after "
        "\"Wait,\" or reject an alternative after \"Alternatively,\" (probe data for select-ckpt)."),
        shown="none")
    reflect_share: float = setting(synthetic.REFLECT_SHARE, ge=0, le=1, help=(
        "With --messages reflect: the share of rows whose trace corrects itself or weighs an alternative."))
    tasks: list[str] = setting([], shown="all", help=f"Comma-separated subset of {','.join(synthetic.TASKS)}.")
    difficulty: list[str] = setting([], shown="both", help="normal, hard or normal,hard.")

    def check(self) -> None:
        check_name(self.name)
        if "reflect_share" in self._given and self.messages != "reflect":
            raise UserError("--reflect-share (key reflect_share) applies to --messages reflect only")


@contextmanager
def _progress(total: int):
    """advance() for a rich bar on a terminal (drawing a large set takes minutes); a no-op otherwise."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("drawing problems"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("synth", total=total)
        yield lambda: bar.advance(task)


report = published  # what the terminal shows: the artifact published


def run(cfg: Config, store: Store) -> Artifact:
    check_name(cfg.name)
    if cfg.n < 10:
        raise UserError(f"n must be at least 10 to fill train/validation/test splits, got {cfg.n}")
    style = "think" if cfg.messages is True else cfg.messages
    if style and style not in synthetic.MESSAGE_STYLES:
        raise UserError(f"messages style must be one of {', '.join(synthetic.MESSAGE_STYLES)}, got {style!r}")
    # rows are drawn and written a row group at a time: memory stays flat however large n is
    pairs = synthetic.iter_rows(cfg.n, seed=cfg.seed, tasks=cfg.tasks, difficulties=cfg.difficulty)
    counts = {key: Counter() for key in ("subject", "question_type", "difficulty")}
    splits = {}
    with store.publish(cfg.name, "dataset", stage="synth", config=to_dict(cfg)) as draft, _progress(cfg.n) as advance:
        def rows(group):
            for _, row in group:
                for key, counter in counts.items():
                    counter[row[key]] += 1
                advance()
                yield synthetic.with_solutions([row], style, cfg.reflect_share)[0] if style else row

        owner: dict = {}
        for split, group in groupby(pairs, key=lambda pair: pair[0]):
            splits[split] = data.write_split_stream(draft.path, split, rows(group), owner)
        draft.metrics.update(
            splits=splits,
            subjects=dict(sorted(counts["subject"].items())),
            question_types=dict(counts["question_type"]),
            difficulty=dict(counts["difficulty"]),
        )
    return draft.artifact
