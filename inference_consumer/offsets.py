"""Per-partition bookkeeping of polled offsets: which are in flight, which are done.

Work completes out of order (batches, retries, expired requests), but a partition's committed
offset may only move to *the lowest offset not yet done*: committing past an unfinished
message would lose it on a crash. ``PartitionOffsets.committable()`` computes exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionOffsets:
    """Offsets of one partition polled in the current assignment generation."""

    # Offset the next commit starts from (last committed + 1, or the first polled offset).
    base: int | None = None
    in_flight: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)

    def polled(self, offset: int) -> None:
        """Record that ``offset`` was handed to the pipeline."""
        if self.base is None:
            self.base = offset
        self.in_flight.add(offset)

    def completed(self, offset: int) -> None:
        """Record that ``offset`` has its outcome (written or to be written in the next commit)."""
        self.in_flight.discard(offset)
        self.done.add(offset)

    def committable(self) -> int | None:
        """The offset to commit (next to consume) if it moved forward, else None."""
        if self.base is None:
            return None
        nxt = self.base
        while nxt in self.done:
            nxt += 1
        return nxt if nxt != self.base else None

    def committed(self, offset: int) -> None:
        """Forget everything below ``offset`` after a successful commit."""
        self.done = {o for o in self.done if o >= offset}
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
