"""Stage configs: a dataclass per stage, filled from defaults < recipe YAML < CLI options < overrides.

A recipe file is either one stage's mapping, or a mapping of stage sections
(`sft: {...}`, `rl: {...}`) from which the stage takes its own. Overrides are dotted
`key=value` pairs whose values are parsed as YAML scalars (`learning_rate=2e-4`, `trainable=connector`).
Every key and type is checked, and the resolved config is what goes into the manifest.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from r1v3.errors import UserError

C = TypeVar("C")


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str, where: str):
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except UserError as e:
                errors.append(e)
        named = [_type_name(a) for a in args if a is not type(None)]  # None is "not set", not a choice
        raise UserError(f"{where}: {key} must be {' or '.join(named)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # `tasks=color` or `tasks=color,counting` from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: {key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, where, prefix=f"{key}.")
    elif isinstance(value, tp):
        return value
    raise UserError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")


def _build(cls, values: dict, where: str, prefix: str = "", partial: bool = False):
    """The dataclass from `values`; `partial` checks keys and types only (a recipe file may
    leave required keys such as `name` to the command line)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(
            f"{where}: unknown key '{prefix}{unknown[0]}'; valid keys: {', '.join(prefix + n for n in sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, where) for k, v in values.items()}
    if partial:
        return kwargs
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        key = prefix + missing[0]
        hint = f"--{key.replace('_', '-')} or " if not prefix else ""
        raise UserError(f"{where}: missing required setting '{key}' (give {hint}{key}=...)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read config: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}{at}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r}: expected key=value (for example lr=2e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load(
    cls: type[C],
    *,
    stage: str,
    path: str | Path | None = None,
    options: dict | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> C:
    """Build the stage config. `options` are CLI options actually given (None means not given)."""
    values: dict = {}
    if path is not None:
        data = read_yaml(path)
        section = data.get(stage)
        values = dict(section) if isinstance(section, dict) else data
        _build(cls, values, str(path), partial=True)  # so a mistake in the file is reported against the file
    for k, v in (options or {}).items():
        if v is not None:
            _set_dotted(values, k, v)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(values, key, value)
    return _build(cls, values, "command line" if path is None else f"{path} + command line")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
