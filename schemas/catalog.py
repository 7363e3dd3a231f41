"""The Avro schemas shipped with the package: the current ``.avsc`` of every record and the
history of its earlier versions.

``schemas/avro/<Name>.avsc`` is the current version, ``schemas/avro/history/<Name>/vN.avsc`` every
version ever registered, oldest first; the newest history file is identical to the current one
(a unit test enforces it), so changing a schema means adding a history file.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import fastavro

NAMESPACE = "io.f2pstream.v1"
RECORD_NAMES: tuple[str, ...] = (
    "GenerationRequest",
    "GenerationResult",
    "DeadLetter",
    "RequestStatus",
    "ControlCommand",
    "AnalyticsWindow",
)
AVRO_DIR = Path(__file__).resolve().parent / "avro"
HISTORY_DIR = AVRO_DIR / "history"

_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")


def full_name(name: str) -> str:
    """``GenerationRequest`` → ``io.f2pstream.v1.GenerationRequest``."""
    return name if "." in name else f"{NAMESPACE}.{name}"


def short_name(name: str) -> str:
    """``io.f2pstream.v1.GenerationRequest`` → ``GenerationRequest``."""
    return name.rsplit(".", 1)[-1]


def schema_path(name: str) -> Path:
    """Path of the current ``.avsc`` of a record (short or full name)."""
    short = short_name(name)
    if short not in RECORD_NAMES:
        raise KeyError(f"unknown record {name!r}; known: {', '.join(RECORD_NAMES)}")
    return AVRO_DIR / f"{short}.avsc"


@functools.cache
def schema_json(name: str) -> dict[str, Any]:
    """The current schema of a record as a JSON object (do not mutate)."""
    return json.loads(schema_path(name).read_text(encoding="utf-8"))


@functools.cache
def schema_str(name: str) -> str:
    """The current schema as the exact compact JSON text registered in the registry."""
    return canonical_text(schema_json(name))


@functools.cache
def parsed_schema(name: str) -> dict[str, Any]:
    """The current schema parsed by fastavro, ready for writers and as reader schema."""
    parsed = fastavro.parse_schema(schema_json(name))
    assert isinstance(parsed, dict), f"{name}: a record schema parses to a dict"
    return parsed


def canonical_text(schema: dict[str, Any]) -> str:
    """The JSON text we send to the registry for a schema object (compact, key order kept)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def schema_full_name(schema: dict[str, Any]) -> str:
    """Full name of a named top-level schema object (``namespace.name``)."""
    name = schema.get("name", "")
    if "." in name or not schema.get("namespace"):
        return name
    return f"{schema['namespace']}.{name}"


def history_versions(name: str) -> list[tuple[int, Path]]:
    """``[(1, .../v1.avsc), (2, .../v2.avsc), ...]`` for a record, oldest first."""
    folder = HISTORY_DIR / short_name(name)
    found = []
    for path in folder.glob("v*.avsc"):
        match = _VERSION_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_history(name: str, version: int) -> dict[str, Any]:
    """One historical version of a record's schema as a JSON object."""
    path = HISTORY_DIR / short_name(name) / f"v{version}.avsc"
    return json.loads(path.read_text(encoding="utf-8"))
