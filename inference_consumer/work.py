"""What flows between the worker's stages: a WorkItem in, an Outcome out.

A WorkItem is one polled message on its way through prefetch → batch → engine → output. Its
``ref`` carries the partition's assignment generation: when the partition is revoked or rewound
the generation moves on and late stage results of older items are dropped by the loop.

Identity comes from the decoded, validated record only (``request_id`` is None until then): the
Kafka key is whatever the producer chose and is never trusted, logged or reused as an id.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from PIL import Image

from connectors.eos.records import MessageRef
from schemas.records import DeadLetter, GenerationRequest, GenerationResult


@dataclass
class WorkItem:
    """One polled request message and what the stages learned about it so far."""

    ref: MessageRef
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    # The lane the work is served in (from the topic it came from, or a retry's origin lane).
    lane: str = "batch"
    attempt: int = 1
    not_before_ms: int = 0
    received_mono: float = field(default_factory=time.monotonic)
    # Wall-clock ns of each stage boundary (received, prefetched, engine_start, engine_end,
    # upload_start, upload_end, completed): the spans of the request's trace, made after the
    # commit from these (``WorkerHandler.committed``).
    marks: dict[str, int] = field(default_factory=lambda: {"received": time.time_ns()})
    # The trace context the message came with (its Kafka headers), when tracing is on.
    trace_parent: Any = None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    request: GenerationRequest | None = None
    # Set once the request's identity (request_id, tenant_id) passed validation.
    request_id: str | None = None
    face: Image.Image | None = None
    # Bytes of memory budget this item holds (its decoded face); released when it is done.
    reserved_bytes: int = 0
    # Stage durations in milliseconds: fetch, engine, encode, upload; batch wait in queued.
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0
    # What the engine reports for the request: per-image transformer passes, steps, preset.
    transformer_evaluations: int = 0
    steps_executed: int = 0
    preset: str | None = None

    @property
    def topic(self) -> str:
        return self.ref.topic

    @property
    def partition(self) -> int:
        return self.ref.partition

    @property
    def offset(self) -> int:
        return self.ref.offset

    def where(self) -> dict[str, object]:
        """Bounded log context locating the message (never the raw key or value)."""
        context: dict[str, object] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }
        if self.request_id is not None:
            context["request_id"] = self.request_id
        elif self.key:
            context["key_sha256"] = hashlib.sha256(self.key).hexdigest()[:16]
        return context


class OutcomeKind(StrEnum):
    RESULT = "result"  # a GenerationResult (OK, FAILED, EXPIRED, CANCELLED) to write
    RETRY = "retry"  # hand the request to the retry topic with attempt + 1
    DEAD_LETTER = "dead_letter"  # a DeadLetter record to write


@dataclass
class Outcome:
    """The final word on one WorkItem, written by the poll thread in the next transaction."""

    item: WorkItem
    kind: OutcomeKind
    result: GenerationResult | None = None
    dead_letter: DeadLetter | None = None
    retry_delay_s: float = 0.0
    # The attempt number the retry record carries (normally item.attempt + 1).
    next_attempt: int = 0
    reason: str = ""

    @property
    def status(self) -> str:
        """RESULT status, or the kind in capitals (RETRY, DEAD_LETTER)."""
        if self.kind is OutcomeKind.RESULT and self.result is not None:
            return str(self.result.status)
        return self.kind.value.upper()
