"""`r1v3 sft`: supervised fine-tuning of chosen parts of a VLM through TRL's SFTTrainer.

The three uses in the recipe are presets (r1v3/presets/sft/*.yaml; the paper-scale settings are in
recipes/sft/*.yaml):

    connector-align   R1V: train the connector only, lr 2e-4, so a new or re-initialised projector
                      maps vision features into the LLM's embedding space
    cold-start        R1V3: connector + LLM on reasoning traces in the think template
    connector-retune  R1V3 3.4: connector only after RL, lr 1e-5 cosine, warmup 0.03, 2 epochs,
                      early stopping on validation loss

Data is problem rows with `messages` (format "chat") or image + caption rows (format "caption").
Every row is measured with the model's own processor, image tokens included; rows longer than
max_length are dropped and counted, so nothing is ever truncated (a truncated image breaks the
image-token/feature match). The loss is on assistant tokens only ({% generation %} in the chat
template), and only the chosen parts have requires_grad, so the optimizer holds only them.

Checkpoints go to STORE/.work/<name>/sft/checkpoint-N every save_steps; `--resume` continues
from the last complete one with the same data order (seeded sampler, skipped batches, restored
RNG), giving the same weights as an uninterrupted run. The published model artifact carries the
loss curve (metrics and loss.png), parameter counts by part, tokens seen, wall time and the
median time per optimizer step.

Multi-GPU: `accelerate launch --config_file recipes/accelerate/zero3.yaml -m r1v3.cli sft ...`
runs this same code in every process; only the main process publishes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from r1v3 import config, data, models
from r1v3.artifacts import Artifact, Store, check_name, read_run_key, run_key, write_atomic
from r1v3.config import Settings, setting, to_dict
from r1v3.errors import UserError

# Shipped presets, r1v3/presets/sft/<name>.yaml: what each sets; anything given explicitly wins.
PRESETS: dict[str, dict] = config.presets("sft")
THINK = re.compile(r"^\s*<think>.*?</think>\s*\S", re.DOTALL)
CHECKPOINT = re.compile(r"^checkpoint-([0-9]+)$")
# settings that may change between a crash and --resume without changing the result
RESUME_FREE = ("resume", "save_steps", "save_total_limit", "logging_steps")
_TRAIN, _SCHEDULE, _SAVE = "Training", "Schedule", "Checkpoints and evaluation"


@dataclass
class Config(Settings):
    STAGE = "sft"

    model: str = setting(help="Model artifact to fine-tune (a vision-language model).")
    data: str = setting(help="Dataset artifact: rows with `messages`, or image + caption rows with --format caption.")
    name: str = setting(help="Artifact name for the trained model.")
    preset: Optional[str] = setting(
        None, metavar="NAME",
        help="Start from shipped settings (r1v3/presets/sft/NAME.yaml); any setting given wins. "
        + "; ".join(f"{n}: {config.preset_summary('sft', n)}" for n in PRESETS) + ".",
    )
    trainable: str = setting(
        help="Parts to train: connector, vision, llm, all; several joined with commas (+ also works).",
        shown="the preset's", panel=_TRAIN,
        missing="say what to train: --trainable connector|vision|llm|all (join several with commas), "
        f"or --preset {'|'.join(PRESETS)}",
    )
    split: str = setting("train", help="Training split.")
    eval_split: Optional[str] = setting(None, help="Validation split: its loss every eval_steps (connector-retune: validation).")
    format: Literal["chat", "caption"] = setting(
        "chat", help="chat: each row's messages; caption: the row's images + caption_prompt -> its caption.")
    caption_prompt: str = setting("Describe the image in detail.", help="The user turn of --format caption.")
    require_think: bool = setting(False, help="Every assistant turn must be <think>...</think> then an answer.")
    learning_rate: float = setting(2e-5, flag="--lr", aliases=("--learning-rate",), gt=0, panel=_TRAIN,
                                   help="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = setting(
        "cosine", panel=_SCHEDULE, help="Learning-rate schedule after warmup.")
    warmup_ratio: float = setting(0.0, ge=0, lt=1, panel=_SCHEDULE, help=(
        "Fraction of the steps spent warming up from 0; dropped when it would cover every step "
        "(a one-step run would train at learning rate 0)."))
    weight_decay: float = setting(0.0, ge=0, panel=_TRAIN, help="AdamW weight decay.")
    epochs: float = setting(1.0, gt=0, panel=_SCHEDULE, help="Passes over the training split.")
    max_steps: Optional[int] = setting(None, ge=1, panel=_SCHEDULE, help="Optimizer steps; overrides --epochs.")
    batch_size: int = setting(8, ge=1, panel=_TRAIN, help="Rows per device per micro-batch.")
    grad_accum: int = setting(1, ge=1, panel=_TRAIN, help="Micro-batches per optimizer step.")
    max_length: int = setting(16384, ge=1, panel=_TRAIN, help=(
        "Max tokens per row, image tokens included; longer rows are dropped and counted, never truncated."))
    save_steps: int = setting(50, ge=1, panel=_SAVE, help="Checkpoint every N optimizer steps.")
    save_total_limit: int = setting(2, ge=1, panel=_SAVE, help=(
        "Checkpoints kept; two, so one damaged by a crash has a predecessor."))
    eval_steps: Optional[int] = setting(None, ge=1, shown="save_steps", panel=_SAVE,
                                        help="Validation loss every N optimizer steps.")
    early_stopping_patience: int = setting(0, ge=0, panel=_SAVE, help=(
        "Stop after N evaluations without a lower validation loss and publish the best checkpoint; 0 = off."))
    logging_steps: int = setting(1, ge=1, panel=_SAVE, help="Log the loss every N optimizer steps.")
    gradient_checkpointing: bool = setting(False, help="Recompute activations in the backward pass to save memory.")
    bf16: Optional[bool] = setting(None, shown="on when CUDA supports it", help="Train in bfloat16 mixed precision.")
    dtype: Optional[Literal["float32", "bfloat16"]] = setting(None, shown="the checkpoint's", help="Weights dtype at load.")
    seed: int = setting(0, help="Random seed (data order, initialisation).")
    resume: bool = setting(False, help="Continue an interrupted run of the same name from its last complete checkpoint.")
    trust_remote_code: bool = setting(False, help="Allow the model's own Python code.")

    def check(self) -> None:
        check_name(self.name)
        try:
            models.parse_parts(self.trainable)
        except UserError as e:
            raise UserError(f"{self.label('trainable')}: {e}") from None
        self.trainable = "+".join(p.strip() for p in re.split(r"[+,]", self.trainable) if p.strip())
        if self.early_stopping_patience and not self.eval_split:
            raise UserError("early stopping watches the validation loss: give --eval-split (eval_split), "
                            "or early_stopping_patience=0")
        if self.early_stopping_patience and self.save_steps % (self.eval_steps or self.save_steps):
            raise UserError(
                f"with early stopping, save_steps ({self.save_steps}) must be a multiple of eval_steps "
                f"({self.eval_steps}) so the best evaluated step has a checkpoint"
            )
        if self.eval_split and self.eval_split == self.split:
            raise UserError(f"eval_split {self.eval_split!r} is the training split; validate on held-out rows")
        if self.max_steps and self.warmup_for(self.max_steps) != self.warmup_ratio:
            self.notes.append(f"warmup_ratio {self.warmup_ratio} would warm up through all {self.max_steps} "
                              "step(s), so warmup is off for this run")
            self.warmup_ratio = 0.0

    def warmup_for(self, total_steps: int) -> float:
        """The warmup ratio to train `total_steps` optimizer steps with: 0 when warmup (ceil(ratio x steps)
        in transformers) would cover every step, since the first step of a warmup runs at learning rate 0."""
        return 0.0 if math.ceil(self.warmup_ratio * total_steps) >= total_steps else self.warmup_ratio


# ---------------------------------------------------------------------------------------------
# rows -> conversations


def _text(s: str) -> dict:
    return {"type": "text", "text": s}


# An image part carries an empty text so that every part has the same keys (one Arrow struct)
# and a template that prints part['text'] prints nothing for it.
IMAGE_PART = {"type": "image", "text": ""}


def conversation(row: dict, cfg: Config, where: str) -> dict:
    """One row as {"messages": [{role, content: parts}], "images": [...]} in TRL's multimodal layout.

    Each first `<image N>` in a system/user turn becomes that image's part, in place; images no
    turn mentions go first in the first user turn (as TRL does for plain-string messages).
    """
    images = row["images"]
    if cfg.format == "caption":
        if not images:
            raise UserError(f"{where}: caption SFT needs an image, the row has none")
        if not row["caption"].strip():
            raise UserError(f"{where}: caption SFT needs a caption, the row's caption is empty")
        messages = [{"role": "user", "content": cfg.caption_prompt}, {"role": "assistant", "content": row["caption"]}]
    else:
        messages = row["messages"]
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: messages have no assistant turn to train on")
    if images and not any(m["role"] == "user" for m in messages):
        raise UserError(f"{where}: the row has images but its messages have no user turn to show them in")
    if cfg.require_think:
        for m in messages:
            if m["role"] == "assistant" and not THINK.match(m["content"]):
                why = f"preset {cfg.preset} requires" if cfg.preset else "require_think needs"
                raise UserError(
                    f"{where}: assistant turn is not in the think template ({why} '<think>reasoning</think>' "
                    f"then the answer; it starts {m['content'][:40]!r})"
                )
    # images go where a system/user turn mentions them, else first in the first user turn
    shown = [i for i, m in enumerate(messages) if m["role"] != "assistant"]
    lead = next(j for j, i in enumerate(shown) if messages[i]["role"] == "user") if images else 0
    placed, order = data.interleave_images([messages[i]["content"] for i in shown], len(images), where, lead)
    parts_of = dict(zip(shown, placed))
    out = []
    for i, m in enumerate(messages):
        parts = [dict(IMAGE_PART) if p["type"] == "image" else _text(p["text"]) for p in parts_of.get(i, [])]
        out.append({"role": m["role"], "content": parts or [_text(m["content"])]})
    return {"messages": out, "images": [images[i] for i in order]}


def load_examples(dataset: Artifact, split: str, cfg: Config) -> list[dict]:
    splits = data.list_splits(dataset.path)
    if split not in splits:
        raise UserError(f"{dataset.ref}: no split {split!r} (has {', '.join(splits)})")
    rows = data.read_split(dataset.path, split)
    where = f"{dataset.ref} [{split}]"
    if cfg.format == "chat":
        if not any(r["messages"] for r in rows):
            raise UserError(
                f"{where}: no row has `messages`; chat SFT needs conversations (assistant turn in the think "
                "template), e.g. from `r1v3 data synth --messages think`; for image-caption rows use format=caption"
            )
        missing = next((r for r in rows if not r["messages"]), None)
        if missing is not None:
            raise UserError(f"{where} row {missing['id']}: no `messages` (every row of a chat SFT needs them)")
    return [conversation(r, cfg, f"{where} row {r['id']}") | {"id": r["id"]} for r in rows]


def _model_config(model: Artifact) -> dict:
    try:
        config = json.loads(model.file("config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{model.ref}: cannot read config.json: {e}") from None
    if "vision_config" not in config:
        raise UserError(
            f"{model.ref}: is a text-only model ({config.get('model_type')}); sft trains a vision-language model "
            "(compose one with `r1v3 compose` first)"
        )
    models.family_of(config.get("model_type"))  # unsupported families fail here, before any loading
    return config


def training_template(processor, ref: str) -> str | None:
    """The chat template the collator will use: the processor's own if it marks assistant tokens."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = processor.chat_template
    if not template:
        raise UserError(f"{ref}: the processor has no chat template")
    if has_generation_markers(template):
        return None
    try:
        patched = get_training_chat_template(processor)
    except (ValueError, KeyError) as e:
        patched, reason = None, str(e).splitlines()[0]
    else:
        reason = "TRL has no training version of it"
    if not patched:
        raise UserError(
            f"{ref}: the chat template has no {{% generation %}} markers ({reason}); the loss on assistant tokens "
            "only needs them around the assistant turn"
        )
    return patched


def measure(processor, examples: list[dict], template: str | None, where: str) -> list[tuple[int, int]]:
    """(tokens, assistant tokens) per example, rendered exactly as the collator will, image tokens included."""
    from trl.data_utils import prepare_multimodal_messages

    out = []
    for ex in examples:
        enc = processor.apply_chat_template(
            [prepare_multimodal_messages(ex["messages"], images=ex["images"])],
            chat_template=template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": False, "truncation": False, "add_special_tokens": False},
        )
        n, n_assistant = len(enc["input_ids"][0]), int(sum(enc["assistant_masks"][0]))
        if n_assistant == 0:
            raise UserError(f"{where} row {ex['id']}: no assistant token is marked for the loss by the chat template")
        out.append((n, n_assistant))
    return out


def to_dataset(examples: list[dict]):
    import datasets

    features = datasets.Features({
        "messages": datasets.List({
            "role": datasets.Value("string"),
            "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
        }),
        "images": datasets.List(datasets.Image()),
    })
    return datasets.Dataset.from_list([{"messages": e["messages"], "images": e["images"]} for e in examples],
                                      features=features)


# ---------------------------------------------------------------------------------------------
# checkpoints


def _safetensors_ok(path: Path) -> bool:
    """The header parses and the tensors it declares fill the file exactly (a cut-off write does not)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


def checkpoint_is_complete(path: Path) -> bool:
    """Trainer writes trainer_state.json last, after weights, optimizer, scheduler and RNG state."""
    m = CHECKPOINT.match(path.name)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if not m or state.get("global_step") != int(m.group(1)):
        return False
    try:  # a live run may rotate this checkpoint away while we look (save_total_limit)
        weights = list(path.glob("*.safetensors"))
        if weights and not all(_safetensors_ok(w) for w in weights):
            return False
        # plain/DDP runs write optimizer.pt; DeepSpeed a global_step*/ dir; FSDP optimizer_* files
        return any(path.glob("optimizer*")) or any(path.glob("global_step*")) or bool(weights)
    except OSError:
        return False


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint-N directories, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if checkpoint_is_complete(p)]


def _discard(work: Path) -> None:
    """Delete a work directory so that a kill midway leaves no half-deleted checkpoint for --resume:
    renamed aside first (atomic), then deleted, with what earlier killed discards left."""
    if work.exists():
        os.rename(work, work.with_name(f"{work.name}.discarded-{os.getpid()}-{time.time_ns()}"))
    for old in work.parent.glob(f"{work.name}.discarded-*"):
        shutil.rmtree(old, ignore_errors=True)


def _run_key(cfg: Config, model: Artifact, dataset: Artifact) -> str:
    """What must match for --resume to continue the interrupted run."""
    return run_key({k: v for k, v in to_dict(cfg).items() if k not in RESUME_FREE}, model, dataset)


# ---------------------------------------------------------------------------------------------
# training


def _load_weights(model, checkpoint: str) -> None:
    """Load a checkpoint's weights into `model` the way from_pretrained reads them, strictly."""
    loaded = type(model).from_pretrained(checkpoint, use_safetensors=True)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded


def _trainer_class():
    from trl import SFTTrainer

    class Trainer(SFTTrainer):
        """SFTTrainer that loads its own single-process/DDP checkpoints correctly.

        transformers 5.23's Trainer reloads checkpoint weights with load_state_dict(strict=False),
        but save_pretrained writes InternVL, Qwen2-VL, Qwen2.5-VL and LLaVA under their hub key
        names, which are not the module names: nothing matches, and a resumed run silently goes on
        from the base weights (transformers#43701; our kill-and-resume test caught it). DeepSpeed
        and FSDP checkpoints use their own formats and loaders and are left alone.
        """

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            _load_weights(model if model is not None else self.model, resume_from_checkpoint)

        def _load_best_model(self):
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                return super()._load_best_model()
            _load_weights(self.model, self.state.best_model_checkpoint)

        # Resumed from the checkpoint of a run that had already finished (killed while publishing),
        # transformers 5.23 still trains the rest of the epoch it stopped in (step max_steps+1, ...),
        # or past an early stop; the kill-in-publish tests caught it. Nothing is left to train then.
        def _init_training_state(self, max_steps, *args, **kwargs):
            out = super()._init_training_state(max_steps, *args, **kwargs)
            # self.control is the checkpoint's here (restore_callback_states_from_checkpoint), before
            # on_train_begin resets should_training_stop
            self._finished_before_resume = self.state.global_step >= max_steps or self.control.should_training_stop
            # TRL's logged `num_tokens` counter lives on the trainer, not in the checkpoint: after a resume the
            # published log_history.json restarted it from 0. It counts what num_input_tokens_seen counts
            # (non-padding tokens), which the checkpoint does restore.
            if hasattr(self, "_total_train_tokens"):
                self._total_train_tokens = self.state.num_input_tokens_seen
            return out

        def _run_epoch(self, *args, **kwargs):
            if getattr(self, "_finished_before_resume", False):
                self.control.should_training_stop = True
                return None
            return super()._run_epoch(*args, **kwargs)

    return Trainer


def _backend_settings(processor, restore: tuple | None = None) -> tuple | None:
    """The fast tokenizer backend's (padding, truncation), or with `restore`, put them back.

    The collator's padded calls switch padding on in the backend, and save_pretrained writes that
    into tokenizer.json, where loading takes it for the default pad side and length. So the
    published tokenizer.json depended on whether the publishing process had trained (a run
    resumed after training ended had not; the kill-in-publish tests caught it).
    """
    backend = getattr(getattr(processor, "tokenizer", processor), "backend_tokenizer", None)
    if backend is None:
        return None
    if restore is None:
        return backend.padding, backend.truncation
    padding, truncation = restore
    backend.no_padding() if padding is None else backend.enable_padding(**padding)
    backend.no_truncation() if truncation is None else backend.enable_truncation(**truncation)
    return restore


def _fingerprint(model, names: set[str]) -> dict[str, str]:
    """sha256 of each named parameter's bytes: equal hashes mean bit-identical tensors."""
    import torch

    out = {}
    for name, p in model.named_parameters():
        if name in names:
            t = p.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
            out[name] = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    return out


def _callbacks(cfg: Config, report: dict):
    from transformers import EarlyStoppingCallback, TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                print(f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                      f"lr {logs.get('learning_rate', 0):.2e}", flush=True)
            if state.is_world_process_zero and logs and "eval_loss" in logs:
                print(f"step {state.global_step}/{state.max_steps}  eval loss {logs['eval_loss']:.4f}", flush=True)

    class Durable(TrainerCallback):
        # Trainer does not fsync: without this a power cut could leave a checkpoint whose
        # trainer_state.json is on disk but whose weights are not
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                for p in sorted(ckpt.rglob("*")) + [ckpt]:
                    if p.exists():
                        fd = os.open(p, os.O_RDONLY)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)

    class OptimizerCheck(TrainerCallback):
        # Trainer builds the optimizer from requires_grad parameters; check that it did
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if report.get("sharded"):
                return  # DeepSpeed/FSDP optimizers hold flattened shards, not the parameters themselves
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            report["optimizer_parameters"] = sum(p.numel() for p in model.parameters() if id(p) in held)
            trainable = {id(p) for p in model.parameters() if p.requires_grad}
            if held != trainable:
                raise RuntimeError(
                    f"the optimizer holds {len(held)} tensors but {len(trainable)} are trainable; "
                    "frozen parameters must not be in it"
                )

    class StepTimer(TrainerCallback):
        # wall time of each optimizer step (collation, forward, backward, optimizer), end to end
        def on_train_begin(self, args, state, control, **kwargs):
            report["step_ends"] = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            report["step_ends"].append(time.perf_counter())

    callbacks = [Progress(), Durable(), OptimizerCheck(), StepTimer()]
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return callbacks


def _seconds_per_step(ends: list[float]) -> float | None:
    """Median optimizer-step time, leaving out the first step (it pays for warm-up: lazy kernels,
    allocator growth). The median also leaves out the odd step that saved a checkpoint or ran
    validation, so this is what more steps cost, not what the run cost (that is train_seconds)."""
    import statistics

    steps = [b - a for a, b in zip(ends, ends[1:])]
    steps = steps[1:] or steps
    return round(statistics.median(steps), 3) if steps else None


def plot_loss(log_history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), color="#4c72b0", lw=1.2, label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", color="#dd8452", ms=4, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: Config, store: Store) -> Artifact:
    start = time.perf_counter()
    model_art = store.resolve(cfg.model, kind="model")
    data_art = store.resolve(cfg.data, kind="dataset")
    _model_config(model_art)
    train_examples = load_examples(data_art, cfg.split, cfg)
    eval_examples = load_examples(data_art, cfg.eval_split, cfg) if cfg.eval_split else []

    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())
    work = store.root / ".work" / cfg.name / "sft"
    eval_steps = cfg.eval_steps or cfg.save_steps
    # Built before the model is loaded: under DeepSpeed ZeRO-3 this makes from_pretrained
    # partition the weights at load instead of materialising the whole model in every process.
    args = SFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        max_length=None,  # never truncate: rows are measured and dropped below instead
        assistant_only_loss=True,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        bf16=bf16,
        use_cpu=not cuda,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if cfg.eval_split else "no",
        eval_steps=eval_steps if cfg.eval_split else None,
        load_best_model_at_end=bool(cfg.early_stopping_patience),
        metric_for_best_model="eval_loss" if cfg.early_stopping_patience else None,
        greater_is_better=False if cfg.early_stopping_patience else None,
        prediction_loss_only=True,  # validation needs the loss only, not a second forward for the logits
        restore_callback_states_from_checkpoint=True,  # early-stopping patience survives a resume
        include_num_input_tokens_seen="non_padding",  # image tokens count, padding does not
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    dist = args.distributed_state
    model, processor = models.load_model(model_art.path, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
    params = models.set_trainable(model, cfg.trainable)
    tokenizer_as_loaded = _backend_settings(processor)

    template = training_template(processor, model_art.ref)
    lengths = measure(processor, train_examples, template, f"{data_art.ref} [{cfg.split}]")
    keep = [i for i, (n, _) in enumerate(lengths) if n <= cfg.max_length]
    dropped = {cfg.split: len(train_examples) - len(keep)}
    if not keep:
        raise UserError(
            f"{data_art.ref} [{cfg.split}]: all {len(train_examples)} rows are longer than max_length={cfg.max_length} "
            f"tokens (image tokens included; the shortest has {min(n for n, _ in lengths)}); raise max_length"
        )
    train_examples = [train_examples[i] for i in keep]
    if eval_examples:
        eval_lengths = measure(processor, eval_examples, template, f"{data_art.ref} [{cfg.eval_split}]")
        eval_keep = [e for e, (n, _) in zip(eval_examples, eval_lengths) if n <= cfg.max_length]
        dropped[cfg.eval_split] = len(eval_examples) - len(eval_keep)
        if not eval_keep:
            raise UserError(f"{data_art.ref} [{cfg.eval_split}]: every row is longer than max_length={cfg.max_length}")
        eval_examples = eval_keep
    if dist.is_main_process and any(dropped.values()):
        print(f"note: dropped rows longer than {cfg.max_length} tokens: "
              + ", ".join(f"{k} {v}" for k, v in dropped.items()))

    # Only now, with every input checked, touch the store.
    key = _run_key(cfg, model_art, data_art)
    state_file = work / "r1v3-run.json"
    resume_from = None
    if dist.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        previous = read_run_key(state_file)
        checkpoints = complete_checkpoints(work)
        if cfg.resume and previous == "" and checkpoints:
            raise UserError(f"cannot tell which settings the interrupted sft {cfg.name!r} used ({state_file} is "
                            "unreadable); drop --resume to start over")
        if cfg.resume and previous not in (None, key) and checkpoints:
            raise UserError(
                f"the interrupted sft {cfg.name!r} used other settings, model or data; rerun it with the same ones, "
                "or drop --resume to start over"
            )
        if cfg.resume and not checkpoints:
            print(f"note: no complete checkpoint of {cfg.name!r} to resume; starting from step 0")
        if not cfg.resume and any(work.glob("checkpoint-*")):
            print(f"note: starting {cfg.name!r} over; the checkpoints of an interrupted run were discarded "
                  "(use --resume to continue from them)")
        if not cfg.resume or not checkpoints:
            _discard(work)  # a plain rmtree killed midway left checkpoints that --resume took as complete
            work.mkdir(parents=True)
        write_atomic(state_file, json.dumps({"key": key}))
    dist.wait_for_everyone()
    if cfg.resume:
        checkpoints = complete_checkpoints(work)
        resume_from = str(checkpoints[-1]) if checkpoints else None
        if resume_from and dist.is_main_process:
            print(f"resuming {cfg.name!r} from {Path(resume_from).name}")

    report: dict = {}
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=to_dataset(train_examples),
        eval_dataset=to_dataset(eval_examples) if eval_examples else None,
        processing_class=processor,
        callbacks=_callbacks(cfg, report),
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our Progress callback prints one short line per log
    sharded = trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
    report["sharded"] = sharded
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    before = None if sharded else _fingerprint(model, frozen)

    train_start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - train_start
    log = list(trainer.state.log_history)  # before the final evaluation below adds to it
    # the published model's own validation loss: after early stopping, that of the best checkpoint
    final_eval = trainer.evaluate() if eval_examples else {}

    frozen_check = "skipped: parameters are sharded (DeepSpeed/FSDP)"
    if before is not None:
        changed = [n for n, h in _fingerprint(trainer.model, frozen).items() if before[n] != h]
        if changed:
            raise RuntimeError(f"{len(changed)} frozen parameters changed during training (first: {changed[0]})")
        frozen_check = f"verified: {len(before)} frozen tensors bit-identical"

    final = work / "final"
    if dist.is_main_process and final.exists():
        shutil.rmtree(final)
    dist.wait_for_everyone()
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if tokenizer_as_loaded is not None:
        _backend_settings(processor, restore=tokenizer_as_loaded)  # publish the tokenizer as it was loaded
    trainer.save_model(str(final))  # every process: ZeRO-3/FSDP gather the full weights collectively
    dist.wait_for_everyone()

    if not dist.is_main_process:
        dist.wait_for_everyone()  # the main process publishes
        return store.resolve(cfg.name, kind="model")

    state = trainer.state
    by_part = {
        part: {"parameters": n, "trainable": part in params["parts"]} for part, n in params["by_part"].items()
    }
    with store.publish(
        cfg.name, "model", stage="sft", config=to_dict(cfg), inputs=[model_art, data_art]
    ) as draft:
        (final / "training_args.bin").unlink(missing_ok=True)  # a pickle: artifacts hold no pickles
        for f in final.iterdir():
            os.replace(f, draft.path / f.name)
        stray = [p.name for p in draft.path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
        if stray or not any(draft.path.glob("*.safetensors")):
            raise RuntimeError(f"the trained model was not saved as safetensors only: {stray}")
        (draft.path / "log_history.json").write_text(json.dumps(log, indent=1) + "\n")
        plot_loss(log, draft.path / "loss.png", f"{cfg.name}: {cfg.preset or cfg.trainable}, {state.global_step} steps")
        train_losses = [[h["step"], h["loss"]] for h in log if "loss" in h]
        draft.metrics.update(
            family=models.family_of(model).name,
            preset=cfg.preset,
            trainable=params["parts"],
            parameters={"total": params["total"], "trainable": params["trainable"], "by_part": by_part},
            optimizer_parameters=report.get("optimizer_parameters"),
            frozen_check=frozen_check,
            steps=state.global_step,
            epochs=round(state.epoch or 0.0, 4),
            examples={cfg.split: len(train_examples)} | ({cfg.eval_split: len(eval_examples)} if eval_examples else {}),
            dropped_too_long=dropped,
            max_length=cfg.max_length,
            tokens_seen=state.num_input_tokens_seen,
            effective_batch_size=cfg.batch_size * cfg.grad_accum * args.world_size,
            world_size=args.world_size,
            bf16=bf16,
            loss_curve=train_losses,
            final_loss=train_losses[-1][1] if train_losses else None,
            eval_loss=final_eval.get("eval_loss"),
            eval_loss_curve=[[h["step"], h["eval_loss"]] for h in log if "eval_loss" in h],
            best_checkpoint_step=int(best.rsplit("-", 1)[1]) if (best := state.best_model_checkpoint) else None,
            stopped_early=bool(cfg.early_stopping_patience) and state.global_step < state.max_steps,
            resumed_from_step=int(Path(resume_from).name.split("-")[1]) if resume_from else None,
            train_seconds=round(train_seconds, 2),
            seconds_per_step=_seconds_per_step(report.get("step_ends", [])),
            wall_seconds=round(time.perf_counter() - start, 2),
        )
    _discard(work)
    try:
        work.parent.rmdir()  # .work/<name>, unless another stage keeps work there
    except OSError:
        pass
    dist.wait_for_everyone()
    return draft.artifact
