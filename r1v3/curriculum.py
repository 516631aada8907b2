"""Curriculum for GRPO: which problem rows the trainer sees, in which order, and where each
phase begins, as a plain list of row indices.

How the order reaches TRL 1.16's GRPOTrainer: with `GRPOConfig(shuffle_dataset=False)` its
`RepeatSampler` walks the dataset in order, cutting it into generation batches of
`generation_batch_size // num_generations` prompts (an incomplete last one is dropped), each
prompt repeated `num_generations` times and each generation batch served
`steps_per_generation * num_iterations` times (one dataloader batch per micro-step; completions
are generated on the first and reused). So the curriculum is simply the training dataset itself:
`dataset.select(schedule.order)`, every epoch of every phase already laid out, trained for
`max_steps=schedule.total_steps` (one pass; a second pass would replay the phases).

Ordering is decided per generation batch: inside one, TRL scores every prompt together and then
shuffles the rows before splitting them into optimizer micro-batches. A phase is therefore made
of whole generation batches and whole optimizer steps, so no step mixes two levels and the step
where a phase begins is exact; the few rows that would straddle the boundary are left out (and
counted), as the sampler itself leaves out an incomplete last batch.

Modes (`--curriculum`):
    none       every row, reshuffled each epoch (seeded)
    normal     rows labelled difficulty "normal" only
    hard       the paper's two phases (R1V3 5.3): all normal epochs, then all hard epochs
    pass-rate  easy to hard by measured pass rate (ties in seeded order), each epoch again
Phase lengths count epochs (passes over the phase's rows) or optimizer steps (the rows cycle,
reshuffled at each pass). drop_solved / drop_unsolved remove rows whose every sample was right
or wrong: all completions of such a prompt get the same reward, so GRPO learns nothing from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from r1v3.errors import UserError

MODES = ("none", "normal", "hard", "pass-rate")
UNITS = ("epochs", "steps")
LEVELS = ("normal", "hard")
PHASES = {"none": ("all",), "normal": ("normal",), "hard": ("normal", "hard"), "pass-rate": ("all",)}
DIFFICULTY_COMMAND = "r1v3 difficulty --model REF --data REF --samples k --name N"
# Prompts a schedule may hold (every epoch of every phase, laid out as a list): about 0.5 GB of
# Python lists at the limit. The size is known before anything is laid out, so a run asking for
# more is refused at once instead of filling memory.
MAX_SCHEDULE = 10_000_000


@dataclass(frozen=True)
class Settings:
    """What the model sees. lengths: one per phase (see PHASES), in `unit`; None is 1 epoch each."""

    mode: str = "none"
    unit: str = "epochs"
    lengths: tuple[int, ...] | None = None
    seed: int = 0
    drop_solved: bool = False
    drop_unsolved: bool = False

    def phase_lengths(self) -> tuple[int, ...]:
        if self.mode not in MODES:
            raise UserError(f"curriculum {self.mode!r} is not one of {', '.join(MODES)} (--curriculum, key curriculum)")
        if self.unit not in UNITS:
            raise UserError(f"curriculum unit {self.unit!r} is not one of {', '.join(UNITS)} (key curriculum_unit)")
        names = PHASES[self.mode]
        if self.lengths is None:
            if self.unit == "steps":
                raise UserError(f"curriculum {self.mode!r} counted in steps needs the length of "
                                f"{' and '.join(names)} (key curriculum_lengths)")
            return (1,) * len(names)
        lengths = tuple(self.lengths)
        if len(lengths) != len(names):
            raise UserError(f"curriculum {self.mode!r} has {len(names)} phase(s) ({', '.join(names)}) but "
                            f"{len(lengths)} length(s) were given (key curriculum_lengths)")
        for name, n in zip(names, lengths):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UserError(f"curriculum phase {name!r}: length must be a positive number of {self.unit}, "
                                f"got {n!r} (key curriculum_lengths)")
        return lengths


class Batching(NamedTuple):
    """How GRPOTrainer groups prompts: `prompts` per generation batch, each served for
    `micro_steps` dataloader batches, `accumulation` of which make one optimizer step."""

    prompts: int
    micro_steps: int
    accumulation: int

    @classmethod
    def from_args(cls, args) -> "Batching":
        """From a GRPOConfig (after its __post_init__ has derived the generation settings)."""
        return cls(args.generation_batch_size // args.num_generations,
                   args.steps_per_generation * args.num_iterations, args.gradient_accumulation_steps)

    @property
    def quantum(self) -> int:
        """Generation batches in the smallest run of whole batches that is also whole optimizer steps."""
        return self.accumulation // math.gcd(self.accumulation, self.micro_steps)

    def steps(self, batches: int) -> int:
        return batches * self.micro_steps // self.accumulation


class Phase(NamedTuple):
    name: str
    start: int  # position of its first row in Schedule.order
    rows: int  # prompts in the phase, repeats across epochs included
    first_step: int  # optimizer steps done before it: global_step when it begins
    steps: int


@dataclass(frozen=True)
class Schedule:
    order: list[int]  # indices into the rows given to `plan`, in training order
    ids: list[str]
    phases: list[Phase]
    dropped: dict[str, int]  # rows left out, by reason: solved, unsolved, boundary

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def phase_at(self, global_step: int) -> str:
        """The phase that optimizer step `global_step` (1-based, as TrainerState counts after it) trained on."""
        for phase in self.phases:
            if global_step <= phase.first_step + phase.steps:
                return phase.name
        return self.phases[-1].name

    def fingerprint(self) -> str:
        """sha256 of the ids in order and the phases: equal on resume or the data order changed."""
        text = json.dumps([self.ids, [list(p) for p in self.phases]], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def plan(rows: Sequence[dict], settings: Settings, batching: Batching, *, dataset: str, split: str) -> Schedule:
    """The training order of `rows` (problem rows: `id`, `difficulty`, `pass_rate`) under `settings`.

    `dataset` and `split` name the data in error messages. Raises UserError when the mode's
    levels or pass rates are missing, or a phase is shorter than one generation batch.
    """
    where = f"dataset {dataset} split {split}"
    lengths = settings.phase_lengths()
    rng = random.Random(settings.seed)
    indices, dropped = _filter(rows, settings, where)
    pools = _pools(rows, indices, settings.mode, where, dropped)
    wanted = [_wanted(pool, name, length, settings, batching) for (name, pool), length in zip(pools, lengths)]
    if sum(wanted) > MAX_SCHEDULE:
        raise UserError(f"{where}: the curriculum would train on {sum(wanted):,} prompts "
                        f"({', '.join(f'{n} {w:,}' for (n, _), w in zip(pools, wanted))}), more than the "
                        f"{MAX_SCHEDULE:,} a schedule holds: shorten the phases (curriculum_lengths, --epochs, --max-steps)")
    order, phases = [], []
    for (name, pool), n in zip(pools, wanted):
        picked, cut = _lay_out(rows, pool, name, n, settings, batching, rng, where)
        dropped["boundary"] += cut
        phases.append(Phase(name, len(order), len(picked), sum(p.steps for p in phases),
                            batching.steps(len(picked) // batching.prompts)))
        order += picked
    return Schedule(order, [rows[i]["id"] for i in order], phases, dropped)


def _filter(rows, settings, where):
    dropped = {"solved": 0, "unsolved": 0, "boundary": 0}
    indices = list(range(len(rows)))
    if settings.mode == "pass-rate" or settings.drop_solved or settings.drop_unsolved:
        _require_pass_rates(rows, settings, where)
    if settings.drop_solved:
        dropped["solved"] = sum(rows[i]["pass_rate"] >= 1.0 for i in indices)
        indices = [i for i in indices if rows[i]["pass_rate"] < 1.0]
    if settings.drop_unsolved:
        dropped["unsolved"] = sum(rows[i]["pass_rate"] <= 0.0 for i in indices)
        indices = [i for i in indices if rows[i]["pass_rate"] > 0.0]
    if not indices:
        raise UserError(f"{where}: every row was dropped ({dropped['solved']} solved, {dropped['unsolved']} unsolved "
                        "by every sample): nothing is left to train on; leave out --drop-solved / --drop-unsolved")
    return indices, dropped


def _require_pass_rates(rows, settings, where):
    missing = [r["id"] for r in rows if r.get("pass_rate") is None]
    if missing:
        why = f"curriculum {settings.mode!r}" if settings.mode == "pass-rate" else "--drop-solved / --drop-unsolved"
        raise UserError(f"{where}: {len(missing)} of {len(rows)} rows have no measured pass_rate (first: id "
                        f"{missing[0]!r}), which {why} needs: run `{DIFFICULTY_COMMAND}` first")


def _pools(rows, indices, mode, where, dropped):
    """(phase name, row indices) per phase, in phase order."""
    if mode in ("none", "pass-rate"):
        return [("all", indices)]
    unlabelled = [i for i in indices if rows[i].get("difficulty") not in LEVELS]
    if unlabelled:
        row = rows[unlabelled[0]]
        raise UserError(f"{where}: {len(unlabelled)} rows have no difficulty normal or hard (first: id {row['id']!r}, "
                        f"difficulty {row.get('difficulty')!r}), which curriculum {mode!r} orders by: label every "
                        "row's difficulty normal or hard, or use --curriculum none or pass-rate")
    pools = [(level, [i for i in indices if rows[i]["difficulty"] == level]) for level in PHASES[mode]]
    for level, pool in pools:
        if not pool:
            left = " left after --drop-solved / --drop-unsolved" if dropped["solved"] + dropped["unsolved"] else ""
            raise UserError(f"{where}: no row{left} has difficulty {level!r}, which curriculum {mode!r} trains on: "
                            f"add {level} rows or choose another --curriculum")
    return pools


def _wanted(pool, name, length, settings, batching) -> int:
    """How many prompts a phase of `length` (in settings.unit) lays out, before the cut to whole steps."""
    if settings.unit == "steps":
        if (length * batching.accumulation) % batching.micro_steps:
            raise UserError(f"curriculum phase {name!r}: {length} optimizer steps is not a whole number of generation "
                            f"batches (each spans {batching.micro_steps}/{batching.accumulation} steps): choose a "
                            "multiple (key curriculum_lengths)")
        return length * batching.accumulation // batching.micro_steps * batching.prompts
    return length * len(pool)


def _lay_out(rows, pool, name, wanted, settings, batching, rng, where):
    """(row indices of the phase, rows cut at its end): whole generation batches and optimizer steps."""
    quantum = batching.prompts * batching.quantum
    picked = []
    while len(picked) < wanted:
        picked += _epoch(rows, pool, settings.mode, rng)
    cut = wanted - wanted // quantum * quantum
    picked = picked[:wanted - cut]
    if not picked:
        raise UserError(f"{where}: curriculum phase {name!r} has {wanted} rows, fewer than one optimizer step of "
                        f"{quantum} prompts: add rows, lengthen the phase or lower the batch")
    return picked, cut


def _epoch(rows, pool, mode, rng):
    order = list(pool)
    rng.shuffle(order)
    if mode == "pass-rate":
        order.sort(key=lambda i: -rows[i]["pass_rate"])  # stable: ties keep the seeded order
    return order
