"""`r1v3 rl export RUN --step K --name M`: publish one checkpoint of an `r1v3 rl` run as a model
artifact (weights, config, processor; its lineage names the run), for `eval mmmu`, `sft` or
another `rl`. Without --step: the run's final checkpoint, the trained model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Optional

from r1v3 import config
from r1v3.artifacts import Artifact, Store, check_name, published
from r1v3.config import Settings, setting, to_dict
from r1v3.errors import UserError


@dataclass
class Config(Settings):
    STAGE = "rl-export"

    run: str = setting(argument=True, help="Run artifact of `r1v3 rl` (NAME, NAME@vN or a path).", artifact="input")
    name: str = setting(help="Name of the model artifact to publish.", artifact="output")
    step: Optional[int] = setting(None, ge=1, shown="the final checkpoint", help="The checkpoint's optimizer step.", le=config.MAX_STEPS)

    def check(self) -> None:
        check_name(self.name)


report = published  # what the terminal shows: the artifact published


def run(cfg: Config, store: Store) -> Artifact:
    art = store.resolve(cfg.run, kind="run")
    checkpoints = art.metrics.get("checkpoints") or []
    steps = [c["step"] for c in checkpoints if isinstance(c, dict) and isinstance(c.get("step"), int)]
    if not steps:
        raise UserError(f"{art.ref}: the run lists no checkpoints")
    step = cfg.step if cfg.step is not None else max(steps)
    if step not in steps:
        raise UserError(f"{art.ref}: no checkpoint at step {step} (has {', '.join(map(str, steps))}) (--step)")
    prefix = f"checkpoints/step-{step}/"
    files = sorted(rel for rel in art.manifest["files"] if rel.startswith(prefix))
    if not any(rel.endswith(".safetensors") for rel in files) or prefix + "config.json" not in files:
        raise UserError(f"{art.ref}: checkpoint {step} holds no model (config.json and safetensors)")
    metrics = json.loads(art.file(prefix + "metrics.json").read_text()) if prefix + "metrics.json" in files else {}
    with store.publish(cfg.name, "model", stage="rl-export", config=to_dict(cfg), inputs=[art]) as draft:
        for rel in files:
            name = rel[len(prefix):]
            if name != "metrics.json" and "/" not in name:
                shutil.copy2(art.file(rel), draft.path / name)
        draft.metrics.update(run=art.ref, step=step, final=step == max(steps),
                             trainable=art.metrics.get("trainable"), step_metrics=metrics)
    return draft.artifact
