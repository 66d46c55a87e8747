"""Strict conversion of YAML/flag values into typed dataclasses, with helpful errors."""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from .errors import ConfigError


def dataclass_from_dict(cls, values: dict, prefix: str):
    """Build dataclass ``cls`` from ``values``, casting each value to its field's type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping")
    return cls(**typed_kwargs(cls, values, prefix))


def typed_kwargs(cls, values: dict, prefix: str, skip=()) -> dict:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key in skip:
            continue
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}{suggest(key, fields, prefix)}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = dataclass_from_dict(hints[key], value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = cast(value, hints[key], prefix + key)
    return kwargs


def cast(value: Any, kind: Any, name: str) -> Any:
    """Cast a YAML or command-line value to the annotated type ``kind``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return cast(value, inner[0], name)
    if origin is tuple:
        given = value
        if isinstance(value, str):              # "512,256" or YAML's "[512, 256]"
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            value = text.split(",") if text.strip() else []   # '' and '[]': no items
            if len(value) > 1 and not value[-1].strip():       # a trailing comma: '512, 256,'
                value.pop()
        items = value
        if not isinstance(items, (list, tuple)):
            items = [items]
        if any(isinstance(v, str) and not v.strip() for v in items):
            raise ConfigError(f"{name}: cannot read {given!r}: it has an empty item")
        return tuple(cast(v, args[0], name) for v in items)
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is int:
            if isinstance(value, bool):             # int(True) == 1: YAML `yes` is not a count
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():
                value = float(value)                # '1e3'; '2.5e0' must fail below, not truncate
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)  # PyYAML reads 1e-3 (no dot) as a string
            if not math.isfinite(number):    # no setting here means anything at nan or inf
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return number
        if kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(kind, '__name__', kind)}") from None
    return value


def suggest(word: str, choices, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
    return hint + f" (choose from {', '.join(sorted(map(str, choices)))})"


