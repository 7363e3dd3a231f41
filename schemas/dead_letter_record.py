"""Dataclass of ``DeadLetter`` (``f2p.dlq.v1``); same conventions as :mod:`schemas.records`,
which re-exports it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Self

from schemas.coerce import Headers, set_frozen, to_headers, to_utc


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """A message that could not be processed (``io.f2pstream.v1.DeadLetter``).

    ``headers`` keeps Kafka's list-of-pairs shape (order and duplicates preserved), so
    ``message.headers()`` can be passed in directly. ``key`` / ``value`` may be prefixes of the
    original (``truncated``); ``*_size`` and ``*_sha256`` then describe the whole original
    (-1 / None: unknown, as in dead letters written before v3).
    """

    source_topic: str
    source_partition: int
    source_offset: int
    error_code: str
    error_message: str
    failed_at: datetime
    key: bytes | None = None
    value: bytes | None = None
    headers: Headers = ()
    attempts: int = 1
    request_id: str | None = None
    key_size: int = -1
    value_size: int = -1
    key_sha256: str | None = None
    value_sha256: str | None = None
    truncated: bool = False
    original_uri: str | None = None

    def __post_init__(self) -> None:
        set_frozen(self, "headers", to_headers(self.headers))
        set_frozen(self, "failed_at", to_utc(self.failed_at, "failed_at"))

    def to_avro(self) -> dict[str, Any]:
        return {
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "key": self.key,
            "value": self.value,
            "headers": [{"key": k, "value": v} for k, v in self.headers],
            "error_code": self.error_code,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
            "request_id": self.request_id,
            **{name: getattr(self, name) for name in _DEAD_LETTER_V3},
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(
            source_topic=d["source_topic"],
            source_partition=d["source_partition"],
            source_offset=d["source_offset"],
            key=d.get("key"),
            value=d.get("value"),
            headers=tuple((h["key"], h.get("value")) for h in d.get("headers") or ()),
            error_code=d["error_code"],
            error_message=d["error_message"],
            attempts=d.get("attempts", 1),
            failed_at=d["failed_at"],
            request_id=d.get("request_id"),
            **{name: d[name] for name in _DEAD_LETTER_V3 if name in d},
        )


# Fields added in DeadLetter v3 (fastavro fills them from the defaults when reading older data).
_DEAD_LETTER_V3 = (
    "key_size",
    "value_size",
    "key_sha256",
    "value_sha256",
    "truncated",
    "original_uri",
)
