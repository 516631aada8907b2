"""Helpers for the training tests: small think-template datasets, parameter snapshots, the short sft flags."""

import io
import json

import torch
import transformers as tf
from PIL import Image

from r1v3 import data, families, models, synthetic


def think_rows(n, seed=0, prefix="r"):
    """Short chat rows over synthetic images: the assistant turn in the think template."""
    rows = synthetic.generate(max(n + 2, 10), seed=seed)["train"][:n]
    out = []
    for i, r in enumerate(rows):
        out.append(dict(r, id=f"{prefix}{i}", messages=[
            {"role": "user", "content": r["question"]},
            {"role": "assistant", "content": f"<think>The image shows {r['subject']}.</think>\n\\boxed{{{r['answer']}}}"},
        ]))
    return out


def publish_dataset(store, name, splits):
    with store.publish(name, "dataset", stage="test") as draft:
        data.write_splits(draft.path, splits)
    return draft.artifact


def state_dict(ref, store):
    model, _ = models.load_model(store.resolve(ref).path)
    parts = families.part_of_parameters(model)
    return {n: (parts[n], p.detach().clone()) for n, p in model.named_parameters()}


def changed_parts(before, after):
    """part -> (tensors changed, tensors in part)."""
    out = {}
    for name, (part, t) in before.items():
        moved, total = out.get(part, (0, 0))
        out[part] = (moved + (not torch.equal(t, after[name][1])), total + 1)
    return out


def snapshot(store):
    models_ = sorted(a.ref for a in store.list() if a.kind == "model")
    work = store.root / ".work"
    return models_, sorted(p.name for p in work.iterdir()) if work.exists() else []


SHORT = ["--model", "tiny", "--data", "sftdata", "--batch-size", "4", "--max-steps", "3", "--save-steps", "50"]


# a Llama-3-style template: not ChatML, so compose must keep it and only teach it image parts
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
# a Qwen2.5-style ChatML template with a default system prompt, without {% generation %} markers
QWEN_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\nYou are a tiny Qwen.<|im_end|>\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
TEXT = dict(intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_llm(kind: str, hidden: int = 48, template: str | None = "default", seed: int = 1):
    """(model, tokenizer) of a random text-only causal LM with its own tokenizer and chat template."""
    if kind == "llama":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok = models.tiny_tokenizer(
            specials,
            chat_template=LLAMA3_TEMPLATE if template == "default" else template,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token=None,  # like Llama 3: compose must add one
        )
        config = tf.LlamaConfig(hidden_size=hidden, tie_word_embeddings=True, **TEXT)
    else:
        tok = models.tiny_tokenizer(chat_template=QWEN_TEMPLATE if template == "default" else template)
        config_cls = tf.Qwen2Config if kind == "qwen2" else tf.Qwen3Config
        extra = {"head_dim": hidden // 4} if kind == "qwen3" else {}
        config = config_cls(hidden_size=hidden, tie_word_embeddings=False, **TEXT, **extra)
    config.vocab_size = len(tok)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, tok


def png_bytes(color="red"):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def bad_cli_inputs(tmp):
    """(argv, expected message fragment) for user mistakes; files they need are made here."""
    (tmp / "malformed.yaml").write_text("n: [1, 2\n")
    (tmp / "list.yaml").write_text("- 1\n")
    rows = {
        "missing": {"id": "a", "images": [], "question": "q", "options": [], "question_type": "open"},
        "truncated": {"id": "a", "images": ["trunc.png"], "question": "q", "options": [], "answer": "1",
                      "question_type": "open"},
        "escape": {"id": "a", "images": ["../outside.png"], "question": "q", "options": [], "answer": "1",
                   "question_type": "open"},
        "placeholder": {"id": "a", "images": ["ok.png"], "question": "<image 2>?", "options": [], "answer": "1",
                        "question_type": "open"},
    }
    (tmp / "ds").mkdir()
    (tmp / "ds" / "trunc.png").write_bytes(png_bytes()[:40])
    (tmp / "ds" / "ok.png").write_bytes(png_bytes())
    (tmp / "outside.png").write_bytes(png_bytes())
    for name, row in rows.items():
        (tmp / "ds" / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    (tmp / "nomodel").mkdir()
    (tmp / "nomodel" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (tmp / "pickled").mkdir()
    (tmp / "pickled" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (tmp / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    (tmp / "responses.json").write_text(json.dumps({"not": "a list"}))
    return [
        (["data", "synth", "--name", "x", "--config", tmp / "absent.yaml"], "config file not found"),
        (["data", "synth", "--name", "x", "--config", tmp / "malformed.yaml"], "malformed YAML"),
        (["data", "synth", "--name", "x", "--config", tmp / "list.yaml"], "must be a mapping"),
        (["data", "synth", "--name", "x", "stepz=1"], "unknown key 'stepz'"),
        (["data", "synth", "--name", "x", "n=ten"], "n must be int, got 'ten'"),
        (["data", "synth", "--name", "x", "seed"], "expected key=value"),
        (["data", "synth", "--name", "../x"], "invalid artifact name"),
        (["data", "show", "nope"], "no artifact named 'nope'"),
        (["data", "show", "shapes@v9"], "shapes has no version v9"),
        (["eval", "mmmu", "--model", "shapes", "--data", "shapes", "--name", "e"], "is a dataset artifact, expected model"),
        (["data", "import", tmp / "ds" / "missing.jsonl", "--name", "x"], "line 1: missing required field 'answer'"),
        (["data", "import", tmp / "ds" / "truncated.jsonl", "--name", "x"], "image 1 unreadable"),
        (["data", "import", tmp / "ds" / "escape.jsonl", "--name", "x"], "is not allowed"),
        (["data", "import", tmp / "ds" / "placeholder.jsonl", "--name", "x"], "refers to image 2"),
        (["data", "import", tmp / "absent.jsonl", "--name", "x"], "no such file or directory"),
        (["init", "tiny", "--name", "x", "--family", "gpt2"], "supported"),
        (["import-model", tmp / "nomodel", "--name", "x"], "no *.safetensors weights"),
        (["import-model", tmp / "pickled", "--name", "x"], "pickle weights are refused"),
        (["import-model", tmp / "absent", "--name", "x"], "not a directory"),
        (["eval", "mmmu", "--responses", tmp / "responses.json"], "expected a JSON list"),
        (["eval", "mmmu", "--responses", tmp / "absent.json"], "no such file or directory"),
        (["eval", "mmmu", "--data", "shapes"], "give --model REF and --data REF"),
    ]
