"""`r1v3 init`: build an embedded default model (tiny, smol, or the text-only tiny-llm and smol-llm) and publish it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from r1v3 import config, families, models, smol
from r1v3.artifacts import Artifact, Store, check_name, published
from r1v3.config import Settings, setting, to_dict


@dataclass
class Config(Settings):
    STAGE = "init"

    name: str = setting(help="Artifact name for the model.", artifact="output")
    model: Literal["tiny", "smol", "tiny-llm", "smol-llm"] = setting(
        "tiny", help="Which embedded model: the command (init tiny, init smol, init tiny-llm, init smol-llm).")
    family: str = setting("internvl", help=(
        "Family of the tiny model: internvl, qwen2_vl, qwen2_5_vl, qwen3_vl, llava, idefics3 "
        "(smol is InternVL around SmolLM2-135M-Instruct)."))
    seed: int = setting(0, ge=0, le=config.MAX_SEED, help="Random seed of the weights.")

    def check(self) -> None:
        check_name(self.name)


report = published  # what the terminal shows: the artifact published


def run(cfg: Config, store: Store) -> Artifact:
    check_name(cfg.name)
    start = time.perf_counter()
    if cfg.model.endswith("-llm"):  # text-only: to compose with, a distill teacher, trainable by sft on text
        model, processor = smol.smol_llm_to_save() if cfg.model == "smol-llm" else models.build_tiny_llm(seed=cfg.seed)
        kind = {"model_class": "causal-lm", "model_type": model.config.model_type}
    else:
        model, processor = models.build_tiny(cfg.family, seed=cfg.seed) if cfg.model == "tiny" else smol.build_smol(seed=cfg.seed)
        kind = {"family": families.family_of(model).name}
    with store.publish(cfg.name, "model", stage="init", config=to_dict(cfg)) as draft:
        models.save_model(model, processor, draft.path)
        draft.metrics.update(
            **kind,
            parameters=sum(p.numel() for p in model.parameters()),
            build_seconds=round(time.perf_counter() - start, 2),
        )
    return draft.artifact
