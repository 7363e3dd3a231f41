"""validate_request: every rule refuses with the field, the bound and a machine code."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from datetime import timedelta

import pytest
from PIL import Image
from schema_samples import SHA, face_ref, full_request, v1_request

from f2p_errors import InvalidInput
from schemas.images import make_sample_face
from schemas.records import FaceImageRef, GenerationRequest, InlineImage, RequestParams
from schemas.validation import RequestLimits, check_face_key_in_tenant_prefix, validate_request

LIMITS = RequestLimits()


def _params(**kw) -> Callable[[GenerationRequest], GenerationRequest]:
    return lambda r: dataclasses.replace(r, params=dataclasses.replace(r.params, **kw))


def _req(**kw) -> Callable[[GenerationRequest], GenerationRequest]:
    return lambda r: dataclasses.replace(r, **kw)


def _ref(**kw) -> Callable[[GenerationRequest], GenerationRequest]:
    return lambda r: dataclasses.replace(r, face=dataclasses.replace(face_ref(), **kw))


def _inline(data: bytes, content_type: str = "image/png"):
    return _req(face=InlineImage(content_type=content_type, data=data))


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="GIF")
    return out.getvalue()


# (case id, mutation, field, code, text expected in the reason)
CASES = [
    ("uuid-garbage", _req(request_id="order-42"), "request_id", "INVALID_REQUEST_ID", "UUID"),
    (
        "uuid-upper",
        _req(request_id="6F1D3C2A-8B4E-4F5A-9C7D-0E1F2A3B4C5D"),
        "request_id",
        "INVALID_REQUEST_ID",
        "lowercase",
    ),
    (
        "uuid-braces",
        _req(request_id="{6f1d3c2a-8b4e-4f5a-9c7d-0e1f2a3b4c5d}"),
        "request_id",
        "INVALID_REQUEST_ID",
        "UUID",
    ),
    ("replay-of", _req(replay_of="nope"), "replay_of", "INVALID_REQUEST_ID", "UUID"),
    ("tenant-upper", _req(tenant_id="ACME"), "tenant_id", "INVALID_TENANT", "[a-z0-9]"),
    ("tenant-short", _req(tenant_id="a"), "tenant_id", "INVALID_TENANT", "got 'a'"),
    ("tenant-slash", _req(tenant_id="acme/../x"), "tenant_id", "INVALID_TENANT", ""),
    ("tenant-newline", _req(tenant_id="acme\n"), "tenant_id", "INVALID_TENANT", ""),
    ("tenant-long", _req(tenant_id="a" * 64), "tenant_id", "INVALID_TENANT", ""),
    (
        "deadline-past",
        lambda r: dataclasses.replace(r, deadline=r.submitted_at - timedelta(1)),
        "deadline",
        "INVALID_DEADLINE",
        "after submitted_at",
    ),
    ("prompt-empty", _req(prompt="  \n"), "prompt", "EMPTY_PROMPT", "empty"),
    (
        "prompt-long",
        _req(prompt="x" * 2001),
        "prompt",
        "PROMPT_TOO_LONG",
        "at most 2000 characters, got 2001",
    ),
    ("prompt-nul", _req(prompt="a\x00b"), "prompt", "INVALID_TEXT", "control"),
    (
        "negative-long",
        _req(negative_prompt="x" * 2001),
        "negative_prompt",
        "PROMPT_TOO_LONG",
        "at most 2000",
    ),
    (
        "steps-high",
        _params(steps=500),
        "params.steps",
        "PARAM_OUT_OF_RANGE",
        "must be between 1 and 100, got 500",
    ),
    ("steps-zero", _params(steps=0), "params.steps", "PARAM_OUT_OF_RANGE", "between 1 and 100"),
    ("steps-float", _params(steps=8.5), "params.steps", "PARAM_OUT_OF_RANGE", "integer"),
    ("steps-bool", _params(steps=True), "params.steps", "PARAM_OUT_OF_RANGE", "integer"),
    (
        "width-high",
        _params(width=4096),
        "params.width",
        "PARAM_OUT_OF_RANGE",
        "between 64 and 2048, got 4096",
    ),
    ("height-low", _params(height=32), "params.height", "PARAM_OUT_OF_RANGE", "between 64"),
    (
        "width-multiple",
        _params(width=1000),
        "params.width",
        "PARAM_OUT_OF_RANGE",
        "multiple of 16, got 1000",
    ),
    (
        "num-images",
        _params(num_images=5),
        "params.num_images",
        "PARAM_OUT_OF_RANGE",
        "between 1 and 4, got 5",
    ),
    (
        "cfg-high",
        _params(true_cfg_scale=25.0),
        "params.true_cfg_scale",
        "PARAM_OUT_OF_RANGE",
        "between 1.0 and 20.0",
    ),
    (
        "cfg-nan",
        _params(true_cfg_scale=float("nan")),
        "params.true_cfg_scale",
        "PARAM_OUT_OF_RANGE",
        "nan",
    ),
    (
        "lora-high",
        _params(lora_scale=2.5),
        "params.lora_scale",
        "PARAM_OUT_OF_RANGE",
        "between 0.0 and 2.0, got 2.5",
    ),
    ("lora-inf", _params(lora_scale=float("inf")), "params.lora_scale", "PARAM_OUT_OF_RANGE", ""),
    ("seed-negative", _params(seed=-1), "params.seed", "PARAM_OUT_OF_RANGE", "between 0"),
    (
        "quality",
        _params(output_quality=101),
        "params.output_quality",
        "PARAM_OUT_OF_RANGE",
        "between 1 and 100, got 101",
    ),
    ("face-missing", _req(face=None), "face", "MISSING_IMAGE", "required"),
    ("inline-empty", _inline(b""), "face.data", "MISSING_IMAGE", "non-empty"),
    (
        "inline-large",
        _inline(b"\x89PNG\r\n\x1a\n" + bytes(256 * 1024)),
        "face.data",
        "IMAGE_TOO_LARGE",
        "at most 262144 bytes",
    ),
    ("inline-not-image", _inline(b"hello, world"), "face.data", "NOT_AN_IMAGE", "not a PNG"),
    (
        "inline-gif",
        _inline(_gif(), "image/png"),
        "face.data",
        "UNSUPPORTED_IMAGE_FORMAT",
        "image/gif",
    ),
    (
        "inline-mismatch",
        _inline(make_sample_face(32), "image/jpeg"),
        "face.content_type",
        "CONTENT_TYPE_MISMATCH",
        "image/png",
    ),
    (
        "inline-type",
        _inline(make_sample_face(32), "image/gif"),
        "face.content_type",
        "UNSUPPORTED_IMAGE_FORMAT",
        "image/png, image/jpeg, image/webp",
    ),
    ("ref-bucket", _ref(bucket="Bad_Bucket"), "face.bucket", "INVALID_IMAGE_REF", "bucket"),
    ("ref-sha", _ref(sha256="abc"), "face.sha256", "INVALID_IMAGE_REF", "64 lowercase hex"),
    ("ref-sha-upper", _ref(sha256=SHA.upper()), "face.sha256", "INVALID_IMAGE_REF", ""),
    (
        "ref-type",
        _ref(content_type="image/gif"),
        "face.content_type",
        "UNSUPPORTED_IMAGE_FORMAT",
        "image/gif",
    ),
    ("ref-size-zero", _ref(size_bytes=0), "face.size_bytes", "MISSING_IMAGE", "positive"),
    (
        "ref-size-large",
        _ref(size_bytes=10 * 1024 * 1024 + 1),
        "face.size_bytes",
        "IMAGE_TOO_LARGE",
        "at most 10485760 bytes",
    ),
    (
        "ref-other-tenant",
        _ref(key="tenants/other/x.png"),
        "face.key",
        "KEY_OUTSIDE_TENANT_PREFIX",
        "tenants/acme/",
    ),
    (
        "ref-dotdot",
        _ref(key="tenants/acme/../other/x.png"),
        "face.key",
        "KEY_OUTSIDE_TENANT_PREFIX",
        "..",
    ),
    ("ref-prefix-only", _ref(key="tenants/acme/"), "face.key", "KEY_OUTSIDE_TENANT_PREFIX", ""),
    (
        "ref-key-long",
        _ref(key="tenants/acme/" + "k" * 1100),
        "face.key",
        "INVALID_IMAGE_REF",
        "1024",
    ),
    (
        "attributes-many",
        _req(attributes={f"k{i}": "v" for i in range(33)}),
        "attributes",
        "TOO_MANY_ATTRIBUTES",
        "at most 32 entries, got 33",
    ),
    (
        "attribute-value",
        _req(attributes={"sku": "x" * 1025}),
        "attributes.sku",
        "ATTRIBUTE_TOO_LONG",
        "1024",
    ),
    ("attribute-key", _req(attributes={"": "x"}), "attributes", "ATTRIBUTE_TOO_LONG", "keys"),
    (
        "trace-many",
        _req(trace_context={f"k{i}": "v" for i in range(9)}),
        "trace_context",
        "TOO_MANY_ATTRIBUTES",
        "at most 8",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "code", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule_refuses_with_field_code_and_bound(mutate, field, code, text) -> None:
    req = mutate(v1_request())
    with pytest.raises(InvalidInput) as err:
        validate_request(req)
    assert (err.value.field, err.value.code) == (field, code), err.value
    assert text in err.value.reason
    assert str(err.value).startswith(f"{field}: ")


def test_valid_requests_pass() -> None:
    validate_request(v1_request())
    validate_request(full_request())
    validate_request(GenerationRequest.new("acme-eu-1", "p", face_ref("acme-eu-1")))


def test_bounds_are_inclusive() -> None:
    req = _params(
        steps=100,
        width=2048,
        height=64,
        num_images=4,
        true_cfg_scale=20.0,
        lora_scale=0.0,
        output_quality=1,
        seed=2**63 - 1,
    )(v1_request())
    validate_request(req)


def test_custom_limits_apply() -> None:
    limits = RequestLimits(max_steps=8, max_prompt_chars=10)
    validate_request(_params(steps=8)(_req(prompt="short")(v1_request())), limits)
    with pytest.raises(InvalidInput, match="between 1 and 8, got 9"):
        validate_request(_params(steps=9)(_req(prompt="short")(v1_request())), limits)


def test_the_first_broken_rule_is_reported() -> None:
    req = _params(steps=500)(_req(tenant_id="BAD")(v1_request()))
    with pytest.raises(InvalidInput) as err:
        validate_request(req)
    assert err.value.field == "tenant_id"


@pytest.mark.parametrize(
    "key",
    ["tenants/acme/faces/a.png", "tenants/acme/x"],
)
def test_key_in_prefix_passes(key: str) -> None:
    check_face_key_in_tenant_prefix(dataclasses.replace(face_ref(), key=key), "acme")


@pytest.mark.parametrize(
    "key",
    [
        "tenants/acme-evil/faces/a.png",  # prefix of another tenant's name
        "tenants/acmex/a.png",
        "/tenants/acme/a.png",
        "tenants/acme/../b/a.png",
        "tenants/acme/a/..",
        "tenants/acme//a.png",
        "tenants/acme/a\\..\\b.png",
        "tenants/acme/a\x00.png",
        "inputs/acme/a.png",
    ],
)
def test_key_outside_prefix_is_refused(key: str) -> None:
    ref: FaceImageRef = dataclasses.replace(face_ref(), key=key)
    with pytest.raises(InvalidInput) as err:
        check_face_key_in_tenant_prefix(ref, "acme")
    assert (err.value.field, err.value.code) == ("face.key", "KEY_OUTSIDE_TENANT_PREFIX")


def test_limits_are_frozen_with_the_agreed_defaults() -> None:
    limits = RequestLimits()
    assert (limits.max_prompt_chars, limits.min_steps, limits.max_steps) == (2000, 1, 100)
    assert (limits.min_side, limits.max_side, limits.side_multiple) == (64, 2048, 16)
    assert (limits.max_num_images, limits.max_cfg) == (4, 20.0)
    assert (limits.min_lora_scale, limits.max_lora_scale) == (0.0, 2.0)
    assert limits.max_inline_image_bytes == 256 * 1024
    assert limits.max_face_image_bytes == 10 * 1024 * 1024
    assert limits.max_attributes == 32
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_steps = 5  # type: ignore[misc]


def test_params_default_instance_is_valid() -> None:
    validate_request(dataclasses.replace(v1_request(), params=RequestParams(seed=1)))


@pytest.mark.parametrize("preset", [None, "quality", "FAST", "fastest"])
def test_every_preset_and_none_is_accepted(preset) -> None:
    request = _params(preset=preset)(v1_request())
    validate_request(request, LIMITS)
    assert request.params.preset in (None, "QUALITY", "FAST", "FASTEST")


def test_an_unknown_preset_names_the_field() -> None:
    with pytest.raises(InvalidInput) as err:
        RequestParams(preset="turbo")
    assert (err.value.field, err.value.code) == ("params.preset", "INVALID_CHOICE")
    request = v1_request()
    object.__setattr__(request.params, "preset", "turbo")  # bypassing the coercion
    with pytest.raises(InvalidInput) as err:
        validate_request(request, LIMITS)
    assert (err.value.field, err.value.code) == ("params.preset", "INVALID_CHOICE")


# Lone surrogates: what undecodable argv bytes or a "\ud800" JSON escape become in Python.
@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_req(prompt="studio \udcff photo"), "prompt"),
        (_req(negative_prompt="\ud800"), "negative_prompt"),
        (_req(attributes={"sku": "a\udfffb"}), "attributes.sku"),
        (_req(attributes={"s\udcffku": "v"}), "attributes key"),
        (_req(trace_context={"traceparent": "\ud83d"}), "trace_context.traceparent"),
    ],
    ids=["prompt", "negative-prompt", "attribute-value", "attribute-key", "trace-context"],
)
def test_text_that_is_not_utf8_encodable_is_refused(mutate, field) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_request(mutate(v1_request()), LIMITS)
    assert info.value.code == "INVALID_TEXT"
    assert info.value.field.startswith(field)
    assert "lone surrogate" in info.value.reason


def test_refusals_echo_at_most_a_bounded_part_of_the_input() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_request(dataclasses.replace(v1_request(), tenant_id="t" * 100_000), LIMITS)
    assert info.value.code == "INVALID_TENANT"
    assert len(str(info.value)) < 300 and "characters)" in str(info.value)
