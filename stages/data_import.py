"""`r1v3 data import`: your own problems (jsonl, parquet, or a local HF dataset dir) as a dataset artifact.

Every row is validated and every image decoded before anything is written, so a bad row
is reported by file, row and key and the store is left untouched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from r1v3 import config, data
from r1v3.artifacts import Artifact, Store, check_name, published
from r1v3.config import Settings, setting, to_dict


@dataclass
class Config(Settings):
    STAGE = "data-import"

    path: str = setting(argument=True, help=(
        "A .jsonl (image paths relative to it), .parquet, or a local Hugging Face dataset directory."), reads=config.path_digests)
    name: str = setting(help="Artifact name for the dataset.", artifact="output")
    split: Optional[str] = setting(None, help=(
        "The split to take from a multi-split source; also the name it is stored under."))
    as_split: str = setting("train", help="The split name for a single-file source.")

    def check(self) -> None:
        check_name(self.name)


report = published  # what the terminal shows: the artifact published


def run(cfg: Config, store: Store) -> Artifact:
    check_name(cfg.name)
    rows = data.load_rows(cfg.path, split=cfg.split)
    split = cfg.split or cfg.as_split
    with store.publish(cfg.name, "dataset", stage="data-import", config=to_dict(cfg)) as draft:
        data.write_splits(draft.path, {split: rows})
        draft.metrics.update(
            splits={split: len(rows)},
            subjects=dict(sorted(Counter(r["subject"] for r in rows).items())),
            question_types=dict(Counter(r["question_type"] for r in rows)),
        )
    return draft.artifact
