"""Dataclasses of the request life-cycle records: ``RequestStatus`` (``f2p.status.v1``) and
``ControlCommand`` (``f2p.control.v1``). Same conventions as :mod:`schemas.records`.

Both topics are compacted and keyed by request_id, so the newest record per request is its
current state or pending command. Admission writes DUPLICATE status events under
:func:`duplicate_status_key` instead, so that compaction never lets a resubmission replace the
lifecycle status of the original.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from schemas.coerce import flat_fields, set_frozen, to_enum, to_utc, union_branch, uuid_str


class RequestState(StrEnum):
    """Where a request is; the final four mirror ``ResultStatus``."""

    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    DUPLICATE = "DUPLICATE"
    RUNNING = "RUNNING"
    OK = "OK"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


class ControlKind(StrEnum):
    """What a control command asks for."""

    CANCEL = "CANCEL"


def status_key(request_id: str) -> bytes:
    """Message key of a lifecycle status event: the request_id."""
    return request_id.encode()


def duplicate_status_key(request_id: str) -> bytes:
    """Message key of a DUPLICATE status event: ``<request_id>:duplicate``, a key of its own so
    that compaction keeps the lifecycle status under the plain request_id."""
    return f"{request_id}:duplicate".encode()


@dataclasses.dataclass(frozen=True, kw_only=True)
class IngressRef:
    """Position of an ingress message."""

    topic: str
    partition: int
    offset: int

    def to_avro(self) -> dict[str, Any]:
        return flat_fields(self)

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(topic=d["topic"], partition=d["partition"], offset=d["offset"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestStatus:
    """One step in the life of a request (``io.f2pstream.v1.RequestStatus``)."""

    request_id: str
    status: RequestState
    at: datetime
    source: str
    tenant_id: str | None = None
    lane: str | None = None
    reason: str | None = None
    detail: str | None = None
    duplicates: int = 0
    ingress: IngressRef | None = None
    trace_context: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        set_frozen(self, "status", to_enum(RequestState, self.status, "status"))
        set_frozen(self, "at", to_utc(self.at, "at"))
        set_frozen(self, "trace_context", dict(self.trace_context))

    @property
    def key(self) -> bytes:
        """The message key this event is written under (see the module docstring)."""
        if self.status is RequestState.DUPLICATE:
            return duplicate_status_key(self.request_id)
        return status_key(self.request_id)

    def to_avro(self) -> dict[str, Any]:
        return {
            "request_id": uuid_str(self.request_id, "request_id"),
            "tenant_id": self.tenant_id,
            "status": self.status.value,
            "lane": self.lane,
            "reason": self.reason,
            "detail": self.detail,
            "at": self.at,
            "source": self.source,
            "duplicates": self.duplicates,
            "ingress": None if self.ingress is None else self.ingress.to_avro(),
            "trace_context": dict(self.trace_context),
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        _, ingress = union_branch(d.get("ingress"))
        return cls(
            request_id=str(d["request_id"]),
            tenant_id=d.get("tenant_id"),
            status=d["status"],
            lane=d.get("lane"),
            reason=d.get("reason"),
            detail=d.get("detail"),
            at=d["at"],
            source=d["source"],
            duplicates=d.get("duplicates", 0),
            ingress=None if ingress is None else IngressRef.from_avro(ingress),
            trace_context=d.get("trace_context") or {},
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ControlCommand:
    """An instruction about one request (``io.f2pstream.v1.ControlCommand``)."""

    request_id: str
    issued_at: datetime
    command: ControlKind = ControlKind.CANCEL
    tenant_id: str | None = None
    reason: str | None = None
    issued_by: str | None = None

    def __post_init__(self) -> None:
        set_frozen(self, "command", to_enum(ControlKind, self.command, "command"))
        set_frozen(self, "issued_at", to_utc(self.issued_at, "issued_at"))

    @property
    def key(self) -> bytes:
        """The message key: the request_id."""
        return self.request_id.encode()

    def to_avro(self) -> dict[str, Any]:
        return {
            "request_id": uuid_str(self.request_id, "request_id"),
            "command": self.command.value,
            "tenant_id": self.tenant_id,
            "reason": self.reason,
            "issued_at": self.issued_at,
            "issued_by": self.issued_by,
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(
            request_id=str(d["request_id"]),
            command=d["command"],
            tenant_id=d.get("tenant_id"),
            reason=d.get("reason"),
            issued_at=d["issued_at"],
            issued_by=d.get("issued_by"),
        )
