"""Frozen dataclasses mirroring the Avro schemas in ``schemas/avro``.

Every record converts to the dict fastavro writes (``to_avro``) and back from the dict fastavro
reads (``from_avro``). Conventions:

- datetimes are timezone-aware UTC and truncated to milliseconds (the Avro precision), so a
  record survives a round trip unchanged; a naive datetime is refused;
- enum fields accept the enum or its name (``"png"`` or ``"PNG"``);
- ``request_id`` is a canonical lowercase UUID string; ``to_avro`` refuses anything else, so a
  malformed id can never be written under the ``uuid`` logical type;
- Avro ``float`` fields come back as the shortest decimal that maps to the same float32
  (``0.7`` stays ``0.7``, not ``0.699999988``).

Records are plain data: range checks live in ``schemas.validation``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from f2p_errors import InvalidInput
from schemas.analytics_records import AnalyticsWindow
from schemas.catalog import full_name
from schemas.coerce import (
    flat_fields,
    float32,
    new_request_id,
    set_frozen,
    to_enum,
    to_opt_utc,
    to_utc,
    union_branch,
    utc_now,
    uuid_str,
)
from schemas.control_records import ControlCommand, RequestStatus
from schemas.dead_letter_record import DeadLetter


class Lane(StrEnum):
    """Priority lane; each lane is its own request topic."""

    INTERACTIVE = "INTERACTIVE"
    BATCH = "BATCH"


class ResultStatus(StrEnum):
    """Outcome of a request."""

    OK = "OK"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"
    # Since GenerationResult v3: a reader on v1/v2 reads it as FAILED (the enum default).
    CANCELLED = "CANCELLED"


class Preset(StrEnum):
    """Speed/quality trade-off of the engine (``params.preset``; None: the worker's default)."""

    QUALITY = "QUALITY"
    FAST = "FAST"
    FASTEST = "FASTEST"


class ImageFormat(StrEnum):
    """Encoded image format."""

    WEBP = "WEBP"
    PNG = "PNG"
    JPEG = "JPEG"


# -- GenerationRequest ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaceImageRef:
    """Claim check: the face image in the object store under ``tenants/<tenant_id>/``."""

    bucket: str
    key: str
    sha256: str
    content_type: str
    size_bytes: int

    def to_avro(self) -> dict[str, Any]:
        return flat_fields(self)

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class InlineImage:
    """A small face image carried in the event itself."""

    content_type: str
    data: bytes

    def to_avro(self) -> dict[str, Any]:
        return {"content_type": self.content_type, "data": bytes(self.data)}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(content_type=d["content_type"], data=bytes(d["data"]))


FaceImage = FaceImageRef | InlineImage


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestParams:
    """Generation parameters (defaults as in the schema; ``seed`` 0 unless given)."""

    seed: int = 0
    steps: int = 28
    true_cfg_scale: float = 4.0
    width: int = 1024
    height: int = 1024
    num_images: int = 1
    lora_scale: float = 1.0
    output_format: ImageFormat = ImageFormat.WEBP
    output_quality: int = 90
    preset: Preset | None = None

    def __post_init__(self) -> None:
        output_format = to_enum(ImageFormat, self.output_format, "params.output_format")
        set_frozen(self, "output_format", output_format)
        if self.preset is not None:
            set_frozen(self, "preset", to_enum(Preset, self.preset, "params.preset"))

    def to_avro(self) -> dict[str, Any]:
        d = flat_fields(self)
        d["output_format"] = self.output_format.value
        d["preset"] = None if self.preset is None else self.preset.value
        return d

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        values = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        for name in ("true_cfg_scale", "lora_scale"):
            if name in values:
                values[name] = float32(values[name])
        return cls(**values)


_FACE_TYPES: dict[str, type[FaceImageRef] | type[InlineImage]] = {
    full_name("FaceImageRef"): FaceImageRef,
    full_name("InlineImage"): InlineImage,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One face-to-photo generation request (``io.f2pstream.v1.GenerationRequest``)."""

    request_id: str
    tenant_id: str
    submitted_at: datetime
    face: FaceImage | None
    prompt: str
    lane: Lane = Lane.BATCH
    deadline: datetime | None = None
    negative_prompt: str = ""
    params: RequestParams = dataclasses.field(default_factory=RequestParams)
    replay_of: str | None = None
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    trace_context: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        set_frozen(self, "submitted_at", to_utc(self.submitted_at, "submitted_at"))
        set_frozen(self, "deadline", to_opt_utc(self.deadline, "deadline"))
        set_frozen(self, "lane", to_enum(Lane, self.lane, "lane"))
        set_frozen(self, "attributes", dict(self.attributes))
        set_frozen(self, "trace_context", dict(self.trace_context))

    @classmethod
    def new(
        cls,
        tenant_id: str,
        prompt: str,
        face: FaceImage | None,
        **params: Any,
    ) -> Self:
        """A request with a fresh uuid4 ``request_id`` and ``submitted_at`` = now.

        ``params`` takes the ``RequestParams`` fields (``steps=8``, ``width=512``, ...) and the
        optional request fields (``lane``, ``deadline``, ``negative_prompt``, ``replay_of``,
        ``attributes``, ``trace_context``, ``request_id``). Without ``seed`` a random one is
        drawn here, so that every retry of this request regenerates the same image.
        """
        param_names = {f.name for f in dataclasses.fields(RequestParams)}
        request_names = {"lane", "deadline", "negative_prompt", "replay_of", "attributes"}
        request_names |= {"trace_context", "request_id", "submitted_at"}
        unknown = set(params) - param_names - request_names
        if unknown:
            raise TypeError(f"GenerationRequest.new() got unknown arguments: {sorted(unknown)}")
        request_kw = {k: v for k, v in params.items() if k in request_names}
        param_kw = {k: v for k, v in params.items() if k in param_names}
        param_kw.setdefault("seed", secrets.randbelow(2**31))
        request_kw.setdefault("request_id", new_request_id())
        request_kw.setdefault("submitted_at", utc_now())
        return cls(
            tenant_id=tenant_id,
            prompt=prompt,
            face=face,
            params=RequestParams(**param_kw),
            **request_kw,
        )

    def to_avro(self) -> dict[str, Any]:
        if self.face is None:
            raise InvalidInput("face", "is required", code="MISSING_IMAGE")
        return {
            "request_id": uuid_str(self.request_id, "request_id"),
            "tenant_id": self.tenant_id,
            "submitted_at": self.submitted_at,
            "deadline": self.deadline,
            "lane": self.lane.value,
            "face": (full_name(type(self.face).__name__), self.face.to_avro()),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "params": self.params.to_avro(),
            "replay_of": self.replay_of,
            "attributes": dict(self.attributes),
            "trace_context": dict(self.trace_context),
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        name, face = union_branch(d["face"])
        if name is None:  # read without return_record_name: tell the branches apart by shape
            name = full_name("InlineImage" if "data" in face else "FaceImageRef")
        return cls(
            request_id=str(d["request_id"]),
            tenant_id=d["tenant_id"],
            submitted_at=d["submitted_at"],
            deadline=d.get("deadline"),
            lane=d["lane"],
            face=_FACE_TYPES[name].from_avro(face),
            prompt=d["prompt"],
            negative_prompt=d.get("negative_prompt", ""),
            params=RequestParams.from_avro(d["params"]),
            replay_of=d.get("replay_of"),
            attributes=d.get("attributes") or {},
            trace_context=d.get("trace_context") or {},
        )


# -- GenerationResult ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResultImage:
    """One generated image in the object store."""

    uri: str
    width: int
    height: int
    format: ImageFormat
    size_bytes: int
    sha256: str

    def __post_init__(self) -> None:
        set_frozen(self, "format", to_enum(ImageFormat, self.format, "images.format"))

    def to_avro(self) -> dict[str, Any]:
        d = flat_fields(self)
        d["format"] = self.format.value
        return d

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResultError:
    """Why a request produced no images: machine-readable ``code`` and a human ``message``."""

    code: str
    message: str

    def to_avro(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(code=d["code"], message=d["message"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageTimings:
    """Milliseconds per pipeline stage; 0 for a stage that did not run."""

    queued_ms: int = 0
    fetch_ms: int = 0
    engine_ms: int = 0
    encode_ms: int = 0
    upload_ms: int = 0
    total_ms: int = 0
    # Transformer forward passes for this request's images (a true-CFG step counts 2).
    transformer_evaluations: int = 0
    steps_executed: int = 0

    def to_avro(self) -> dict[str, Any]:
        return flat_fields(self)

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(**{f.name: d.get(f.name, 0) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelRef:
    """The model behind a result: engine/model name, weights revision, LoRA and speed preset.

    ``lora`` is None when no LoRA was loaded (never a placeholder string), ``preset`` None when
    the engine has no presets.
    """

    name: str
    revision: str
    lora: str | None = None
    preset: str | None = None

    def to_avro(self) -> dict[str, Any]:
        return flat_fields(self)

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(
            name=d["name"], revision=d["revision"], lora=d.get("lora"), preset=d.get("preset")
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """The single outcome of one request (``io.f2pstream.v1.GenerationResult``)."""

    request_id: str
    tenant_id: str
    status: ResultStatus
    worker_id: str
    model: ModelRef
    submitted_at: datetime
    completed_at: datetime
    images: tuple[ResultImage, ...] = ()
    error: ResultError | None = None
    timings: StageTimings = dataclasses.field(default_factory=StageTimings)
    attempt: int = 1
    # The request's attributes, carried through unchanged.
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        set_frozen(self, "status", to_enum(ResultStatus, self.status, "status"))
        set_frozen(self, "attributes", dict(self.attributes))
        set_frozen(self, "images", tuple(self.images))
        set_frozen(self, "submitted_at", to_utc(self.submitted_at, "submitted_at"))
        set_frozen(self, "completed_at", to_utc(self.completed_at, "completed_at"))

    def to_avro(self) -> dict[str, Any]:
        return {
            "request_id": uuid_str(self.request_id, "request_id"),
            "tenant_id": self.tenant_id,
            "status": self.status.value,
            "images": [image.to_avro() for image in self.images],
            "error": None if self.error is None else self.error.to_avro(),
            "timings": self.timings.to_avro(),
            "worker_id": self.worker_id,
            "model": self.model.to_avro(),
            "attempt": self.attempt,
            "submitted_at": self.submitted_at,
            "completed_at": self.completed_at,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        _, error = union_branch(d.get("error"))
        return cls(
            request_id=str(d["request_id"]),
            tenant_id=d["tenant_id"],
            status=d["status"],
            images=tuple(ResultImage.from_avro(i) for i in d.get("images") or ()),
            error=None if error is None else ResultError.from_avro(error),
            timings=StageTimings.from_avro(d["timings"]),
            worker_id=d["worker_id"],
            model=ModelRef.from_avro(d["model"]),
            attempt=d.get("attempt", 1),
            submitted_at=d["submitted_at"],
            completed_at=d["completed_at"],
            attributes=d.get("attributes") or {},
        )


Record = (
    GenerationRequest
    | GenerationResult
    | DeadLetter
    | RequestStatus
    | ControlCommand
    | AnalyticsWindow
)

#: Full record name → dataclass, for every record in ``schemas.catalog.RECORD_NAMES``.
RECORD_TYPES: dict[str, type[Record]] = {
    full_name(cls.__name__): cls
    for cls in (
        GenerationRequest,
        GenerationResult,
        DeadLetter,
        RequestStatus,
        ControlCommand,
        AnalyticsWindow,
    )
}
