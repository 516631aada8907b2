"""`r1v3 rl`: curriculum-ordered GRPO on a vision-language model through TRL's GRPOTrainer.

Defaults are the paper's (Skywork-R1V3, arXiv 2507.06167, sections 3.3 and 5): group size 32,
clip 0.2 (no clip-higher), no KL term (beta 0, so TRL builds no reference model), learning rate
1e-5, 4096-token completions, temperature 1.0, reward 0.8 * accuracy + 0.2 * format, connector +
LLM trained. The paper-scale layout (1024 rollouts per step on 8 GPUs) is recipes/rl/r1v3-38b.yaml;
`--preset cpu-smol` is a laptop-sized run.

The training order is the curriculum (r1v3/curriculum.py): the dataset handed to TRL is the rows
laid out in schedule order (`shuffle_dataset=False`, `max_steps` = the schedule's steps), and the
phase of every step is logged (`curriculum/phase`, and each reward again under `<phase>/...`).
Prompts are the eval's reasoning prompt (`prompts.build_prompt(row, "reasoning")`), so RL trains on
what `eval mmmu` asks.

The output is a `run` artifact: every `--save-steps` (and at the last step) a checkpoint lands in
`checkpoints/step-K/` (safetensors weights, config, processor, that step's metrics.json), a model
directory `eval mmmu` can load once exported as a model artifact with `r1v3 rl export RUN --step K
--name M` (default: the last step, the final model). `curves.png` plots reward, accuracy,
completion length and entropy with the phase boundaries. Optimizer state stays in the work
directory (the last two full checkpoints), from which `--resume` continues with the same order;
a changed curriculum (its fingerprint) is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from r1v3 import config, curriculum, data, entropy, families, models, plots, prompts, rewards, training
from r1v3.artifacts import Artifact, Store, check_name, fsync_path, printable, published
from r1v3.config import TrainingSettings, setting, to_dict
from r1v3.errors import UserError

PRESETS: dict[str, dict] = config.presets("rl")
PRODUCT = "checkpoints"  # inside the work directory and the run artifact: checkpoints/step-K/
COLLAPSE = ("the paper reports that RL with a frozen connector collapsed (Skywork-R1V3 section 3.4: train "
            "connector + LLM)")
_GRPO, _LEN, _SAVE, _REWARD, _CURR, _VLLM = ("GRPO", "Length", "Checkpoints", "Rewards", "Curriculum", "vLLM rollouts")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Config(TrainingSettings):
    STAGE = "rl"
    TRL_CONFIG = "GRPOConfig"
    # the paper's learning rate 1e-5 (1e-6 is the safer choice) and constant schedule are the shared defaults
    DEFAULTS = {"batch_size": 4, "grad_accum": 32, "save_steps": 20}

    model: str = setting(help="Model artifact to train (a vision-language model, e.g. after cold-start SFT).", artifact="input")
    data: str = setting(help="Dataset artifact of problem rows with answers.", artifact="input")
    name: str = setting(help="Run artifact name (checkpoints, metrics, curves).", artifact="output")
    preset: Optional[str] = setting(
        None, metavar="NAME", help="Start from shipped settings (r1v3/presets/rl/NAME.yaml); any setting given wins. "
        + "; ".join(f"{n}: {config.preset_summary('rl', n)}" for n in PRESETS) + ".")
    split: str = setting("train", help="Training split.")
    trainable: str = setting("connector+llm", panel=_GRPO, help=(
        "Parts to train: connector, vision, llm, all (join with commas or +). The paper trains connector + LLM."))
    curriculum: Literal["none", "normal", "hard", "pass-rate"] = setting("none", panel=_CURR, help=(
        "none: every row, reshuffled each epoch; normal: difficulty-normal rows; hard: normal then hard "
        "(R1V3 5.3); pass-rate: easy to hard by measured pass rate (r1v3 difficulty)."))
    curriculum_unit: Literal["epochs", "steps"] = setting("epochs", panel=_CURR, help=(
        "What curriculum_lengths count."))
    curriculum_lengths: Optional[list[int]] = setting(None, ge=1, le=config.MAX_STEPS, panel=_CURR, shown="--epochs per phase", help=(
        "Length of each phase (hard: normal,hard)."))
    curriculum_seed: Optional[int] = setting(None, ge=0, le=config.MAX_SEED, panel=_CURR, shown="--seed", help="Seed of the curriculum's shuffles.")
    drop_solved: bool = setting(False, panel=_CURR, help="Leave out rows every difficulty sample solved (no GRPO signal).")
    drop_unsolved: bool = setting(False, panel=_CURR, help="Leave out rows no difficulty sample solved (no GRPO signal).")
    num_generations: int = setting(32, ge=2, panel=_GRPO, help="Group size: completions per prompt (the paper: 32).", le=config.MAX_BATCH)
    epsilon: float = setting(0.2, gt=0, lt=1, panel=_GRPO, help="PPO clip range (the paper: 0.2, no clip-higher).")
    beta: float = setting(0.0, ge=0, panel=_GRPO, help="KL coefficient; 0 (the paper) builds no reference model.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = setting("grpo", panel=_GRPO, help="TRL's loss_type.")
    scale_rewards: Literal["group", "batch", "none"] = setting("group", panel=_GRPO, help=(
        "Standardise rewards per group (GRPO), per batch or not at all."))
    num_iterations: int = setting(1, ge=1, le=config.MAX_BATCH, panel=_GRPO, help="Updates per generation batch (1: on-policy, the paper).")
    temperature: float = setting(1.0, gt=0, panel=_GRPO, help="Rollout temperature (the paper: 1.0).")
    top_p: float = setting(1.0, gt=0, le=1, panel=_GRPO, help="Rollout nucleus sampling.")
    max_new_tokens: int = setting(4096, ge=1, le=config.MAX_TOKENS, panel=_LEN, help=(
        "Completion length (the paper: 4096, later 8192)."))
    steps_per_generation: Optional[int] = setting(None, ge=1, panel=_LEN, shown="--grad-accum", help=(
        "Micro-steps one generation batch serves: generation batch = batch size x processes x this."), le=config.MAX_BATCH)
    epochs: int = setting(1, ge=1, panel=_LEN, help="Passes over each curriculum phase's rows.", le=config.MAX_EPOCHS)
    accuracy_weight: float = setting(0.8, panel=_REWARD, help="Weight of the accuracy reward (the paper: 0.8).")
    accuracy_reward: Literal["answer", "coin"] = setting("answer", panel=_REWARD, help=(
        "answer: 1 when the final answer is right (the paper); coin: a fair coin per completion, blind to "
        "correctness: the control run, whose held-out accuracy should not rise (the logged accuracy stays the "
        "answer's)."))
    format_weight: float = setting(0.2, panel=_REWARD, help="Weight of the format reward (the paper: 0.2).")
    reward: list[str] = setting([], panel=_REWARD, metavar="MODULE:FN", shown="none", help=(
        "Custom rewards: package.module:function or path/file.py:function (relative, in the working directory)."), reads=rewards.source_digests)
    reward_weight: list[float] = setting([], panel=_REWARD, shown="1 each", help="Weights of the custom rewards, in order.")
    allow_negative_weights: bool = setting(False, panel=_REWARD, help=(
        "Take negative reward weights: a penalty written as a positive reward with a negative weight. Off, a "
        "negative weight is refused (a sign slip would train the model toward wrong answers)."), result=False)
    overlong_buffer: Optional[int] = setting(None, ge=1, le=config.MAX_TOKENS, panel=_REWARD, shown="off", help=(
        "DAPO overlong penalty over the last N tokens of --max-new-tokens (weight 1)."))
    vllm: Optional[Literal["colocate", "server"]] = setting(None, panel=_VLLM, shown="off (transformers generate)", help=(
        "Roll out with vLLM: colocate (in the training processes) or server (`trl vllm-serve`)."))
    vllm_gpu_memory_utilization: float = setting(0.3, gt=0, le=1, panel=_VLLM, help="GPU memory vLLM may take (colocate).")
    vllm_tensor_parallel_size: int = setting(1, ge=1, panel=_VLLM, help="GPUs per vLLM engine (colocate).", le=config.MAX_DEVICES)
    vllm_server_host: str = setting("0.0.0.0", panel=_VLLM, help="vLLM server host (server mode).", result=False)
    vllm_server_port: int = setting(8000, ge=1, le=65535, panel=_VLLM, help="vLLM server port (server mode).", result=False)

    def check(self) -> None:
        check_name(self.name)
        try:
            parts = families.parse_parts(self.trainable)
        except UserError as e:
            raise UserError(f"{self.label('trainable')}: {e}") from None
        self.trainable = "+".join(parts)
        if "connector" not in parts:
            self.notes.append(f"warning: the connector is frozen; {COLLAPSE}")
        if not self.allow_negative_weights:
            negative = [(self.label(k), getattr(self, k)) for k in ("accuracy_weight", "format_weight")
                        if getattr(self, k) < 0]
            negative += [(f"{self.label('reward_weight')} #{i + 1}", w) for i, w in enumerate(self.reward_weight) if w < 0]
            if negative:
                where, weight = negative[0]
                raise UserError(f"{where} is {weight:g}: a negative weight rewards doing worse (the policy learns to "
                                "fail it); give --allow-negative-weights (allow_negative_weights) if it is a penalty")
        if self.reward_weight and len(self.reward_weight) != len(self.reward):
            raise UserError(f"{len(self.reward_weight)} --reward-weight (reward_weight) for {len(self.reward)} "
                            "--reward (reward): give one weight per custom reward, or none (1 each)")
        self._check_batching()
        if self.vllm is None and any(k in self._given for k in ("vllm_gpu_memory_utilization", "vllm_tensor_parallel_size",
                                                                 "vllm_server_host", "vllm_server_port")):
            raise UserError("vllm_* settings apply to vLLM rollouts: give --vllm colocate|server (vllm)")

    def _check_batching(self) -> None:
        """TRL's divisibility rules, checked before any model loads."""
        world, per_step = _world_size(), self.steps_per_generation or self.grad_accum
        micro = self.batch_size * world
        generation = micro * per_step
        if generation % self.num_generations:
            raise UserError(
                f"a generation batch of {generation} completions (--batch-size {self.batch_size} x {world} process(es) x "
                f"{per_step} steps per generation) is not a whole number of groups of --num-generations "
                f"{self.num_generations} (num_generations): make the batch a multiple of the group size")
        spans = per_step * self.num_iterations
        if spans % self.grad_accum == 0 and self.save_steps % (spans // self.grad_accum):
            raise UserError(f"--save-steps {self.save_steps} (save_steps) must be a multiple of the {spans // self.grad_accum} "
                            "optimizer steps one generation batch spans, so a resume starts on a generation batch")

    def curriculum_settings(self) -> curriculum.Settings:
        names = curriculum.PHASES[self.curriculum]
        unit, lengths = self.curriculum_unit, self.curriculum_lengths
        if self.max_steps and lengths is None and len(names) == 1:
            unit, lengths = "steps", [self.max_steps]  # N steps, the rows cycling (reshuffled each pass)
        if lengths is None and unit == "epochs":
            lengths = [self.epochs] * len(names)
        return curriculum.Settings(mode=self.curriculum, unit=unit, lengths=tuple(lengths) if lengths else None,
                                   seed=self.seed if self.curriculum_seed is None else self.curriculum_seed,
                                   drop_solved=self.drop_solved, drop_unsolved=self.drop_unsolved)


# ---------------------------------------------------------------------------------------------
# rows -> prompts


IMAGE_PART = {"type": "image", "text": ""}  # every part has the same keys: one Arrow struct


def example(row: dict, where: str) -> dict:
    """One problem row as TRL's multimodal GRPO input: a conversational prompt whose image parts
    take `images` in order, plus the columns the rewards read."""
    if not str(row.get("answer") or "").strip():
        raise UserError(f"{where} row {row['id']}: no answer; GRPO's accuracy reward needs each row's gold answer")
    message, images = prompts.user_message(row, "reasoning")
    message["content"] = [dict(IMAGE_PART) if p["type"] == "image" else p for p in message["content"]]
    return {"prompt": [message], "images": images, "id": row["id"], "difficulty": row.get("difficulty") or "",
            "answer": row["answer"], "question_type": row["question_type"], "options": list(row["options"])}


def to_dataset(examples: list[dict]):
    import datasets

    features = datasets.Features({
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
            {"type": datasets.Value("string"), "text": datasets.Value("string")})}),
        "images": datasets.List(datasets.Image()),
        "id": datasets.Value("string"),
        "difficulty": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "options": datasets.List(datasets.Value("string")),
    })
    return datasets.Dataset.from_list(examples, features=features)


def load_rows(cfg: Config, dataset: Artifact) -> list[dict]:
    rows = data.load_split(dataset, cfg.split)
    if not rows:
        raise UserError(f"{dataset.ref} [{cfg.split}]: no rows to train on")
    return rows


# ---------------------------------------------------------------------------------------------
# TRL settings, rewards, callbacks


def _arguments(cfg: Config, output_dir: Path, max_steps: int = 1):
    """TRL's GRPOConfig, built before the model loads (ZeRO-3 partitions the weights at load)."""
    vllm = dict(use_vllm=True, vllm_mode=cfg.vllm, vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size, vllm_server_host=cfg.vllm_server_host,
                vllm_server_port=cfg.vllm_server_port) if cfg.vllm else {}
    return training.trl_arguments(
        cfg, output_dir,
        steps_per_generation=cfg.steps_per_generation,
        num_generations=cfg.num_generations,
        num_iterations=cfg.num_iterations,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        epsilon=cfg.epsilon,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        max_steps=max_steps,
        reward_weights=reward_weights(cfg),
        shuffle_dataset=False,  # the dataset is the curriculum's order
        ignore_data_skip=False,
        save_total_limit=2,  # full checkpoints with optimizer state; the product copies are kept apart
        **vllm,
    )


def reward_weights(cfg: Config) -> list[float]:
    """In the order of `build_rewards`' functions: accuracy, format, overlong (1), custom ones."""
    return [cfg.accuracy_weight, cfg.format_weight] + [1.0] * bool(cfg.overlong_buffer) + list(
        cfg.reward_weight or [1.0] * len(cfg.reward))


def build_rewards(cfg: Config, store: Store, think_in_prompt: bool) -> rewards.Rewards:
    built = rewards.build(
        accuracy_weight=cfg.accuracy_weight, format_weight=cfg.format_weight, think_in_prompt=think_in_prompt,
        overlong=(cfg.max_new_tokens, min(cfg.overlong_buffer, cfg.max_new_tokens)) if cfg.overlong_buffer else None,
        custom=list(zip(cfg.reward, cfg.reward_weight or [1.0] * len(cfg.reward))), store_root=store.root,
        control=cfg.accuracy_reward == "coin")
    assert built.weights == reward_weights(cfg), "the weights handed to GRPOConfig follow build()'s order"
    return built


CRITICAL = re.compile(r"\b(?:" + "|".join(entropy.DEFAULT_WORDS) + r")\b")


class StepStats:
    """What the trainer's own logs leave out, per logged step: the answer's accuracy by difficulty
    level (also under the coin control, where the reward is blind to it) and how often completions say
    a critical word (Wait, Alternatively, Hmm: what select-ckpt's entropy needs, and what GRPO may drive
    out). Fed by the first reward function's calls, which see every completion with its row's columns;
    under several processes each logs its own share."""

    def __init__(self):
        self.correct: dict[str, list[float]] = {}
        self.critical: list[int] = []

    def wrap(self, funcs: list) -> list:
        first = funcs[0]

        def observed(prompts, completions, **kwargs):
            out = first(prompts=prompts, completions=completions, **kwargs)
            right = out if first.__name__ == "accuracy" else rewards.accuracy(prompts, completions, **kwargs)
            for level, value in zip(kwargs.get("difficulty") or [""] * len(completions), right):
                if value is not None:
                    self.correct.setdefault(level or "unlabelled", []).append(value)
                    self.correct.setdefault("all", []).append(value)
            self.critical.extend(len(CRITICAL.findall(rewards.completion_text(c))) for c in completions)
            return out

        observed.__name__ = first.__name__  # TRL logs rewards/<name>/mean
        return [observed, *funcs[1:]]

    def callback(self):
        from transformers import TrainerCallback

        stats = self

        class Logged(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs is None or "reward" not in logs:
                    return
                extra = {f"accuracy/{level}": round(sum(v) / len(v), 6) for level, v in stats.correct.items() if v}
                if stats.critical:
                    extra["completions/critical_words"] = round(sum(stats.critical) / len(stats.critical), 6)
                    extra["completions/with_critical_word"] = round(
                        sum(n > 0 for n in stats.critical) / len(stats.critical), 6)
                stats.correct, stats.critical = {}, []
                logs.update(extra)
                if state.log_history and state.log_history[-1].get("step") == state.global_step:
                    state.log_history[-1].update(extra)  # Trainer appended its copy of `logs` before this call

        return Logged()


class FirstBatch:
    """Watches every reward function's first batch: once the last one has scored it, prints
    `rewards.describe` of the completions with each component and the total, so a reward that
    is always 0 shows at step 0. The values shown are the ones the trainer got (no reward runs twice)."""

    def __init__(self, built: rewards.Rewards, show: bool):
        self.built, self.show, self.values, self.samples = built, show, {}, None

    def wrap(self) -> list:
        return [self._watch(fn, last=i == len(self.built.funcs) - 1) for i, fn in enumerate(self.built.funcs)]

    def _watch(self, fn, last: bool):
        def watched(prompts, completions, **kwargs):
            out = fn(prompts=prompts, completions=completions, **kwargs)
            if self.show and fn.__name__ not in self.values:
                self.values[fn.__name__] = list(out)
                if last:
                    self._print(prompts, completions, kwargs)
            return out

        watched.__name__ = fn.__name__  # TRL logs rewards/<name>/mean
        return watched

    def _print(self, prompts, completions, kwargs) -> None:
        from rich.console import Console

        self.show = False
        replay = [_replay(name, values) for name, values in self.values.items()]
        columns = {k: v for k, v in kwargs.items() if k in ("answer", "id", "completion_ids")}
        samples = [{"prompt": p, "completion": c, **{k: v[i] for k, v in columns.items()}}
                   for i, (p, c) in enumerate(zip(prompts, completions))]
        Console().print(rewards.describe(rewards.Rewards(replay, self.built.weights), samples))


def _replay(name: str, values: list):
    def replay(prompts, completions, **_):
        return values

    replay.__name__ = name
    return replay


def think_in_prompt(processor) -> bool:
    """Whether the chat template opens <think> itself in the generation prompt."""
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                                         add_generation_prompt=True, tokenize=False)
    return text.rstrip().endswith("<think>")


def _callbacks(schedule, product: Path, processor_dir: Path, total_steps: int):
    from transformers import TrainerCallback

    class Phases(TrainerCallback):
        # TRL logs once per optimizer step (logging_steps 1): each log gets its phase, and the
        # reward components again under the phase's name for per-phase curves
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "reward" not in logs:
                return
            phase = schedule.phase_at(state.global_step)
            extra = {"curriculum/phase": phase} | {
                f"{phase}/{k}": v for k, v in logs.items() if k == "reward" or (k.startswith("rewards/") and k.endswith("/mean"))}
            logs.update(extra)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(extra)  # Trainer appended its copy of `logs` before this call

        def on_step_begin(self, args, state, control, **kwargs):
            for phase in schedule.phases:
                if state.global_step == phase.first_step and state.is_world_process_zero and len(schedule.phases) > 1:
                    print(f"curriculum: phase {phase.name!r} begins at step {phase.first_step + 1} "
                          f"({phase.steps} steps, {phase.rows} prompts)", flush=True)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= total_steps:
                control.should_save = True  # the final model is the last checkpoint

    class Product(TrainerCallback):
        # the published part of a checkpoint: weights, config and the processor as loaded (a
        # trained collator leaves padding switched on in tokenizer.json), and the step's metrics
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                save_product(Path(args.output_dir) / f"checkpoint-{state.global_step}", product, processor_dir,
                             state.log_history, state.global_step, schedule)

    return [Phases(), Product()]


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def save_product(checkpoint: Path, product: Path, processor_dir: Path, log: list, step: int, schedule) -> Path:
    """checkpoints/step-K: written beside, fsynced, then renamed into place."""
    target = product / f"step-{step}"
    tmp = product / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in checkpoint.iterdir():  # the optimizer, RNG and training-args pickles stay in the work dir
        if f.is_file() and f.suffix not in models.PICKLE_SUFFIXES and f.name != "trainer_state.json":
            shutil.copy2(f, tmp / f.name)
    for f in processor_dir.iterdir():
        shutil.copy2(f, tmp / f.name)
    metrics = {k: v for h in log if h.get("step") == step for k, v in h.items()}
    metrics.update(step=step, phase=schedule.phase_at(step))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    for f in tmp.iterdir():
        fsync_path(f)
    shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)
    fsync_path(product)
    return target


# ---------------------------------------------------------------------------------------------
# setup -> train -> publish


def _plan(cfg: Config, args, rows: list[dict], dataset: Artifact):
    schedule = curriculum.plan(rows, cfg.curriculum_settings(), curriculum.Batching.from_args(args),
                               dataset=dataset.ref, split=cfg.split)
    if cfg.max_steps and cfg.max_steps > schedule.total_steps:
        raise UserError(f"--max-steps {cfg.max_steps} (max_steps) is more than the curriculum's "
                        f"{schedule.total_steps} steps ({', '.join(f'{p.name} {p.steps}' for p in schedule.phases)}): "
                        "lengthen the phases (curriculum_lengths, --epochs)")
    return schedule


@dataclass
class Setup:
    """Everything `_setup` read, checked and built before the store is touched."""
    args: Any  # TRL's GRPOConfig
    model: Any
    processor: Any
    params: dict  # families.set_trainable's count of trainable parameters by part
    rewards: rewards.Rewards
    dataset: Any  # the RL rows as a datasets.Dataset, in the curriculum's order
    schedule: curriculum.Schedule
    total_steps: int
    inputs: list[Artifact]
    rows: int


def _setup(cfg: Config, store: Store) -> tuple[Any, Setup]:
    """Every input read and checked, the order planned, the model loaded; nothing in the store touched yet."""
    model_art = store.resolve(cfg.model, kind="model")
    data_art = store.resolve(cfg.data, kind="dataset")
    models.vlm_config(model_art.path, model_art.ref, "rl")
    rows = load_rows(cfg, data_art)
    where = f"{data_art.ref} [{cfg.split}]"
    examples = [example(r, where) for r in rows]
    inputs = {"model": model_art, "data": data_art}
    probe = _arguments(cfg, store.work_path(cfg.name, "rl"))  # the batch geometry the order is planned for
    schedule = _plan(cfg, probe, rows, data_art)
    total = min(cfg.max_steps or schedule.total_steps, schedule.total_steps)
    work = store.work(cfg.name, "rl", settings=config.resume_settings(cfg, curriculum_fingerprint=schedule.fingerprint()), inputs=inputs,
                      resume=cfg.resume, has_progress=training.has_checkpoint)
    args = _arguments(cfg, work.path, max_steps=total)
    model, processor = models.load_model(model_art.path, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
    params = families.set_trainable(model, cfg.trainable)
    rewards_ = build_rewards(cfg, store, think_in_prompt(processor))
    data.check_images(rows, processor, where)
    tuned = to_dataset(examples).select(schedule.order)
    return work, Setup(args=args, model=model, processor=processor, params=params, rewards=rewards_, dataset=tuned,
                       schedule=schedule, total_steps=total, inputs=[model_art, data_art], rows=len(rows))


def _say_plan(cfg: Config, setup: Setup) -> None:
    schedule, r = setup.schedule, setup.rewards
    print(f"curriculum {cfg.curriculum}: {setup.total_steps} steps; phases "
          + ", ".join(f"{p.name} (steps {p.first_step + 1}-{p.first_step + p.steps}, {p.rows} prompts)"
                      for p in schedule.phases)
          + "; dropped " + ", ".join(f"{k} {v}" for k, v in schedule.dropped.items()))
    print("rewards: " + printable(" + ".join(f"{w:g}*{n}" for n, w in zip(r.names, r.weights))))


def _resume_point(cfg: Config, work) -> str | None:
    """The checkpoint to continue from; product copies past it are redone by the resumed run."""
    found = training.last_checkpoint(work.path) if cfg.resume else None
    step = int(training.CHECKPOINT.match(Path(found).name).group(1)) if found else 0
    product = work.path / PRODUCT
    if product.is_dir():
        for d in product.iterdir():
            m = re.fullmatch(r"step-([0-9]+)", d.name)
            if not m or int(m.group(1)) > step:
                shutil.rmtree(d, ignore_errors=True)
    return found


def _train(cfg: Config, store: Store, work, setup: Setup):
    from trl import GRPOTrainer

    args, schedule = setup.args, setup.schedule
    main = args.distributed_state.is_main_process
    resume_from = _resume_point(cfg, work) if main else (training.last_checkpoint(work.path) if cfg.resume else None)
    processor_dir = work.path / "processor"
    if main:
        shutil.rmtree(processor_dir, ignore_errors=True)
        setup.processor.save_pretrained(processor_dir)
        if resume_from and not (work.path / PRODUCT / f"step-{Path(resume_from).name.split('-')[1]}").is_dir():
            # killed between the checkpoint's save and its published copy: no later save redoes it
            state = json.loads((Path(resume_from) / "trainer_state.json").read_text())
            save_product(Path(resume_from), work.path / PRODUCT, processor_dir, state["log_history"],
                         state["global_step"], schedule)
        _say_plan(cfg, setup)
        if resume_from:
            print(f"resuming {cfg.name!r} from {Path(resume_from).name}")
    args.distributed_state.wait_for_everyone()
    stats = StepStats()
    funcs = stats.wrap(FirstBatch(setup.rewards, show=main and not resume_from).wrap())
    trainer = training.trainer_class(GRPOTrainer)(
        model=setup.model, args=args, reward_funcs=funcs, train_dataset=setup.dataset,
        processing_class=setup.processor,
        callbacks=[stats.callback(), *_callbacks(schedule, work.path / PRODUCT, processor_dir, setup.total_steps)])
    training.track(trainer, cfg, work.path, store, setup.inputs)
    run = training.train(trainer, resume_from)
    return trainer, run


def run(cfg: Config, store: Store) -> Artifact:
    start = time.perf_counter()
    with warnings.catch_warnings():  # the filter ends with the run, not with the process
        # TRL reads transformers' deprecated alias once per generation batch: the same line every step, nothing to act on
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return _run(cfg, store, start)


def _run(cfg: Config, store: Store, start: float) -> Artifact:
    for note in cfg.notes:
        if note.startswith("warning"):
            print(note)
    work, setup = _setup(cfg, store)
    dist = setup.args.distributed_state
    with work.claim(main=dist.is_main_process):
        dist.wait_for_everyone()
        trainer, trained = _train(cfg, store, work, setup)
        art = publish(cfg, store, work, trainer, trained, setup, time.perf_counter() - start) if dist.is_main_process \
            else None
    dist.wait_for_everyone()
    return art if art is not None else store.resolve(cfg.name, kind="run")


# ---------------------------------------------------------------------------------------------
# the run artifact


# each panel: its title and the logged series it draws (several get a legend)
CURVES = (("reward", ("reward",)), ("answer accuracy by level", ("accuracy/all", "accuracy/normal", "accuracy/hard")),
          ("groups whose rewards are all equal (no gradient)", ("frac_reward_zero_std",)),
          ("completion length (tokens)", ("completions/mean_length",)), ("policy entropy", ("entropy",)),
          ("critical words per completion", ("completions/critical_words",)))
STEP_METRICS = ("reward", "reward_std", "completions/mean_length", "entropy", "clip_ratio/region_mean",
                "clip_ratio/low_mean", "clip_ratio/high_mean", "frac_reward_zero_std", "loss", "grad_norm",
                "completions/critical_words", "completions/with_critical_word")
COLOURS = ("#4c72b0", "#55a868", "#c44e52")


def plot_curves(log: list[dict], phases, path: Path, title: str) -> None:
    with plots.figure(path, nrows=2, ncols=3, figsize=(13, 6.5), sharex=True) as (fig, axes):
        for ax, (label, keys) in zip(axes.flat, CURVES):
            drawn = 0
            for key, colour in zip(keys, COLOURS):
                points = [(h["step"], h[key]) for h in log if isinstance(h.get(key), (int, float))]
                if points:
                    # a few prompts a step make each step noisy: the raw values faint, a running mean over
                    # an eighth of the run drawn over them
                    steps, values = zip(*points)
                    w = max(1, len(values) // 8)
                    mean = [sum(values[max(0, i - w + 1):i + 1]) / len(values[max(0, i - w + 1):i + 1])
                            for i in range(len(values))]
                    ax.plot(steps, values, color=colour, lw=0.8, alpha=0.35)
                    ax.plot(steps, mean, color=colour, lw=1.6, label=key.rpartition("/")[2])
                    drawn += 1
            if drawn > 1:
                ax.legend(fontsize=7, loc="best")
            for phase in phases[1:]:
                ax.axvline(phase.first_step + 0.5, color="#dd8452", ls="--", lw=1)
                ax.text(phase.first_step + 0.5, 1, f" {phase.name}", transform=ax.get_xaxis_transform(), va="top",
                        fontsize=8, color="#dd8452")
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("optimizer step")
        fig.suptitle(title, fontsize=10)


def _phase_metrics(log: list[dict], schedule) -> dict:
    out = {}
    for p in schedule.phases:
        entries = [h for h in log if h.get("curriculum/phase") == p.name and "reward" in h]
        keys = sorted({k for h in entries for k in h if k == "reward" or k.startswith("accuracy/")
                       or (k.startswith("rewards/") and k.endswith("/mean"))})
        out[p.name] = {"first_step": p.first_step + 1, "steps": p.steps, "prompts": p.rows} | {
            f"mean {k}": round(sum(h[k] for h in entries if h.get(k) is not None)
                               / max(1, sum(h.get(k) is not None for h in entries)), 6) for k in keys}
    return out


def publish(cfg: Config, store: Store, work, trainer, trained, setup: Setup, seconds: float) -> Artifact:
    schedule, log = setup.schedule, trained.log
    product = work.path / PRODUCT
    steps = sorted(int(d.name.split("-")[1]) for d in product.iterdir() if re.fullmatch(r"step-[0-9]+", d.name))
    final = product / f"step-{trainer.state.global_step}"
    bad = training.non_finite_tensors(final) if final.is_dir() else ["(no final checkpoint)"]
    if bad:
        raise training.NonFiniteTraining(f"the trained weights hold NaN or inf in {bad[0]}; nothing was published. "
                                         f"Lower the learning rate (it is {cfg.learning_rate:g})")
    per_step = {s: json.loads((product / f"step-{s}" / "metrics.json").read_text()) for s in steps}
    with store.publish(cfg.name, "run", stage="rl", config=to_dict(cfg), inputs=setup.inputs) as draft:
        # linked, not moved: a publish killed before its commit must leave the copies to --resume
        shutil.copytree(product, draft.path / PRODUCT, copy_function=_link_or_copy)
        (draft.path / "log_history.json").write_text(json.dumps(log, indent=1) + "\n")
        training.publish_tracking(work.path, draft.path)
        (draft.path / "schedule.json").write_text(json.dumps(
            {"ids": schedule.ids, "phases": [p._asdict() for p in schedule.phases], "dropped": schedule.dropped,
             "fingerprint": schedule.fingerprint()}) + "\n")
        plot_curves(log, schedule.phases, draft.path / "curves.png",
                    f"{cfg.name}: GRPO, curriculum {cfg.curriculum}, {trainer.state.global_step} steps")
        draft.metrics.update(
            checkpoints=[{"step": s, "path": f"{PRODUCT}/step-{s}", "phase": per_step[s].get("phase")}
                         | {k: per_step[s][k] for k in STEP_METRICS if k in per_step[s]}
                         | {k: v for k, v in per_step[s].items() if k.startswith(("rewards/", "accuracy/"))} for s in steps],
            final_checkpoint=f"{PRODUCT}/step-{trainer.state.global_step}",
            steps=trainer.state.global_step,
            curriculum=cfg.curriculum,
            phases=_phase_metrics(log, schedule),
            dropped=schedule.dropped,
            curriculum_fingerprint=schedule.fingerprint(),
            rows=setup.rows,
            rewards=dict(zip(setup.rewards.names, setup.rewards.weights)),
            trainable=setup.params["parts"],
            parameters={"total": setup.params["total"], "trainable": setup.params["trainable"]},
            world_size=trainer.args.world_size,
            optimizer_parameters=trained.optimizer_parameters,
            frozen_check=trained.frozen_check,
            resumed_from_step=trained.resumed_from_step,
            train_seconds=trained.train_seconds,
            seconds_per_step=trained.seconds_per_step,
            wall_seconds=round(seconds, 2),
            reward_curve=[[h["step"], h["reward"]] for h in log if "reward" in h],
        )
    return draft.artifact


def report(art: Artifact, console) -> None:
    """Steps, curriculum, checkpoints and the last reward of the published run, and how to export a checkpoint."""
    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch` every process runs this; one reports
        return
    m = art.metrics
    reward = (m["checkpoints"][-1] if m["checkpoints"] else {}).get("reward")
    published(art, console)
    console.print(
        f"{m['steps']} steps, curriculum {m['curriculum']}, checkpoints at steps "
        f"{', '.join(str(c['step']) for c in m['checkpoints'])}; last reward {'n/a' if reward is None else f'{reward:.4f}'}\n"
        f"export one as a model: r1v3 rl export {art.ref} --step K --name M (default: the final step)",
        markup=False, highlight=False,
    )
