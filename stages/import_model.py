"""`r1v3 import-model`: wrap a local Hugging Face model directory as a model artifact.

Files are copied, so the artifact cannot change when the source does; `--link` hard-links
them instead (no second copy of a 70 GB model, but the artifact then shares the source's bytes).
Either way the manifest hashes what was imported.
Pickle-based weights are never imported: safetensors only. Every shard's header is read
(bounded) and checked against the file and against the model its config describes, so a
model that cannot load is refused here rather than in the next stage.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from r1v3 import config, jsonio, models
from r1v3.shards import check_shards
from r1v3.artifacts import MANIFEST, Artifact, Store, check_name, published
from r1v3.config import Settings, setting, to_dict
from r1v3.errors import UserError

KEEP_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken", ".md"}


@dataclass
class Config(Settings):
    STAGE = "import-model"

    path: str = setting(argument=True, help="A local Hugging Face model directory (config.json + *.safetensors).", reads=config.path_digests)
    name: str = setting(help="Artifact name.", artifact="output")
    trust_remote_code: bool = setting(False, help="Allow the model's own Python code (recorded).", result=False)
    # Hard links save a 70 GB copy, but the artifact then shares its bytes with the source: a
    # save_pretrained over the source rewrites them in place, unnoticed until a full verify.
    link: bool = setting(False, help=(
        "Hard-link the files instead of copying (same filesystem; the artifact then shares the source's bytes)."))

    def check(self) -> None:
        check_name(self.name)


def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(os.path.realpath(src), dst)
            return
        except OSError:
            pass  # another filesystem: copy
    shutil.copyfile(src, dst)


def inspect_dir(path: Path, trust_remote_code: bool) -> dict:
    """What kind of model a directory holds, or a UserError saying what is missing."""
    if not path.is_dir():
        raise UserError(f"{path}: not a directory")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
    cfg = jsonio.read(cfg_file, f"{cfg_file}: not valid JSON")
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise UserError(f"{cfg_file}: no model_type key")
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in models.PICKLE_SUFFIXES]
        hint = f" (found {', '.join(sorted(pickles)[:3])}: pickle weights are refused; convert them to safetensors)" if pickles else ""
        raise UserError(f"{path}: no *.safetensors weights{hint}")
    if "auto_map" in cfg and not trust_remote_code:
        raise UserError(f"{path}: this model needs its own Python code (auto_map in config.json); pass --trust-remote-code if you trust it")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UserError(f"{path}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    is_vlm = models.is_vlm_config(cfg)
    return {"model_type": cfg["model_type"], "model_class": "vlm" if is_vlm else "causal-lm"}


def _inside(path: str, roots: list[str]) -> bool:
    return any(os.path.commonpath([root, path]) == root for root in roots)


def files_to_import(src: Path, keep: set[str]) -> tuple[list[Path], list[str]]:
    """(files to import, names skipped). A symlink may only lead inside the directory, or into
    the blobs of the Hugging Face cache snapshot it belongs to: a model directory must not be
    able to pull an arbitrary local file (a key, a credentials file) into the store."""
    real = Path(os.path.realpath(src))
    roots = [str(real)]
    if real.parent.name == "snapshots":  # hub cache: snapshots/<commit>/file -> ../../blobs/<hash>
        roots.append(os.path.realpath(real.parent.parent / "blobs"))
    chosen, skipped = [], []
    for f in sorted(src.iterdir()):
        # an artifact directory's own manifest describes that artifact, not the model
        if f.is_file() and f.suffix in keep and f.name != MANIFEST:
            target = os.path.realpath(f)
            if not _inside(target, roots):
                raise UserError(f"{f}: is a symlink to {target}, outside the model directory; copy the file in instead")
            chosen.append(f)
        elif f.is_file():
            skipped.append(f.name)
    return chosen, skipped


@contextmanager
def _quiet_transformers():
    """transformers prints a load report and progress bars; a refusal here is our one line."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _file_of(key: str, tensors: dict) -> str:
    """The shard holding a model key; transformers may have renamed it (hub key -> module name)."""
    if key in tensors:
        return tensors[key][0]
    tail = key.split(".")[-3:]
    hits = {f for name, (f, _) in tensors.items() if name.split(".")[-3:] == tail}
    return hits.pop() if len(hits) == 1 else "the weights"


def check_loadable(src: Path, model_class: str, tensors: dict, trust_remote_code: bool) -> None:
    """Load the model on the meta device (no memory, no data read) with transformers' own key
    mapping and tied weights, and refuse missing, unexpected or wrongly shaped tensors."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if model_class == "vlm" else AutoModelForCausalLM
    with _quiet_transformers():
        try:
            _, info = auto.from_pretrained(src, device_map="meta", use_safetensors=True, ignore_mismatched_sizes=True,
                                           output_loading_info=True, trust_remote_code=trust_remote_code)
        except (ValueError, KeyError, OSError, RuntimeError, TypeError) as e:
            raise UserError(f"{src}: transformers cannot build this model from its config and weights: "
                            f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
    for key, ckpt_shape, model_shape in info.get("mismatched_keys") or []:
        raise UserError(f"{src / _file_of(key, tensors)}: tensor {key!r} has shape {list(ckpt_shape)} but the "
                        f"config's model expects {list(model_shape)}")
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    if missing:
        raise UserError(f"{src}: the weights lack {len(missing)} tensor(s) the config's model needs, "
                        f"e.g. {missing[0]!r}")
    if unexpected:
        raise UserError(f"{src / _file_of(unexpected[0], tensors)}: tensor {unexpected[0]!r} is not part of the "
                        f"config's model ({len(unexpected)} such tensor(s))")


report = published  # what the terminal shows: the artifact published


def run(cfg: Config, store: Store) -> Artifact:
    check_name(cfg.name)
    src = Path(cfg.path).expanduser()
    info = inspect_dir(src, cfg.trust_remote_code)
    from transformers import AutoConfig

    try:  # catches configs transformers cannot read before anything is written
        AutoConfig.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{src}: transformers cannot read this config: {str(e).splitlines()[0]}") from None
    keep = set(KEEP_SUFFIXES) | ({".py"} if cfg.trust_remote_code else set())
    files, skipped = files_to_import(src, keep)
    check_loadable(src, info["model_class"], check_shards(files), cfg.trust_remote_code)
    with store.publish(cfg.name, "model", stage="import-model", config={**to_dict(cfg), "path": str(src.resolve())}) as draft:
        for f in files:
            _link_or_copy(f, draft.path / f.name, cfg.link)
        draft.metrics.update(info, skipped_files=skipped)
    return draft.artifact
