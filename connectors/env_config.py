"""One way to read ``F2P_<COMPONENT>_<FIELD>`` variables into a frozen settings dataclass.

Each field's variable is its upper-cased name under the component's prefix; values are parsed by
the field's annotated type with bounds (finite numbers, at most 256 characters, an empty value
for an optional field means None), and a bad one is a ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Collection, Mapping
from enum import Enum
from typing import Any

from f2p_errors import ConfigError

MAX_VALUE_CHARS = 256


def env_values(
    cls: type,
    prefix: str,
    *,
    skip: Collection[str] = (),
    enums: Mapping[str, type[Enum]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{field: value}`` for every field of dataclass ``cls`` whose ``<prefix><FIELD>`` variable
    is set (``skip`` names fields read some other way)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name.upper()}"
        if f.name in skip or name not in environ:
            continue
        values[f.name] = parse_value(name, environ[name], str(f.type), (enums or {}).get(f.name))
    return values


def parse_value(name: str, raw: str, kind: str, enum: type[Enum] | None = None) -> Any:
    """``raw`` parsed as ``kind`` (the annotation as text); ConfigError naming ``name``."""
    parsers: list[tuple[str, Callable[[str], Any]]] = [
        ("bool", _bool),
        ("int", int),
        ("float", _finite),
    ]
    try:
        if len(raw) > MAX_VALUE_CHARS:
            raise ValueError("too long")
        if "None" in kind and not raw.strip():
            return None
        if enum is not None:
            return enum(raw.upper())
        for marker, parse in parsers:
            if marker in kind:
                return parse(raw)
    except ValueError:
        raise ConfigError(f"{name}: cannot parse {raw[:64]!r} as {kind}") from None
    return raw


def _bool(raw: str) -> bool:
    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(raw)
    return raw.lower() in ("1", "true", "yes")


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value
