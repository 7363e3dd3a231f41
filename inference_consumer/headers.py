"""The worker's own Kafka headers, parsed as the untrusted input they are.

Only the retry topic carries them, and only workers write it; but a topic is not a trust
boundary by itself, so every value is parsed with bounds: ASCII digits only (``"²".isdigit()``
is True and ``int("²")`` raises), a bounded length, a range. A header that fails is a
``BadHeader`` with a machine-readable code, and the message goes to the DLQ with it. On a request
lane these headers mean nothing and are ignored: an outside producer cannot make a worker treat
its request as a late retry attempt, or park it for a year.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from f2p_errors import F2PError

ATTEMPT_HEADER = "f2p-attempt"
NOT_BEFORE_HEADER = "f2p-not-before-ms"
ORIGIN_HEADER = "f2p-origin"

MAX_HEADERS = 64
MAX_HEADER_BYTES = 64 * 1024
MAX_ATTEMPT = 1000
_MAX_DIGITS = 16  # 2**53 ms is in the year 287396


class BadHeader(F2PError):
    """A header of ours is malformed or out of range; ``code`` goes into the dead letter."""

    def __init__(self, name: str, reason: str, code: str = "INVALID_HEADER") -> None:
        super().__init__(f"header {name}: {reason}")
        self.name = name
        self.code = code


@dataclass(frozen=True)
class RetryHeaders:
    """What a retry-topic message says about itself."""

    attempt: int = 1
    not_before_ms: int = 0
    origin: str | None = None


def check_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> None:
    """Refuse a message whose headers are too many or too large to keep around."""
    headers = headers or ()
    if len(headers) > MAX_HEADERS:
        raise BadHeader("*", f"{len(headers)} headers, at most {MAX_HEADERS}", "TOO_MANY_HEADERS")
    size = sum(len(k) + len(v or b"") for k, v in headers)
    if size > MAX_HEADER_BYTES:
        raise BadHeader(
            "*", f"{size} bytes of headers, at most {MAX_HEADER_BYTES}", "HEADERS_TOO_LARGE"
        )


def first(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def parse_retry_headers(
    headers: Sequence[tuple[str, bytes | None]] | None,
    *,
    now_ms: int,
    max_delay_ms: int,
    known_origins: Sequence[str],
) -> RetryHeaders:
    """The attempt, not-before time and origin lane of a retry-topic message.

    The not-before time is capped at ``now + max_delay_ms``: a retry is never parked longer than
    the retry policy's own longest back-off, whatever the header says.
    """
    attempt = _int(headers, ATTEMPT_HEADER, low=1, high=MAX_ATTEMPT, default=1)
    not_before = _int(headers, NOT_BEFORE_HEADER, low=0, high=10**_MAX_DIGITS - 1, default=0)
    origin_raw = first(headers, ORIGIN_HEADER)
    origin = None
    if origin_raw is not None:
        try:
            text = origin_raw.decode("ascii")
        except UnicodeDecodeError:
            raise BadHeader(ORIGIN_HEADER, "is not ASCII") from None
        if text not in known_origins:
            raise BadHeader(ORIGIN_HEADER, f"{text[:64]!r} is not a lane this worker serves")
        origin = text
    return RetryHeaders(attempt, min(not_before, now_ms + max_delay_ms), origin)


def _int(
    headers: Sequence[tuple[str, bytes | None]] | None,
    name: str,
    *,
    low: int,
    high: int,
    default: int,
) -> int:
    raw = first(headers, name)
    if raw is None:
        return default
    if not 0 < len(raw) <= _MAX_DIGITS or not raw.isascii() or not raw.isdigit():
        raise BadHeader(name, f"{raw[:32]!r} is not 1..{_MAX_DIGITS} ASCII digits")
    value = int(raw)
    if not low <= value <= high:
        raise BadHeader(name, f"{value} is outside [{low}, {high}]")
    return value
