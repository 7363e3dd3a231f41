"""Per-partition offset bookkeeping: what is in flight, what is done, where the commit point is.

Work completes out of order (batches, retries, expired requests), but a partition's committed
offset may only move to *the lowest offset not yet done*: committing past an unfinished message
would lose it on a crash. Messages done *above* the commit point would be delivered again after
a crash and must not get a second outcome. Their offsets travel with the commit itself, in the
offset commit's ``metadata`` (a bitmap relative to the commit point, written in the same
transaction as their outputs), so the next owner of the partition knows them without any state
topic, restore read or retention question: the state is exactly as large as the window between
the commit point and the highest offset polled, which the loop bounds (``max_window``).

The consumer returns a partition's messages in offset order, but not every offset: transaction
markers and aborted records occupy offsets that ``poll()`` skips. Offsets never returned need no
outcome, so the commit point is the lowest offset still in flight or, when none is, one past
the highest offset polled.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from connectors.eos.exceptions import EosError

METADATA_PREFIX = "f2p1:"
# Kafka's offset.metadata.max.bytes defaults to 4096; the bitmap of a window of 16,384 offsets
# is 2,048 bytes, 2,736 in base64.
MAX_METADATA_WINDOW = 16_384


class CorruptCommitMetadata(EosError):
    """The committed metadata is not ours or is damaged (it is then ignored, loudly)."""


def encode_done(point: int, done: set[int]) -> str:
    """``done`` offsets at or above ``point`` as ``f2p1:<base64 bitmap>`` (bit i = point + i)."""
    relative = [o - point for o in done if o >= point]
    if not relative:
        return METADATA_PREFIX
    width = max(relative) + 1
    if width > MAX_METADATA_WINDOW:
        raise ValueError(f"done window of {width} offsets exceeds {MAX_METADATA_WINDOW}")
    bitmap = bytearray((width + 7) // 8)
    for r in relative:
        bitmap[r >> 3] |= 1 << (r & 7)
    return METADATA_PREFIX + base64.b64encode(bytes(bitmap)).decode("ascii")


def decode_done(point: int, metadata: str | None) -> set[int]:
    """The done offsets recorded by :func:`encode_done` for a commit at ``point``.

    Empty or foreign metadata (written by another tool) means nothing is known to be done above
    the point; damaged metadata of ours raises CorruptCommitMetadata.
    """
    if not metadata or not metadata.startswith(METADATA_PREFIX):
        return set()
    payload = metadata[len(METADATA_PREFIX) :]
    if len(payload) > (MAX_METADATA_WINDOW // 8) * 4 // 3 + 4:
        raise CorruptCommitMetadata(f"commit metadata of {len(payload)} characters is too long")
    try:
        bitmap = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CorruptCommitMetadata(f"commit metadata is not base64: {exc}") from exc
    return {
        point + (index << 3) + bit
        for index, byte in enumerate(bitmap)
        if byte
        for bit in range(8)
        if byte >> bit & 1
    }


@dataclass
class PartitionOffsets:
    """Offsets of one partition in the current assignment generation."""

    # The commit point as last committed (or restored): the next offset to consume.
    base: int | None = None
    in_flight: set[int] = field(default_factory=set)
    # Completed offsets at or above ``base``: their outputs are committed or in the next commit.
    done: set[int] = field(default_factory=set)
    # Highest offset handed to the pipeline in this generation.
    highest: int | None = None

    @classmethod
    def restored(cls, committed: int, metadata: str | None) -> PartitionOffsets:
        """The state after the last commit: its point and the done offsets above it."""
        return cls(base=committed, done=decode_done(committed, metadata))

    def polled(self, offset: int) -> bool:
        """Record that ``offset`` was delivered; False when it needs no processing: below the
        commit point, done (a redelivery after a crash or a rewind: its outcome is committed
        or about to be) or already in flight (librdkafka can deliver an offset twice when its
        own offset reset races a seek after an assignment)."""
        if self.base is None:
            self.base = offset
        elif offset < self.base:
            return False
        if offset in self.in_flight:
            return False
        if self.highest is None or offset > self.highest:
            self.highest = offset  # a done offset delivered again is passed like any other
        if offset in self.done:
            return False
        self.in_flight.add(offset)
        return True

    def completed(self, offset: int) -> bool:
        """Record that ``offset`` has its outcome; False when it was not in flight (a second
        completion of the same message: the first one stands)."""
        if offset not in self.in_flight:
            return False
        self.in_flight.discard(offset)
        self.done.add(offset)
        return True

    def passed_to(self, position: int) -> None:
        """The consumer's position moved to ``position`` past offsets it never delivered
        (transaction markers, aborted records): with nothing in flight, they need no outcome,
        and committing past them lets an idle partition show a lag of 0, not 1 per marker."""
        if self.in_flight or self.base is None or position <= (self.point() or 0):
            return
        self.highest = position - 1

    def point(self) -> int | None:
        """Where the partition could be committed now: the lowest offset not known to be done."""
        if self.in_flight:
            return min(self.in_flight)
        if self.highest is not None:
            return self.highest + 1
        return self.base

    def committable(self) -> int | None:
        """The offset to commit if the commit point moved forward, else None."""
        point = self.point()
        if point is None or self.base is None:
            return None
        return point if point > self.base else None

    def metadata(self, point: int) -> str:
        """What a commit at ``point`` must carry: the done offsets above it."""
        return encode_done(point, self.done)

    def committed(self, offset: int) -> None:
        """The commit at ``offset`` succeeded: move the base (never backwards), forget the done
        offsets it passed."""
        if self.base is None or offset > self.base:
            self.base = offset
        self.done = {o for o in self.done if o >= self.base}

    def window(self) -> int:
        """Offsets between the commit point and the highest polled: what the metadata spans."""
        if self.highest is None or self.base is None:
            return 0
        return self.highest + 1 - self.base

    def __len__(self) -> int:
        return len(self.in_flight)
