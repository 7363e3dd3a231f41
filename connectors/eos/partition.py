"""One state object per assigned partition, and the assignment that holds them.

A partition's life in one member::

    assigned ──▶ RESTORING ──(committed offset + metadata read)──▶ ACTIVE ──▶ revoked / lost
                     ▲                                               │
                     └──── rewind (aborts, fatal, discarded work) ◀──┘

While RESTORING the partition is paused: nothing is fetched until the loop knows the commit
point and the offsets done above it. Reading them is retried turn after turn with a short
timeout — never a long block inside the rebalance callback — and, with ``read_committed``, the
broker answers only once the previous owner's open transaction is resolved (KIP-447), so the
restored state is exactly what was committed.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from connectors.eos.offsets import PartitionOffsets
from connectors.eos.records import TP
from connectors.eos.restore import RestorePoint


class Phase(Enum):
    RESTORING = "restoring"
    ACTIVE = "active"


@dataclass
class PartitionState:
    """Everything the loop knows about one assigned partition."""

    topic: str
    partition: int
    generation: int
    phase: Phase = Phase.RESTORING
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    # Paused in the consumer (for any reason); the loop keeps it in step with ``wants_pause``.
    paused: bool = False
    # No commit existed: commit the start position at once, so that lag is visible (a lag-based
    # autoscaler sees "-" for a partition that was never committed).
    needs_initial_commit: bool = False
    # Restore attempts that failed (logged with back-off).
    restore_failures: int = 0
    # A rewind: the consumer's position is past the commit point and must be moved back before
    # the partition may fetch again (after an assignment the fetch starts there anyway).
    must_seek: bool = False
    # The committed offset and metadata read for this generation (restore.py), once known.
    restore_point: RestorePoint | None = None
    # When the partition became ACTIVE (loop clock), and whether librdkafka was seen fetching
    # it since: one that never starts is assigned again at its offset (fetch_watch.py).
    activated_at: float | None = None
    fetch_confirmed: bool = False

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)

    @property
    def in_flight(self) -> int:
        return len(self.offsets.in_flight)


class Assignment:
    """The partitions this member owns now, keyed by (topic, partition).

    Generations come from one counter for the member's lifetime, so a generation number is never
    reused, not even for a partition that comes back.
    """

    def __init__(self) -> None:
        self._states: dict[TP, PartitionState] = {}
        self._generations = itertools.count(1)

    def add(self, tp: TP) -> PartitionState:
        state = PartitionState(tp[0], tp[1], next(self._generations))
        self._states[tp] = state
        return state

    def remove(self, tp: TP) -> PartitionState | None:
        return self._states.pop(tp, None)

    def restart(self, tp: TP) -> PartitionState:
        """Forget everything of ``tp`` in memory and restore it again (rewind)."""
        old = self._states[tp]
        state = PartitionState(tp[0], tp[1], next(self._generations), paused=old.paused)
        self._states[tp] = state
        return state

    def get(self, tp: TP) -> PartitionState | None:
        return self._states.get(tp)

    def generation(self, tp: TP) -> int | None:
        """The current generation of ``tp`` (safe to call from any thread: one dict lookup)."""
        state = self._states.get(tp)
        return state.generation if state is not None else None

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(list(self._states.values()))

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, tp: object) -> bool:
        return tp in self._states

    def keys(self) -> list[TP]:
        return list(self._states)

    def in_flight(self) -> int:
        return sum(len(s.offsets.in_flight) for s in self._states.values())

    def in_flight_by_topic(self) -> Counter[str]:
        """In-flight messages per assigned topic (every assigned topic present, 0 included)."""
        by_topic: Counter[str] = Counter()
        for state in self._states.values():
            by_topic[state.topic] += len(state.offsets.in_flight)
        return by_topic

    def restoring(self) -> list[PartitionState]:
        return [s for s in self._states.values() if s.phase is Phase.RESTORING]
