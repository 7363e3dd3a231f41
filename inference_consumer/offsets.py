"""Per-partition bookkeeping of polled offsets: which are in flight, where the commit point is.

Work completes out of order (batches, retries, expired requests), but a partition's committed
offset may only move to *the lowest offset not yet done*: committing past an unfinished
message would lose it on a crash. ``PartitionOffsets.committable()`` computes exactly that.

The consumer returns a partition's messages in offset order, but not every offset: transaction
markers and aborted records occupy offsets that ``poll()`` skips (the retry topic is written by
transactional producers, so it has a marker after every transaction). Offsets never returned
need no outcome, so the commit point is the lowest offset still in flight or, when none is, one
past the highest offset polled.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionOffsets:
    """Offsets of one partition polled in the current assignment generation."""

    # The known-safe commit point: the last committed offset, or the first polled offset.
    base: int | None = None
    in_flight: set[int] = field(default_factory=set)
    # Highest offset handed to the pipeline in this generation.
    highest: int | None = None

    def polled(self, offset: int) -> None:
        """Record that ``offset`` was handed to the pipeline."""
        if self.base is None:
            self.base = offset
        if self.highest is None or offset > self.highest:
            self.highest = offset
        self.in_flight.add(offset)

    def completed(self, offset: int) -> None:
        """Record that ``offset`` has its outcome (written or to be written in the next commit)."""
        self.in_flight.discard(offset)

    def committable(self) -> int | None:
        """The offset to commit (next to consume) if it moved forward, else None."""
        if self.base is None or self.highest is None:
            return None
        point = min(self.in_flight) if self.in_flight else self.highest + 1
        return point if point > self.base else None

    def committed(self, offset: int) -> None:
        """Move the commit point to ``offset`` after a successful commit (never backwards)."""
        if self.base is None or offset > self.base:
            self.base = offset

    def __len__(self) -> int:
        return len(self.in_flight)


@dataclass
class OffsetTracker:
    """All partitions of the current assignment, keyed by (topic, partition)."""

    partitions: dict[tuple[str, int], PartitionOffsets] = field(default_factory=dict)

    def get(self, topic: str, partition: int) -> PartitionOffsets:
        return self.partitions.setdefault((topic, partition), PartitionOffsets())

    def drop(self, keys: list[tuple[str, int]] | None = None) -> None:
        """Forget the given partitions (revoked, lost) or all of them (abort and rewind)."""
        if keys is None:
            self.partitions.clear()
        for key in keys or []:
            self.partitions.pop(key, None)

    def in_flight(self) -> int:
        return sum(len(p) for p in self.partitions.values())

    def committable(self) -> dict[tuple[str, int], int]:
        """Every partition whose commit point moved forward, with its new offset."""
        offsets = {}
        for key, part in self.partitions.items():
            offset = part.committable()
            if offset is not None:
                offsets[key] = offset
        return offsets
