"""Kafka headers as the untrusted input they are: bounded counts and sizes, strict parsing.

A header value is parsed as ASCII digits only (``"²".isdigit()`` is True and ``int("²")`` raises),
within a length and a range; a header that fails is a ``BadHeader`` with a machine-readable code.
"""

from __future__ import annotations

from collections.abc import Sequence

from f2p_errors import F2PError

MAX_HEADERS = 64
MAX_HEADER_BYTES = 64 * 1024
MAX_DIGITS = 16  # 2**53 ms is in the year 287396

Headers = Sequence[tuple[str, bytes | None]] | None


class BadHeader(F2PError):
    """A header is malformed or out of range; ``code`` goes into the dead letter."""

    def __init__(self, name: str, reason: str, code: str = "INVALID_HEADER") -> None:
        super().__init__(f"header {name}: {reason}")
        self.name = name
        self.code = code


def check_headers(headers: Headers) -> None:
    """Refuse a message whose headers are too many or too large to keep around."""
    headers = headers or ()
    if len(headers) > MAX_HEADERS:
        raise BadHeader("*", f"{len(headers)} headers, at most {MAX_HEADERS}", "TOO_MANY_HEADERS")
    size = sum(len(k) + len(v or b"") for k, v in headers)
    if size > MAX_HEADER_BYTES:
        reason = f"{size} bytes of headers, at most {MAX_HEADER_BYTES}"
        raise BadHeader("*", reason, "HEADERS_TOO_LARGE")


def first(headers: Headers, name: str) -> bytes | None:
    """The value of the first header called ``name``, or None."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


def int_header(headers: Headers, name: str, *, low: int, high: int, default: int) -> int:
    """Header ``name`` as an int in ``[low, high]`` (``default`` when absent); BadHeader if not."""
    raw = first(headers, name)
    if raw is None:
        return default
    if not 0 < len(raw) <= MAX_DIGITS or not raw.isascii() or not raw.isdigit():
        raise BadHeader(name, f"{raw[:32]!r} is not 1..{MAX_DIGITS} ASCII digits")
    value = int(raw)
    if not low <= value <= high:
        raise BadHeader(name, f"{value} is outside [{low}, {high}]")
    return value
