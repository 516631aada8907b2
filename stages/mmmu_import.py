"""`r1v3 data mmmu`: a local (or hub) copy of MMMU as a dataset artifact of problem rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from r1v3 import config, data, mmmu
from r1v3.artifacts import Artifact, Store, check_name, published
from r1v3.config import HubCopySettings, setting, to_dict
from r1v3.errors import UserError

HUB_REPO = "MMMU/MMMU"


@dataclass
class Config(HubCopySettings):
    STAGE = "data-mmmu"

    path: Optional[str] = config.retold(HubCopySettings, "path", help=(
        "Local MMMU copy laid out as on the hub (<Subject>/<split>-*.parquet)."))
    split: Literal["dev", "validation"] = setting("validation", help=(
        "The test split's answers are withheld by the benchmark: nothing to score."))
    subjects: list[str] = setting([], shown="all 30", help="Subject folder names or short names, comma-separated.")

    def check(self) -> None:
        super().check()
        for subject in self.subjects:  # a misspelt subject is refused before any download
            mmmu.subject_name(subject)


def _download(cfg: Config, subjects: list[str]) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id=HUB_REPO,
            repo_type="dataset",
            revision=cfg.revision,
            allow_patterns=[f"{s}/{cfg.split}-*" for s in subjects],
        )
    except Exception as e:  # offline, unknown revision, ...: the hub client's own message says which
        raise UserError(f"cannot download {HUB_REPO}@{cfg.revision}: {str(e).splitlines()[0]}") from None
    return Path(local), Path(local).name  # snapshots/<commit>


report = published  # what the terminal shows: the artifact published


def run(cfg: Config, store: Store) -> Artifact:
    check_name(cfg.name)
    subjects = [mmmu.subject_name(s) for s in cfg.subjects] or list(mmmu.SUBJECTS)
    if cfg.from_hub == (cfg.path is not None):
        raise UserError("give exactly one of --path DIR (a local copy) or --from-hub")
    source, commit = (_download(cfg, subjects) if cfg.from_hub else (Path(cfg.path), None))
    rows = mmmu.import_local(source, cfg.split, subjects)
    with store.publish(cfg.name, "dataset", stage="data-mmmu", config=to_dict(cfg)) as draft:
        data.write_splits(draft.path, {cfg.split: rows})
        draft.metrics.update(
            rows=len(rows),
            subjects=len({r["subject"] for r in rows}),
            images=sum(len(r["images"]) for r in rows),
            multiple_choice=sum(r["question_type"] == "multiple-choice" for r in rows),
            **({"hub_commit": commit} if commit else {}),
        )
    return draft.artifact
