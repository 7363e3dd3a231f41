"""Schema-change rules the registry does not enforce (docs/SCHEMA_EVOLUTION.md, "Review rules").

The registry checks Avro schema *resolution* under the subject's compatibility level. Some changes
resolve fine and still break the contract: a changed default makes old and new readers disagree
about old data, a removed enum symbol silently maps old data to the default, a changed logical
type reinterprets the same long. :func:`review_change` finds those by comparing an older version
with a candidate, field by field (paths like ``params.preset``, ``face[FaceImageRef].key``).

Codes:

``NAME_CHANGED``            the record's full name (namespace + name) differs
``DEFAULT_CHANGED``         a field kept its name but its default changed
``DEFAULT_REMOVED``         a field had a default and lost it
``ENUM_SYMBOL_REMOVED``     an enum lost a symbol
``ENUM_SYMBOL_NOT_APPENDED``  an enum's old symbols are not a prefix of its new ones
``ENUM_DEFAULT_CHANGED``    an enum's default symbol changed
``LOGICAL_TYPE_CHANGED``    a field's logical type (uuid, timestamp-millis, ...) changed
``MISSING_DOC``             a field, record or enum of the candidate has no ``doc``
                            (:func:`missing_docs`, no older version needed)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken review rule: machine-readable ``code``, the field ``path`` and a ``detail``."""

    code: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code} {self.path}: {self.detail}"


def _full_name(node: dict[str, Any], namespace: str) -> str:
    name = node.get("name", "")
    if "." in name:
        return name
    return f"{node.get('namespace', namespace)}.{name}"


def _walk(node: Any, path: str, namespace: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield ``(kind, path, node)`` for every field ("field"), enum ("enum") and record
    ("record") defined in ``node``; named references (plain strings) are defined elsewhere."""
    if isinstance(node, list):
        # Branches of a union of several records are told apart by name: face[InlineImage].data
        several = sum(branch != "null" for branch in node) > 1
        for branch in node:
            label = branch.get("name") if isinstance(branch, dict) else None
            branch_path = f"{path}[{label}]" if label and several else path
            yield from _walk(branch, branch_path, namespace)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "record":
        namespace = node.get("namespace", namespace)
        yield "record", path or node["name"], node
        for field in node.get("fields", []):
            field_path = f"{path}.{field['name']}" if path else field["name"]
            yield "field", field_path, field
            yield from _walk(field["type"], field_path, namespace)
    elif kind == "enum":
        yield "enum", path, node
    elif kind == "array":
        yield from _walk(node["items"], path, namespace)
    elif kind == "map":
        yield from _walk(node["values"], path, namespace)
    elif isinstance(kind, dict | list):
        yield from _walk(kind, path, namespace)


def _index(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(kind, path): node for kind, path, node in _walk(schema, "", "")}


def _logical(field: dict[str, Any]) -> str | None:
    """The logical type of a field's type, or of the non-null branch of an optional field."""
    kind = field.get("type")
    if isinstance(kind, list):
        branches = [b for b in kind if b != "null"]
        kind = branches[0] if len(branches) == 1 else None
    return kind.get("logicalType") if isinstance(kind, dict) else None


def review_change(old: dict[str, Any], new: dict[str, Any]) -> list[Violation]:
    """The review rules ``new`` breaks relative to the older version ``old``."""
    out: list[Violation] = []
    old_name, new_name = _full_name(old, ""), _full_name(new, "")
    if old_name != new_name:
        out.append(Violation("NAME_CHANGED", new.get("name", "?"), f"{old_name} → {new_name}"))
    before = _index(old)
    for (kind, path), node in _index(new).items():
        prior = before.get((kind, path))
        if prior is None:
            continue
        if kind == "field":
            out.extend(_field_rules(path, prior, node))
        elif kind == "enum":
            out.extend(_enum_rules(path, prior, node))
    return out


def missing_docs(schema: dict[str, Any]) -> list[Violation]:
    """A ``MISSING_DOC`` violation for every field, record and enum of ``schema`` without doc."""
    return [
        Violation("MISSING_DOC", path, f"every {kind} needs a doc")
        for (kind, path), node in _index(schema).items()
        if not node.get("doc")
    ]


def review_against(candidate: dict[str, Any], older: list[dict[str, Any]]) -> list[Violation]:
    """Every review rule ``candidate`` breaks, against any of the ``older`` versions
    (deduplicated by code and path; versions identical to the candidate are skipped)."""
    found: dict[tuple[str, str], Violation] = {}
    for violation in missing_docs(candidate):
        found.setdefault((violation.code, violation.path), violation)
    for old in older:
        if old == candidate:
            continue
        for violation in review_change(old, candidate):
            found.setdefault((violation.code, violation.path), violation)
    return list(found.values())


def _field_rules(path: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Violation]:
    old_default, new_default = old.get("default", _MISSING), new.get("default", _MISSING)
    if old_default is not _MISSING and new_default is _MISSING:
        yield Violation("DEFAULT_REMOVED", path, f"had default {old_default!r}")
    elif old_default is not _MISSING and old_default != new_default:
        yield Violation("DEFAULT_CHANGED", path, f"{old_default!r} → {new_default!r}")
    if _logical(old) != _logical(new):
        yield Violation("LOGICAL_TYPE_CHANGED", path, f"{_logical(old)} → {_logical(new)}")


def _enum_rules(path: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Violation]:
    old_symbols, new_symbols = list(old["symbols"]), list(new["symbols"])
    removed = [s for s in old_symbols if s not in new_symbols]
    if removed:
        yield Violation("ENUM_SYMBOL_REMOVED", path, f"{old['name']} lost {', '.join(removed)}")
    elif new_symbols[: len(old_symbols)] != old_symbols:
        detail = f"{old['name']}: add symbols at the end, {old_symbols} → {new_symbols}"
        yield Violation("ENUM_SYMBOL_NOT_APPENDED", path, detail)
    if old.get("default") != new.get("default"):
        detail = f"{old['name']}: {old.get('default')!r} → {new.get('default')!r}"
        yield Violation("ENUM_DEFAULT_CHANGED", path, detail)
