"""`r1v3 select-ckpt`: the choice over figure tables, and the stage end to end on a tiny run."""

import json
import math

import pytest
import torch

from r1v3 import data, entropy, mmmu, synthetic
from r1v3.errors import UserError
from r1v3.models import build_tiny
from stages import select_ckpt as S


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the choice, on figure tables ----------------------------------------------------------------


def fig(step, h, n, acc, fmt=1.0, reward=None):
    return {"step": step, "checkpoint": f"step-{step}", "critical_entropy": h, "critical_count": n, "accuracy": acc,
            "format_rate": fmt, "reward": 0.8 * acc + 0.2 * fmt if reward is None else reward}


def test_highest_critical_entropy_among_checkpoints_that_pass_the_guards():
    table = [fig(10, 0.5, 30, 0.50), fig(20, 0.9, 25, 0.45), fig(30, 1.4, 40, 0.30), fig(40, 1.2, 30, 0.52, fmt=0.7)]
    out = S.choose(table, min_positions=20, max_accuracy_drop=0.1, max_format_drop=0.2)
    # step 30 has the most entropy but its accuracy collapsed; step 40 lost format
    assert out["step"] == 20 and out["enough_evidence"]
    assert out["guards"]["30"] and "accuracy 0.300" in out["guards"]["30"][0]
    assert out["guards"]["40"] and "format rate 0.700" in out["guards"]["40"][0]
    assert out["guards"]["10"] == out["guards"]["20"] == []
    assert "0.9000 nats over 25 positions" in out["reason"]
    # looser guards let step 30 in
    assert S.choose(table, max_accuracy_drop=0.3)["step"] == 30


def test_checkpoints_with_too_few_positions_are_not_chosen_by_entropy():
    table = [fig(10, 0.5, 30, 0.5), fig(20, 2.0, 5, 0.5), fig(30, 0.8, 21, 0.5)]
    assert S.choose(table, min_positions=20)["step"] == 30
    assert S.choose(table, min_positions=2)["step"] == 20


def test_not_enough_evidence_names_the_fallback_choice():
    table = [fig(10, 0.5, 3, 0.40), fig(20, 1.5, 8, 0.60, fmt=0.9), fig(30, None, 0, 0.60, fmt=0.95), fig(40, 0.7, 2, 0.9, fmt=0.1)]
    out = S.choose(table, min_positions=20)
    assert not out["enough_evidence"]
    # highest accuracy among guarded checkpoints (40 lost its format), tie to the higher format rate
    assert out["step"] == 30
    assert out["reason"].startswith("not enough evidence") and "most: 8 at step 20" in out["reason"]
    assert S.FALLBACK_RULE in out["reason"]


def test_by_accuracy_and_by_reward():
    table = [fig(10, 0.5, 30, 0.5, reward=0.1), fig(20, 0.9, 30, 0.7, reward=0.2), fig(30, 1.0, 30, 0.6, reward=0.9)]
    assert S.choose(table, by="accuracy")["step"] == 20
    assert S.choose(table, by="reward")["step"] == 30
    assert S.choose(table)["step"] == 30
    # ties go to the earlier step
    assert S.choose([fig(10, 1.0, 30, 0.5), fig(20, 1.0, 30, 0.5)])["step"] == 10
    with pytest.raises(UserError, match="--by"):
        S.choose(table, by="loss")


def test_correlation_across_checkpoints():
    table = [fig(10, 0.5, 30, 0.2), fig(20, 0.7, 30, 0.4), fig(30, 0.9, 30, 0.5), fig(40, None, 0, 0.9)]
    out = S.correlation(table)
    # three checkpoints with positions, ranks agree: rho 1, exact p = 2 of 3! pairings
    assert out["n"] == 3 and out["rho"] == pytest.approx(1.0) and out["p_value"] == pytest.approx(1 / 3)
    assert S.correlation(table[:1] + table[3:])["rho"] is None
    flat = S.correlation([fig(10, 0.5, 30, 0.2), fig(20, 0.6, 30, 0.2)])
    assert flat["rho"] is None and "constant" in flat["note"]


# --- a tiny run ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_run(store, publisher):
    splits = synthetic.generate(40, 0, tasks=["counting", "color"], difficulties=["normal"])
    splits = {k: synthetic.with_solutions(v, "reflect", reflect_share=1.0) for k, v in splits.items()}
    made = publisher(store)
    rows = made.dataset("problems", splits)
    base = made.model("start", 0)
    run = made.run("rl", base, rows, [5, 10, 15])
    return store, run


ARGS = ["--run", "rl", "--probe", "problems", "--limit", "3", "--max-new-tokens", "12", "--samples", "2",
        "--min-positions", "1"]


def test_end_to_end_structure_and_recompute(tiny_run, cli):
    store, run = tiny_run
    code, out, err = cli("select-ckpt", *ARGS, "--name", "sel", "--base")
    assert code == 0, err
    assert "entropy (nats) at critical words" in out and "chosen: step" in out
    sel = store.resolve("sel", kind="selection")
    assert {"figures.json", "selection.json", "probe.jsonl", "entropy-vs-accuracy.png"} <= set(sel.manifest["files"])
    table = json.loads(sel.file("figures.json").read_text())
    assert [r["step"] for r in table] == [0, 5, 10, 15]
    records = entropy.read_records(sel.file("probe.jsonl"))
    assert len(records) == 4 * 3 * 2
    for r in table:
        mine = [x for x in records if x["step"] == r["step"]]
        assert r["generations"] == 6 and r["accuracy"] == sum(x["correct"] for x in mine) / 6
        assert r["tokens"] == sum(len(x["generated_ids"]) for x in mine)
        assert r["reward"] == pytest.approx(0.7 * r["accuracy"] + 0.3 * r["format_rate"])  # the run's weights
    summary = json.loads(sel.file("selection.json").read_text())
    assert summary["choice"]["step"] == sel.metrics["step"] and summary["choice"]["reason"]
    assert set(summary["spearman"]) >= {"rho", "p_value", "n"}
    # anyone can re-check a reported number with one forward pass of that checkpoint
    from r1v3.models import load_model

    rows = {r["id"]: r for r in data.read_split(store.resolve("problems").path, "validation")}
    model, processor = load_model(run.path / "checkpoints" / "step-10")
    for rec in [x for x in records if x["step"] == 10][:2]:
        again = entropy.recompute(model, processor, rec, rows[rec["id"]]["images"])
        assert again["token_entropy"] == pytest.approx(rec["token_entropy"], abs=1e-5)
        assert again["n_high"] == rec["n_high"]
        assert [c["entropy"] for c in again["critical"]] == pytest.approx([c["entropy"] for c in rec["critical"]], abs=1e-5)
    # the chosen model, published first, its lineage naming the run; the selection names it
    chosen = store.resolve("sel-model", kind="model")
    refs = [i["ref"] for i in chosen.manifest["inputs"]]
    assert run.ref in refs if sel.metrics["step"] else "start@v1" in refs
    assert sel.metrics["model"] == chosen.ref and summary["model"] == "sel-model"
    assert chosen.manifest["created"] <= sel.manifest["created"] and chosen.metrics["selected_by"] == "sel"
    assert chosen.metrics["step"] == sel.metrics["step"]
    load_model(chosen.path)


def scripted(monkeypatch, traces):
    """Make the backend 'generate' the given texts (tokenized as the model would emit them), so the
    measured path runs on completions that hold critical words."""
    from r1v3.generation import Completion, TransformersBackend

    def generate(self, requests, sampling, on_result=None):
        for q in requests:
            text = traces[q.id]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_ids[0]]
            # what the real backend records while generating: the entropies of the model's distributions
            n, ents = entropy.teacher_forced_entropies(self.model, self.processor, self.prompt_text(q), ids, q.images)
            yield q.id, [Completion(text, len(ids), "stop", tuple(ids), tuple(ents) if self.entropies else (), n)] * sampling.n

    monkeypatch.setattr(TransformersBackend, "generate", generate)


def test_critical_positions_of_reflective_traces(tiny_run, cli, monkeypatch):
    store, run = tiny_run
    rows = data.read_split(store.resolve("problems").path, "validation")[:3]
    scripted(monkeypatch, {r["id"]: r["messages"][1]["content"] for r in rows})
    code, _, err = cli("select-ckpt", *ARGS, "--name", "sel2")
    assert code == 0, err
    sel = store.resolve("sel2")
    table = json.loads(sel.file("figures.json").read_text())
    waits = sum(" Wait," in r["messages"][1]["content"] for r in rows)
    alts = sum(" Alternatively," in r["messages"][1]["content"] for r in rows)
    for r in table:
        # every reflective trace is right and well formed; each critical word counted per sample
        assert r["accuracy"] == 1.0 and r["format_rate"] == 1.0
        assert r["per_word"]["Wait"]["count"] == 2 * waits and r["per_word"]["Alternatively"]["count"] == 2 * alts
        assert r["critical_count"] == 2 * (waits + alts) > 0 and r["critical_entropy"] > 0
    from r1v3.models import load_model

    model, processor = load_model(run.path / "checkpoints" / "step-5")
    images = {r["id"]: r["images"] for r in rows}
    rec = next(x for x in entropy.read_records(sel.file("probe.jsonl")) if x["step"] == 5 and x["critical"])
    again = entropy.recompute(model, processor, rec, images[rec["id"]])
    assert [c["entropy"] for c in again["critical"]] == pytest.approx([c["entropy"] for c in rec["critical"]], abs=1e-5)
    assert all(math.isfinite(c["entropy"]) for c in rec["critical"])


def test_resume_skips_finished_checkpoints(tiny_run, cli, monkeypatch):
    store, _ = tiny_run
    code, _, err = cli("select-ckpt", *ARGS, "--name", "whole")
    assert code == 0, err
    scored = []
    real = S._score_checkpoint

    def dying(cfg, c, *a):
        if len(scored) == 2:
            raise KeyboardInterrupt  # killed while scoring the third checkpoint
        scored.append(c.step)
        return real(cfg, c, *a)

    monkeypatch.setattr(S, "_score_checkpoint", dying)
    assert cli("select-ckpt", *ARGS, "--name", "cut")[0] == 130
    assert scored == [5, 10] and "cut" not in [a.name for a in store.list()]
    scored.clear()
    monkeypatch.setattr(S, "_score_checkpoint", lambda cfg, c, *a: scored.append(c.step) or real(cfg, c, *a))
    code, _, err = cli("select-ckpt", *ARGS, "--name", "cut", "--resume")
    assert code == 0, err
    assert scored == [15]
    a, b = store.resolve("whole"), store.resolve("cut")
    assert a.file("probe.jsonl").read_bytes() == b.file("probe.jsonl").read_bytes()
    assert b.metrics["checkpoints_resumed"] == 2 and b.metrics["checkpoints_scored"] == 1
    # settings that differ are refused on resume
    monkeypatch.setattr(S, "_score_checkpoint", dying)
    scored.clear()
    assert cli("select-ckpt", *ARGS, "--name", "cut3")[0] == 130
    code, _, err = cli("select-ckpt", *ARGS, "--name", "cut3", "--resume", "--seed", "1")
    assert code == 2 and "other settings" in err


@pytest.mark.parametrize("family", ["internvl", "qwen2_vl"])
def test_a_generated_image_placeholder_token_is_measured_not_refused(family):
    """A random model can emit an image placeholder token; the one-pass measure takes it as generation
    saw it (a plain token after the prompt's images): up to it, the entropies are those of the prefix."""
    model, processor = build_tiny(family, seed=0)
    row = synthetic.with_solutions(synthetic.generate(20, 0)["train"][:1], "reflect")[0]
    tok = processor.tokenizer
    placeholder = sorted(entropy._placeholder_ids(model))[0]
    q = mmmu.request(row, "reasoning")
    ids = tok(row["messages"][1]["content"], add_special_tokens=False)["input_ids"][:12]
    ids = ids[:5] + [placeholder] + ids[5:] + [tok.eos_token_id]
    text = entropy.prompt_text(processor, q)
    n_prompt, ents = entropy.teacher_forced_entropies(model, processor, text, ids, q.images)
    assert len(ents) == len(ids) and all(math.isfinite(e) for e in ents)
    prefix_prompt, prefix = entropy.teacher_forced_entropies(model, processor, text, ids[:6], q.images)
    assert n_prompt == prefix_prompt and ents[:6] == pytest.approx(prefix, abs=1e-5)
