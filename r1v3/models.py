"""Models: load/save any image-text-to-text model (safetensors only), read configs, tell a
vision-language model from a text-only LLM (`is_vlm_config`, the one test), and build the tiny
random-weight models tests use offline (`build_tiny`, from each family's tiny builder in
`r1v3.families`). The smol default is in `r1v3.smol`, composition in `r1v3.compose`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from r1v3 import jsonio
from r1v3.errors import UserError
from r1v3.families import FAMILIES, TINY_TEXT, Family, family_of

# weights in Python's pickle format (loading one runs arbitrary code): never loaded, never written
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


# ---------------------------------------------------------------------------------------------
# load / save


def is_vlm_config(config) -> bool:
    """Whether a config (a transformers config, or a config.json dict) describes a vision-language
    model: it has a vision tower's config, transformers builds its model_type as image-text-to-text,
    or its own code says it is one. The one test every stage uses."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    if get("vision_config") is not None or get("model_type") in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return True
    return "AutoModelForImageTextToText" in (get("auto_map") or {})


def is_causal_lm_config(config) -> bool:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return True
    return "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})


def vlm_config(directory, label: str, stage: str) -> dict:
    """The config.json of a model directory that must hold a vision-language model of a supported
    family, checked before any weights load; `label` names it in errors (an artifact ref, a checkpoint)."""
    config = jsonio.read(Path(directory) / "config.json", f"{label}: config.json")
    if not isinstance(config, dict):
        raise UserError(f"{label}: config.json is not a JSON object")
    if not is_vlm_config(config):
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
        other = sorted(p.name for p in d.iterdir() if p.suffix in (*PICKLE_SUFFIXES, ".gguf"))
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


def load_processor(path, *, trust_remote_code: bool = False):
    """(config, processor) of a local VLM directory, every file checked, without loading its weights."""
    from transformers import AutoProcessor

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
    try:
        processor = AutoProcessor.from_pretrained(d, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"model directory {d}: cannot load the processor: {str(e).splitlines()[0]}") from e
    if not hasattr(processor, "image_processor"):
        raise UserError(f"model directory {d}: the processor ({type(processor).__name__}) has no image processor")
    return config, processor


def load_model(path, *, trust_remote_code: bool = False, dtype=None):
    """Load (model, processor) from a local Hugging Face directory; safetensors weights only.

    dtype: None keeps what the checkpoint says (transformers' "auto"); or a torch.dtype / "float32" / "bfloat16".
    """
    from transformers import AutoModelForImageTextToText

    _, processor = load_processor(path, trust_remote_code=trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        Path(path), use_safetensors=True, trust_remote_code=trust_remote_code, **_dtype_kwargs(dtype)
    )
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
    stray = [p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if stray or not any(d.glob("*.safetensors")):
        raise RuntimeError(f"save_model wrote non-safetensors weights to {d}: {stray}")


# ---------------------------------------------------------------------------------------------
# tiny: random weights, a real tokenizer and processor, built offline in about a second

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

def jinja_literal(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "\\'") + "'"


def chat_template(image_placeholder: str, default_system: str | None = None) -> str:
    """A ChatML template whose content may be a string or a list of {"type": "text"|"image"} parts.

    The assistant turn is wrapped in {% generation %} so TRL can train on assistant tokens only.
    """

    system = (
        "{%- if messages[0]['role'] != 'system' -%}"
        "{{- " + jinja_literal(f"<|im_start|>system\n{default_system}<|im_end|>\n") + " -}}"
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
        "{%- if part['type'] == 'image' -%}{{- " + jinja_literal(image_placeholder) + " -}}"
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
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
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
        model_max_length=TINY_TEXT["max_position_embeddings"],
        **named,
    )


def tiny_family_tokenizer(family: Family):
    """The tiny tokenizer of `family`: ChatML, its image tokens, and the names its processor looks up."""
    return tiny_tokenizer(
        _CHATML_SPECIALS + list(family.image_tokens),
        chat_template=chat_template(family.image_placeholder),
        **dict(family.tiny_named_tokens),
    )


def build_tiny(family: str, seed: int = 0):
    """(model, processor): a random-weight model of `family` (~200k parameters) built offline."""
    from transformers import AutoModelForImageTextToText

    if family not in FAMILIES:
        raise UserError(f"unknown tiny model family {family!r}: supported families are {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    tok = tiny_family_tokenizer(fam)
    text = dict(
        TINY_TEXT,
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    config, processor = fam.tiny(text, tok)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = _greedy_generation_config(tok)
    model.eval()
    return model, processor


def build_tiny_llm(seed: int = 0):
    """(model, tokenizer): a random-weight text-only Qwen2 LM with the tiny ChatML tokenizer, sized like the
    tiny VLMs' LLM: what `compose` swaps in and `distill` asks, in tests and the tiny recipe."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = tiny_tokenizer(chat_template=chat_template(""))
    config = Qwen2Config(**TINY_TEXT, vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = _greedy_generation_config(tok)
    return model.eval(), tok


def _greedy_generation_config(tok):
    """The tiny models' decoding defaults: greedy, stopping at the tokenizer's end-of-turn, no BOS."""
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                            do_sample=False)
