"""What every trainer stage shares (sft through TRL's SFTTrainer, rl through its GRPOTrainer).

Any transformers Trainer subclass (TRL's SFTTrainer, GRPOTrainer, ...) goes through the same steps:

    trainer = training.trainer_class(SFTTrainer)(model=..., args=..., ...)
    run = training.train(trainer, resume_from=training.last_checkpoint(work.path) if resume else None)
    art = training.publish_trained_model(trainer, run, store, name, stage=..., ...)

`trainer_class` adds exact resume (checkpoint weights reloaded strictly, nothing trained after a
finished run), a stop at the first non-finite gradient norm, and warmup that never swallows the
whole run. `train` adds the callbacks (one progress line per log, fsynced checkpoints, the
optimizer-holds-only-trainable-tensors check, step timing, non-finite loss) and checks that frozen
tensors are bit-identical afterwards. `publish_trained_model` saves the weights (gathered under
ZeRO-3/FSDP), refuses non-finite ones, and publishes them with the loss curve and the metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from r1v3 import config, models, plots
from r1v3.artifacts import fsync_path
from r1v3.errors import UserError

CHECKPOINT = re.compile(r"^checkpoint-([0-9]+)$")


class NonFiniteTraining(UserError):
    """Training produced a non-finite loss, gradient norm or weight: nothing is published.
    A UserError (exit 2): the usual cause is a setting, most often the learning rate."""


# ---- checkpoints ------------------------------------------------------------------------------


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
    if not m or not isinstance(state, dict) or state.get("global_step") != int(m.group(1)):
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


def has_checkpoint(output_dir: Path) -> bool:
    """What a trainer's work directory holds worth resuming (`Store.work(has_progress=...)`)."""
    return bool(complete_checkpoints(output_dir))


def last_checkpoint(output_dir: Path) -> str | None:
    found = complete_checkpoints(output_dir)
    return str(found[-1]) if found else None


def load_weights(model, checkpoint: str) -> None:
    """Load a checkpoint's weights into `model` the way from_pretrained reads them, strictly."""
    loaded = type(model).from_pretrained(checkpoint, use_safetensors=True)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded


# ---- the trainer ------------------------------------------------------------------------------


class TrainingFixes:
    """Mixed in before a transformers Trainer subclass (see `trainer_class`)."""

    # transformers 5.23's Trainer reloads checkpoint weights with load_state_dict(strict=False), but
    # save_pretrained writes InternVL, Qwen2-VL, Qwen2.5-VL and LLaVA under their hub key names, which
    # are not the module names: nothing matches, and a resumed run silently goes on from the base
    # weights (transformers#43701; tests/test_sft.py::test_kill_and_resume_gives_the_same_weights). DeepSpeed and FSDP
    # checkpoints use their own formats and loaders and are left alone.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        load_weights(self.model, self.state.best_model_checkpoint)

    # Resumed from the checkpoint of a run that had already finished (killed while publishing),
    # transformers 5.23 still trains the rest of the epoch it stopped in (step max_steps+1, ...), or
    # past an early stop (the crash table's "publish" kill points of sft and rl). Nothing is left to train then.
    def _init_training_state(self, max_steps, *args, **kwargs):
        out = super()._init_training_state(max_steps, *args, **kwargs)
        # self.control is the checkpoint's here (restore_callback_states_from_checkpoint), before
        # on_train_begin resets should_training_stop
        self._finished_before_resume = self.state.global_step >= max_steps or self.control.should_training_stop
        # TRL's logged `num_tokens` counter lives on the trainer, not in the checkpoint: after a resume
        # the published log_history.json restarted it from 0. It counts what num_input_tokens_seen
        # counts (non-padding tokens), which the checkpoint does restore.
        if hasattr(self, "_total_train_tokens"):
            self._total_train_tokens = self.state.num_input_tokens_seen
        return out

    def _run_epoch(self, *args, **kwargs):
        if getattr(self, "_finished_before_resume", False):
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # Called once per optimizer step, before the optimizer applies the gradients: stopping here keeps
    # a non-finite update out of the weights and out of any checkpoint. Under fp16 an overflowing
    # step is routine (the grad scaler skips it), so only bf16/fp32 runs stop.
    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None and not self.args.fp16 and not math.isfinite(float(grad_norm)):
            _diverged(self.args, self.state.global_step + 1, "gradient norm", float(grad_norm))
        return grad_norm

    # transformers turns a warmup ratio into ceil(ratio * steps): a one-step run with any warmup
    # trained at learning rate 0 and published the base weights unchanged.
    def create_scheduler(self, num_training_steps, optimizer=None):
        warmup = self.args.get_warmup_steps(num_training_steps)
        if self.lr_scheduler is None and 0 < num_training_steps <= warmup:
            if self.is_world_process_zero():
                print(f"note: a warmup of {warmup} step(s) would take the whole run of {num_training_steps} "
                      "at a lower learning rate; training without warmup")
            self.args.warmup_steps = 0
        return super().create_scheduler(num_training_steps, optimizer)


def trainer_class(base: type) -> type:
    """`base` (SFTTrainer, GRPOTrainer, any transformers Trainer subclass) with TrainingFixes."""
    return type(base.__name__, (TrainingFixes, base), {"__doc__": base.__doc__})


def _diverged(args, step: int, what: str, value: float) -> None:
    raise NonFiniteTraining(
        f"training diverged at step {step}: the {what} is {value} (not finite); nothing was published. "
        f"Lower the learning rate (it is {args.learning_rate:g}) or check the data"
    )


# ---- callbacks --------------------------------------------------------------------------------


def _callbacks(trainer, report: dict) -> list:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        # one short line per log; any trainer's train logs carry `loss`, GRPO's also `reward`
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and logs):
                return
            at = f"step {state.global_step}/{state.max_steps}"
            if "loss" in logs:
                extra = f"  reward {logs['reward']:.4f}" if "reward" in logs else ""
                print(f"{at}  loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.2e}{extra}", flush=True)
            if "eval_loss" in logs:
                print(f"{at}  eval loss {logs['eval_loss']:.4f}", flush=True)

    class NonFiniteLoss(TrainerCallback):
        # on_log comes before the step's checkpoint is saved, so a diverged step is never saved
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key, what in (("loss", "loss"), ("grad_norm", "gradient norm")):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    _diverged(args, state.global_step, what, value)

    class Durable(TrainerCallback):
        # Trainer does not fsync: without this a power cut could leave a checkpoint whose
        # trainer_state.json is on disk but whose weights are not
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                for p in sorted(ckpt.rglob("*")) + [ckpt]:
                    if p.exists():
                        fsync_path(p)

    class OptimizerCheck(TrainerCallback):
        # Trainer builds the optimizer from requires_grad parameters; check that it did
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if report["sharded"]:
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

    return [Progress(), NonFiniteLoss(), Durable(), OptimizerCheck(), StepTimer()]


# ---- training ---------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """What `train` measured, for the published metrics."""

    log: list = field(default_factory=list)  # log_history as training left it
    train_seconds: float = 0.0
    seconds_per_step: float | None = None
    optimizer_parameters: int | None = None
    frozen_check: str = ""
    resumed_from_step: int | None = None


def fingerprint(model, names: set[str]) -> dict[str, str]:
    """sha256 of each named parameter's bytes: equal hashes mean bit-identical tensors."""
    import torch

    out = {}
    for name, p in model.named_parameters():
        if name in names:
            t = p.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
            out[name] = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    return out


def seconds_per_step(ends: list[float]) -> float | None:
    """Median optimizer-step time, leaving out the first step (it pays for warm-up: lazy kernels,
    allocator growth). The median also leaves out the odd step that saved a checkpoint or ran
    validation, so this is what more steps cost, not what the run cost (that is train_seconds)."""
    steps = [b - a for a, b in zip(ends, ends[1:])]
    steps = steps[1:] or steps
    return round(statistics.median(steps), 3) if steps else None


def trl_arguments(cfg, output_dir: Path, **stage) -> object:
    """The stage's TRL config (cfg.TRL_CONFIG) from its TrainingSettings, mapped here once, the
    stage's own arguments (`stage`) and the user's `trl.KEY=VALUE` overrides. An override of an
    argument r1v3 sets names the setting to use instead; a value TRL refuses is one line."""
    import torch
    import trl

    cuda = torch.cuda.is_available()
    ours = dict(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_steps=cfg.max_steps or -1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        logging_steps=cfg.logging_steps,
        report_to=list(cfg.report_to) or "none",
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        bf16=cfg.bf16 if cfg.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported()),
        use_cpu=not cuda,
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    ) | stage
    flags = {"learning_rate": "--lr", "lr_scheduler_type": "--lr-scheduler", "warmup_steps": "--warmup-ratio",
             "per_device_train_batch_size": "--batch-size", "gradient_accumulation_steps": "--grad-accum",
             "report_to": "--report-to", "activation_checkpointing": "--gradient-checkpointing"}
    for key in cfg.trl:
        if key in ours:
            instead = flags.get(key) or ("--" + key.replace("_", "-") if key in config.fields_by_name(cfg) else None)
            raise UserError(f"trl.{key}: r1v3 sets it" + (f"; give {instead} instead" if instead else
                                                          " (it follows from other settings)"))
    try:
        return getattr(trl, cfg.TRL_CONFIG)(**ours, **cfg.trl)
    except (ValueError, TypeError) as e:
        if not cfg.trl:
            raise
        named = ", ".join(f"trl.{k}={v!r}" for k, v in cfg.trl.items())
        raise UserError(f"{named}: TRL's {cfg.TRL_CONFIG} refused it: {str(e).splitlines()[0]}") from None


TRACKING_DIR = "tensorboard"  # TensorBoard's event files: in the work directory, then in the published artifact


def track(trainer, cfg, work: Path, store, inputs: list) -> None:
    """Point the trackers of --report-to at this run: its name is NAME@vN, the version it is about to
    publish; TensorBoard writes into the work directory (so a resumed run goes on in the same files,
    and the files are published with the artifact); the resolved settings and the input artifacts are
    logged as the run's config. W&B runs offline unless an API key is set (WANDB_MODE decides)."""
    if not cfg.report_to:
        return
    from transformers import TrainerCallback
    from transformers.integrations import MLflowCallback, TensorBoardCallback, TrackioCallback, WandbCallback

    if "wandb" in cfg.report_to and "WANDB_API_KEY" not in os.environ:
        os.environ.setdefault("WANDB_MODE", "offline")
    trainer.args.run_name = f"{cfg.name}@v{max(store.versions(cfg.name), default=0) + 1}"
    record = {"settings": json.loads(json.dumps(config.to_dict(cfg), default=str)),
              "inputs": [{"ref": a.ref, "kind": a.kind, "digest": a.digest} for a in inputs]}
    callbacks = trainer.callback_handler.callbacks
    for cb in callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(work / TRACKING_DIR)

    class RunConfig(TrainerCallback):
        # after the trackers' own on_train_begin (they come first in the list), which opens their runs
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            for cb in callbacks:
                if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
                    cb.tb_writer.add_text("r1v3", "```\n" + json.dumps(record, indent=1) + "\n```")
                elif isinstance(cb, (WandbCallback, TrackioCallback)) and getattr(cb, "_initialized", False):
                    tracker = cb._wandb if isinstance(cb, WandbCallback) else cb._trackio
                    tracker.config.update({"r1v3": record}, allow_val_change=True)
                elif isinstance(cb, MLflowCallback) and getattr(cb, "_initialized", False):
                    cb._ml_flow.log_dict(record, "r1v3.json")

    trainer.add_callback(RunConfig())


def publish_tracking(work: Path, draft: Path) -> None:
    """TensorBoard's event files of the run into the artifact (`tensorboard --logdir ARTIFACT/tensorboard`)."""
    if (work / TRACKING_DIR).is_dir():
        shutil.copytree(work / TRACKING_DIR, draft / TRACKING_DIR)


def train(trainer, resume_from: str | None = None) -> TrainingRun:
    """trainer.train with the shared callbacks, then the frozen-tensor check."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # Progress prints one short line per log
    sharded = trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
    report: dict = {"sharded": sharded}
    for callback in _callbacks(trainer, report):
        trainer.add_callback(callback)
    model = trainer.model
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    before = None if sharded else fingerprint(model, frozen)

    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    run = TrainingRun(
        log=list(trainer.state.log_history),
        train_seconds=round(time.perf_counter() - start, 2),
        seconds_per_step=seconds_per_step(report.get("step_ends", [])),
        optimizer_parameters=report.get("optimizer_parameters"),
        frozen_check="skipped: parameters are sharded (DeepSpeed/FSDP)",
        resumed_from_step=int(CHECKPOINT.match(Path(resume_from).name).group(1)) if resume_from else None,
    )
    if before is not None:
        changed = [n for n, h in fingerprint(trainer.model, frozen).items() if before[n] != h]
        if changed:
            raise RuntimeError(f"{len(changed)} frozen parameters changed during training (first: {changed[0]})")
        run.frozen_check = f"verified: {len(before)} frozen tensors bit-identical"
    return run


# ---- publishing -------------------------------------------------------------------------------


def tokenizer_settings(processor, restore: tuple | None = None) -> tuple | None:
    """The fast tokenizer backend's (padding, truncation), or with `restore`, put them back.

    A collator's padded calls switch padding on in the backend, and save_pretrained writes that
    into tokenizer.json, where loading takes it for the default pad side and length. So the
    published tokenizer.json depended on whether the publishing process had trained (a run
    resumed after training ended had not: the crash table's sft "draft half written" point). Read it right
    after loading, hand it to publish_trained_model.
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


def non_finite_tensors(directory: Path) -> list[str]:
    """Names of floating-point tensors holding NaN or inf in the safetensors files of `directory`
    (read one tensor at a time: the files may be larger than memory)."""
    import torch
    from safetensors import safe_open

    bad = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(key)
    return bad


def plot_loss(log_history: list[dict], path: Path, title: str) -> None:
    train_ = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    with plots.figure(path, figsize=(7, 4)) as (fig, ax):
        if train_:
            ax.plot(*zip(*train_), color="#4c72b0", lw=1.2, label="train loss")
        if evals:
            ax.plot(*zip(*evals), "o-", color="#dd8452", ms=4, label="validation loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()


def _save_final(trainer, final: Path, tokenizer_state: tuple | None) -> None:
    """Every process: ZeRO-3/FSDP gather the full weights collectively."""
    dist = trainer.args.distributed_state
    if dist.is_main_process and final.exists():
        shutil.rmtree(final)
    dist.wait_for_everyone()
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if tokenizer_state is not None:
        tokenizer_settings(trainer.processing_class, restore=tokenizer_state)  # as it was loaded
    trainer.save_model(str(final))
    dist.wait_for_everyone()


def publish_trained_model(trainer, run: TrainingRun, store, name: str, *, stage: str, config: dict, inputs: list,
                          work: Path, metrics: dict, title: str, tokenizer_state: tuple | None = None):
    """Save the trained weights and publish them as model `name` with log_history.json, loss.png
    and `metrics` plus the training ones. Returns the artifact on the main process, None on the
    others (every process must call this). Non-finite weights are refused, nothing published."""
    final = work / "final"
    _save_final(trainer, final, tokenizer_state)
    if not trainer.args.distributed_state.is_main_process:
        return None
    (final / "training_args.bin").unlink(missing_ok=True)  # a pickle: artifacts hold no pickles
    bad = non_finite_tensors(final)
    if bad:
        raise NonFiniteTraining(f"the trained weights hold NaN or inf in {len(bad)} tensor(s) (first: {bad[0]}); "
                                f"nothing was published. Lower the learning rate (it is {trainer.args.learning_rate:g})")
    state, log = trainer.state, run.log
    train_losses = [[h["step"], h["loss"]] for h in log if "loss" in h]
    with store.publish(name, "model", stage=stage, config=config, inputs=inputs) as draft:
        for f in final.iterdir():
            os.replace(f, draft.path / f.name)
        stray = [p.name for p in draft.path.iterdir() if p.suffix in models.PICKLE_SUFFIXES]
        if stray or not any(draft.path.glob("*.safetensors")):
            raise RuntimeError(f"the trained model was not saved as safetensors only: {stray}")
        (draft.path / "log_history.json").write_text(json.dumps(log, indent=1) + "\n")
        publish_tracking(work, draft.path)
        plot_loss(log, draft.path / "loss.png", title)
        draft.metrics.update(metrics)
        draft.metrics.update(
            optimizer_parameters=run.optimizer_parameters,
            frozen_check=run.frozen_check,
            steps=state.global_step,
            epochs=round(state.epoch or 0.0, 4),
            tokens_seen=state.num_input_tokens_seen,
            world_size=trainer.args.world_size,
            loss_curve=train_losses,
            final_loss=train_losses[-1][1] if train_losses else None,
            resumed_from_step=run.resumed_from_step,
            train_seconds=run.train_seconds,
            seconds_per_step=run.seconds_per_step,
        )
    return draft.artifact
