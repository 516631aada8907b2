"""`r1v3 data mathvista`: a local (or hub) copy of MathVista's testmini as a dataset artifact of problem rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from r1v3 import config, data, mathvista
from r1v3.artifacts import Artifact, Store, published
from r1v3.config import HubCopySettings, setting, to_dict
from r1v3.errors import UserError


@dataclass
class Config(HubCopySettings):
    STAGE = "data-mathvista"

    path: Optional[str] = config.retold(HubCopySettings, "path", help=(
        f"Local {mathvista.HUB_REPO} copy laid out as on the hub (data/<split>-*.parquet, images embedded)."))
    split: Literal["testmini"] = setting("testmini", help=(
        "The test split's answers are withheld by the benchmark: nothing to score."))


def _download(cfg: Config) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id=mathvista.HUB_REPO, repo_type="dataset", revision=cfg.revision,
                                  allow_patterns=[f"data/{cfg.split}-*"])
    except Exception as e:  # offline, unknown revision, ...: the hub client's own message says which
        raise UserError(f"cannot download {mathvista.HUB_REPO}@{cfg.revision}: {str(e).splitlines()[0]}") from None
    return Path(local), Path(local).name  # snapshots/<commit>


report = published  # what the terminal shows: the artifact published


def run(cfg: Config, store: Store) -> Artifact:
    source, commit = _download(cfg) if cfg.from_hub else (Path(cfg.path), None)
    rows = mathvista.import_local(source, cfg.split)
    with store.publish(cfg.name, "dataset", stage="data-mathvista", config=to_dict(cfg)) as draft:
        data.write_splits(draft.path, {cfg.split: rows})
        types = Counter(r["meta"]["answer_type"] for r in rows)
        draft.metrics.update(
            rows=len(rows),
            images=sum(len(r["images"]) for r in rows),
            multiple_choice=sum(r["question_type"] == "multiple-choice" for r in rows),
            answer_types=dict(sorted(types.items())),
            **({"hub_commit": commit} if commit else {}),
        )
    return draft.artifact
