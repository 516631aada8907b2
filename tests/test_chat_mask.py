"""Assistant-token masks for chat templates without {% generation %} markers (r1v3.chat), and
`compose` then `sft` with an LLM whose template has the shape of the DeepSeek-R1-distilled Qwen one."""

import pytest
import torch
import transformers as tf
from trl.data_utils import prepare_multimodal_messages
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from r1v3 import chat, compose, models, synthetic
from r1v3.errors import UserError
from tests.helpers import publish_dataset, think_rows

BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"


def r1_template(strip_last: bool = False) -> str:
    """R1-distill-shaped: system text first, <｜User｜>/<｜Assistant｜> markers, an earlier assistant turn
    loses everything up to </think>, the generation prompt opens the reasoning with "<think>\\n".
    strip_last: the last turn loses it too (as the shipped R1-distill template does)."""
    which = "'</think>' in content" if strip_last else "not loop.last and '</think>' in content"
    return (
        "{{- bos_token }}{%- set ns = namespace(system='') %}"
        "{%- for m in messages %}{%- if m['role'] == 'system' %}{%- set ns.system = m['content'] %}{%- endif %}"
        "{%- endfor %}{{- ns.system }}"
        "{%- for m in messages %}"
        "{%- if m['role'] == 'user' %}{{- '" + USER + "' + m['content'] }}"
        "{%- elif m['role'] == 'assistant' %}{%- set content = m['content'] %}"
        "{%- if " + which + " %}{%- set content = content.split('</think>')[-1] %}{%- endif %}"
        "{{- '" + ASSISTANT + "' + content + '" + EOS + "' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '" + ASSISTANT + "<think>\\n' }}{%- endif %}"
    )


def r1_llm(strip_last: bool = False):
    tok = models.tiny_tokenizer([BOS, EOS, USER, ASSISTANT], chat_template=r1_template(strip_last),
                                bos_token=BOS, eos_token=EOS, pad_token=None)
    config = tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1, vocab_size=len(tok), tie_word_embeddings=False)
    torch.manual_seed(0)
    return tf.Qwen2ForCausalLM(config).eval(), tok


def composed(strip_last: bool = False):
    vlm, vlm_processor = models.build_tiny("internvl")
    model, processor, report = compose.compose(vlm, vlm_processor, *r1_llm(strip_last))
    assert report["chat_template"] == "llm"  # the LLM's own template behind the image-part prelude
    return model, processor


def turn(role, *parts):
    return {"role": role, "content": [{"type": "image", "text": ""} if p is None else {"type": "text", "text": p}
                                      for p in parts]}


IMAGE = synthetic.generate(10, seed=0)["train"][0]["images"][0]
SINGLE = [turn("user", None, "How many shapes?"), turn("assistant", "<think>Count them.</think>\n\\boxed{2}")]
MULTI = SINGLE + [turn("user", "And the red ones?"), turn("assistant", "<think>One is red.</think>\n\\boxed{1}")]


def masked(processor, messages, mask, images=(IMAGE,)):
    ids = chat._render(processor, messages, list(images), None, False, True)
    assert len(ids) == len(mask)
    return processor.tokenizer.decode([i for i, keep in zip(ids, mask) if keep]), ids


@pytest.fixture(scope="module")
def r1():
    return composed()


def test_r1_template_mask_is_the_assistant_tokens(r1):
    _, processor = r1
    tok = processor.tokenizer
    mask, context_only = chat.assistant_mask(processor, SINGLE, [IMAGE], None, "row s")
    text, ids = masked(processor, SINGLE, mask)
    # hand-written: the generation prompt opens <think>, so the target is the rest, through end-of-sentence
    expected = "Count them.</think>\n\\boxed{2}" + EOS
    assert text == expected and context_only == 0
    n = len(tok.encode(expected, add_special_tokens=False))
    assert mask == [0] * (len(ids) - n) + [1] * n  # one contiguous span at the end
    assert ids.count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 4  # rendered with the image expanded
    assert tok.decode(ids[: len(ids) - n]).endswith("How many shapes?" + ASSISTANT + "<think>")


def test_r1_multi_turn_trains_the_last_turn_and_keeps_the_rewritten_one_as_context(r1):
    _, processor = r1
    mask, context_only = chat.assistant_mask(processor, MULTI, [IMAGE], None, "row m")
    text, ids = masked(processor, MULTI, mask)
    assert text == "One is red.</think>\n\\boxed{1}" + EOS and context_only == 1
    # the earlier turn appears as the template shows it at inference: its reasoning removed
    assert f"{ASSISTANT}\n\\boxed{{2}}{EOS}{USER}And the red ones?" in processor.tokenizer.decode(ids)


def test_mask_equals_the_generation_markers_of_a_marked_template():
    _, processor = models.build_tiny("internvl")  # our ChatML template, with {% generation %}
    rows = [MULTI, SINGLE, [turn("system", "Think first."), *MULTI]]
    for messages in rows:
        mask, context_only = chat.assistant_mask(processor, messages, [IMAGE], None, "row")
        enc = processor.apply_chat_template([prepare_multimodal_messages(messages, images=[IMAGE])], tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True,
                                            processor_kwargs=chat.PROCESSOR_KWARGS)
        assert mask == list(enc["assistant_masks"][0]) and context_only == 0
        assert sum(mask) > 0


def test_a_template_that_drops_the_reasoning_of_the_trained_turn_is_refused():
    _, processor = composed(strip_last=True)
    with pytest.raises(UserError) as e:
        chat.assistant_mask(processor, SINGLE, [IMAGE], None, "data@v1 [train] row r3")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("data@v1 [train] row r3: the chat template does not render assistant turn 2 as written")


def test_collator_labels_follow_the_masks(r1):
    _, processor = r1
    examples = []
    for messages in (SINGLE, MULTI):
        mask, _ = chat.assistant_mask(processor, messages, [IMAGE], None, "row")
        examples.append({"messages": messages, "images": [IMAGE], "assistant_masks": mask})
    collate = chat.OwnMaskCollator(DataCollatorForVisionLanguageModeling(processor))
    batch = collate(examples)
    tok = processor.tokenizer
    for labels, ids, ex in zip(batch["labels"], batch["input_ids"], examples):
        assert labels[labels != -100].tolist() == [i for i, m in zip(ids.tolist(), ex["assistant_masks"]) if m]
    assert tok.decode(batch["labels"][0][batch["labels"][0] != -100]) == "Count them.</think>\n\\boxed{2}" + EOS
    assert "pixel_values" in batch and batch["input_ids"].shape == batch["labels"].shape
    # a rendering that no longer matches the measured masks stops the run instead of training on wrong labels
    examples[0]["assistant_masks"] = examples[0]["assistant_masks"][1:]
    with pytest.raises(RuntimeError, match="the rendering changed since the rows were measured"):
        collate(examples)


def compose_with_r1(cli, tmp_path, tok=None):
    """A tiny InternVL composed with the tiny R1-style LLM (carrying `tok`, default its own tokenizer) as 'vr1'."""
    assert cli("init", "tiny", "--name", "vlm", "--family", "internvl")[0] == 0
    llm, own = r1_llm()
    llm.save_pretrained(tmp_path / "r1")
    (tok or own).save_pretrained(tmp_path / "r1")
    assert cli("import-model", tmp_path / "r1", "--name", "r1")[0] == 0
    code, _, err = cli("compose", "--vlm", "vlm", "--llm", "r1", "--name", "vr1")
    assert code == 0, err


def test_compose_then_sft_trains_only_assistant_tokens(cli, tmp_path):
    compose_with_r1(cli, tmp_path)
    rows = think_rows(4)
    rows[1]["messages"] = [*rows[1]["messages"], {"role": "user", "content": "Are you sure?"},
                           {"role": "assistant", "content": "<think>Yes, I counted twice.</think>\n\\boxed{3}"}]
    publish_dataset(cli.store, "think", {"train": rows})
    code, out, err = cli("sft", "--model", "vr1", "--data", "think", "--preset", "cold-start", "--batch-size", "2",
                         "--max-steps", "2", "--lr", "1e-3", "--name", "tuned")
    assert code == 0, err
    assert "those turns are context, not trained: train 1" in out
    m = cli.store.resolve("tuned").metrics
    assert m["steps"] == 2 and m["examples"] == {"train": 4}
    # the same rows, as sft builds and measures them: each target is its last assistant turn, no prompt token
    from stages import sft

    art = cli.store.resolve("vr1")
    _, processor = models.load_model(art.path)
    cfg = sft.Config(name="n", model="m", data="d", trainable="connector")
    examples = sft.load_examples(cli.store.resolve("think"), "train", cfg)
    assert sft.training_template(processor, "vr1@v1") == (None, True)
    sizes = sft.measure(processor, examples, None, "think", own_mask=True)
    assert [c for _, _, c in sizes] == [0, 1, 0, 0]
    for ex, row in zip(examples, rows):
        text, _ = masked(processor, ex["messages"], ex["assistant_masks"], ex["images"])
        assert text == row["messages"][-1]["content"].removeprefix("<think>") + EOS


def test_sft_refuses_a_template_that_drops_the_reasoning(cli, tmp_path):
    # the shipped R1-distill template removes everything up to </think> from every assistant turn, the last
    # included: training would silently drop the reasoning, so sft says so and writes nothing
    assert cli("init", "tiny", "--name", "vlm", "--family", "internvl")[0] == 0
    llm, tok = r1_llm(strip_last=True)
    llm.save_pretrained(tmp_path / "r1")
    tok.save_pretrained(tmp_path / "r1")
    assert cli("import-model", tmp_path / "r1", "--name", "r1")[0] == 0
    assert cli("compose", "--vlm", "vlm", "--llm", "r1", "--name", "vr1")[0] == 0
    publish_dataset(cli.store, "think", {"train": think_rows(4)})
    code, _, err = cli("sft", "--model", "vr1", "--data", "think", "--trainable", "connector+llm", "--max-steps", "1",
                       "--name", "tuned")
    assert code == 2
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
    assert lines == [(
        "error: think@v1 [train] row r0: the chat template does not render assistant turn 2 as written (it drops or "
        "rewrites part of it, e.g. a template that removes everything up to </think>), so the loss would miss it"
    )], err
    assert "tuned" not in [a.name for a in cli.store.list()]
    assert not (cli.store.root / ".work" / "tuned").exists()


def test_compose_swaps_the_shipped_r1_template_for_its_training_version(cli, tmp_path):
    # the DeepSeek-R1-distill template as TRL ships it (byte for byte) strips the reasoning from every
    # assistant turn; compose keeps its prompts but takes TRL's training version, so cold-start SFT trains
    from trl.chat_template_utils import deepseek_r1_distill_chat_template

    tok = models.tiny_tokenizer([BOS, EOS, USER, ASSISTANT], chat_template=deepseek_r1_distill_chat_template,
                                bos_token=BOS, eos_token=EOS, pad_token=None)
    compose_with_r1(cli, tmp_path, tok)
    assert cli.store.resolve("vr1").metrics["chat_template"] == "llm-training"
    publish_dataset(cli.store, "think", {"train": think_rows(4)})
    code, _, err = cli("sft", "--model", "vr1", "--data", "think", "--preset", "cold-start", "--batch-size", "2",
                       "--max-steps", "1", "--lr", "1e-3", "--name", "tuned")
    assert code == 0, err
    # inference prompts are the LLM's own
    _, processor = models.load_model(cli.store.resolve("vr1").path)
    prompt = [{"role": "user", "content": "How many?"}]
    assert processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
