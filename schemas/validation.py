"""Validation of a ``GenerationRequest`` before it leaves the publisher (and again at admission).

``validate_request`` raises ``f2p_errors.InvalidInput`` for the first rule a request breaks; the
error names the field as a dotted path (``params.steps``) and its reason states the bound
(``must be between 1 and 100, got 500``). It checks the request as data: it does not fetch or
decode the face image (``schemas.images.decode_face_image`` does that), but it does sniff inline
image bytes.

Error codes (``InvalidInput.code``):

``INVALID_REQUEST_ID``         request_id / replay_of is not a canonical lowercase UUID
``INVALID_TENANT``             tenant_id does not match ``RequestLimits.tenant_pattern``
``INVALID_TIMESTAMP``          submitted_at / deadline is not a timezone-aware datetime
``INVALID_DEADLINE``           deadline is not after submitted_at
``INVALID_CHOICE``             lane / params.output_format / params.preset is not one of the
                               enum's symbols (preset may also be null)
``EMPTY_PROMPT``               prompt is empty or only whitespace
``PROMPT_TOO_LONG``            prompt / negative_prompt is longer than the limit
``INVALID_TEXT``               prompt / negative_prompt contains NUL or other control characters,
                               or any text field (attributes too) cannot be encoded as UTF-8
``PARAM_OUT_OF_RANGE``         a generation parameter is outside its bounds (or not finite)
``MISSING_IMAGE``              no face image, or an empty one
``IMAGE_TOO_LARGE``            inline bytes or the referenced object exceed their byte limit
``UNSUPPORTED_IMAGE_FORMAT``   content type other than image/png, image/jpeg, image/webp
``NOT_AN_IMAGE``               inline bytes are not a PNG/JPEG/WebP image
``CONTENT_TYPE_MISMATCH``      inline bytes are a different format than their content_type says
``INVALID_IMAGE_REF``          bucket / key / sha256 / size of a FaceImageRef is malformed
``KEY_OUTSIDE_TENANT_PREFIX``  the face key is not under ``tenants/<tenant_id>/`` or contains ``..``
``TOO_MANY_ATTRIBUTES``        more attributes (or trace-context entries) than allowed
``ATTRIBUTE_TOO_LONG``         an attribute / trace-context key or value is empty or too long
"""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from collections.abc import Mapping

from f2p_errors import InvalidInput
from schemas.images import ALLOWED_CONTENT_TYPES, OCTET_STREAM, sniff_content_type
from schemas.records import (
    FaceImageRef,
    GenerationRequest,
    ImageFormat,
    InlineImage,
    Lane,
    Preset,
    RequestParams,
)

KIB = 1024
MIB = 1024 * KIB

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Bounds enforced by ``validate_request``; one frozen instance per component."""

    max_prompt_chars: int = 2000
    max_negative_prompt_chars: int = 2000
    min_steps: int = 1
    max_steps: int = 100
    min_side: int = 64
    max_side: int = 2048
    side_multiple: int = 16
    max_num_images: int = 4
    min_cfg: float = 1.0
    max_cfg: float = 20.0
    min_lora_scale: float = 0.0
    max_lora_scale: float = 2.0
    min_output_quality: int = 1
    max_output_quality: int = 100
    max_seed: int = 2**63 - 1
    max_inline_image_bytes: int = 256 * KIB
    max_face_image_bytes: int = 10 * MIB
    # A face crop with a side under 64 px carries too little of a face for the model to keep
    # (it is scaled to ~1024² first); FACE_TOO_SMALL.
    min_face_side: int = 64
    max_attributes: int = 32
    max_attribute_key_chars: int = 128
    max_attribute_value_chars: int = 1024
    max_trace_context_entries: int = 8
    max_trace_context_value_chars: int = 512
    max_key_chars: int = 1024
    tenant_pattern: str = r"^[a-z0-9][a-z0-9-]{1,62}$"


def _check_encodable(field: str, value: str) -> None:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates: from undecodable bytes on a
    command line, or a ``\\ud800`` escape in JSON): Avro strings are UTF-8, and encoding would
    otherwise fail later, far from the field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        reason = (
            f"must be valid Unicode text: character {exc.start} is a lone surrogate "
            f"({value[exc.start]!r}); is the input UTF-8?"
        )
        raise _fail(field, reason, "INVALID_TEXT") from None


def _fail(field: str, reason: str, code: str) -> InvalidInput:
    return InvalidInput(field, reason, code=code)


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: refusals quote untrusted input, and a 1 MiB
    tenant_id must not become a 1 MiB error message (and log line)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


#: Public for other modules that quote input in refusals (connectors.publish_batch).
shown = _short


def _in_range(field: str, value: object, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise _fail(
            field, f"must be between {low} and {high}, got {_short(value)}", "PARAM_OUT_OF_RANGE"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_uuid(field: str, value: object) -> None:
    reason = f"must be a canonical lowercase UUID like {uuid.UUID(int=0)}, got {_short(value)}"
    if not isinstance(value, str) or len(value) != 36:
        raise _fail(field, reason, "INVALID_REQUEST_ID")
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise _fail(field, reason, "INVALID_REQUEST_ID") from None
    if canonical != value:
        raise _fail(field, reason, "INVALID_REQUEST_ID")


def _check_text(field: str, value: object, max_chars: int) -> None:
    if not isinstance(value, str):
        raise _fail(field, f"must be a string, got {type(value).__name__}", "INVALID_TEXT")
    if len(value) > max_chars:
        reason = f"must be at most {max_chars} characters, got {len(value)}"
        raise _fail(field, reason, "PROMPT_TOO_LONG")
    if _CONTROL.search(value):
        raise _fail(field, "must not contain NUL or other control characters", "INVALID_TEXT")
    _check_encodable(field, value)


def _check_params(params: RequestParams, limits: RequestLimits) -> None:
    if not isinstance(params, RequestParams):
        raise _fail("params", "must be a RequestParams", "PARAM_OUT_OF_RANGE")
    for name in ("seed", "steps", "width", "height", "num_images", "output_quality"):
        value = getattr(params, name)
        if not _is_int(value):
            raise _fail(
                f"params.{name}", f"must be an integer, got {_short(value)}", "PARAM_OUT_OF_RANGE"
            )
    _in_range("params.seed", params.seed, 0, limits.max_seed)
    _in_range("params.steps", params.steps, limits.min_steps, limits.max_steps)
    for name in ("width", "height"):
        value = getattr(params, name)
        _in_range(f"params.{name}", value, limits.min_side, limits.max_side)
        if value % limits.side_multiple:
            reason = f"must be a multiple of {limits.side_multiple}, got {value}"
            raise _fail(f"params.{name}", reason, "PARAM_OUT_OF_RANGE")
    _in_range("params.num_images", params.num_images, 1, limits.max_num_images)
    _in_range("params.true_cfg_scale", params.true_cfg_scale, limits.min_cfg, limits.max_cfg)
    lora = (limits.min_lora_scale, limits.max_lora_scale)
    _in_range("params.lora_scale", params.lora_scale, *lora)
    quality = (limits.min_output_quality, limits.max_output_quality)
    _in_range("params.output_quality", params.output_quality, *quality)
    if not isinstance(params.output_format, ImageFormat):
        choices = ", ".join(f.value for f in ImageFormat)
        reason = f"must be one of {choices}, got {_short(params.output_format)}"
        raise _fail("params.output_format", reason, "INVALID_CHOICE")
    if params.preset is not None and not isinstance(params.preset, Preset):
        choices = ", ".join(p.value for p in Preset)
        reason = f"must be null or one of {choices}, got {params.preset!r}"
        raise _fail("params.preset", reason, "INVALID_CHOICE")


def check_face_key_in_tenant_prefix(ref: FaceImageRef, tenant_id: str) -> None:
    """Refuse a face key outside ``tenants/<tenant_id>/`` (code ``KEY_OUTSIDE_TENANT_PREFIX``).

    Also refuses ``..``, backslashes, empty path segments and control characters anywhere in the
    key: S3 does not interpret them, but tools that mirror keys to local paths do.
    """
    prefix = f"tenants/{tenant_id}/"
    key = ref.key
    if not isinstance(key, str) or not key.startswith(prefix) or len(key) == len(prefix):
        reason = f"must start with {_short(prefix)} followed by a name, got {_short(key)}"
        raise _fail("face.key", reason, "KEY_OUTSIDE_TENANT_PREFIX")
    if ".." in key or "\\" in key or "//" in key or _CONTROL.search(key):
        reason = f"must not contain '..', '\\\\', '//' or control characters, got {_short(key)}"
        raise _fail("face.key", reason, "KEY_OUTSIDE_TENANT_PREFIX")


def _check_content_type(field: str, content_type: object) -> None:
    if content_type not in ALLOWED_CONTENT_TYPES:
        reason = f"must be one of {', '.join(ALLOWED_CONTENT_TYPES)}, got {_short(content_type)}"
        raise _fail(field, reason, "UNSUPPORTED_IMAGE_FORMAT")


def _check_face_ref(ref: FaceImageRef, tenant_id: str, limits: RequestLimits) -> None:
    if not isinstance(ref.bucket, str) or not _BUCKET.fullmatch(ref.bucket):
        reason = f"must be a valid bucket name, got {_short(ref.bucket)}"
        raise _fail("face.bucket", reason, "INVALID_IMAGE_REF")
    if not isinstance(ref.key, str) or len(ref.key) > limits.max_key_chars:
        reason = f"must be a string of at most {limits.max_key_chars} characters"
        raise _fail("face.key", reason, "INVALID_IMAGE_REF")
    _check_encodable("face.key", ref.key)
    check_face_key_in_tenant_prefix(ref, tenant_id)
    if not isinstance(ref.sha256, str) or not _SHA256.fullmatch(ref.sha256):
        reason = f"must be 64 lowercase hex characters, got {_short(ref.sha256)}"
        raise _fail("face.sha256", reason, "INVALID_IMAGE_REF")
    _check_content_type("face.content_type", ref.content_type)
    if not _is_int(ref.size_bytes) or ref.size_bytes <= 0:
        reason = f"must be a positive integer, got {_short(ref.size_bytes)}"
        raise _fail("face.size_bytes", reason, "MISSING_IMAGE")
    if ref.size_bytes > limits.max_face_image_bytes:
        reason = f"must be at most {limits.max_face_image_bytes} bytes, got {ref.size_bytes}"
        raise _fail("face.size_bytes", reason, "IMAGE_TOO_LARGE")


def _check_inline(image: InlineImage, limits: RequestLimits) -> None:
    _check_content_type("face.content_type", image.content_type)
    if not isinstance(image.data, bytes | bytearray | memoryview) or not image.data:
        raise _fail("face.data", "must be non-empty image bytes", "MISSING_IMAGE")
    if len(image.data) > limits.max_inline_image_bytes:
        reason = (
            f"must be at most {limits.max_inline_image_bytes} bytes inline, got "
            f"{len(image.data)}; upload larger images and send a FaceImageRef"
        )
        raise _fail("face.data", reason, "IMAGE_TOO_LARGE")
    sniffed = sniff_content_type(bytes(image.data[:1024]))
    if sniffed == OCTET_STREAM:
        raise _fail("face.data", "is not a PNG, JPEG or WebP image", "NOT_AN_IMAGE")
    if sniffed not in ALLOWED_CONTENT_TYPES:
        reason = f"is {sniffed}; use PNG, JPEG or WebP"
        raise _fail("face.data", reason, "UNSUPPORTED_IMAGE_FORMAT")
    if sniffed != image.content_type:
        reason = f"bytes are {sniffed} but content_type says {image.content_type}"
        raise _fail("face.content_type", reason, "CONTENT_TYPE_MISMATCH")


def _check_map(
    field: str, values: Mapping[str, str], max_entries: int, max_key: int, max_value: int
) -> None:
    if not isinstance(values, Mapping):
        raise _fail(field, "must be a mapping of strings", "ATTRIBUTE_TOO_LONG")
    if len(values) > max_entries:
        reason = f"must have at most {max_entries} entries, got {len(values)}"
        raise _fail(field, reason, "TOO_MANY_ATTRIBUTES")
    for key, value in values.items():
        if not isinstance(key, str) or not 1 <= len(key) <= max_key:
            reason = f"keys must be 1 to {max_key} characters, got {_short(key)}"
            raise _fail(field, reason, "ATTRIBUTE_TOO_LONG")
        _check_encodable(f"{field} key {_short(key)}", key)
        if not isinstance(value, str) or len(value) > max_value:
            reason = f"must be a string of at most {max_value} characters"
            raise _fail(f"{field}.{key}", reason, "ATTRIBUTE_TOO_LONG")
        _check_encodable(f"{field}.{key}", value)


def validate_identity(req: GenerationRequest, limits: RequestLimits = RequestLimits()) -> None:
    """Raise ``InvalidInput`` unless ``request_id`` and ``tenant_id`` are valid: what a result
    can be keyed by and a quota charged to."""
    _check_uuid("request_id", req.request_id)
    if not isinstance(req.tenant_id, str) or not re.fullmatch(limits.tenant_pattern, req.tenant_id):
        reason = f"must match {limits.tenant_pattern}, got {_short(req.tenant_id)}"
        raise _fail("tenant_id", reason, "INVALID_TENANT")


def validate_request(req: GenerationRequest, limits: RequestLimits = RequestLimits()) -> None:
    """Raise ``InvalidInput`` naming the field and the bound if ``req`` breaks any rule."""
    # Step 1. Identity.
    validate_identity(req, limits)
    if req.replay_of is not None:
        _check_uuid("replay_of", req.replay_of)
    if not isinstance(req.lane, Lane):
        reason = f"must be one of {', '.join(lane.value for lane in Lane)}, got {_short(req.lane)}"
        raise _fail("lane", reason, "INVALID_CHOICE")

    # Step 2. Time. Records coerce datetimes to aware UTC, so only the ordering is left.
    if req.deadline is not None and req.deadline <= req.submitted_at:
        reason = f"must be after submitted_at {req.submitted_at.isoformat()}"
        raise _fail("deadline", f"{reason}, got {req.deadline.isoformat()}", "INVALID_DEADLINE")

    # Step 3. Text.
    _check_text("prompt", req.prompt, limits.max_prompt_chars)
    if not req.prompt.strip():
        raise _fail("prompt", "must not be empty", "EMPTY_PROMPT")
    _check_text("negative_prompt", req.negative_prompt, limits.max_negative_prompt_chars)

    # Step 4. Parameters.
    _check_params(req.params, limits)

    # Step 5. Face image.
    if req.face is None:
        raise _fail("face", "is required: a FaceImageRef or an InlineImage", "MISSING_IMAGE")
    if isinstance(req.face, FaceImageRef):
        _check_face_ref(req.face, req.tenant_id, limits)
    elif isinstance(req.face, InlineImage):
        _check_inline(req.face, limits)
    else:
        reason = f"must be a FaceImageRef or an InlineImage, got {type(req.face).__name__}"
        raise _fail("face", reason, "MISSING_IMAGE")

    # Step 6. Free-form maps.
    _check_map(
        "attributes",
        req.attributes,
        limits.max_attributes,
        limits.max_attribute_key_chars,
        limits.max_attribute_value_chars,
    )
    _check_map(
        "trace_context",
        req.trace_context,
        limits.max_trace_context_entries,
        limits.max_attribute_key_chars,
        limits.max_trace_context_value_chars,
    )
