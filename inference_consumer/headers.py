"""The worker's own Kafka headers (retry attempt, not-before, origin lane).

Only the retry topic carries them, and only workers write it; but a topic is not a trust
boundary by itself, so every value is parsed with bounds (``connectors.headers``). On a request
lane these headers mean nothing and are ignored: an outside producer cannot make a worker treat
its request as a late retry attempt, or park it for a year.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from connectors.headers import MAX_DIGITS, BadHeader, Headers, first, int_header

ATTEMPT_HEADER = "f2p-attempt"
NOT_BEFORE_HEADER = "f2p-not-before-ms"
ORIGIN_HEADER = "f2p-origin"

MAX_ATTEMPT = 1000


@dataclass(frozen=True)
class RetryHeaders:
    """What a retry-topic message says about itself."""

    attempt: int = 1
    not_before_ms: int = 0
    origin: str | None = None


def parse_retry_headers(
    headers: Headers,
    *,
    now_ms: int,
    max_delay_ms: int,
    known_origins: Sequence[str],
) -> RetryHeaders:
    """The attempt, not-before time and origin lane of a retry-topic message.

    The not-before time is capped at ``now + max_delay_ms``: a retry is never parked longer than
    the retry policy's own longest back-off, whatever the header says.
    """
    attempt = int_header(headers, ATTEMPT_HEADER, low=1, high=MAX_ATTEMPT, default=1)
    not_before = int_header(headers, NOT_BEFORE_HEADER, low=0, high=10**MAX_DIGITS - 1, default=0)
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
