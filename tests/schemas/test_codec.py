"""AvroCodec against an in-memory registry: wire format, caching, and every error code."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from schema_samples import FULL_SAMPLES, V1_SAMPLES, v1_request, v1_result

from schemas import catalog
from schemas.codec import AvroCodec, SchemaNotRegistered, UndecodableMessage
from schemas.records import GenerationRequest, GenerationResult
from schemas.topics import subject_for

TOPIC = "f2p.requests.batch"


class CountingRegistry:
    """Delegates to the mock registry and counts calls per method."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, {}

    def __getattr__(self, name):
        attr = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return call if callable(attr) else attr


def _frame(schema_id: int, schema: dict, datum: dict) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return out.getvalue()


def _undecodable(codec: AvroCodec, value, **kw) -> UndecodableMessage:
    with pytest.raises(UndecodableMessage) as err:
        codec.decode(TOPIC, value, partition=7, offset=99, **kw)
    assert (err.value.topic, err.value.partition, err.value.offset) == (TOPIC, 7, 99)
    assert f"topic={TOPIC} partition=7 offset=99" in str(err.value)
    assert str(err.value).startswith(err.value.code)
    return err.value


@pytest.mark.parametrize(
    "make", [*V1_SAMPLES.values(), *FULL_SAMPLES.values()], ids=lambda f: f.__name__
)
def test_round_trip_and_wire_format(mock_registry, make) -> None:
    record = make()
    codec = AvroCodec(mock_registry, auto_register=True)
    value = codec.encode(TOPIC, record)
    assert value[0] == 0
    (schema_id,) = struct.unpack(">I", value[1:5])
    registered = mock_registry.get_latest_version(subject_for(TOPIC))
    assert registered.schema_id == schema_id
    assert json.loads(registered.schema.schema_str) == catalog.schema_json(type(record).__name__)
    fresh = AvroCodec(mock_registry, auto_register=False)
    assert fresh.decode(TOPIC, value) == record


def test_schema_ids_and_writer_schemas_are_cached(mock_registry) -> None:
    registry = CountingRegistry(mock_registry)
    codec = AvroCodec(registry, auto_register=True)
    values = [codec.encode(TOPIC, v1_request()) for _ in range(5)]
    # One miss, the level, the registration: then nothing more for this subject.
    assert registry.calls == {"lookup_schema": 1, "set_compatibility": 1, "register_schema": 1}
    for value in values:
        codec.decode(TOPIC, value)
    assert "get_schema" not in registry.calls  # own schema known without a round trip
    reader = AvroCodec(registry, auto_register=False)
    for value in values:
        reader.decode(TOPIC, value)
    assert registry.calls["get_schema"] == 1


def test_auto_registration_protects_the_subject_first(mock_registry) -> None:
    AvroCodec(mock_registry, auto_register=True).encode(TOPIC, v1_request())
    assert mock_registry.get_compatibility(subject_for(TOPIC)) == "FULL_TRANSITIVE"


def test_auto_registration_leaves_a_subject_holding_the_schema_alone(mock_registry) -> None:
    subject = subject_for(TOPIC)
    mock_registry.register_schema(subject, Schema(catalog.schema_str("GenerationRequest"), "AVRO"))
    mock_registry.set_compatibility(subject, "BACKWARD")  # an operator's choice
    registry = CountingRegistry(mock_registry)
    AvroCodec(registry, auto_register=True).encode(TOPIC, v1_request())
    assert registry.calls == {"lookup_schema": 1}
    assert mock_registry.get_compatibility(subject) == "BACKWARD"


def test_not_registered_without_auto_register_says_what_to_run(mock_registry) -> None:
    codec = AvroCodec(mock_registry, auto_register=False)
    with pytest.raises(SchemaNotRegistered, match="f2p schemas register") as err:
        codec.encode(TOPIC, v1_request())
    assert subject_for(TOPIC) in str(err.value)


def test_registered_schema_is_found_without_auto_register(mock_registry) -> None:
    subject = subject_for(TOPIC)
    mock_registry.register_schema(subject, Schema(catalog.schema_str("GenerationRequest"), "AVRO"))
    codec = AvroCodec(mock_registry, auto_register=False)
    assert codec.decode(TOPIC, codec.encode(TOPIC, v1_request())) == v1_request()


@pytest.mark.parametrize("name", catalog.RECORD_NAMES)
def test_every_older_writer_decodes_into_the_current_record(mock_registry, name) -> None:
    record = V1_SAMPLES[name]()
    codec = AvroCodec(mock_registry, auto_register=False)
    for version, _ in catalog.history_versions(name):
        schema = catalog.load_history(name, version)
        subject = f"history-{name}-value"
        schema_id = mock_registry.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
        assert codec.decode(TOPIC, _frame(schema_id, schema, record.to_avro())) == record


def test_framing_errors(mock_registry) -> None:
    codec = AvroCodec(mock_registry, auto_register=True)
    good = codec.encode(TOPIC, v1_request())
    assert _undecodable(codec, None).code == "EMPTY_MESSAGE"
    assert _undecodable(codec, b"").code == "EMPTY_MESSAGE"
    assert _undecodable(codec, b"\x01" + good[1:]).code == "BAD_MAGIC_BYTE"
    assert _undecodable(codec, b'{"json": true}').code == "BAD_MAGIC_BYTE"
    assert _undecodable(codec, good[:3]).code == "TRUNCATED_MESSAGE"
    assert _undecodable(codec, good[:5]).code == "TRUNCATED_MESSAGE"
    assert _undecodable(codec, good[: len(good) // 2]).code == "TRUNCATED_MESSAGE"
    assert _undecodable(codec, good + b"\x00\x01").code == "AVRO_DECODE_ERROR"


def test_unknown_schema_id(mock_registry) -> None:
    codec = AvroCodec(mock_registry, auto_register=True)
    value = codec.encode(TOPIC, v1_request())
    error = _undecodable(codec, b"\x00" + struct.pack(">I", 4242) + value[5:])
    assert error.code == "UNKNOWN_SCHEMA_ID" and error.schema_id == 4242
    assert "schema_id=4242" in str(error)


def test_garbage_body(mock_registry) -> None:
    codec = AvroCodec(mock_registry, auto_register=True)
    header = codec.encode(TOPIC, v1_request())[:5]
    error = _undecodable(codec, header + b"\xff" * 64)
    assert error.code in ("AVRO_DECODE_ERROR", "TRUNCATED_MESSAGE")
    error = _undecodable(codec, header + b"\x02zz" + b"\x00" * 200)  # uuid field is not a uuid
    assert error.code in ("AVRO_DECODE_ERROR", "TRUNCATED_MESSAGE")


def test_foreign_schema_is_a_mismatch(mock_registry) -> None:
    foreign = {
        "type": "record",
        "name": "Order",
        "namespace": "com.shop",
        "fields": [{"name": "id", "type": "string"}],
    }
    schema_id = mock_registry.register_schema("x-value", Schema(json.dumps(foreign), "AVRO"))
    codec = AvroCodec(mock_registry, auto_register=False)
    error = _undecodable(codec, _frame(schema_id, foreign, {"id": "1"}))
    assert error.code == "SCHEMA_MISMATCH" and "com.shop.Order" in error.detail


def test_unresolvable_writer_is_a_mismatch(mock_registry) -> None:
    broken = json.loads(catalog.schema_str("GenerationResult"))
    for field in broken["fields"]:
        if field["name"] == "worker_id":
            field["type"] = "long"  # type changed: the registry would refuse it, a rogue writer not
    schema_id = mock_registry.register_schema("rogue-value", Schema(json.dumps(broken), "AVRO"))
    datum = v1_result().to_avro() | {"worker_id": 7}
    codec = AvroCodec(mock_registry, auto_register=False)
    assert _undecodable(codec, _frame(schema_id, broken, datum)).code == "SCHEMA_MISMATCH"


def test_non_avro_schema_is_a_mismatch(mock_registry) -> None:
    schema_id = mock_registry.register_schema("j-value", Schema('{"type":"object"}', "JSON"))
    codec = AvroCodec(mock_registry, auto_register=False)
    assert _undecodable(codec, b"\x00" + struct.pack(">I", schema_id) + b"{}").code == (
        "SCHEMA_MISMATCH"
    )


def test_expected_type_is_enforced(mock_registry) -> None:
    codec = AvroCodec(mock_registry, auto_register=True)
    value = codec.encode(TOPIC, v1_result())
    assert isinstance(codec.decode(TOPIC, value, expect=GenerationResult), GenerationResult)
    error = _undecodable(codec, value, expect=GenerationRequest)
    assert error.code == "SCHEMA_MISMATCH"


def test_registry_outage_is_not_a_poison_message(mock_registry) -> None:
    class Down:
        def get_schema(self, *a, **kw):
            raise SchemaRegistryError(503, 50301, "unavailable")

    value = AvroCodec(mock_registry, auto_register=True).encode(TOPIC, v1_request())
    with pytest.raises(SchemaRegistryError):
        AvroCodec(Down(), auto_register=False).decode(TOPIC, value)


def test_encode_refuses_non_records(mock_registry) -> None:
    with pytest.raises(TypeError):
        AvroCodec(mock_registry, auto_register=True).encode(TOPIC, {"not": "a record"})


def test_subject_follows_topic_name_strategy() -> None:
    assert subject_for("f2p.results.v1") == "f2p.results.v1-value"
