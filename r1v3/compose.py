"""Compose (R1V): keep a VLM's vision tower and connector, replace its language model with a
text-only LLM, keep the LLM's tokenizer and chat template plus the VLM's image tokens.

The composed model is built once, at its own size, and filled tensor by tensor from two
`Source`s: loaded models (`compose`), or model directories read one tensor at a time
(`stages.compose`), so composing a 38B VLM with a 32B LLM holds about one output model in
memory, never the two inputs. The VLM's language model is never read.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch

from r1v3 import models
from r1v3.errors import UserError
from r1v3.families import FAMILIES, PARTS, Family, family_of, numel, part_of

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
    if models.is_vlm_config(llm_config):
        raise UserError(
            f"the LLM is a vision-language model ({model_type!r}): compose takes a text-only causal LM as the LLM"
        )
    if not models.is_causal_lm_config(llm_config) or type(llm_config) not in MODEL_MAPPING:
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
        "{%- if part['type'] == 'image' -%}{%- set _r1v3_text.s = _r1v3_text.s + " + models.jinja_literal(image_placeholder) + " -%}"
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
    chatml = models.chat_template(image_placeholder, default_system=m.group(1) if m else None)
    if _renderings(tokenizer, chatml) == reference:
        return chatml, "chatml"
    training = _training_version(tokenizer, reference)
    if training is not None:
        wrapped = _accept_image_parts(training, image_placeholder)
        # prompts (the first three probes) render as the LLM's own template does; only trained turns keep more
        if _renderings(tokenizer, wrapped) == _renderings(tokenizer, training) and \
                _renderings(tokenizer, wrapped)[:3] == reference[:3]:
            return wrapped, "llm-training"
    wrapped = _accept_image_parts(template, image_placeholder)
    if _renderings(tokenizer, wrapped) != reference:
        raise UserError("the LLM's chat template renders text chats differently once adapted to image parts")
    return wrapped, "llm"


def _training_version(tokenizer, reference: list[str]) -> str | None:
    """TRL's training version of a template that drops the reasoning of assistant turns (the shipped
    DeepSeek-R1-distill template strips everything up to </think> from every turn, the last one too, so
    SFT on reasoning traces would learn none of it); None for any other template."""
    from trl.chat_template_utils import get_training_chat_template

    if "Wait, PROBE" in reference[3] and "Hmm." in reference[3]:
        return None  # the template keeps the reasoning it is shown
    try:
        return get_training_chat_template(tokenizer)
    except (ValueError, KeyError, TypeError):
        return None


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
    """The VLM's config with the LLM's as text_config, at `vocab_size` (the LLM's plus the added tokens)."""
    d = vlm_config.to_dict()
    text = {k: v for k, v in llm_config.to_dict().items() if k not in _CHECKPOINT_KEYS}
    text["vocab_size"] = vocab_size
    text["pad_token_id"] = tokenizer.pad_token_id
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




# ---------------------------------------------------------------------------------------------
# the two sides, read one tensor at a time


@dataclass
class Source:
    """One side of a composition. `model` gives the layout (names, classes, sizes) and may live on
    the meta device; `tensors` maps its state_dict names to a function that copies that tensor
    into a given destination, so weights are read only when (and if) the output needs them."""

    model: torch.nn.Module
    tensors: dict[str, Callable[[torch.Tensor], None]]
    dtype: torch.dtype
    generation_config: object | None = None


def in_memory(model) -> Source:
    """A loaded model as a Source (its tensors are copied, never shared)."""

    def copier(tensor):
        return lambda dest: dest.copy_(tensor)

    state = model.state_dict()
    return Source(model, {k: copier(v) for k, v in state.items()}, model.dtype, model.generation_config)


def _llm_names(family: Family, llm) -> dict[str, str]:
    """Composed tensor name -> the LLM's own name, for every tensor of the LLM."""
    lm_path, head_path = family.language_model
    prefix = llm.base_model_prefix
    head = next(n for n, m in llm.named_modules() if m is llm.get_output_embeddings())
    names = {}
    for key in llm.state_dict():
        if key.startswith(prefix + "."):
            names[f"{lm_path}.{key[len(prefix) + 1:]}"] = key
        elif key.startswith(head + "."):
            names[f"{head_path}.{key[len(head) + 1:]}"] = key
        else:
            raise UserError(f"the {llm.config.model_type!r} LLM has a tensor {key} outside its language model and head")
    return names


def _fill_vision(family: Family, model, vlm: Source) -> tuple[list[str], list[str]]:
    """Copy the VLM's vision tower and connector into `model`; (kept connector names, re-initialised ones).
    A connector tensor whose shape no longer fits is initialised as the model's class does (from the
    torch seed), as is any tensor the VLM's checkpoint lacks."""
    target = model.state_dict()
    for name in vlm.tensors:
        part = part_of(family, name)
        if part is None or (part != "llm" and name not in target):
            raise UserError(f"{type(vlm.model).__name__}: tensor {name} is in no known part; this layout cannot be composed")
    kept, reinitialised, fresh = [], [], []
    for name in target:  # the model's order, whatever the order of the source's files
        part = part_of(family, name)
        if part == "llm":
            continue
        if name not in vlm.tensors:
            fresh.append(name)
        elif target[name].shape == vlm.model.get_parameter_or_buffer(name).shape:
            kept.append(name)
        elif part == "connector":
            reinitialised.append(name)
        else:  # the vision config is the VLM's own: a change here is a bug
            raise RuntimeError(f"vision tensor {name} changed shape in the composed model")
    for module_name in dict.fromkeys(name.rsplit(".", 1)[0] for name in reinitialised + fresh):
        model._init_weights(model.get_submodule(module_name))
    for name in kept:  # after the initialisation: a module may keep some of its tensors
        vlm.tensors[name](target[name])
    return [n for n in kept if part_of(family, n) == "connector"], reinitialised


def _fill_language_model(family: Family, model, llm: Source) -> None:
    """Copy every tensor of the LLM into the composed language model and head, shapes checked."""
    target = {k: v for k, v in model.state_dict().items() if part_of(family, k) == "llm"}
    names = _llm_names(family, llm.model)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    head_weight = f"{family.language_model[1]}.weight"
    missing = [k for k in target if k not in names or (names[k] not in llm.tensors and not (tied and k == head_weight))]
    unexpected = [names[k] for k in names if k not in target]
    if missing or unexpected:
        problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
        lm = model.get_submodule(family.language_model[0])
        raise UserError(
            f"the {llm.model.config.model_type!r} LLM's weights do not fit the {family.name} language model "
            f"({type(lm).__name__}): {len(problems)} keys differ, first {problems[0]}"
        )
    rows = {model.get_input_embeddings().weight.data_ptr(), model.get_output_embeddings().weight.data_ptr()}
    for key, dest in target.items():
        source = names[key]
        if source not in llm.tensors:  # a tied head: it is the embedding, filled under that name
            continue
        shape = llm.model.get_parameter_or_buffer(source).shape
        if dest.data_ptr() in rows:  # the LLM's rows; the added tokens' rows follow them
            dest = dest[: shape[0]]
        if dest.shape != shape:
            raise UserError(f"the LLM's tensor {source} has shape {list(shape)}, the composed model needs {list(dest.shape)}")
        llm.tensors[source](dest)


def _generation_config(llm: Source, tokenizer):
    """The LLM's decoding settings (eos ids, sampling defaults), with the composed pad token."""
    from transformers import GenerationConfig

    settings = llm.generation_config.to_diff_dict() if llm.generation_config is not None else {}
    generation = GenerationConfig(**{k: v for k, v in settings.items() if not k.startswith("_") and k != "transformers_version"})
    generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    return generation


def _allocate(model_class, config, dtype):
    """The composed model with uninitialised weights: memory the OS maps only once a tensor is
    written, and every tensor is about to be (read from an input, or initialised from the seed)."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = model_class._from_config(config, dtype=dtype)
    model.tie_weights()  # no_init_weights skips init_weights, which also ties lm_head to the embedding
    return model


def _init_new_rows(model, old_rows: int, rows: int) -> None:
    """The added tokens' embedding (and untied lm_head) rows sampled from a normal with the mean and
    1e-9 x the covariance of the LLM's rows, as transformers' resize_token_embeddings(mean_resizing=True)
    does; the covariance is summed in blocks of rows, not over a centred copy of the whole matrix."""
    if rows == old_rows:
        return
    weights = [model.get_input_embeddings().weight]
    if model.get_output_embeddings().weight is not weights[0]:
        weights.append(model.get_output_embeddings().weight)
    for weight in weights:
        old = weight.data[:old_rows]
        mean = old.float().mean(dim=0)
        covariance = torch.zeros(old.shape[1], old.shape[1])
        for start in range(0, old_rows, 4096):
            block = old[start : start + 4096].float() - mean
            covariance += block.T @ block
        covariance = 1e-9 * covariance / old_rows
        if torch.distributions.constraints.positive_definite.check(covariance).all():
            new = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance).sample((rows - old_rows,))
        else:  # no distribution without a positive-definite covariance: the mean itself
            new = mean[None, :].repeat(rows - old_rows, 1)
        weight.data[old_rows:] = new.to(weight.dtype)


def compose(vlm, vlm_processor, llm, llm_tokenizer, *, seed: int = 0):
    """(model, processor, report) from two loaded models; see `compose_sources`. The inputs are not modified."""
    return compose_sources(in_memory(vlm), vlm_processor, in_memory(llm), llm_tokenizer, seed=seed)


def compose_sources(vlm: Source, vlm_processor, llm: Source, llm_tokenizer, *, seed: int = 0):
    """(model, processor, report): `vlm`'s vision tower and connector in front of the text-only `llm`.

    The result is a model of the VLM's class and family whose language model and lm_head hold the
    LLM's weights exactly (plus embedding rows for the image tokens the LLM's vocabulary lacks).
    Connector tensors whose shape no longer fits the LLM's hidden size are re-initialised (from
    `seed`) and listed in the report. The tokenizer is the LLM's with the VLM's image tokens; the
    chat template is the LLM's, accepting image parts. Only the output is allocated: each input
    tensor is read into its place in it.
    """
    vlm_config, llm_config = vlm.model.config, llm.model.config
    family = composable(vlm_config, llm_config)
    vlm_tokenizer = vlm_processor.tokenizer
    template, template_kind = vision_chat_template(llm_tokenizer, family.image_placeholder)
    tokenizer, added = _tokenizer_with_image_tokens(family, vlm_config, vlm_tokenizer, llm_tokenizer, llm_config, template)
    llm_vocab = llm.model.get_input_embeddings().weight.shape[0]
    config = _composed_config(family, vlm_config, llm_config, vlm_tokenizer, tokenizer, len(tokenizer))

    # float32 unless both sides agree (a bf16 VLM + a bf16 LLM stay bf16, without a float32 copy)
    dtype = llm.dtype if llm.dtype == vlm.dtype else torch.float32
    model = _allocate(type(vlm.model), config, dtype)
    torch.manual_seed(seed)  # the re-initialised connector tensors and the new embedding rows
    kept, reinitialised = _fill_vision(family, model, vlm)
    _fill_language_model(family, model, llm)
    _init_new_rows(model, llm_vocab, len(tokenizer))
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model.generation_config = _generation_config(llm, tokenizer)
    model.eval()
    processor = _processor_with_tokenizer(vlm_processor, tokenizer, template)

    by_part = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        by_part[part_of(family, name)] += numel(param)
    report = {
        "family": family.name,
        "llm_model_type": llm_config.model_type,
        "vlm_hidden_size": vlm_config.get_text_config().hidden_size,
        "llm_hidden_size": llm_config.hidden_size,
        "connector_reinitialised": reinitialised,
        "connector_kept": kept,
        "added_tokens": added,
        "pad_token": tokenizer.pad_token,
        "chat_template": template_kind,
        "vocab_size": len(tokenizer),
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": {"total": sum(by_part.values()), "by_part": by_part},
    }
    return model, processor, report
