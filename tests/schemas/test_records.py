"""Record dataclasses: dict and binary round trips, coercions, conveniences."""

from __future__ import annotations

import dataclasses
import io
import uuid
from datetime import UTC, datetime, timedelta, timezone

import fastavro
import pytest
from schema_samples import FULL_SAMPLES, T0, V1_SAMPLES, face_ref, v1_request

from f2p_errors import InvalidInput
from schemas import catalog
from schemas.records import (
    RECORD_TYPES,
    DeadLetter,
    GenerationRequest,
    ImageFormat,
    InlineImage,
    Lane,
    RequestParams,
    ResultImage,
    ResultStatus,
    StageTimings,
)

SAMPLES = [*V1_SAMPLES.values(), *FULL_SAMPLES.values()]


@pytest.mark.parametrize("make", SAMPLES, ids=lambda f: f.__name__)
def test_dict_round_trip(make) -> None:
    record = make()
    assert type(record).from_avro(record.to_avro()) == record


@pytest.mark.parametrize("make", SAMPLES, ids=lambda f: f.__name__)
def test_binary_round_trip_with_the_current_schema(make) -> None:
    record = make()
    schema = catalog.parsed_schema(type(record).__name__)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record.to_avro())
    data = fastavro.schemaless_reader(
        io.BytesIO(out.getvalue()),
        schema,
        None,
        return_record_name=True,
        return_record_name_override=True,
    )
    assert type(record).from_avro(data) == record


def test_record_types_cover_every_schema() -> None:
    assert set(RECORD_TYPES) == {catalog.full_name(n) for n in catalog.RECORD_NAMES}
    for full, cls in RECORD_TYPES.items():
        assert catalog.full_name(cls.__name__) == full


def test_face_union_without_record_names_is_told_apart_by_shape() -> None:
    for face in (face_ref(), InlineImage(content_type="image/png", data=b"\x89PNG")):
        d = v1_request(face).to_avro()
        d["face"] = d["face"][1]  # as read without return_record_name
        assert GenerationRequest.from_avro(d).face == face


def test_datetimes_are_utc_and_millisecond_precise() -> None:
    local = datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    req = dataclasses.replace(v1_request(), submitted_at=local)
    assert req.submitted_at == datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert req.submitted_at.tzinfo is UTC


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        dataclasses.replace(v1_request(), deadline=datetime(2026, 1, 1))
    assert (err.value.field, err.value.code) == ("deadline", "INVALID_TIMESTAMP")


def test_enums_accept_names_in_any_case() -> None:
    params = RequestParams(output_format="png")
    assert params.output_format is ImageFormat.PNG
    assert dataclasses.replace(v1_request(), lane="batch").lane is Lane.BATCH
    assert ResultStatus("OK") is ResultStatus.OK and ResultStatus.OK == "OK"


def test_unknown_enum_value_names_the_field() -> None:
    with pytest.raises(InvalidInput) as err:
        RequestParams(output_format="gif")
    assert err.value.field == "params.output_format"
    assert err.value.code == "INVALID_CHOICE"
    assert "WEBP, PNG, JPEG" in err.value.reason


def test_float32_fields_come_back_as_written() -> None:
    params = RequestParams(true_cfg_scale=0.7, lora_scale=1.3)
    out = io.BytesIO()
    schema = catalog.parsed_schema("GenerationRequest")
    req = dataclasses.replace(v1_request(), params=params)
    fastavro.schemaless_writer(out, schema, req.to_avro())
    raw = fastavro.schemaless_reader(
        io.BytesIO(out.getvalue()), schema, None, return_record_name=True
    )
    assert raw["params"]["true_cfg_scale"] != 0.7  # float32 noise on the wire...
    assert GenerationRequest.from_avro(raw).params == params  # ...removed on the way in


def test_malformed_request_id_is_never_written() -> None:
    req = dataclasses.replace(v1_request(), request_id="order-42")
    with pytest.raises(InvalidInput) as err:
        req.to_avro()
    assert (err.value.field, err.value.code) == ("request_id", "INVALID_REQUEST_ID")


@pytest.mark.parametrize(
    "written",
    ["{ID}", "{ID_UPPER}", "{{{ID}}}", "urn:uuid:{ID}", "{ID_HEX}"],
)
def test_request_id_is_written_in_canonical_form(written: str) -> None:
    canonical = "0472ea59-5df0-4363-943f-6dbfb4df40be"
    spelled = written.format(
        ID=canonical, ID_UPPER=canonical.upper(), ID_HEX=canonical.replace("-", "")
    )
    req = dataclasses.replace(v1_request(), request_id=spelled)
    assert req.to_avro()["request_id"] == canonical


def test_flat_records_convert_to_a_new_dict_of_their_fields() -> None:
    # The flat records' to_avro is a shallow field copy (not dataclasses.asdict's deep copy):
    # the same content, and a new dict each time, so that a caller may change it.
    image = ResultImage(
        uri="s3://b/k", width=64, height=32, format="png", size_bytes=10, sha256="0" * 64
    )
    d = image.to_avro()
    assert d == {
        "uri": "s3://b/k", "width": 64, "height": 32, "format": "PNG", "size_bytes": 10,
        "sha256": "0" * 64,
    }  # fmt: skip
    d["width"] = -1
    assert image.to_avro()["width"] == 64
    timings = StageTimings(queued_ms=1, engine_ms=20, total_ms=30)
    assert timings.to_avro() == dataclasses.asdict(timings)


def test_missing_face_is_never_written() -> None:
    with pytest.raises(InvalidInput) as err:
        dataclasses.replace(v1_request(), face=None).to_avro()
    assert err.value.code == "MISSING_IMAGE"


def test_new_fills_identity_time_and_seed() -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    req = GenerationRequest.new(
        "acme", "a prompt", face_ref(), steps=8, lane="interactive", attributes={"sku": "1"}
    )
    assert str(uuid.UUID(req.request_id)) == req.request_id
    assert uuid.UUID(req.request_id).version == 4
    assert before <= req.submitted_at <= datetime.now(UTC)
    assert req.params.steps == 8 and req.lane is Lane.INTERACTIVE
    assert req.attributes == {"sku": "1"}
    assert 0 <= req.params.seed < 2**31
    other = GenerationRequest.new("acme", "a prompt", face_ref())
    assert other.request_id != req.request_id
    assert GenerationRequest.new("acme", "p", face_ref(), seed=5).params.seed == 5


def test_new_refuses_unknown_arguments() -> None:
    with pytest.raises(TypeError, match="stpes"):
        GenerationRequest.new("acme", "p", face_ref(), stpes=8)


def test_dead_letter_headers_keep_kafka_shape() -> None:
    dl = DeadLetter(
        source_topic="t",
        source_partition=0,
        source_offset=0,
        error_code="X",
        error_message="x",
        failed_at=T0,
        headers=[("a", "text"), ("b", None), ("a", b"\x00")],
    )
    assert dl.headers == (("a", b"text"), ("b", None), ("a", b"\x00"))
    assert DeadLetter.from_avro(dl.to_avro()) == dl


def test_records_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        v1_request().prompt = "changed"  # type: ignore[misc]
