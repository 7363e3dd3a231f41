"""Dead letters that always fit the DLQ, whatever the original message was.

An original can be larger than the DLQ accepts (a 3 MiB value that lz4 squeezed under the lane's
1 MiB limit, a 1.2 MiB key): copied whole, the letter was refused by the broker and the worker
retried it forever (issue 7). So a letter keeps a bounded *prefix* of the key, the value and each
header, their sizes and SHA-256 digests, and — when something was cut — a claim check: the full
original in the object store under ``dead-letters/<topic>/<partition>/<offset>/``. The claim
check is best effort: if the store is down the letter is written without it (a dead letter must
never stop the line), and says so in ``original_uri`` being null while ``truncated`` is true.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from schemas.records import DeadLetter, GenerationRequest

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 256 * 1024
MAX_HEADERS = 32
MAX_HEADER_VALUE_BYTES = 1024
MAX_MESSAGE_CHARS = 2000

# (object key, body) -> s3:// URI, or raises.
ClaimCheck = Callable[[str, bytes], str]


class Source(Protocol):
    """The message a letter is about (the worker's WorkItem, admission's ingress message)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...
    @property
    def attempt(self) -> int: ...
    @property
    def request(self) -> GenerationRequest | None: ...
    @property
    def request_id(self) -> str | None: ...

    def where(self) -> dict[str, object]: ...


def _digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def build_dead_letter(
    item: Source,
    code: str,
    message: str,
    *,
    claim_check: ClaimCheck | None = None,
    minimal: bool = False,
) -> DeadLetter:
    """A DeadLetter for ``item`` within the bounds above.

    ``minimal`` keeps only coordinates, sizes and digests (no bytes at all): the fallback when
    even the bounded letter was refused.
    """
    key, value = item.key, item.value
    key_cut = key is not None and len(key) > MAX_KEY_BYTES
    value_cut = value is not None and len(value) > MAX_VALUE_BYTES
    headers = [
        (k[:256], (v or b"")[:MAX_HEADER_VALUE_BYTES]) for k, v in item.headers[:MAX_HEADERS]
    ]
    headers_cut = len(item.headers) > MAX_HEADERS or any(
        len(k) > 256 or len(v or b"") > MAX_HEADER_VALUE_BYTES for k, v in item.headers
    )
    original_uri = None
    if (key_cut or value_cut) and claim_check is not None and not minimal:
        original_uri = _claim_check(item, claim_check)
    return DeadLetter(
        source_topic=item.topic,
        source_partition=item.partition,
        source_offset=item.offset,
        key=None if minimal or key is None else key[:MAX_KEY_BYTES],
        value=None if minimal or value is None else value[:MAX_VALUE_BYTES],
        headers=() if minimal else tuple(headers),
        error_code=code,
        error_message=message[:MAX_MESSAGE_CHARS],
        attempts=item.attempt,
        failed_at=datetime.now(UTC),
        request_id=_named_request_id(item),
        key_size=-1 if key is None else len(key),
        value_size=-1 if value is None else len(value),
        key_sha256=_digest(key),
        value_sha256=_digest(value),
        truncated=minimal or key_cut or value_cut or headers_cut,
        original_uri=original_uri,
    )


def _named_request_id(item: Source) -> str | None:
    """The request_id a human can look the letter up by: the validated one, or a decoded one
    that is at least a canonical UUID (its tenant may be what was wrong). Never an identity
    anything is keyed or deduplicated by."""
    if item.request_id is not None:
        return item.request_id
    candidate = item.request.request_id if item.request is not None else None
    try:
        return candidate if candidate == str(uuid.UUID(str(candidate))) else None
    except ValueError:
        return None


def _claim_check(item: Source, claim_check: ClaimCheck) -> str | None:
    prefix = f"dead-letters/{item.topic}/{item.partition}/{item.offset}"
    try:
        if item.key is not None and len(item.key) > MAX_KEY_BYTES:
            claim_check(f"{prefix}/key", item.key)
        return claim_check(f"{prefix}/value", item.value or b"")
    except Exception as exc:  # best effort: the letter goes out without it
        log.warning("dead letter claim check failed: %s", str(exc)[:300], extra=item.where())
        return None
