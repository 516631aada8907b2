"""`r1v3 sft`: supervised fine-tuning of chosen parts of a VLM through TRL's SFTTrainer.

The three uses in the recipe are presets (r1v3/presets/sft/*.yaml; the paper-scale settings are in
recipes/sft/*.yaml):

    connector-align   R1V: train the connector only, lr 2e-4, so a new or re-initialised projector
                      maps vision features into the LLM's embedding space
    cold-start        R1V3: connector + LLM on reasoning traces in the think template
    connector-retune  R1V3 3.4: connector only after RL, lr 1e-5 cosine, warmup 0.03, 2 epochs,
                      early stopping on validation loss

Data is problem rows with `messages` (format "chat") or image + caption rows (format "caption").
A text-only LLM trains too, with format "text-rendering": distill's teacher prompt (the image's
caption, the question, the options) -> the row's assistant turn, so a text model learns to reason
over descriptions of images and becomes a stronger teacher for `r1v3 distill`.
Every row is measured with the model's own processor, image tokens included; rows longer than
max_length are dropped and counted, so nothing is ever truncated (a truncated image breaks the
image-token/feature match). The loss is on assistant tokens only: those inside {% generation %} in the
chat template (or TRL's training version of it), and for any other template (the R1-distilled Qwen
one a composed model carries, Llama 3's, ...) those r1v3.chat finds by rendering each conversation
prefix by prefix. Only the chosen parts have requires_grad, so the optimizer holds only them.

Checkpoints go to the run's work directory in the store every save_steps; `--resume` continues
from the last complete one with the same data order (seeded sampler, skipped batches, restored
RNG), giving the same weights as an uninterrupted run. The published model artifact carries the
loss curve (metrics and loss.png), parameter counts by part, tokens seen, wall time and the
median time per optimizer step.

Multi-GPU: `accelerate launch --config_file recipes/accelerate/zero3.yaml -m r1v3.cli sft ...`
runs this same code in every process; only the main process publishes.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional

from r1v3 import config, data, families, models, prompts, training
from r1v3.artifacts import Artifact, Store, check_name, published
from r1v3.config import TrainingSettings, setting, to_dict
from r1v3.errors import UserError

# Shipped presets, r1v3/presets/sft/<name>.yaml: what each sets; anything given explicitly wins.
PRESETS: dict[str, dict] = config.presets("sft")
THINK = re.compile(r"^\s*<think>.*?</think>\s*\S", re.DOTALL)
CHECKPOINT = re.compile(r"^checkpoint-([0-9]+)$")
_TRAIN, _SCHEDULE, _SAVE = "Training", "Schedule", "Checkpoints and evaluation"


@dataclass
class Config(TrainingSettings):
    STAGE = "sft"
    TRL_CONFIG = "SFTConfig"
    DEFAULTS = {"learning_rate": 2e-5, "lr_scheduler": "cosine"}

    model: str = setting(help="Model artifact to fine-tune: a vision-language model, or a text-only LLM "
                              "(a distill teacher, with --format text-rendering).", artifact="input")
    data: str = setting(help="Dataset artifact: rows with `messages`, or image + caption rows with --format caption.", artifact="input")
    name: str = setting(help="Artifact name for the trained model.", artifact="output")
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
    format: Literal["chat", "caption", "text-rendering"] = setting(
        "chat", help="chat: each row's messages; caption: the row's images + caption_prompt -> its caption; "
        "text-rendering (text-only LLMs: a distill teacher): distill's teacher prompt over the row's caption -> "
        "the row's last assistant turn.")
    template: str = setting(prompts.TEACHER_TEMPLATE, shown="distill's teacher prompt", help=(
        "--format text-rendering: the user turn, with distill's placeholders {caption}, {question}, {options}, "
        "{instruction}; give distill the same --template."))
    caption_prompt: str = setting("Describe the image in detail.", help="The user turn of --format caption.")
    require_think: bool = setting(False, help="Every assistant turn must be <think>...</think> then an answer.")
    epochs: float = setting(1.0, gt=0, panel=_SCHEDULE, help="Passes over the training split.", le=config.MAX_EPOCHS)
    max_length: int = setting(16384, ge=1, panel=_TRAIN, help=(
        "Max tokens per row, image tokens included; longer rows are dropped and counted, never truncated."), le=config.MAX_TOKENS)
    save_total_limit: int = setting(2, ge=1, panel=_SAVE, help=(
        "Checkpoints kept; two, so one damaged by a crash has a predecessor."), result=False, le=config.MAX_STEPS)
    eval_steps: Optional[int] = setting(None, ge=1, shown="save_steps", panel=_SAVE,
                                        help="Validation loss every N optimizer steps.", le=config.MAX_STEPS)
    early_stopping_patience: int = setting(0, ge=0, le=config.MAX_STEPS, panel=_SAVE, help=(
        "Stop after N evaluations without a lower validation loss and publish the best checkpoint; 0 = off."))

    def check(self) -> None:
        check_name(self.name)
        try:
            families.parse_parts(self.trainable)
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


def conversation(row: dict, cfg: Config, where: str, text_only: bool = False) -> dict:
    """One row as {"messages": [{role, content: parts}], "images": [...]} in TRL's multimodal layout.

    Each first `<image N>` in a system/user turn becomes that image's part, in place; images no
    turn mentions go first in the first user turn (as TRL does for plain-string messages).
    """
    images = row["images"]
    if cfg.format == "text-rendering":
        if not row["caption"].strip():
            raise UserError(f"{where}: text-rendering SFT needs the image's text rendering, the row's caption is empty")
        answer = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        messages, images = [{"role": "user", "content": prompts.teacher_prompt(row, cfg.template)}], []
        messages += [{"role": "assistant", "content": answer[-1]}] if answer else []
    elif cfg.format == "caption":
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
    if text_only:  # a tokenizer's template takes plain-string turns
        if images:
            raise UserError(f"{where}: the row has {len(images)} image(s) and {cfg.model} is a text-only LLM; "
                            "train it on the images' text renderings with --format text-rendering")
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], "images": []}
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


def load_examples(dataset: Artifact, split: str, cfg: Config, text_only: bool = False) -> list[dict]:
    option = "--split (key split)" if split == cfg.split else "--eval-split (key eval_split)"
    rows = data.load_split(dataset, split, option)
    where = f"{dataset.ref} [{split}]"
    if cfg.format != "caption":
        if cfg.format == "text-rendering":
            needs = ("--format text-rendering takes each row's caption and the answer of its last assistant turn "
                     "(e.g. a `r1v3 distill` dataset)")
        else:
            needs = ("--format chat needs conversations (assistant turn in the think template), e.g. from "
                     "`r1v3 data synth --messages think`; for image-caption rows use --format caption")
        if not any(r["messages"] for r in rows):
            raise UserError(f"{where}: no row has `messages`; {needs}")
        missing = next((r for r in rows if not r["messages"]), None)
        if missing is not None:
            raise UserError(f"{where} row {missing['id']}: no `messages` (every row of --format {cfg.format} "
                            "SFT needs them)")
    return [conversation(r, cfg, f"{where} row {r['id']}", text_only) | {"id": r["id"]} for r in rows]


class Route(NamedTuple):
    """How rows are rendered for training: `template` (None: the processor's own chat template) and
    whether sft marks the assistant tokens itself (`own_mask`: a template TRL cannot mark)."""
    template: str | None
    own_mask: bool


def training_template(processor, ref: str) -> Route:
    """(the chat template the collator renders with, whether sft marks the assistant tokens itself).

    The processor's own template when it has {% generation %} markers, else TRL's training version
    of it; a template TRL does not know (the R1-distilled Qwen template behind compose's image-part
    prelude, Llama 3's, ...) is rendered as it is and r1v3.chat finds the assistant tokens."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = processor.chat_template
    if not template:
        raise UserError(f"{ref}: the processor has no chat template")
    if has_generation_markers(template):
        return Route(None, False)
    try:
        patched = get_training_chat_template(processor)
    except (ValueError, KeyError):
        patched = None
    return Route(patched, False) if patched else Route(None, True)


def measure(processor, examples: list[dict], template: str | None, where: str, own_mask: bool = False) -> list[tuple]:
    """(tokens, assistant tokens, assistant turns left as context) per example, rendered exactly as the
    collator will, image tokens included. With own_mask each example gets its `assistant_masks`."""
    from trl.data_utils import prepare_multimodal_messages

    from r1v3 import chat

    out = []
    for ex in examples:
        at = f"{where} row {ex['id']}"
        if own_mask:
            mask, context_only = chat.assistant_mask(processor, ex["messages"], ex["images"], template, at)
            ex["assistant_masks"] = mask
            if chat.is_text_only(processor):  # the trainer takes these tokens as they are
                ex["input_ids"] = chat.token_ids(processor, ex["messages"], [], template)
        else:
            enc = processor.apply_chat_template(
                [prepare_multimodal_messages(ex["messages"], images=ex["images"])],
                chat_template=template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                processor_kwargs=chat.PROCESSOR_KWARGS,
            )
            mask, context_only = enc["assistant_masks"][0], 0
        if not any(mask):
            raise UserError(f"{at}: no assistant token is marked for the loss by the chat template")
        out.append((len(mask), int(sum(mask)), context_only))
    return out


def to_dataset(examples: list[dict]):
    import datasets

    if examples and "input_ids" in examples[0]:  # a text-only LLM: tokenized here, labels only on its turns
        return datasets.Dataset.from_list([
            {"input_ids": e["input_ids"], "labels": [t if m else -100 for t, m in zip(e["input_ids"], e["assistant_masks"])]}
            for e in examples])

    columns = {
        "messages": datasets.List({
            "role": datasets.Value("string"),
            "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
        }),
        "images": datasets.List(datasets.Image()),
    }
    if examples and "assistant_masks" in examples[0]:
        columns["assistant_masks"] = datasets.List(datasets.Value("int8"))
    return datasets.Dataset.from_list([{k: e[k] for k in columns} for e in examples],
                                      features=datasets.Features(columns))


# ---------------------------------------------------------------------------------------------
# setup -> train -> publish (the shared parts are in r1v3.training)


def _arguments(cfg: Config, output_dir: Path):
    """TRL's SFTConfig. Built before the model is loaded: under DeepSpeed ZeRO-3 this makes
    from_pretrained partition the weights at load instead of materialising the whole model in
    every process."""
    validate, stop_early = bool(cfg.eval_split), bool(cfg.early_stopping_patience)
    return training.trl_arguments(
        cfg, output_dir,
        per_device_eval_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_length=None,  # never truncate: rows are measured and dropped instead
        assistant_only_loss=True,  # turned off in _setup when r1v3.chat marks the assistant tokens instead
        remove_unused_columns=False,  # keeps the assistant_masks column; the rows carry nothing else unused
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if validate else "no",
        eval_steps=(cfg.eval_steps or cfg.save_steps) if validate else None,
        load_best_model_at_end=stop_early,
        metric_for_best_model="eval_loss" if stop_early else None,
        greater_is_better=False if stop_early else None,
        prediction_loss_only=True,  # validation needs the loss only, not a second forward for the logits
        restore_callback_states_from_checkpoint=True,  # early-stopping patience survives a resume
        include_num_input_tokens_seen="non_padding",  # image tokens count, padding does not
    )


def _fitting(cfg: Config, processor, route: Route, where: str, split: str, examples: list[dict]) -> tuple[list[dict], int, int]:
    """The examples no longer than max_length tokens, how many were dropped, and how many assistant
    turns of the kept ones are context only (see r1v3.chat)."""
    lengths = measure(processor, examples, route.template, f"{where} [{split}]", own_mask=route.own_mask)
    kept = [(e, c) for e, (n, _, c) in zip(examples, lengths) if n <= cfg.max_length]
    if not kept:
        raise UserError(
            f"{where} [{split}]: all {len(examples)} rows are longer than max_length={cfg.max_length} tokens "
            f"(image tokens included; the shortest has {min(n for n, _, _ in lengths)}); raise max_length"
        )
    return [e for e, _ in kept], len(examples) - len(kept), sum(c for _, c in kept)


def _metrics(cfg: Config, trainer, params: dict, examples: dict, dropped: dict, final_eval: dict) -> dict:
    """The sft-specific metrics; publish_trained_model adds the training ones."""
    state, log, args = trainer.state, trainer.state.log_history, trainer.args
    by_part = {part: {"parameters": n, "trainable": part in params["parts"]} for part, n in params["by_part"].items()}
    text_only = not models.is_vlm_config(trainer.model.config)
    kind = ({"model_class": "causal-lm", "model_type": trainer.model.config.model_type} if text_only
            else {"family": families.family_of(trainer.model).name})
    return dict(
        **kind,
        preset=cfg.preset,
        trainable=params["parts"],
        parameters={"total": params["total"], "trainable": params["trainable"], "by_part": by_part},
        examples={split: len(rows) for split, rows in examples.items()},
        dropped_too_long=dropped,
        max_length=cfg.max_length,
        effective_batch_size=cfg.batch_size * cfg.grad_accum * args.world_size,
        bf16=args.bf16,
        eval_loss=final_eval.get("eval_loss"),
        eval_loss_curve=[[h["step"], h["eval_loss"]] for h in log if "eval_loss" in h],
        best_checkpoint_step=int(best.rsplit("-", 1)[1]) if (best := state.best_model_checkpoint) else None,
        stopped_early=bool(cfg.early_stopping_patience) and state.global_step < state.max_steps,
    )


def _train_and_publish(cfg: Config, store: Store, work, setup: Setup, start: float) -> Artifact | None:
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    from r1v3 import chat

    args, examples = setup.args, setup.examples
    resume_from = training.last_checkpoint(work.path) if cfg.resume else None
    if resume_from and args.distributed_state.is_main_process:
        print(f"resuming {cfg.name!r} from {Path(resume_from).name}")
    trainer = training.trainer_class(SFTTrainer)(
        model=setup.model,
        args=args,
        train_dataset=to_dataset(examples[cfg.split]),
        eval_dataset=to_dataset(examples[cfg.eval_split]) if cfg.eval_split else None,
        processing_class=setup.processor,
        callbacks=[EarlyStoppingCallback(cfg.early_stopping_patience)] if cfg.early_stopping_patience else [],
    )
    if setup.own_mask and not setup.text_only:  # TRL's collator (built with its pad-token setup) renders; our masks pick the labels
        trainer.data_collator = chat.OwnMaskCollator(trainer.data_collator)
    training.track(trainer, cfg, work.path, store, setup.inputs)
    trained = training.train(trainer, resume_from)
    # the published model's own validation loss: after early stopping, that of the best checkpoint
    final_eval = trainer.evaluate() if cfg.eval_split else {}
    metrics = _metrics(cfg, trainer, setup.params, examples, setup.dropped, final_eval)
    return training.publish_trained_model(
        trainer, trained, store, cfg.name, stage="sft", config=to_dict(cfg), inputs=setup.inputs, work=work.path,
        metrics=metrics | {"wall_seconds": round(time.perf_counter() - start, 2)},
        title=f"{cfg.name}: {cfg.preset or cfg.trainable}, {trainer.state.global_step} steps",
        tokenizer_state=setup.tokenizer_state,
    )


def _text_only(cfg: Config, art: Artifact) -> bool:
    """Whether the model is a text-only causal LM (checked before any weights load), else a VLM of a
    supported family."""
    config = models.read_config(art.path, trust_remote_code=cfg.trust_remote_code)
    if models.is_vlm_config(config):
        if cfg.format == "text-rendering":
            raise UserError(f"--format text-rendering (format) trains text-only LLMs on the images' text renderings; "
                            f"{art.ref} is a vision-language model ({config.model_type}): give it the images with "
                            "--format chat or caption")
        models.vlm_config(art.path, art.ref, "sft")
        return False
    if not models.is_causal_lm_config(config):
        raise UserError(f"{art.ref}: a {config.model_type!r} model is neither a vision-language model nor a causal "
                        "LM; sft trains those")
    if cfg.format != "text-rendering":
        raise UserError(f"{art.ref} is a text-only LLM ({config.model_type}): it cannot see images, so train it on "
                        f"their text renderings with --format text-rendering (format is {cfg.format}), or compose "
                        "a vision-language model with `r1v3 compose` first")
    return True


def _train_whole_llm(model, cfg: Config) -> dict:
    parts = families.parse_parts(cfg.trainable)
    if "llm" not in parts:
        raise UserError(f"{cfg.label('trainable')}: {cfg.model} is a text-only LLM, its only part is llm "
                        f"(got {cfg.trainable})")
    n = sum(p.numel() for p in model.parameters())
    model.requires_grad_(True)
    return {"parts": ["llm"], "by_part": {"llm": n}, "total": n, "trainable": n}


@dataclass
class Setup:
    """Everything `_setup` read, checked and built before the store is touched."""
    args: Any  # TRL's SFTConfig
    model: Any
    processor: Any
    params: dict  # families.set_trainable's count of trainable parameters by part
    examples: dict[str, list[dict]]  # split -> the rows that fit max_length
    dropped: dict[str, int]  # split -> rows longer than max_length
    tokenizer_state: dict
    inputs: list[Artifact]
    own_mask: bool
    text_only: bool


def _setup(cfg: Config, store: Store) -> tuple[Any, Setup]:
    """Every input read and checked, the model loaded; nothing in the store touched yet."""
    model_art = store.resolve(cfg.model, kind="model")
    data_art = store.resolve(cfg.data, kind="dataset")
    text_only = _text_only(cfg, model_art)
    examples = {cfg.split: load_examples(data_art, cfg.split, cfg, text_only)}
    if cfg.eval_split:
        examples[cfg.eval_split] = load_examples(data_art, cfg.eval_split, cfg, text_only)
    work = store.work(cfg.name, "sft", settings=config.resume_settings(cfg), inputs={"model": model_art, "data": data_art},
                      resume=cfg.resume, has_progress=training.has_checkpoint)
    args = _arguments(cfg, work.path)
    if text_only:
        model, processor = models.load_llm(model_art.path, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
        params = _train_whole_llm(model, cfg)
    else:
        model, processor = models.load_model(model_art.path, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
        params = families.set_trainable(model, cfg.trainable)
    tokenizer_state = training.tokenizer_settings(processor)  # as loaded, before any collator pads with it
    route = Route(None, True) if text_only else training_template(processor, model_art.ref)
    args.assistant_only_loss = not route.own_mask  # TRL would refuse a template it cannot mark
    dropped, context_only = {}, {}
    for split in examples:
        examples[split], dropped[split], context_only[split] = _fitting(
            cfg, processor, route, data_art.ref, split, examples[split])
    if args.distributed_state.is_main_process:
        if any(dropped.values()):
            print(f"note: dropped rows longer than {cfg.max_length} tokens: "
                  + ", ".join(f"{k} {v}" for k, v in dropped.items()))
        if any(context_only.values()):
            print("note: the chat template rewrites earlier assistant turns once later ones follow (as it shows them "
                  "at inference); those turns are context, not trained: "
                  + ", ".join(f"{k} {v}" for k, v in context_only.items()))
    return work, Setup(args=args, model=model, processor=processor, params=params, examples=examples,
                       dropped=dropped, tokenizer_state=tokenizer_state, inputs=[model_art, data_art],
                       own_mask=route.own_mask, text_only=text_only)


def run(cfg: Config, store: Store) -> Artifact:
    start = time.perf_counter()
    work, setup = _setup(cfg, store)
    dist = setup.args.distributed_state
    with work.claim(main=dist.is_main_process):  # locks the work directory, keeps or discards its checkpoints
        dist.wait_for_everyone()
        art = _train_and_publish(cfg, store, work, setup, start)
    dist.wait_for_everyone()  # the main process has published and removed the work directory
    return art if art is not None else store.resolve(cfg.name, kind="model")


def report(art: Artifact, console) -> None:
    """Steps, final loss, tokens seen and the trainable parameters of the published model."""
    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch` every process runs this; one reports
        return
    m = art.metrics
    loss = "n/a" if m["final_loss"] is None else f"{m['final_loss']:.4f}"  # None: no loss was logged
    published(art, console)
    console.print(
        f"{m['steps']} steps, final loss {loss}, {m['tokens_seen']} tokens seen, trainable "
        f"{m['parameters']['trainable']:,} of {m['parameters']['total']:,} parameters ({'+'.join(m['trainable'])})",
        markup=False, highlight=False,
    )
