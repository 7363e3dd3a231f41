"""Schemas and codec against the real registry of the embedded stack (Apicurio, ccompat API)."""

from __future__ import annotations

import io
import json
import struct
import uuid

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from schema_samples import FULL_SAMPLES, V1_SAMPLES

from schemas import catalog
from schemas.codec import DEFAULT_COMPATIBILITY, AvroCodec, SchemaNotRegistered, register_all
from schemas.topics import subject_for

pytestmark = pytest.mark.integration


def _schema(obj: dict) -> Schema:
    return Schema(catalog.canonical_text(obj), "AVRO")


def _frame(schema_id: int, schema: dict, datum: dict) -> bytes:
    out = io.BytesIO(struct.pack(">bI", 0, schema_id))
    out.seek(5)
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return out.getvalue()


@pytest.mark.parametrize("name", catalog.RECORD_NAMES)
def test_history_registers_in_order_and_current_reader_reads_every_writer(
    registry, subject, name
) -> None:
    subj = subject(name.lower())
    registry.set_compatibility(subj, DEFAULT_COMPATIBILITY)
    assert registry.get_compatibility(subj) == DEFAULT_COMPATIBILITY
    ids = []
    for version, _ in catalog.history_versions(name):
        ids.append(registry.register_schema(subj, _schema(catalog.load_history(name, version))))
    assert len(set(ids)) == len(ids)
    latest = registry.get_latest_version(subj)
    assert latest.version == len(ids)
    assert json.loads(latest.schema.schema_str) == catalog.schema_json(name)

    # Every older writer, framed with its registry id, decodes into today's dataclass.
    record = V1_SAMPLES[name]()
    codec = AvroCodec(SchemaRegistryClient({"url": registry.config()["url"]}), auto_register=False)
    for schema_id, (version, _) in zip(ids, catalog.history_versions(name), strict=True):
        value = _frame(schema_id, catalog.load_history(name, version), record.to_avro())
        assert codec.decode(subj.removesuffix("-value"), value, offset=version) == record


def _without(schema: dict, field: str) -> dict:
    return {**schema, "fields": [f for f in schema["fields"] if f["name"] != field]}


def _retyped(schema: dict, field: str, new_type) -> dict:
    fields = [{**f, "type": new_type} if f["name"] == field else f for f in schema["fields"]]
    return {**schema, "fields": fields}


INCOMPATIBLE = {
    "field-without-default-removed": lambda s: _without(s, "prompt"),
    "field-type-changed": lambda s: _retyped(s, "tenant_id", "long"),
    "field-added-without-default": lambda s: {
        **s,
        "fields": [*s["fields"], {"name": "sku", "type": "string", "doc": "x"}],
    },
    "long-widened-to-double": lambda s: _retyped(s, "submitted_at", "double"),
    "union-branch-added": lambda s: _retyped(
        s,
        "face",
        [
            *next(f["type"] for f in s["fields"] if f["name"] == "face"),
            {
                "type": "record",
                "name": "FaceUrl",
                "doc": "x",
                "fields": [{"name": "url", "type": "string", "doc": "x"}],
            },
        ],
    ),
}


@pytest.mark.parametrize("change", INCOMPATIBLE, ids=list(INCOMPATIBLE))
def test_incompatible_change_is_refused_by_the_registry(registry, subject, change) -> None:
    subj = subject("incompat")
    registry.set_compatibility(subj, DEFAULT_COMPATIBILITY)
    for version, _ in catalog.history_versions("GenerationRequest"):
        registry.register_schema(subj, _schema(catalog.load_history("GenerationRequest", version)))
    bad = _schema(INCOMPATIBLE[change](catalog.schema_json("GenerationRequest")))
    assert registry.test_compatibility_all_versions(subj, bad) is False
    with pytest.raises(SchemaRegistryError) as err:
        registry.register_schema(subj, bad)
    assert err.value.http_status_code == 409
    history = catalog.history_versions("GenerationRequest")
    assert registry.get_versions(subj) == [v for v, _ in history]


def test_compatible_change_is_accepted(registry, subject) -> None:
    subj = subject("compat")
    registry.set_compatibility(subj, DEFAULT_COMPATIBILITY)
    current = catalog.schema_json("GenerationResult")
    registry.register_schema(subj, _schema(current))
    extra = {"name": "region", "type": ["null", "string"], "default": None, "doc": "x"}
    registry.register_schema(subj, _schema({**current, "fields": [*current["fields"], extra]}))
    assert registry.get_versions(subj) == [1, 2]


@pytest.mark.parametrize(
    "make", [*V1_SAMPLES.values(), *FULL_SAMPLES.values()], ids=lambda f: f.__name__
)
def test_codec_round_trip_and_independent_decode(stack_settings, unique_name, make) -> None:
    record = make()
    topic = unique_name("test.schemas.codec")
    url = stack_settings.registry_url
    writer = AvroCodec(SchemaRegistryClient({"url": url}), auto_register=True)
    value = writer.encode(topic, record)
    assert (
        AvroCodec(SchemaRegistryClient({"url": url}), auto_register=False).decode(
            topic, value, partition=0, offset=0
        )
        == record
    )

    # Independent reader: raw bytes → schema id → schema by id from the registry → fastavro.
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert magic == 0
    fetched = SchemaRegistryClient({"url": url}).get_schema(schema_id)
    writer_schema = fastavro.parse_schema(json.loads(fetched.schema_str))
    raw = fastavro.schemaless_reader(io.BytesIO(value[5:]), writer_schema)
    assert _plain(raw) == _plain(record.to_avro())


def _plain(value):
    """Normalise fastavro output and to_avro() input to comparable plain values."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return _plain(value[1])  # union branch notation (record name, value)
    if isinstance(value, float):
        return round(value, 5)  # float32 on the wire
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def test_without_auto_register_encode_needs_register_all(stack_settings, unique_name) -> None:
    topic = unique_name("test.schemas.noauto")
    registry = SchemaRegistryClient({"url": stack_settings.registry_url})
    codec = AvroCodec(registry, auto_register=False)
    record = V1_SAMPLES["GenerationRequest"]()
    with pytest.raises(SchemaNotRegistered, match="f2p schemas register"):
        codec.encode(topic, record)
    ids = register_all(registry, {"GenerationRequest": [topic]})
    assert registry.get_compatibility(subject_for(topic)) == DEFAULT_COMPATIBILITY
    value = codec.encode(topic, record)
    assert struct.unpack(">I", value[1:5])[0] == ids[subject_for(topic)]
    assert register_all(registry, {"GenerationRequest": [topic]}) == ids  # idempotent
