"""Conversions between Python values and what the Avro schemas carry, shared by the records.

Each helper takes the dotted ``field`` it converts so that refusals are ``InvalidInput`` errors
naming the field.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from f2p_errors import InvalidInput


def flat_fields(record: Any) -> dict[str, Any]:
    """The fields of a dataclass whose fields are all scalars, as a new dict.

    ``dataclasses.asdict`` deep-copies every value recursively; for a flat record that is pure
    cost (a third of a result's encode on the worker's hot path), and this is a shallow copy.
    """
    return {name: getattr(record, name) for name in _field_names(type(record))}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:  # a benign race: two threads may both compute the same tuple
        names = _FIELD_NAMES[cls] = tuple(field.name for field in dataclasses.fields(cls))
    return names


def set_frozen(obj: object, name: str, value: object) -> None:
    """Assign an attribute of a frozen dataclass (for ``__post_init__`` normalisation)."""
    object.__setattr__(obj, name, value)


_E = TypeVar("_E", bound=StrEnum)


def to_enum(cls: type[_E], value: object, field: str) -> _E:
    """The enum member for ``value`` (member or case-insensitive name); INVALID_CHOICE else."""
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).upper())
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise InvalidInput(
            field, f"must be one of {choices}, got {value!r}", code="INVALID_CHOICE"
        ) from None


def to_utc(value: datetime, field: str) -> datetime:
    """An aware datetime in UTC truncated to milliseconds; INVALID_TIMESTAMP if naive."""
    if not isinstance(value, datetime):
        raise InvalidInput(field, f"must be a datetime, got {value!r}", code="INVALID_TIMESTAMP")
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value  # already what this returns (every decoded or re-built record's times)
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(field, "must be timezone-aware (UTC)", code="INVALID_TIMESTAMP")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def to_opt_utc(value: datetime | None, field: str) -> datetime | None:
    """``to_utc`` that lets None through."""
    return None if value is None else to_utc(value, field)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def uuid_str(value: str, field: str) -> str:
    """The UUID string to write under the ``uuid`` logical type; refuses non-UUIDs."""
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value  # the common case, a tenth of the cost of parsing and printing it
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidInput(
            field, f"must be a UUID, got {value!r}", code="INVALID_REQUEST_ID"
        ) from None


def float32(value: float) -> float:
    """Shortest decimal float that has the same float32 representation as ``value``."""
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def union_branch(value: Any) -> tuple[str | None, Any]:
    """Split fastavro's ``(record name, value)`` union notation; plain values pass through."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return value[0], value[1]
    return None, value


def new_request_id() -> str:
    """A fresh canonical request id (uuid4)."""
    return str(uuid.uuid4())


def utc_now() -> datetime:
    """Now, UTC, millisecond precision."""
    return to_utc(datetime.now(UTC), "now")


Headers = tuple[tuple[str, bytes | None], ...]


def to_headers(headers: Iterable[tuple[str, bytes | str | None]] | None) -> Headers:
    """Kafka headers as an immutable tuple of ``(key, bytes | None)``; str values → UTF-8."""
    out = []
    for key, value in headers or ():
        out.append((key, value.encode() if isinstance(value, str) else value))
    return tuple(out)
