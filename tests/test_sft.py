"""`r1v3 sft` on tiny models: which parameters move, the loss, kill-and-resume, lineage, bad inputs."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1v3 import config, data, mmmu, models, prompts, synthetic, training
from stages import sft

REPO = Path(__file__).resolve().parents[1]


from tests.helpers import SHORT, changed_parts, publish_dataset, snapshot, state_dict, think_rows


@pytest.mark.parametrize("preset, trained", [
    ("connector-align", {"connector"}),
    ("cold-start", {"connector", "llm"}),
    ("connector-retune", {"connector"}),
])
def test_presets_change_only_intended_parts(ready, preset, trained):
    code, out, err = ready("sft", *SHORT, "--preset", preset, "--name", "m")
    assert code == 0, err
    art = ready.store.resolve("m", kind="model", verify=True)
    moved = changed_parts(state_dict("tiny", ready.store), state_dict("m", ready.store))
    for part, (n_changed, n_total) in moved.items():
        if part in trained:
            assert n_changed > 0, f"{preset}: {part} did not move"
        else:
            assert n_changed == 0, f"{preset}: frozen {part} changed in {n_changed} of {n_total} tensors"
    m = art.metrics
    assert set(m["trainable"]) == trained and m["preset"] == preset
    assert m["optimizer_parameters"] == m["parameters"]["trainable"]  # the optimizer holds only trainable tensors
    assert m["parameters"]["trainable"] == sum(
        v["parameters"] for p, v in m["parameters"]["by_part"].items() if p in trained)
    assert m["frozen_check"].startswith("verified")
    assert art.manifest["config"]["learning_rate"] == sft.PRESETS[preset]["learning_rate"]
    if preset == "connector-retune":  # validation loss, for early stopping
        assert m["eval_loss"] is not None and art.manifest["config"]["eval_split"] == "validation"


def test_early_stopping_publishes_the_best_checkpoint(ready):
    train, val = think_rows(8), think_rows(4, seed=1, prefix="v")
    for r in train:  # training text unlike the validation text: overfitting soon raises the validation loss
        r["messages"][1]["content"] = "<think>Wait, the circles are red.</think>\n\\boxed{A}"
    for r in val:
        r["messages"][1]["content"] = "<think>Hmm, so the total is 12.</think>\n\\boxed{9}"
    publish_dataset(ready.store, "drift", {"train": train, "validation": val})
    code, _, err = ready("sft", "--model", "tiny", "--data", "drift", "--preset", "connector-retune", "--trainable",
                         "connector+llm", "--lr", "1e-2", "--batch-size", "4", "--max-steps", "30", "--save-steps", "2",
                         "early_stopping_patience=2", "--name", "es")
    assert code == 0, err
    m = ready.store.resolve("es").metrics
    curve = dict(m["eval_loss_curve"])
    assert m["stopped_early"] and m["steps"] < 30  # measured: stops at step 18, best at 14
    assert m["best_checkpoint_step"] == min(curve, key=curve.get) < m["steps"]
    assert m["eval_loss"] == min(curve.values())  # the published weights are the best checkpoint's, reloaded


def test_vision_only_and_gradient_checkpointing(ready):
    code, _, err = ready("sft", *SHORT, "--trainable", "vision", "--lr", "1e-3", "--gradient-checkpointing", "--name", "v")
    assert code == 0, err
    moved = changed_parts(state_dict("tiny", ready.store), state_dict("v", ready.store))
    assert moved["vision"][0] > 0 and moved["connector"][0] == 0 and moved["llm"][0] == 0


def test_loss_goes_down_and_metrics(ready):
    code, out, err = ready("sft", "--model", "tiny", "--data", "sftdata", "--preset", "cold-start", "--lr", "1e-2",
                           "--batch-size", "4", "--max-steps", "30", "--name", "fit")
    assert code == 0, err
    art = ready.store.resolve("fit", kind="model", verify=True)
    m = art.metrics
    losses = [loss for _, loss in m["loss_curve"]]
    assert len(losses) == 30 and m["steps"] == 30
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses  # measured: about 6.5 -> under 1
    assert m["tokens_seen"] > 30 * 4 * 20  # every row is 20+ tokens, 4 image tokens included
    assert m["dropped_too_long"] == {"train": 0} and m["examples"] == {"train": 8}
    assert m["wall_seconds"] > 0 and art.file("loss.png").stat().st_size > 5000
    assert 0 < m["seconds_per_step"] < m["train_seconds"]  # a median step time, first step left out
    assert "published fit@v1" in out and "30 steps" in out
    assert not (ready.store.root / ".work" / "fit").exists()  # checkpoints go once the model is published


def test_lineage_names_base_model_and_data(ready):
    assert ready("sft", *SHORT, "--trainable", "connector", "--name", "m")[0] == 0
    art = ready.store.resolve("m")
    assert [(i["ref"], i["kind"]) for i in art.manifest["inputs"]] == [("tiny@v1", "model"), ("sftdata@v1", "dataset")]
    tree = ready.store.lineage(art)
    assert tree["stage"] == "sft" and [c["ref"] for c in tree["inputs"]] == ["tiny@v1", "sftdata@v1"]
    code, out, _ = ready("artifacts", "lineage", "m")
    assert code == 0 and "tiny@v1" in out and "sftdata@v1" in out


def test_long_rows_are_dropped_and_counted(ready):
    rows = think_rows(6)
    rows[2]["messages"][1]["content"] = "<think>" + "Wait, let me count again. " * 60 + "</think>\n\\boxed{3}"
    publish_dataset(ready.store, "long", {"train": rows})
    code, out, err = ready("sft", *SHORT, "--data", "long", "--preset", "cold-start", "--max-length", "200", "--name", "m")
    assert code == 0, err
    assert "dropped rows longer than 200 tokens: train 1" in out
    assert ready.store.resolve("m").metrics["dropped_too_long"] == {"train": 1}


def test_caption_format_and_image_placement(ready):
    rows = synthetic.generate(10, seed=3)["train"][:4]
    publish_dataset(ready.store, "caps", {"train": rows})
    code, _, err = ready("sft", *SHORT, "--data", "caps", "--format", "caption", "--preset", "connector-align",
                         "--max-steps", "2", "--name", "c")
    assert code == 0, err
    # <image N> places the image there; an image no turn mentions goes first in the first user turn
    img = rows[0]["images"][0]
    row = dict(rows[0], images=[img, img, img], messages=[
        {"role": "user", "content": "Compare <image 3> with <image 1>; again <image 3>."},
        {"role": "assistant", "content": "<think>x</think> B"}])
    cfg = sft.Config(name="n", model="m", data="d", trainable="connector", require_think=True)
    conv = sft.conversation(row, cfg, "row")
    parts = conv["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image", "text", "image", "text", "image", "text"]
    assert [p["text"] for p in parts if p["type"] == "text"] == ["Compare ", " with ", "; again <image 3>."]
    assert len(conv["images"]) == 3


def test_synth_messages_are_valid_cold_start_data(cli):
    code, _, err = cli("data", "synth", "--name", "sol", "--n", "20", "--messages", "think")
    assert code == 0, err
    rows = data.read_split(cli.store.resolve("sol").path, "train")
    for r in rows:
        user, assistant = r["messages"]
        assert "<think>" in user["content"] and r["question"].split(" Answer with")[0] in user["content"]
        assert sft.THINK.match(assistant["content"]) and assistant["content"].endswith(f"\\boxed{{{r['answer']}}}")
        assert r["caption"] in assistant["content"]


def test_synth_message_styles(cli):
    # the option started as a flag (true = think); a style is given as messages=STYLE
    for style in ("brief", "direct", "caption"):
        code, _, err = cli("data", "synth", "--name", style, "--n", "40", f"messages={style}")
        assert code == 0, err
    assert cli("data", "synth", "--name", "bad", "--n", "20", "messages=long")[0] == 2
    brief, direct, caption = (data.read_split(cli.store.resolve(s).path, "train") for s in ("brief", "direct", "caption"))
    for b, d, c in zip(brief, direct, caption):
        assert b["id"] == d["id"] == c["id"] and b["caption"] == c["caption"]  # the same problems, full captions kept
        value = b["options"]["ABCD".index(b["answer"])] if b["options"] else b["answer"]
        think = b["messages"][1]["content"]
        assert sft.THINK.match(think) and think.endswith(f"\\boxed{{{b['answer']}}}") and value in think
        assert len(think) < 200 and b["messages"][0]["content"] == synthetic.with_solutions([b])[0]["messages"][0]["content"]
        official = "".join(p["text"] for p in mmmu.build_prompt(d, "official") if p["type"] == "text")
        assert d["messages"] == [{"role": "user", "content": official}, {"role": "assistant", "content": d["answer"]}]
        user, short = c["messages"]
        assert user["content"] == synthetic.CAPTION_PROMPT and "(x=" not in short and len(short) < len(c["caption"]) / 2
    # the short caption names every object of the full one, in the same order
    for c in caption:
        if c["subject"] in ("counting", "color", "spatial"):
            named = re.findall(r"a (\w+ \w+) at", c["messages"][1]["content"])
            assert named == re.findall(r"a (\w+ \w+) at [a-z ]+ \(x=", c["caption"])
    # brief traces count what the question asks about
    for b in brief:
        if b["subject"] == "counting":
            value = b["options"]["ABCD".index(b["answer"])] if b["options"] else b["answer"]
            assert re.match(rf"<think>There (are|is) {value} ", b["messages"][1]["content"])


def test_recipe_files_resolve_to_the_paper_settings():
    expected = {
        "connector-align": ("connector", 2e-4, 0.05),
        "cold-start": ("connector+llm", 2e-5, 0.0),
        "connector-retune": ("connector", 1e-5, 0.0),
    }
    for preset, (trainable, lr, wd) in expected.items():
        path = REPO / "recipes" / "sft" / f"{preset}.yaml"
        cfg = config.load(sft.Config, stage="sft", path=path, options={"model": "m", "data": "d", "name": "n"})
        assert (cfg.preset, cfg.trainable, cfg.learning_rate, cfg.weight_decay) == (preset, trainable, lr, wd)
        assert cfg.lr_scheduler == "cosine" and cfg.warmup_ratio == 0.03
    retune = config.load(sft.Config, stage="sft", path=REPO / "recipes/sft/connector-retune.yaml",
                         options={"model": "m", "data": "d", "name": "n"})
    assert retune.epochs == 2 and retune.max_length == 16384 and retune.early_stopping_patience > 0
    for name in ("zero3.yaml", "fsdp.yaml"):
        accel = config.read_yaml(REPO / "recipes" / "accelerate" / name)
        assert accel["mixed_precision"] == "bf16" and accel["num_processes"] >= 1


KILL = ["--model", "tiny", "--data", "sftdata", "--trainable", "connector+llm", "--lr", "5e-3", "--batch-size", "2",
        "--epochs", "6", "--save-steps", "3"]  # 8 rows / 2 = 4 steps per epoch: 24 steps, checkpoints mid-epoch


def test_kill_and_resume_gives_the_same_weights(ready, tmp_path):
    root = ready.store.root
    code, _, err = ready("sft", *KILL, "--name", "straight")
    assert code == 0, err
    # the killed run is a subprocess, the others run in this process: the same number of threads, or the
    # float reductions (and so the weights) differ in the last bits whatever the resume does
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(torch.get_num_threads()))
    with open(tmp_path / "cut.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "r1v3.cli", "--store", str(root), "sft", *KILL, "--name", "cut"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    work = root / ".work" / "cut" / "sft"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        done = training.complete_checkpoints(work)
        if done and int(done[-1].name.split("-")[1]) >= 6:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-run, as a crash or a preempted job would end it
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "cut.log").read_text()[-2000:]
    assert "cut" not in [a.name for a in ready.store.list()]
    steps = [int(p.name.split("-")[1]) for p in training.complete_checkpoints(work)]
    assert steps and max(steps) < 24
    # damage the newest checkpoint as a crash mid-save would: resume must fall back to the one before
    newest = training.complete_checkpoints(work)[-1]
    with open(newest / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)

    # other settings are refused rather than mixed into the interrupted run
    code, _, err = ready("sft", *KILL, "--name", "cut", "--resume", "--seed", "1")
    assert code == 2 and "used other settings, model or data: seed 0 -> 1; rerun" in err
    code, out, err = ready("sft", *KILL, "--name", "cut", "--resume")
    assert code == 0, err
    assert "resuming 'cut' from checkpoint-" in out
    cut, straight = ready.store.resolve("cut"), ready.store.resolve("straight")
    assert cut.metrics["resumed_from_step"] == max(s for s in steps if s != int(newest.name.split("-")[1]))
    assert cut.metrics["resumed_from_step"] % 4 != 0  # mid-epoch: the resumed run skips the batches already seen
    assert cut.metrics["steps"] == straight.metrics["steps"] == 24
    a, b = load_file(cut.file("model.safetensors")), load_file(straight.file("model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert cut.metrics["loss_curve"] == straight.metrics["loss_curve"]
    assert cut.metrics["tokens_seen"] == straight.metrics["tokens_seen"]


def test_starting_over_discards_old_checkpoints(ready):
    work = ready.store.root / ".work" / "m" / "sft" / "checkpoint-7"
    work.mkdir(parents=True)
    code, out, err = ready("sft", *SHORT, "--trainable", "connector", "--name", "m")
    assert code == 0, err
    assert "starting 'm' over" in out and ready.store.resolve("m").metrics["resumed_from_step"] is None


def test_bad_inputs_one_line_exit_2_nothing_written(ready, tmp_path):
    store = ready.store
    assert ready("data", "synth", "--name", "plain", "--n", "20")[0] == 0  # problems without messages
    no_think = think_rows(4)
    no_think[1]["messages"][1]["content"] = "The answer is 3."
    publish_dataset(store, "nothink", {"train": no_think})
    # a text-only LLM imported as a model artifact
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llm_dir = tmp_path / "llm"
    Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=700)).save_pretrained(llm_dir)
    models.build_tiny("internvl")[1].tokenizer.save_pretrained(llm_dir)
    assert ready("import-model", llm_dir, "--name", "llm")[0] == 0
    with store.publish("alien", "model", stage="test") as draft:  # a VLM family we have no table for
        (draft.path / "config.json").write_text(json.dumps({"model_type": "paligemma", "vision_config": {}}))
        (draft.path / "model.safetensors").write_bytes(b"\0" * 16)
    before = snapshot(store)

    cases = [
        (["--data", "plain", "--preset", "cold-start"], "plain@v1 [train]: no row has `messages`"),
        (["--data", "nothink", "--preset", "cold-start"], "row r1: assistant turn is not in the think template"),
        (["--preset", "cold-start", "--max-length", "10"], "all 8 rows are longer than max_length=10"),
        (["--trainable", "connector+eyes"], "unknown trainable part 'eyes'"),
        (["--model", "llm", "--trainable", "connector"], "llm@v1 is a text-only LLM (qwen2): it cannot see images"),
        (["--model", "llm", "--trainable", "connector", "--format", "text-rendering"], "its only part is llm"),
        (["--model", "alien", "--trainable", "connector"], "unsupported model family 'paligemma'"),
        ([], "say what to train"),
        (["--preset", "cold-start", "--split", "test"], "no split 'test'"),
        (["--trainable", "connector", "early_stopping_patience=2"], "early stopping watches the validation loss"),
        (["--preset", "warmup"], "must be a shipped preset of sft (cold-start, connector-align, connector-retune); got 'warmup'"),
    ]
    for extra, message in cases:
        code, out, err = ready("sft", *SHORT, *extra, "--name", "bad")
        assert code == 2, (extra, err)
        assert message in err, (extra, err)
        # (in-process, a library's progress bar can precede it: pytest imported it before the CLI muted them)
        lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert snapshot(store) == before, extra


def test_text_only_llm_learns_from_text_renderings(cli, tmp_path):
    """A distill teacher: a text-only LLM (Llama 3 template, no {% generation %} markers) trains on
    distill's teacher prompt over each row's caption -> the row's assistant turn, loss on that turn only,
    and the result is a text-only model artifact that distill takes as --teacher."""
    from tests.helpers import tiny_llm

    from r1v3 import chat
    from stages import distill

    model, tok = tiny_llm("llama")
    model.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    assert cli("import-model", tmp_path / "llm", "--name", "textlm")[0] == 0
    rows = think_rows(6)
    publish_dataset(cli.store, "probs", {"train": rows})
    cfg = sft.Config(model="textlm", data="probs", name="t", trainable="llm", format="text-rendering")
    ex = sft.conversation(rows[0], cfg, "row r0", text_only=True)
    assert ex["images"] == [] and ex["messages"][0]["content"] == prompts.teacher_prompt(rows[0])
    assert rows[0]["caption"] in ex["messages"][0]["content"]
    mask, _ = chat.assistant_mask(tok, ex["messages"], [], None, "row r0")
    ids = chat.token_ids(tok, ex["messages"], [])
    # hand-written: the assistant turn's text and the end-of-turn token, not its header, not the prompt
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == rows[0]["messages"][1]["content"] + "<|eot_id|>"
    before = {n: p.clone() for n, p in model.named_parameters()}

    code, out, err = cli("sft", "--model", "textlm", "--data", "probs", "--format", "text-rendering",
                         "--trainable", "llm", "--max-steps", "2", "--batch-size", "3", "--lr", "1e-3", "--name", "teacher")
    assert code == 0, err
    art = cli.store.resolve("teacher", kind="model")
    assert art.metrics["model_class"] == "causal-lm" and "family" not in art.metrics
    assert art.metrics["parameters"]["trainable"] == art.metrics["parameters"]["total"] > 0
    assert art.metrics["tokens_seen"] > 0 and art.metrics["steps"] == 2
    trained, _ = models.load_llm(art.path)
    assert all(not torch.equal(before[n], p) for n, p in trained.named_parameters())
    distill.resolve_teacher(distill.Config(teacher="teacher", data="probs", name="d"), cli.store)  # a valid teacher
    # rows with images cannot train a text model as chat
    code, _, err = cli("sft", "--model", "textlm", "--data", "probs", "--trainable", "llm", "--name", "bad")
    assert code == 2 and "textlm@v1 is a text-only LLM (llama)" in err and not cli.store.versions("bad")
