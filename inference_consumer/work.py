"""What flows between the worker's stages: a WorkItem in, an Outcome out.

A WorkItem is one polled message on its way through prefetch → batch → engine → output. Its
``generation`` ties it to one assignment of its partition: when the partition is revoked or the
transaction aborted, the generation moves on and late stage results of older items are dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from PIL import Image

from schemas.records import DeadLetter, GenerationRequest, GenerationResult

ATTEMPT_HEADER = "f2p-attempt"
NOT_BEFORE_HEADER = "f2p-not-before-ms"
ORIGIN_HEADER = "f2p-origin"


@dataclass
class WorkItem:
    """One polled request message and what the stages learned about it so far."""

    generation: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    received_mono: float = field(default_factory=time.monotonic)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    request: GenerationRequest | None = None
    face: Image.Image | None = None
    # Stage durations in milliseconds: fetch, engine, encode, upload; batch wait in queued.
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0

    @property
    def attempt(self) -> int:
        """1 for a first delivery; n for the n-th attempt coming from the retry topic."""
        raw = header(self.headers, ATTEMPT_HEADER)
        return int(raw) if raw and raw.isdigit() else 1

    @property
    def not_before_ms(self) -> int:
        raw = header(self.headers, NOT_BEFORE_HEADER)
        return int(raw) if raw and raw.isdigit() else 0

    @property
    def request_id(self) -> str | None:
        if self.request is not None:
            return self.request.request_id
        return self.key.decode(errors="replace") if self.key else None

    def where(self) -> dict[str, object]:
        """Log context locating the message."""
        return {
            "request_id": self.request_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }


def header(headers: list[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or []:
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


class OutcomeKind(StrEnum):
    RESULT = "result"  # a GenerationResult (OK, FAILED, EXPIRED, REJECTED) to write
    RETRY = "retry"  # hand the request to the retry topic with attempt + 1
    DEAD_LETTER = "dead_letter"  # a DeadLetter record to write
    DUPLICATE = "duplicate"  # the request_id already has its outcome: write nothing


@dataclass
class Outcome:
    """The final word on one WorkItem, written by the poll thread in the next transaction."""

    item: WorkItem
    kind: OutcomeKind
    result: GenerationResult | None = None
    dead_letter: DeadLetter | None = None
    retry_delay_s: float = 0.0
    reason: str = ""

    @property
    def request_id(self) -> str | None:
        return self.result.request_id if self.result is not None else self.item.request_id

    def settles(self, retry_topic: str) -> bool:
        """Whether this outcome is recorded in the dedupe state (and its changelog).

        Not a duplicate (nothing new), and not a retry handed on from the retry topic itself:
        the next attempt arrives on the same retry partition and must not look like a duplicate
        of itself. A retry from a lane is recorded: later copies on the lane are duplicates.
        """
        if self.kind is OutcomeKind.DUPLICATE:
            return False
        return not (self.kind is OutcomeKind.RETRY and self.item.topic == retry_topic)

    @property
    def status(self) -> str:
        """The status recorded in the dedupe changelog."""
        if self.kind is OutcomeKind.RESULT and self.result is not None:
            return str(self.result.status)
        return self.kind.value.upper()
