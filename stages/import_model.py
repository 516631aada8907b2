"""`r1v3 import-model`: wrap a local Hugging Face model directory as a model artifact.

Files are copied, so the artifact cannot change when the source does; `--link` hard-links
them instead (no second copy of a 70 GB model, but the artifact then shares the source's bytes).
Either way the manifest hashes what was imported.
Pickle-based weights are never imported: safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from r1v3.artifacts import MANIFEST, Artifact, Store, check_name
from r1v3.config import Settings, setting, to_dict
from r1v3.errors import UserError

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
KEEP_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken", ".md"}


@dataclass
class Config(Settings):
    STAGE = "import-model"

    path: str = setting(argument=True, help="A local Hugging Face model directory (config.json + *.safetensors).")
    name: str = setting(help="Artifact name.")
    trust_remote_code: bool = setting(False, help="Allow the model's own Python code (recorded).")
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
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_file}: not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise UserError(f"{cfg_file}: no model_type key")
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" (found {', '.join(sorted(pickles)[:3])}: pickle weights are refused; convert them to safetensors)" if pickles else ""
        raise UserError(f"{path}: no *.safetensors weights{hint}")
    if "auto_map" in cfg and not trust_remote_code:
        raise UserError(f"{path}: this model needs its own Python code (auto_map in config.json); pass --trust-remote-code if you trust it")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UserError(f"{path}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    is_vlm = "vision_config" in cfg
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
    with store.publish(cfg.name, "model", stage="import-model", config={**to_dict(cfg), "path": str(src.resolve())}) as draft:
        for f in files:
            _link_or_copy(f, draft.path / f.name, cfg.link)
        draft.metrics.update(info, skipped_files=skipped)
    return draft.artifact
