"""Curriculum order for GRPO: each mode's order, its errors, and proof on TRL's own GRPOTrainer
(sampler, dataloader, generation and rewards) that the trainer sees the rows in that order,
across a phase boundary, over several epochs, and after a resume from a checkpoint."""

import pytest

from r1v3.curriculum import Batching, Settings, plan
from r1v3.errors import UserError

B1 = Batching(prompts=2, micro_steps=1, accumulation=1)  # one generation batch of 2 prompts per step


def rows_of(normal=0, hard=0, other=0, rates=None):
    rows = [dict(id=f"n{i}", difficulty="normal") for i in range(normal)]
    rows += [dict(id=f"h{i}", difficulty="hard") for i in range(hard)]
    rows += [dict(id=f"o{i}", difficulty="") for i in range(other)]
    for row, rate in zip(rows, rates or [None] * len(rows)):
        row["pass_rate"] = rate
    return rows


def make(rows, batching=B1, **settings):
    return plan(rows, Settings(**settings), batching, dataset="probs@v1", split="train")


# --- the order of each mode ------------------------------------------------------------


def test_none_shuffles_every_row_each_epoch_seeded():
    rows = rows_of(normal=6, hard=4, other=2)
    s = make(rows, mode="none", lengths=(3,), seed=1)
    epochs = [s.ids[i:i + 12] for i in (0, 12, 24)]
    assert all(sorted(e) == sorted(r["id"] for r in rows) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # reshuffled at each pass
    assert make(rows, mode="none", lengths=(3,), seed=1).ids == s.ids
    assert make(rows, mode="none", lengths=(3,), seed=2).ids != s.ids
    assert [p.name for p in s.phases] == ["all"] and s.total_steps == 18


def test_normal_keeps_only_normal_rows():
    s = make(rows_of(normal=4, hard=3), mode="normal", lengths=(2,))
    assert sorted(s.ids) == sorted(["n0", "n1", "n2", "n3"] * 2)
    assert s.phases[0].name == "normal" and s.total_steps == 4


def test_hard_is_all_normal_epochs_then_all_hard_epochs():
    rows = rows_of(normal=5, hard=3)
    s = make(rows, mode="hard", lengths=(2, 2))
    normal, hard = s.phases
    assert (normal.start, normal.rows, normal.first_step, normal.steps) == (0, 10, 0, 5)
    assert (hard.start, hard.rows, hard.first_step, hard.steps) == (10, 6, 5, 3)
    assert sorted(s.ids[:10]) == sorted([f"n{i}" for i in range(5)] * 2)
    assert sorted(s.ids[10:]) == sorted(["h0", "h1", "h2"] * 2)
    assert [s.phase_at(step) for step in range(1, 9)] == ["normal"] * 5 + ["hard"] * 3
    assert s.dropped == {"solved": 0, "unsolved": 0, "boundary": 0}


def test_a_phase_is_whole_generation_batches_and_optimizer_steps():
    # 2 prompts per generation batch, 1 micro-step each, 4 micro-steps per optimizer step: a
    # phase is a multiple of 8 prompts, so no optimizer step mixes normal and hard rows
    s = make(rows_of(normal=9, hard=17), Batching(2, 1, 4), mode="hard")
    assert [(p.rows, p.first_step, p.steps) for p in s.phases] == [(8, 0, 1), (16, 1, 2)]
    assert s.dropped["boundary"] == 2
    with pytest.raises(UserError, match=r"phase 'normal' has 7 rows, fewer than one optimizer step of 8 prompts"):
        make(rows_of(normal=7, hard=9), Batching(2, 1, 4), mode="hard")


def test_phase_lengths_in_optimizer_steps_cycle_through_the_rows():
    rows = rows_of(normal=3, hard=2)
    # 2 prompts per generation batch, each used for 4 micro-steps, 2 per optimizer step
    s = make(rows, Batching(2, 4, 2), mode="hard", unit="steps", lengths=(4, 2))
    assert [(p.rows, p.first_step, p.steps) for p in s.phases] == [(4, 0, 4), (2, 4, 2)]
    assert set(s.ids[:4]) == {"n0", "n1", "n2"} and sorted(s.ids[4:]) == ["h0", "h1"]
    with pytest.raises(UserError, match=r"3 optimizer steps is not a whole number of generation batches"):
        make(rows, Batching(2, 4, 2), mode="hard", unit="steps", lengths=(3, 2))


def test_rows_that_would_straddle_a_boundary_are_counted():
    s = make(rows_of(normal=5, hard=3), mode="hard")
    assert [p.rows for p in s.phases] == [4, 2] and s.dropped["boundary"] == 2


def test_pass_rate_goes_from_easy_to_hard_each_epoch():
    rates = [0.5, 0.9, 0.1, 0.5, 0.7, 0.3]
    rows = rows_of(normal=3, hard=3, rates=rates)
    s = make(rows, mode="pass-rate", lengths=(2,), seed=3)
    rate = {r["id"]: r["pass_rate"] for r in rows}
    for epoch in (s.ids[:6], s.ids[6:]):
        assert [rate[i] for i in epoch] == sorted(rates, reverse=True)
    ties = {tuple(make(rows, mode="pass-rate", seed=seed).ids[2:4]) for seed in range(8)}
    assert ties == {("n0", "h0"), ("h0", "n0")}  # equal rates in seeded order


def test_drop_solved_and_unsolved():
    rows = rows_of(normal=6, rates=[1.0, 0.0, 0.5, 1.0, 0.25, 0.0])
    s = make(rows, mode="none", drop_solved=True, drop_unsolved=True)
    assert sorted(s.ids) == ["n2", "n4"] and s.dropped == {"solved": 2, "unsolved": 2, "boundary": 0}
    assert sorted(make(rows, mode="none", drop_unsolved=True).ids) == ["n0", "n2", "n3", "n4"]


def test_fingerprint_follows_the_order():
    rows = rows_of(normal=4, hard=2)
    a, b = make(rows, mode="hard", seed=0), make(rows, mode="hard", seed=0)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != make(rows, mode="hard", seed=5).fingerprint()


# --- mistakes: one line naming the data and what to do ---------------------------------


@pytest.mark.parametrize("rows, settings, message", [
    (rows_of(normal=4), dict(mode="pass-rate"),
     r"^dataset probs@v1 split train: 4 of 4 rows have no measured pass_rate \(first: id 'n0'\), which curriculum "
     r"'pass-rate' needs: run `r1v3 difficulty --model REF --data REF --samples k --name N` first$"),
    (rows_of(normal=2, rates=[0.5, None]), dict(drop_solved=True), r"1 of 2 rows .*--drop-solved / --drop-unsolved"),
    (rows_of(normal=4), dict(mode="hard"),
     r"^dataset probs@v1 split train: no row has difficulty 'hard', which curriculum 'hard' trains on"),
    (rows_of(hard=4), dict(mode="normal"), r"split train: no row has difficulty 'normal'"),
    (rows_of(normal=2, hard=2, rates=[0.5, 0.5, 1.0, 1.0]), dict(mode="hard", drop_solved=True),
     r"no row left after --drop-solved / --drop-unsolved has difficulty 'hard'"),
    (rows_of(normal=4, hard=2, other=3), dict(mode="hard"),
     r"split train: 3 rows have no difficulty normal or hard \(first: id 'o0', difficulty ''\)"),
    (rows_of(normal=2, rates=[1.0, 1.0]), dict(drop_solved=True), r"every row was dropped \(2 solved, 0 unsolved"),
    (rows_of(normal=4), dict(mode="easy"), r"curriculum 'easy' is not one of none, normal, hard, pass-rate"),
    (rows_of(normal=4), dict(unit="tokens"), r"unit 'tokens' is not one of epochs, steps"),
    (rows_of(normal=4, hard=2), dict(mode="hard", lengths=(1,)), r"2 phase\(s\) \(normal, hard\) but 1 length"),
    (rows_of(normal=4), dict(lengths=(0,)), r"phase 'all': length must be a positive number of epochs, got 0"),
    (rows_of(normal=4), dict(unit="steps"), r"counted in steps needs the length of all"),
    (rows_of(normal=4, hard=1), dict(mode="hard"), r"phase 'hard' has 1 rows, fewer than one optimizer step of 2"),
])
def test_mistakes_are_one_line_user_errors(rows, settings, message):
    with pytest.raises(UserError, match=message) as e:
        make(rows, **settings)
    assert "\n" not in str(e.value)


def test_batching_from_a_real_grpo_config(tmp_path):
    from trl import GRPOConfig

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                      gradient_accumulation_steps=2, steps_per_generation=3, num_iterations=2, use_cpu=True,
                      report_to=[])
    assert Batching.from_args(args) == Batching(prompts=6, micro_steps=6, accumulation=2)


# --- the order GRPOTrainer really trains on --------------------------------------------


class RecordIds:
    """A reward function that records, per call, the trainer's global step and the `id` column."""

    __name__ = "record_ids"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, id, trainer_state, **_):
        self.calls.append((trainer_state.global_step, list(id)))
        return [0.0] * len(completions)


def grpo_args(tmp_path, **kwargs):
    from trl import GRPOConfig

    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_generations=2,
                    max_completion_length=2, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
                    shuffle_dataset=False, disable_tqdm=True, seed=0)
    return GRPOConfig(**{**settings, **kwargs})


def train_in_order(rows, schedule, args, resume_from=None):
    """Train a tiny InternVL with GRPOTrainer on `rows` in `schedule` order; the reward's calls."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from r1v3 import models

    model, processor = models.build_tiny("internvl")
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": [{"type": "text", "text": f"question {r['id']}"}]}],
                               "id": r["id"]} for r in rows]).select(schedule.order)
    args.max_steps = schedule.total_steps
    record = RecordIds()
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=[record], args=args, train_dataset=data)
    trainer.train(resume_from_checkpoint=resume_from)
    return record.calls, trainer


def prompts_seen(calls, n):
    """The prompts of each generation, once each: every prompt arrives as `n` consecutive rows."""
    seen = []
    for _, ids in calls:
        groups = [ids[i:i + n] for i in range(0, len(ids), n)]
        assert all(len(set(g)) == 1 and len(g) == n for g in groups), ids
        seen += [g[0] for g in groups]
    return seen


@pytest.mark.integration
def test_grpo_trains_normal_epochs_then_hard_and_resumes_in_order(tmp_path):
    """hard, 2 normal epochs then 1 hard epoch, 2 micro-steps per optimizer step: the prompts
    generated for are the schedule, each step's prompts belong to the phase its step number says,
    and a run resumed from a mid-run checkpoint generates for exactly the rest."""
    rows = rows_of(normal=3, hard=3)
    args = grpo_args(tmp_path, gradient_accumulation_steps=2, save_strategy="steps", save_steps=2)
    schedule = plan(rows, Settings(mode="hard", lengths=(2, 1)), Batching.from_args(args), dataset="d", split="train")
    assert [(p.name, p.first_step, p.steps) for p in schedule.phases] == [("normal", 0, 3), ("hard", 3, 1)]

    calls, trainer = train_in_order(rows, schedule, args)
    assert prompts_seen(calls, 2) == schedule.ids
    assert trainer.state.global_step == schedule.total_steps
    for step, ids in calls:  # generated during optimizer step `step + 1`
        assert {schedule.phase_at(step + 1)[0]} == {i[0] for i in ids}
    assert [step for step, _ in calls] == [0, 1, 2, 3]

    resumed, _ = train_in_order(rows, schedule, grpo_args(tmp_path, gradient_accumulation_steps=2),
                                resume_from=str(tmp_path / "out" / "checkpoint-2"))
    assert prompts_seen(resumed, 2) == schedule.ids[4:]
    assert [step for step, _ in resumed] == [2, 3]


@pytest.mark.integration
def test_grpo_reusing_generations_keeps_the_pass_rate_order(tmp_path):
    """pass-rate with num_iterations=2 and steps_per_generation (1) unlike gradient accumulation (2):
    each generation batch (1 prompt) is served for 2 micro-steps, one optimizer step."""
    rows = rows_of(normal=2, hard=2, rates=[0.25, 1.0, 0.5, 0.75])
    args = grpo_args(tmp_path, gradient_accumulation_steps=2, steps_per_generation=1, num_iterations=2)
    batching = Batching.from_args(args)
    assert batching == Batching(prompts=1, micro_steps=2, accumulation=2)
    schedule = plan(rows, Settings(mode="pass-rate"), batching, dataset="d", split="train")
    assert schedule.ids == ["n1", "h1", "h0", "n0"]
    calls, _ = train_in_order(rows, schedule, args)
    assert prompts_seen(calls, 2) == schedule.ids


@pytest.mark.parametrize("mode", ["none", "normal"])
@pytest.mark.integration
def test_grpo_trains_in_the_order_of_single_phase_modes(tmp_path, mode):
    """Two generation batches per optimizer step (steps_per_generation 1, accumulation 2), two epochs."""
    rows = rows_of(normal=2, hard=2)
    args = grpo_args(tmp_path, gradient_accumulation_steps=2, steps_per_generation=1)
    schedule = plan(rows, Settings(mode=mode, lengths=(2,), seed=4), Batching.from_args(args), dataset="d",
                    split="train")
    assert len(schedule.ids) == {"none": 8, "normal": 4}[mode]
    calls, _ = train_in_order(rows, schedule, args)
    assert prompts_seen(calls, 2) == schedule.ids
    assert [step for step, _ in calls] == [s for s in range(schedule.total_steps) for _ in range(2)]
