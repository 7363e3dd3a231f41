"""The v3 changes of GenerationRequest / GenerationResult / DeadLetter, old ↔ new, both ways.

``test_catalog`` proves every version reads every other for v1-shaped data; these tests pin what
the new fields look like to an old reader (skipped, or the enum default) and what old data looks
like to the current reader (the field defaults).
"""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import pytest
from schema_samples import FULL_SAMPLES, V1_SAMPLES

from schemas import catalog
from schemas.records import DeadLetter, GenerationRequest, GenerationResult, ResultStatus

EVOLVED = ("GenerationRequest", "GenerationResult", "DeadLetter")


def _resolve(writer: dict[str, Any], reader: dict[str, Any], datum: dict[str, Any]) -> Any:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(writer), datum)
    return fastavro.schemaless_reader(
        io.BytesIO(out.getvalue()),
        fastavro.parse_schema(writer),
        fastavro.parse_schema(reader),
        return_record_name=True,
        return_record_name_override=True,
    )


def _v2(name: str) -> dict[str, Any]:
    return catalog.load_history(name, 2)


@pytest.mark.parametrize("name", EVOLVED)
def test_v1_and_v2_readers_read_a_v3_record_with_every_new_field_set(name: str) -> None:
    record = FULL_SAMPLES[name]()
    for version in (1, 2):
        old = catalog.load_history(name, version)
        datum = record.to_avro()
        decoded = _resolve(catalog.schema_json(name), old, datum)
        assert set(decoded) == {f["name"] for f in old["fields"]}  # new fields skipped
        for field in ("request_id", "tenant_id", "source_offset", "prompt", "worker_id"):
            if field in decoded:
                assert str(decoded[field]) == str(datum[field])


def test_an_old_reader_sees_cancelled_as_failed_and_skips_the_new_fields() -> None:
    result = FULL_SAMPLES["GenerationResult"]()
    assert result.status is ResultStatus.CANCELLED
    decoded = _resolve(
        catalog.schema_json("GenerationResult"), _v2("GenerationResult"), result.to_avro()
    )
    assert decoded["status"] == "FAILED"  # the enum default of ResultStatus
    assert decoded["error"]["code"] == "CANCELLED"  # the reason survives for old readers
    assert "attributes" not in decoded
    assert "transformer_evaluations" not in decoded["timings"]
    assert "preset" not in decoded["model"]


def test_an_old_worker_reads_a_request_with_a_preset() -> None:
    request = FULL_SAMPLES["GenerationRequest"]()
    assert request.params.preset is not None
    decoded = _resolve(
        catalog.schema_json("GenerationRequest"), _v2("GenerationRequest"), request.to_avro()
    )
    assert "preset" not in decoded["params"]
    assert decoded["params"]["seed"] == request.params.seed


def test_the_current_reader_fills_defaults_into_old_results() -> None:
    v1 = V1_SAMPLES["GenerationResult"]()
    decoded = _resolve(
        _v2("GenerationResult"), catalog.schema_json("GenerationResult"), v1.to_avro()
    )
    result = GenerationResult.from_avro(decoded)
    assert result.attributes == {}
    assert (result.timings.transformer_evaluations, result.timings.steps_executed) == (0, 0)
    assert result.model.preset is None and result.model.lora is None


def test_the_current_reader_fills_defaults_into_old_requests() -> None:
    v1 = V1_SAMPLES["GenerationRequest"]()
    decoded = _resolve(
        _v2("GenerationRequest"), catalog.schema_json("GenerationRequest"), v1.to_avro()
    )
    assert GenerationRequest.from_avro(decoded).params.preset is None


def test_the_current_reader_fills_defaults_into_old_dead_letters() -> None:
    v1 = V1_SAMPLES["DeadLetter"]()
    decoded = _resolve(_v2("DeadLetter"), catalog.schema_json("DeadLetter"), v1.to_avro())
    letter = DeadLetter.from_avro(decoded)
    assert (letter.key_size, letter.value_size) == (-1, -1)  # unknown, not zero
    assert (letter.key_sha256, letter.value_sha256, letter.original_uri) == (None, None, None)
    assert letter.truncated is False


def _with_symbol(schema: dict[str, Any], enum_name: str, symbol: str) -> dict[str, Any]:
    """A copy of ``schema`` whose enum ``enum_name`` has one more symbol (a future version)."""
    future = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "enum" and node.get("name") == enum_name:
                node["symbols"].append(symbol)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(future)
    return future


@pytest.mark.parametrize(
    ("name", "enum", "path", "default"),
    [
        ("GenerationRequest", "Preset", ("params", "preset"), "QUALITY"),
        ("GenerationResult", "ResultStatus", ("status",), "FAILED"),
        ("RequestStatus", "RequestState", ("status",), "ACCEPTED"),
        ("ControlCommand", "ControlKind", ("command",), "CANCEL"),
    ],
)
def test_a_symbol_added_later_reads_as_the_enum_default(name, enum, path, default) -> None:
    future = _with_symbol(catalog.schema_json(name), enum, "FUTURE")
    datum = FULL_SAMPLES[name]().to_avro()
    target = datum
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = "FUTURE"
    decoded = _resolve(future, catalog.schema_json(name), datum)
    for part in path:
        decoded = decoded[part]
    assert decoded == default
