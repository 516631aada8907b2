"""Stage settings: each stage's config dataclass is the one place a setting lives.

A field declared with `setting(default, help=..., flag=..., gt=..., ...)` carries its type (the
annotation), default, help text, command-line flag and range. Constructing a config (from Python,
a recipe or the command line) fills every unset setting (from the preset, else the default),
coerces and checks every value, then runs the stage's cross-field `check()`, so a config that
exists is complete and valid. The CLI derives its options, help and shown defaults from the same
fields (r1v3/cli.py), and presets are YAML files shipped in r1v3/presets/<stage>/<name>.yaml.

Precedence: defaults < preset < recipe YAML < CLI options < overrides. A recipe file is either one
stage's mapping, or a mapping of stage sections (`sft: {...}`, `eval-mmmu: {...}`) from which the
stage takes its own. Overrides are dotted `key=value` pairs whose values are parsed as YAML
scalars (`learning_rate=2e-4`, `trainable=connector`). Every float must be finite: a NaN or an
infinite learning rate or temperature is refused wherever it comes from.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional, TypeVar, get_args, get_origin

import yaml

from r1v3.errors import UserError

C = TypeVar("C")
REQUIRED = dataclasses.MISSING
PRESETS_DIR = Path(__file__).parent / "presets"
MAX_YAML_BYTES = 1 << 20  # recipes are a few hundred bytes; this bounds what a parser ever sees
MAX_YAML_NODES = 100_000  # nodes after alias expansion: an anchor bomb stops here, in milliseconds
EXCERPT = 60  # characters of a value shown in an error
RUN_PANEL = "Run"  # the --help panel of TrainingSettings

# Upper bounds of count-like settings. Far beyond any real run, yet each is refused when the config
# is built, in milliseconds: a stage that sized its work from 10**12 ran until memory ran out.
# tests/reliability/test_hardening.py checks that every int setting of every stage has a bound.
MAX_SEED = 2**32 - 1  # numpy's limit (transformers' set_seed seeds numpy too)
MAX_STEPS = 1_000_000  # optimizer steps, and intervals counted in them
MAX_EPOCHS = 10_000
MAX_SAMPLES = 10_000  # outputs per problem
MAX_TOKENS = 1 << 22  # a generation budget or a sequence length
MAX_ROWS = 10**9  # a --limit on rows or items
MAX_BATCH = 1 << 16  # sequences in a batch, micro-steps in a step, completions in a group
MAX_DEVICES = 1024  # GPUs per model, HTTP calls in flight
MAX_CHARS = 10**8  # a length in characters

# YAML 1.1 (PyYAML) reads 2e-4, 1E-5 and 3e+2 as strings; YAML 1.2 and every user read them as floats
NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$")
INTEGER = re.compile(r"^[-+]?[0-9][0-9_]*$")
_FLOAT_1_2 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


def excerpt(value: Any) -> str:
    """A value as it may appear in an error: repr, bounded in size whatever its nesting."""
    short = reprlib.Repr()  # keyword arguments arrive in Python 3.12
    short.maxlevel, short.maxlist, short.maxdict = 2, 4, 4
    short.maxstring = short.maxother = short.maxlong = EXCERPT
    text = short.repr(value)
    return text if len(text) <= EXCERPT else text[: EXCERPT - 3] + "..."


class SettingError(UserError):
    """A bad value for one setting; the loader adds where it came from and the flag it was typed as."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem


# ---------------------------------------------------------------------------------------------
# declaring settings


ARTIFACT_ROLES = (None, "input", "output")


def setting(default: Any = REQUIRED, help: str = "", *, flag: str | None = None, aliases: tuple[str, ...] = (),
            ge=None, gt=None, le=None, lt=None, shown: str | None = None, metavar: str | None = None,
            panel: str | None = None, argument: bool = False, missing: str | None = None,
            result: bool = True, resumable: bool = False, artifact: str | None = None,
            reads: Callable[[Any], dict] | None = None) -> Any:
    """A config field. `default` may be a function of the config (for a default that depends on
    other settings; `shown` then says it in the help). `flag` is the command-line name (default
    --key-with-dashes), `aliases` older spellings; ge/gt/le/lt bound a number; `missing` is the
    error for a required setting left unset.

    Its role, from which --resume and --reuse are derived (`resume_settings`, `reuse_settings`):
    `result=False`: what the stage publishes does not depend on it (logging, ports, batch sizes of
    batch-independent generation, `resume`): neither key holds it. `resumable=True`: it changes the
    result but not the work already done (distill's `--samples`: a resumed run asks only for what is
    missing): --reuse compares it, --resume lets it change. `artifact="input"|"output"`: the value
    names an artifact the stage reads or publishes. `reads`: the value names files outside the store
    (a reward file, a directory to import); `reads(value)` maps each to a content digest (None: it
    cannot be digested, so --reuse never trusts it), and the digests join both keys."""
    if artifact not in ARTIFACT_ROLES:
        raise ValueError(f"artifact must be one of {ARTIFACT_ROLES}")
    meta = dict(default=default, help=help, flag=flag, aliases=tuple(aliases), ge=ge, gt=gt, le=le, lt=lt,
                shown=shown, metavar=metavar, panel=panel, argument=argument, missing=missing,
                result=result, resumable=resumable, artifact=artifact, reads=reads)
    # the field itself defaults to None = "not given", so construction can tell what to fill
    return dataclasses.field(default=None, metadata=meta)


def meta(f: dataclasses.Field) -> dict:
    return f.metadata if "help" in f.metadata else {"default": f.default if f.default is not REQUIRED else (
        f.default_factory() if f.default_factory is not REQUIRED else REQUIRED), "help": "", "aliases": ()}


def default_of(cls, f: dataclasses.Field) -> Any:
    """The default of setting `f` in stage config `cls`: the stage's DEFAULTS, else the setting's own."""
    return getattr(cls, "DEFAULTS", {}).get(f.name, meta(f)["default"])


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


class Settings:
    """Base of every stage config (a dataclass). Subclasses set STAGE (also the recipe section
    and the presets directory) and may override check() for rules that span settings."""

    STAGE: ClassVar[str] = ""
    SECTIONS: ClassVar[tuple[str, ...]] = ()  # older section names still read from recipe files

    DEFAULTS: ClassVar[dict] = {}  # a stage's own defaults for settings declared in a shared group

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        fields = dataclasses.fields(self)
        self._given = frozenset(f.name for f in fields if getattr(self, f.name) is not None)
        preset = {}
        if "preset" in self._given:
            self.preset = _coerce(self.preset, hints["preset"], fields_by_name(self)["preset"])
            preset = preset_values(self.STAGE, self.preset)
        for f in fields:
            value = getattr(self, f.name)
            if value is None and f.name in preset:
                value = preset[f.name]
            elif value is None:
                default = default_of(type(self), f)
                if default is REQUIRED:
                    raise UserError(f.metadata.get("missing") or
                                    f"missing required setting '{f.name}' (give {flag_of(f)} or {f.name}=...)")
                value = default(self) if callable(default) else copy.copy(default)
            setattr(self, f.name, _coerce(value, hints[f.name], f))
        self.notes: list[str] = []  # what construction changed, for the CLI to say
        self.check()
        self.reads = _digests(self)  # after check(): a setting may be normalised there

    def check(self) -> None:
        """Rules between settings; raise UserError naming the flags and keys."""

    def label(self, key: str) -> str:
        """How an error names a setting: its flag and its key, e.g. '--lr (learning_rate)'."""
        f = fields_by_name(self)[key]
        return f"{flag_of(f)} ({key})"


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}  # name: module
TRAIN_PANEL = "Training"


@dataclasses.dataclass
class TrainingSettings(Settings):
    """The settings of the training stages (sft, rl) that mean the same in each, mapped to TRL once
    (r1v3/training.py `trl_arguments`). A stage sets its own defaults in DEFAULTS, as TRL's GRPOConfig
    re-declares TrainingArguments' learning rate. Any other field of the stage's TRL config
    (TRL_CONFIG) is reachable as `trl.KEY=VALUE`, or a `trl:` mapping in a recipe section, checked
    against the installed TRL. A dataclass lists a base's fields first, so they get help panels of
    their own rather than leading the options."""

    TRL_CONFIG: ClassVar[str] = ""  # the trl class whose fields `trl` may set: SFTConfig, GRPOConfig

    learning_rate: float = setting(1e-5, flag="--lr", aliases=("--learning-rate",), gt=0, panel=TRAIN_PANEL,
                                   help="Peak learning rate.")
    lr_scheduler: Literal["constant", "linear", "cosine", "constant_with_warmup"] = setting(
        "constant", panel=TRAIN_PANEL, help="Learning-rate schedule after warmup.")
    warmup_ratio: float = setting(0.0, ge=0, lt=1, panel=TRAIN_PANEL, help=(
        "Fraction of the steps spent warming up from 0; dropped when it would cover every step "
        "(a one-step run would train at learning rate 0)."))
    weight_decay: float = setting(0.0, ge=0, panel=TRAIN_PANEL, help="AdamW weight decay.")
    batch_size: int = setting(8, ge=1, panel=TRAIN_PANEL, help=(
        "Per device and micro-step: rows (sft) or completions (rl)."), le=MAX_BATCH)
    grad_accum: int = setting(1, ge=1, panel=TRAIN_PANEL, help="Micro-steps per optimizer step.", le=MAX_BATCH)
    max_steps: Optional[int] = setting(None, ge=1, panel=TRAIN_PANEL, help=(
        "Optimizer steps (sft: overrides --epochs; rl: the first N of the curriculum, cycling its rows)."), le=MAX_STEPS)
    save_steps: int = setting(50, ge=1, panel=RUN_PANEL, help="A checkpoint every N optimizer steps (and the last).", le=MAX_STEPS)
    logging_steps: int = setting(1, ge=1, panel=RUN_PANEL, help="Log metrics every N optimizer steps.", result=False, le=MAX_STEPS)
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] = setting(
        [], panel=RUN_PANEL, metavar="NAME,..", shown="none", result=False, help=(
            "Also log to these trackers (tensorboard, wandb, trackio, mlflow; pip install 'r1v3[tracking]'): "
            "run name NAME@vN; tensorboard's event files are kept in the published artifact."))
    trl: dict[str, Any] = setting({}, panel=RUN_PANEL, metavar="KEY=VALUE", shown="none", help=(
        "Any other field of TRL's trainer config, as trl.KEY=VALUE overrides (trl.epsilon_high=0.28) or a "
        "`trl:` mapping in a recipe section; checked against the installed TRL, recorded in the manifest."))
    gradient_checkpointing: bool = setting(False, panel=RUN_PANEL,
                                           help="Recompute activations in the backward pass to save memory.")
    bf16: bool | None = setting(None, shown="on when CUDA supports it", panel=RUN_PANEL,
                                help="Train in bfloat16 mixed precision.")
    dtype: Literal["float32", "bfloat16"] | None = setting(None, shown="the checkpoint's", panel=RUN_PANEL,
                                                           help="Weights dtype at load.")
    seed: int = setting(0, ge=0, le=MAX_SEED, panel=RUN_PANEL, help="Random seed (data order and every other random draw of the run).")
    resume: bool = setting(False, panel=RUN_PANEL,
                           help="Continue an interrupted run of the same name from its last complete checkpoint.", result=False)
    trust_remote_code: bool = setting(False, panel=RUN_PANEL, help="Allow the model's own Python code.", result=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.trl = _trl_overrides(self.TRL_CONFIG, self.trl)
        for tracker in self.report_to:
            import importlib.util

            if importlib.util.find_spec(TRACKERS[tracker]) is None:
                raise UserError(f"--report-to {tracker} (report_to): the {tracker} package is not installed; "
                                "pip install 'r1v3[tracking]'")


GEN_PANEL = "Generation"


@dataclasses.dataclass
class GenerationSettings(Settings):
    """The settings of the generating stages (eval, difficulty, distill, select-ckpt) that mean the same
    in each, read by one loop (r1v3/generation/records.py `generate_records`) and one backend opener
    (`generation.open_backend`). A stage sets its own defaults in DEFAULTS and restates a setting's help
    or role with `retold` (everything else it declares carries over)."""

    max_new_tokens: int = setting(1024, ge=1, panel=GEN_PANEL, help="Generation budget per response.", le=MAX_TOKENS)
    temperature: float = setting(1.0, ge=0, panel=GEN_PANEL, help="Sampling temperature; 0 is greedy.")
    top_p: float = setting(1.0, gt=0, le=1, panel=GEN_PANEL, help="Nucleus sampling.")
    samples: int = setting(1, ge=1, panel=GEN_PANEL, help="Responses per item.", le=MAX_SAMPLES)
    seed: int = setting(0, panel=GEN_PANEL, help=(
        "Random seed (per request and sample: results do not depend on batching)."), ge=0, le=MAX_SEED)
    limit: Optional[int] = setting(None, ge=1, aliases=("--n",), shown="all", panel=GEN_PANEL,
                                   help="Only the first N items, for quick checks.", le=MAX_ROWS)
    batch_size: int = setting(8, ge=1, panel=RUN_PANEL, result=False,
                              help="Generated sequences per batch, transformers backend.", le=MAX_BATCH)
    resume: bool = setting(False, panel=RUN_PANEL, result=False, help=(
        "Continue an interrupted run of the same name without generating again what it saved."))
    trust_remote_code: bool = setting(False, panel=RUN_PANEL, help="Allow the model's own Python code.", result=False)


@dataclasses.dataclass
class BackendSettings(GenerationSettings):
    """GenerationSettings plus the choice of backend, for the stages that can run on vLLM."""

    backend: Literal["auto", "transformers", "vllm"] = setting(
        "auto", panel=RUN_PANEL, help="auto = vllm when CUDA and vLLM are present, else transformers.", result=False)
    tensor_parallel_size: int = setting(1, ge=1, panel=RUN_PANEL, help="GPUs per model, vllm backend.", le=MAX_DEVICES)


def retold(cls, name: str, **changes) -> dataclasses.Field:
    """`cls`'s setting `name` redeclared with other help, shown text, bounds or role: everything else it
    declares stays, and it keeps its place among the options."""
    f = cls.__dataclass_fields__[name]
    return dataclasses.field(default=f.default, metadata={**f.metadata, **changes})


def _trl_overrides(class_name: str, values: dict) -> dict:
    """`values` checked against the installed TRL's config dataclass: each key a field of it, each value
    coerced to the field's type. One line naming the key when not."""
    if not values:
        return {}
    import trl

    cls = getattr(trl, class_name)
    fields = fields_by_name(cls)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a hint TRL cannot resolve here: the value is checked when TRL builds it
        hints = {}
    out = {}
    for key, value in values.items():
        if key not in fields:
            close = sorted(n for n in fields if n.split("_")[0] == str(key).split("_")[0])[:4]
            raise UserError(f"trl.{excerpt(key).strip(chr(39))} is not a field of TRL {trl.__version__}'s {class_name}"
                            + (f" (similar: {', '.join(close)})" if close else ""))
        out[key] = _coerce(value, hints.get(key, Any), None, f"trl.{key}")
    return out


def fields_by_name(cls_or_obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls_or_obj)}


# ---------------------------------------------------------------------------------------------
# values


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _bounds(value, f: dataclasses.Field | None, key: str):
    m = f.metadata if f is not None else {}
    ge, gt, le, lt = (m.get(k) for k in ("ge", "gt", "le", "lt"))
    low_ok = (ge is None or value >= ge) and (gt is None or value > gt)
    high_ok = (le is None or value <= le) and (lt is None or value < lt)
    if low_ok and high_ok:
        return value
    high = le if le is not None else lt
    if high is not None and high > 1:  # a limit (MAX_STEPS...), not the two ends of a range like [0, 1)
        if not high_ok:  # 1,000,000 rather than 1000000: a limit is read, not copied
            raise SettingError(key, f"must be at most {le:,}, got {excerpt(value)}" if le is not None
                               else f"must be less than {lt:,}, got {excerpt(value)}")
        le = lt = None  # the low end alone, said as below
    if gt == 0 and le is None and lt is None:
        raise SettingError(key, f"must be positive, got {excerpt(value)}")
    if (ge is not None or gt is not None) and le is None and lt is None:
        raise SettingError(key, f"must be at least {ge}, got {excerpt(value)}" if ge is not None
                           else f"must be more than {gt}, got {excerpt(value)}")
    if ge is None and gt is None:
        raise SettingError(key, f"must be at most {le if le is not None else lt}, got {excerpt(value)}")
    interval = f"{'[' if ge is not None else '('}{ge if ge is not None else gt}, {le if le is not None else lt}" \
               f"{']' if le is not None else ')'}"
    raise SettingError(key, f"must be in {interval}, got {excerpt(value)}")


def _number(value, tp, key: str):
    """An int or a finite float from a number or its text (2e-4, 1E-5, .5, 1_000 all count)."""
    if isinstance(value, str) and NUMBER.match(value.strip()):
        text = value.strip()
        try:
            value = int(text) if tp is int and INTEGER.match(text) else float(text.replace("_", ""))
        except ValueError:  # more digits than int() converts (4300): no setting is that large
            raise SettingError(key, f"must be {tp.__name__}, got a number of {len(text)} digits") from None
    elif isinstance(value, str) and tp is float and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingError(key, f"must be {tp.__name__}, got {excerpt(value)}")
    if tp is int:
        if isinstance(value, float):
            raise SettingError(key, f"must be int, got {excerpt(value)}")
        return value
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SettingError(key, f"must be a finite number, got {excerpt(value)}")
    return number


def _coerce(value: Any, tp, f: dataclasses.Field | None, key: str | None = None):
    """`value` as type `tp`, or a SettingError naming `key`; bounds from the field's metadata."""
    key = key or (f.name if f is not None else "value")
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, f, key)
            except SettingError as e:
                if "finite" in e.problem or "must be at" in e.problem or "must be in" in e.problem:
                    raise  # the type matched, the value did not: say that, not "must be X or Y"
        named = [_type_name(a) for a in args if a is not type(None)]  # None is "not set", not a choice
        raise SettingError(key, f"must be {' or '.join(named)}, got {excerpt(value)}")
    if origin is Literal:
        if value not in args:
            raise SettingError(key, f"must be one of {', '.join(map(str, args))}; got {excerpt(value)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # `tasks=color` or `tasks=color,counting` from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise SettingError(key, f"must be a list, got {excerpt(value)}")
        inner = args[0] if args else Any
        # the field's bounds hold for each element (curriculum_lengths: every phase's length)
        return [_coerce(v, inner, f, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingError(key, f"must be a mapping, got {excerpt(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp in (int, float):
        return _bounds(_number(value, tp, key), f, key)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(key, f"must be text, got {excerpt(value)}")
        return str(value)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return _build(tp, value, prefix=f"{key}.")
    if isinstance(tp, type) and isinstance(value, tp) and tp is not bool:
        return value
    raise SettingError(key, f"must be {_type_name(tp)}, got {excerpt(value)}")


def _build(cls, values: dict, prefix: str = "", partial: bool = False):
    """The dataclass from `values`; `partial` checks keys and types only (a recipe file may leave
    required keys such as `name` to the command line)."""
    names = fields_by_name(cls)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"unknown key '{prefix}{excerpt(unknown[0]).strip(chr(39))}'; valid keys: "
                        f"{', '.join(prefix + n for n in sorted(names))}")
    if partial:
        hints = typing.get_type_hints(cls)
        return {k: _coerce(v, hints[k], names[k], prefix + k) for k, v in values.items() if v is not None}
    if issubclass(cls, Settings):
        return cls(**values)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], names[k], prefix + k) for k, v in values.items()}
    missing = [n for n, f in names.items() if n not in kwargs and meta(f)["default"] is REQUIRED]
    if missing:
        raise UserError(f"missing required setting '{prefix + missing[0]}' (give {prefix + missing[0]}=...)")
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (2e-4) and a bound on nodes after alias expansion."""

    def compose_document(self):
        node = super().compose_document()
        _check_size(node)
        return node


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def _check_size(root) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES (billion laughs); each distinct
    node is sized once, so this costs the size of the text, not of the expansion."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = MAX_YAML_NODES + 1  # a node reached again while being sized is a cycle
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(n) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        total = min(total, MAX_YAML_NODES + 1)
        sizes[id(node)] = total
        if total > MAX_YAML_NODES:
            raise UserError(f"more than {MAX_YAML_NODES} values once aliases are expanded (an alias bomb?)")
        return total

    if root is not None:
        size(root)


def parse_yaml(text: str, where: str) -> Any:
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{where}: {len(text)} bytes; a recipe is at most {MAX_YAML_BYTES} bytes")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}{at}: malformed YAML: {excerpt(problem).strip(chr(39))}") from None
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply") from None
    except ValueError:  # PyYAML's int() of a number of more than 4300 digits
        raise UserError(f"{where}: a number too long to read (more than 4300 digits)") from None


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            text = f.read(MAX_YAML_BYTES + 1).decode()
    except FileNotFoundError:
        raise UserError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read config: {e}") from None
    data = parse_yaml(text, str(p))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# presets


def preset_names(stage: str) -> list[str]:
    return sorted(p.stem for p in (PRESETS_DIR / stage).glob("*.yaml"))


def preset_values(stage: str, name: str) -> dict:
    names = preset_names(stage)
    if name not in names:
        shipped = ", ".join(names) if names else "none"
        raise SettingError("preset", f"must be a shipped preset of {stage} ({shipped}); got {excerpt(name)}")
    return read_yaml(PRESETS_DIR / stage / f"{name}.yaml")


def preset_summary(stage: str, name: str) -> str:
    """A preset's first comment line: what it is for."""
    for line in (PRESETS_DIR / stage / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def presets(stage: str) -> dict[str, dict]:
    return {name: preset_values(stage, name) for name in preset_names(stage)}


# ---------------------------------------------------------------------------------------------
# loading


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {excerpt(key)}: {excerpt(part)} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {excerpt(text)}: expected key=value (for example learning_rate=2e-4)")
    try:
        value = parse_yaml(raw, f"override {excerpt(key.strip())}") if raw.strip() else ""
    except UserError as e:
        if "alias" in str(e) or "bytes" in str(e):
            raise
        value = raw
    return key.strip(), value


def section_of(cls, data: dict, stage: str | None = None) -> dict:
    """The stage's own section of a recipe (by its stage name, or an older name), else the whole file."""
    for name in (stage, getattr(cls, "STAGE", None), *getattr(cls, "SECTIONS", ())):
        if name and isinstance(data.get(name), dict):
            return dict(data[name])
    return data


def load(
    cls: type[C],
    *,
    stage: str | None = None,
    path: str | Path | None = None,
    options: dict | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, str] | None = None,
) -> C:
    """Build the stage config. `options` are CLI options actually given (None means not given);
    `flags` maps their keys to the flags typed, so an error names both."""
    values: dict = {}
    source: dict[str, str] = {}
    if path is not None:
        data = read_yaml(path)
        values = section_of(cls, data, stage)
        try:
            _build(cls, values, partial=True)  # so a mistake in the file is reported against the file
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        source.update(dict.fromkeys(values, str(path)))
    for k, v in (options or {}).items():
        if v is not None:
            _set_dotted(values, k, v)
            source[k] = "option"
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(values, key, value)
        source[key.split(".")[0]] = "override"
    try:
        return _build(cls, values)
    except SettingError as e:
        origin = source.get(e.key.split(".")[0].split("[")[0])
        if origin == "option" and flags and e.key in flags:
            raise UserError(f"{flags[e.key]} ({e.key}) {e.problem}") from None
        where = {"option": "command line", "override": "override", None: "preset" if e.key != "preset" else
                 "command line"}.get(origin, origin)
        raise UserError(f"{where}: {e}") from None
    except UserError as e:
        where = "command line" if path is None else f"{path} + command line"
        raise UserError(f"{where}: {e}") from None


def to_dict(cfg) -> dict:
    """The settings as a manifest records them, with the content digests of the files they read."""
    out = dataclasses.asdict(cfg)
    if getattr(cfg, "reads", None):
        out["reads"] = cfg.reads
    return out


# ---------------------------------------------------------------------------------------------
# roles: what --resume and --reuse compare, derived from each setting's declaration


def role(f: dataclasses.Field) -> dict:
    m = meta(f)
    return {k: m.get(k, d) for k, d in (("result", True), ("resumable", False), ("artifact", None), ("reads", None))}


def _digests(cfg) -> dict:
    """{setting: {path or spec: sha256 or None}} for the settings that read files outside the store."""
    out = {}
    for f in dataclasses.fields(cfg):
        reader, value = role(f)["reads"], getattr(cfg, f.name)
        if reader is not None and value not in (None, "", []):
            out[f.name] = reader(value)
    return out


def path_digests(value) -> dict:
    """`reads` for settings naming local files or directories: {path: digest}. A file's digest is its
    sha256; a directory's covers every file's relative path and sha256, except files over 64 MiB
    (weights), which count by size and modification time, as `artifacts verify` skips re-hashing
    them. A path that does not exist digests to None: the stage then says what is wrong."""
    import hashlib

    from r1v3.artifacts import QUICK_HASH_LIMIT, sha256_file

    def one(path: Path) -> str | None:
        if path.is_file():
            return sha256_file(path)
        if not path.is_dir():
            return None
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            st = p.stat()
            part = sha256_file(p) if st.st_size <= QUICK_HASH_LIMIT else f"{st.st_size}:{st.st_mtime_ns}"
            h.update(f"{p.relative_to(path).as_posix()}\0{part}\n".encode())
        return h.hexdigest()

    values = value if isinstance(value, list) else [value]
    return {str(v): one(Path(v)) for v in values}


@dataclasses.dataclass
class HubCopySettings(Settings):
    """Where a benchmark importer (data mmmu, data mathvista) reads from: a local copy laid out as on the
    hub, or the hub itself at a pinned revision; exactly one. A stage restates `path`'s help with `retold`."""

    name: str = setting(help="Artifact name for the dataset.", artifact="output")
    path: Optional[str] = setting(None, metavar="DIR", help="Local copy laid out as on the hub.", reads=path_digests)
    from_hub: bool = setting(False, help="Download from the hub instead of --path (needs network).")
    revision: str = setting("main", help="Hub dataset revision to pin with --from-hub (the commit is recorded).")

    def check(self) -> None:
        from r1v3.artifacts import check_name

        check_name(self.name)
        if self.from_hub == (self.path is not None):
            raise UserError("give exactly one of --path DIR (a local copy) or --from-hub")


def resume_settings(cfg, **extra) -> dict:
    """What must match for --resume to continue an interrupted run: every setting the result depends
    on that the run's progress also depends on (not the artifact it will publish under), the digests
    of the files it reads, and `extra` (what the stage resolves: a backend, a curriculum's order)."""
    keep = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if (r := role(f))["result"] and not r["resumable"] and r["artifact"] != "output"}
    return keep | ({"reads": cfg.reads} if cfg.reads else {}) | extra


def reuse_settings(cfg) -> dict:
    """What must match for --reuse to skip the stage: every setting the result depends on, and the
    digests of the files it reads, as a manifest records them (`to_dict`)."""
    recorded = to_dict(cfg)
    fields = fields_by_name(cfg)
    return {k: v for k, v in recorded.items() if k not in fields or role(fields[k])["result"]}


def undigested(cfg) -> list[tuple[str, str]]:
    """(setting, path or spec) of what a setting reads but cannot be digested: --reuse never trusts it."""
    return [(name, spec) for name, found in cfg.reads.items() for spec, digest in found.items() if digest is None]


def artifact_settings(cfg, which: str) -> dict[str, str]:
    """The settings declared `artifact=which` ("input" or "output") that are set."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if role(f)["artifact"] == which and getattr(cfg, f.name)}
