"""The generic half of the config: params.yaml's YAML dialect, and typed building of the frozen
section dataclasses from plain mappings (and back, for checkpoints and logs).

It knows no section. Every `Config` dataclass in pixpro/config*.py is built by `build` from its
type hints: an unknown key, a wrong type or a value outside a `Literal` raises `ConfigError`
naming the dotted key; the range checks are the sections' own `validate` methods.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import warnings
from typing import Any, Literal

import yaml

from pixpro.errors import ConfigError

# `amp` (pretrain, finetune): which precision a stage computes in (pixpro/precision.py).
AMP_SETTINGS = ("auto", "cuda", "always", "off")
LEGACY_AMP = {True: "cuda", False: "off"}  # params files from before the CPU setting existed


def legacy_amp(setting: bool, key: str) -> str:
    """A boolean `amp` as its old meaning, with a warning naming the spellings that are not booleans."""
    meaning = LEGACY_AMP[setting]
    warnings.warn(f"{key}: {str(setting).lower()} is read as the old boolean, `{meaning}` (YAML turns an unquoted "
                  f"on/yes/true into true); write one of {', '.join(AMP_SETTINGS)}", UserWarning, stacklevel=3)
    return meaning


class ParamsLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; YAML 1.2, `dvc exp run -S` and people read a
    number. Same float rule as SafeLoader's, with the dot and the exponent's sign optional."""


ParamsLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$""", re.X),
    list("-+0123456789"))


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dict/list tree (for checkpoints and logs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def build(cls: type, raw: Any, key: str) -> Any:
    """A mapping -> a `cls` instance, each value coerced to its type hint; `key` is the dotted
    path that messages name ("" = the top of params.yaml). Range checks are not run here."""
    where = key or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        dotted = ".".join(filter(None, [key, str(unknown[0])]))
        raise ConfigError(f"unknown key {dotted} (known under {where}: {', '.join(sorted(names))})")
    values = {}
    for name in names & set(raw):
        values[name] = _coerce(hints[name], raw[name], ".".join(filter(None, [key, name])))
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:  # the first type the value fits, e.g. `threads: int | Literal["auto"]`
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; or ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} entries, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # programming error, not user's
