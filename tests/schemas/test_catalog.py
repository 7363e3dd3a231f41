"""The .avsc files: documented, namespaced, with history, and evolving FULL_TRANSITIVE-ly."""

from __future__ import annotations

import io
import itertools
import json
from typing import Any

import fastavro
import pytest
from schema_samples import V1_SAMPLES

from schemas import catalog
from schemas.records import RECORD_TYPES

NAMES = catalog.RECORD_NAMES


def _walk(schema: Any, path: str = ""):
    """Yield (path, node) for every named type and record field in a schema."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _walk(branch, path)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            yield path or schema["name"], schema
            for field in schema["fields"]:
                yield f"{path}.{field['name']}".lstrip("."), field
                yield from _walk(field["type"], f"{path}.{field['name']}".lstrip("."))
        elif kind == "enum":
            yield path, schema
        elif kind == "array":
            yield from _walk(schema["items"], path)
        elif kind == "map":
            yield from _walk(schema["values"], path)
        elif isinstance(kind, dict | list):
            yield from _walk(kind, path)


@pytest.mark.parametrize("name", NAMES)
def test_current_schema_is_namespaced_and_parses(name: str) -> None:
    schema = catalog.schema_json(name)
    assert schema["namespace"] == "io.f2pstream.v1"
    assert catalog.schema_full_name(schema) in RECORD_TYPES
    fastavro.parse_schema(schema)


@pytest.mark.parametrize("name", NAMES)
def test_every_field_and_type_has_a_doc(name: str) -> None:
    missing = [path for path, node in _walk(catalog.schema_json(name)) if not node.get("doc")]
    assert missing == []


@pytest.mark.parametrize("name", NAMES)
def test_every_enum_has_a_default_symbol(name: str) -> None:
    enums = [n for _, n in _walk(catalog.schema_json(name)) if n.get("type") == "enum"]
    for enum in enums:
        assert enum.get("default") in enum["symbols"], enum["name"]


@pytest.mark.parametrize("name", NAMES)
def test_history_is_contiguous_and_ends_with_the_current_schema(name: str) -> None:
    versions = catalog.history_versions(name)
    assert [v for v, _ in versions] == list(range(1, len(versions) + 1))
    assert versions, "a record's first version is history/<Name>/v1.avsc"
    latest = json.loads(versions[-1][1].read_text())
    assert latest == catalog.schema_json(name), "copy the changed .avsc into history/ as vN+1"


@pytest.mark.parametrize("name", NAMES)
def test_fields_added_after_v1_have_defaults(name: str) -> None:
    versions = [catalog.load_history(name, v) for v, _ in catalog.history_versions(name)]
    for old, new in itertools.pairwise(versions):
        old_fields = {p for p, n in _walk(old) if "name" in n and "type" in n}
        for path, node in _walk(new):
            if "name" in node and "type" in node and path not in old_fields:
                if node.get("type") in ("record", "enum"):
                    continue
                assert "default" in node, f"{name}.{path} was added without a default"


def _write(schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return out.getvalue()


@pytest.mark.parametrize("name", NAMES)
def test_every_version_reads_every_other_version(name: str) -> None:
    """FULL_TRANSITIVE, checked locally with fastavro schema resolution, both directions."""
    versions = [catalog.load_history(name, v) for v, _ in catalog.history_versions(name)]
    record = V1_SAMPLES[name]()
    for writer, reader in itertools.product(versions, repeat=2):
        data = _write(writer, record.to_avro())
        decoded = fastavro.schemaless_reader(
            io.BytesIO(data),
            fastavro.parse_schema(writer),
            fastavro.parse_schema(reader),
            return_record_name=True,
            return_record_name_override=True,
        )
        if reader == catalog.schema_json(name):
            assert type(record).from_avro(decoded) == record


def test_schema_str_is_compact_json_of_the_file() -> None:
    for name in NAMES:
        assert json.loads(catalog.schema_str(name)) == catalog.schema_json(name)
        assert "\n" not in catalog.schema_str(name)


def test_unknown_record_name_is_refused() -> None:
    with pytest.raises(KeyError):
        catalog.schema_path("Nope")
