"""The family table and the trainable-part policy.

A VLM has three parts, named after the paper: the vision tower, the connector (the projector
that maps vision features into the LLM's embedding space) and the language model (`llm`,
which includes `lm_head`). Each family lists where those parts live as dotted module paths
into the `AutoModelForImageTextToText` model. A parameter belongs to the part whose path is
the longest prefix of its name, so a connector nested inside the vision module (Qwen's
`model.visual.merger`) is taken out of the vision part.

Beside each entry is its tiny builder: the (config, processor) of a ~200k-parameter model of
that family (16 vision patches per image, 4 image tokens; LLaVA: 16), for `models.build_tiny`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from r1v3.errors import UserError


@dataclass(frozen=True)
class Family:
    name: str  # the name users type (`--family`)
    model_type: str  # config.model_type
    connector: tuple[str, ...]
    vision: tuple[str, ...]
    language_model: tuple[str, ...]
    image_placeholder: str  # what a chat template renders for one {"type": "image"} part
    # tiny builder: (text config dict, tokenizer) -> (config, processor)
    tiny: Callable
    # the tokens the family's processor looks up in the tokenizer (compose carries them into an
    # LLM's tokenizer; a tiny tokenizer has them as special tokens)
    image_tokens: tuple[str, ...] = ()
    # a tiny tokenizer's named tokens (attribute, token), as the family's processor looks them up
    tiny_named_tokens: tuple[tuple[str, str], ...] = ()
    # compose: LLM model_types its language model can be; None = any causal LM (built with AutoModel)
    compose_llms: tuple[str, ...] | None = None
    # compose: the vision_config key that sets the connector's output size (None: it follows text_config)
    connector_out_key: str | None = None


TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2)


def image_processor(name: str, **kwargs):
    # the backend AutoImageProcessor picks when the saved model is reloaded (torchvision when
    # installed), so a model built here preprocesses exactly like the same model loaded from disk
    import transformers as tf
    from transformers.utils import is_torchvision_available

    return getattr(tf, name if is_torchvision_available() else name + "Pil")(**kwargs)


def _ids(tok, token: str) -> int:
    return tok.convert_tokens_to_ids(token)


# ---------------------------------------------------------------------------------------------
# the paper's family (InternVL3-38B): pixel-shuffle + LayerNorm/Linear/GELU/Linear projector


def _tiny_internvl(text: dict, tok):
    import transformers as tf

    config = tf.InternVLConfig(
        text_config=dict(text, model_type="qwen2"),
        vision_config=dict(TINY_VISION, num_hidden_layers=1, image_size=56, patch_size=14),
        image_token_id=_ids(tok, "<IMG_CONTEXT>"),
        image_seq_length=4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    processor = tf.InternVLProcessor(
        # max_patches=1: InternVLProcessor tiles images by default (crop_to_patches=True overrides
        # the image processor's own setting); one tile keeps the token count fixed
        image_processor=image_processor(
            "GotOcr2ImageProcessor", size={"height": 56, "width": 56}, crop_to_patches=False, max_patches=1
        ),
        tokenizer=tok,
        video_processor=tf.InternVLVideoProcessor(size={"height": 56, "width": 56}),
        image_seq_length=4,
        chat_template=tok.chat_template,
    )
    return config, processor


INTERNVL = Family(
    "internvl",
    "internvl",
    connector=("model.multi_modal_projector",),
    vision=("model.vision_tower",),
    language_model=("model.language_model", "lm_head"),
    image_placeholder="<IMG_CONTEXT>\n",
    tiny=_tiny_internvl,
    image_tokens=("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
    tiny_named_tokens=(
        ("start_image_token", "<img>"),
        ("end_image_token", "</img>"),
        ("context_image_token", "<IMG_CONTEXT>"),
        ("video_token", "<video>"),  # unused, but InternVLProcessor requires one
    ),
)


# ---------------------------------------------------------------------------------------------
# Qwen-VL: the connector (merger) sits inside the vision module; multimodal RoPE text models

_QWEN_IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_NAMED_TOKENS = (
    ("image_token", "<|image_pad|>"),
    ("video_token", "<|video_pad|>"),
    ("vision_start_token", "<|vision_start|>"),
    ("vision_end_token", "<|vision_end|>"),
)
_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}


def _qwen_common(tok) -> dict:
    return dict(
        image_token_id=_ids(tok, "<|image_pad|>"),
        video_token_id=_ids(tok, "<|video_pad|>"),
        vision_start_token_id=_ids(tok, "<|vision_start|>"),
        vision_end_token_id=_ids(tok, "<|vision_end|>"),
        tie_word_embeddings=False,
    )


def _qwen_processor(processor_cls, video_cls, tok, patch: int):
    side = 4 * patch  # 4x4 patches, merged 2x2 -> 4 tokens
    pixels = dict(min_pixels=side * side, max_pixels=side * side)
    return processor_cls(
        image_processor=image_processor(
            "Qwen2VLImageProcessor", patch_size=patch, merge_size=2, temporal_patch_size=2, **pixels
        ),
        tokenizer=tok,
        video_processor=video_cls(patch_size=patch, merge_size=2, temporal_patch_size=2, **pixels),
        chat_template=tok.chat_template,
    )


def _tiny_qwen2_vl(text: dict, tok):
    import transformers as tf

    vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14)
    config = tf.Qwen2VLConfig(text_config=dict(text, rope_parameters=_MROPE), vision_config=vision, **_qwen_common(tok))
    return config, _qwen_processor(tf.Qwen2VLProcessor, tf.Qwen2VLVideoProcessor, tok, 14)


QWEN2_VL = Family(
    "qwen2_vl",
    "qwen2_vl",
    connector=("model.visual.merger",),
    vision=("model.visual",),
    language_model=("model.language_model", "lm_head"),
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    tiny=_tiny_qwen2_vl,
    image_tokens=_QWEN_IMAGE_TOKENS,
    tiny_named_tokens=_QWEN_NAMED_TOKENS,
    # Qwen2VLTextModel is Qwen2 with multimodal RoPE: same weights, same text-only outputs
    compose_llms=("qwen2",),
    connector_out_key="hidden_size",
)


def _tiny_qwen2_5_vl(text: dict, tok):
    import transformers as tf

    vision = dict(
        TINY_VISION, depth=2, out_hidden_size=64, num_heads=2, patch_size=14, window_size=56, fullatt_block_indexes=[1]
    )
    config = tf.Qwen2_5_VLConfig(
        text_config=dict(text, rope_parameters=_MROPE), vision_config=vision, **_qwen_common(tok)
    )
    return config, _qwen_processor(tf.Qwen2_5_VLProcessor, tf.Qwen2VLVideoProcessor, tok, 14)


QWEN2_5_VL = Family(
    "qwen2_5_vl",
    "qwen2_5_vl",
    connector=("model.visual.merger",),
    vision=("model.visual",),
    language_model=("model.language_model", "lm_head"),
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    tiny=_tiny_qwen2_5_vl,
    image_tokens=_QWEN_IMAGE_TOKENS,
    tiny_named_tokens=_QWEN_NAMED_TOKENS,
    compose_llms=("qwen2",),
    connector_out_key="out_hidden_size",
)


def _tiny_qwen3_vl(text: dict, tok):
    import transformers as tf

    vision = dict(
        TINY_VISION,
        depth=2,
        out_hidden_size=64,
        num_heads=2,
        patch_size=16,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0],
    )
    text3 = dict(text, head_dim=16, rope_parameters=dict(_MROPE, mrope_interleaved=True))
    config = tf.Qwen3VLConfig(text_config=text3, vision_config=vision, **_qwen_common(tok))
    return config, _qwen_processor(tf.Qwen3VLProcessor, tf.Qwen3VLVideoProcessor, tok, 16)


QWEN3_VL = Family(
    "qwen3_vl",
    "qwen3_vl",
    # deepstack mergers project intermediate vision layers into early LLM layers: connectors too
    connector=("model.visual.merger", "model.visual.deepstack_merger_list"),
    vision=("model.visual",),
    language_model=("model.language_model", "lm_head"),
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    tiny=_tiny_qwen3_vl,
    image_tokens=_QWEN_IMAGE_TOKENS,
    tiny_named_tokens=_QWEN_NAMED_TOKENS,
    compose_llms=("qwen3",),  # Qwen3VLTextModel is Qwen3 plus deepstack inputs
    connector_out_key="out_hidden_size",
)


# ---------------------------------------------------------------------------------------------
# LLaVA: CLIP vision tower, MLP projector


def _tiny_llava(text: dict, tok):
    import transformers as tf

    config = tf.LlavaConfig(
        text_config=dict(text, model_type="llama"),
        vision_config=dict(
            TINY_VISION, model_type="clip_vision_model", num_hidden_layers=2, image_size=56, patch_size=14, projection_dim=32
        ),
        image_token_index=_ids(tok, "<image>"),
        image_seq_length=16,
        vision_feature_layer=-1,  # the default -2 would leave the last of 2 vision layers untrained
        vision_feature_select_strategy="default",
    )
    processor = tf.LlavaProcessor(
        image_processor=image_processor("CLIPImageProcessor", size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token
        chat_template=tok.chat_template,
    )
    return config, processor


LLAVA = Family(
    "llava",
    "llava",
    connector=("model.multi_modal_projector",),
    vision=("model.vision_tower",),
    language_model=("model.language_model", "lm_head"),
    image_placeholder="<image>",
    tiny=_tiny_llava,
    image_tokens=("<image>",),
    tiny_named_tokens=(("image_token", "<image>"),),
)


# ---------------------------------------------------------------------------------------------
# Idefics3 (SmolVLM): SigLIP vision tower, pixel-shuffle connector

_IDEFICS3_IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + tuple(
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
)


def _tiny_idefics3(text: dict, tok):
    import transformers as tf

    config = tf.Idefics3Config(
        text_config=dict(text, model_type="llama"),
        vision_config=dict(TINY_VISION, num_hidden_layers=1, image_size=64, patch_size=16),
        image_token_id=_ids(tok, "<image>"),
        scale_factor=2,
    )
    processor = tf.Idefics3Processor(
        image_processor=image_processor(
            "Idefics3ImageProcessor", do_image_splitting=False, size={"longest_edge": 64}, max_image_size={"longest_edge": 64}
        ),
        tokenizer=tok,
        image_seq_len=4,
        chat_template=tok.chat_template,
    )
    return config, processor


IDEFICS3 = Family(
    "idefics3",
    "idefics3",
    connector=("model.connector",),
    vision=("model.vision_model",),
    language_model=("model.text_model", "lm_head"),
    image_placeholder="<image>",
    tiny=_tiny_idefics3,
    image_tokens=_IDEFICS3_IMAGE_TOKENS,
    tiny_named_tokens=(("image_token", "<image>"),),
)


FAMILIES: dict[str, Family] = {f.name: f for f in (INTERNVL, QWEN2_VL, QWEN2_5_VL, QWEN3_VL, LLAVA, IDEFICS3)}
PARTS = ("connector", "vision", "llm")


def family_of(model_or_config) -> Family:
    """The Family of a model, a config, or a model_type string."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    raise UserError(
        f"unsupported model family {model_type!r}: "
        f"supported model_types are {', '.join(f.model_type for f in FAMILIES.values())}"
    )


# ---------------------------------------------------------------------------------------------
# trainable parts


def part_of(family: Family, name: str) -> str | None:
    """The part a parameter (or buffer) name belongs to, by longest matching module path."""
    pairs = [(p, "connector") for p in family.connector]
    pairs += [(p, "vision") for p in family.vision]
    pairs += [(p, "llm") for p in family.language_model]
    pairs.sort(key=lambda pair: -len(pair[0]))
    return next((part for path, part in pairs if name == path or name.startswith(path + ".")), None)


def part_of_parameters(model) -> dict[str, str]:
    """Parameter name -> part ("connector" | "vision" | "llm"), by longest matching module path."""
    family = family_of(model)
    parts, orphans = {}, []
    for name, _ in model.named_parameters():
        part = part_of(family, name)
        if part is None:
            orphans.append(name)
        parts[name] = part
    if orphans:
        # a layout the table does not know (another transformers version, a remote-code model):
        # refuse rather than silently leave those weights frozen or trainable
        raise UserError(
            f"{type(model).__name__}: {len(orphans)} parameters are in no known part (first: {orphans[0]}); "
            f"this model layout is not supported by the {family.name} family table"
        )
    return parts


def parse_parts(parts: str) -> list[str]:
    """'connector+llm' / 'connector,llm' / 'all' -> ['connector', 'llm'] (in PARTS order)."""
    names = {p.strip() for p in re.split(r"[+,]", parts or "") if p.strip()}
    if "all" in names:
        names = (names - {"all"}) | set(PARTS)
    unknown = sorted(names - set(PARTS))
    if unknown or not names:
        raise UserError(
            f"unknown trainable part {', '.join(map(repr, unknown)) or repr(parts)}: "
            f"valid parts are {', '.join(PARTS)}, all (join several with + or ,)"
        )
    return [p for p in PARTS if p in names]


def numel(param) -> int:
    """Elements of a parameter, also when DeepSpeed ZeRO-3 has partitioned it (numel() is 0 then)."""
    return getattr(param, "ds_numel", None) or param.numel()


def set_trainable(model, parts: str) -> dict:
    """Make exactly the named parts trainable (requires_grad) and freeze the rest."""
    wanted = parse_parts(parts)
    parts_of = part_of_parameters(model)
    by_part = dict.fromkeys(PARTS, 0)
    trainable = total = 0
    for name, param in model.named_parameters():
        on = parts_of[name] in wanted
        param.requires_grad_(on)
        n = numel(param)
        by_part[parts_of[name]] += n
        total += n
        trainable += n if on else 0
    return {"trainable": trainable, "total": total, "parts": wanted, "by_part": by_part}
