"""What flows between a handler and the loop: input messages in, completions out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

TP = tuple[str, int]

Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where a message came from, and in which assignment generation it was polled.

    A partition's generation changes when it is revoked, lost or rewound: a completion carrying
    an older generation is stale and is dropped (the message will be delivered again).
    """

    topic: str
    partition: int
    offset: int
    generation: int

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One record to produce inside the transaction."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers | None = None
    partition: int = -1  # -1: the producer's partitioner decides

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what counts against max.message.bytes."""
        total = len(self.key or b"") + len(self.value or b"")
        for name, value in self.headers or ():
            total += len(name) + len(value or b"")
        return total


@dataclass(slots=True)
class Completion:
    """A handler's final word on one input message: the records its transaction writes.

    ``records`` may be empty (nothing to write: a duplicate, a cancelled retry). ``fallback``,
    when given, makes the records that replace these if the broker refuses one of them for good
    (too large, invalid): the loop never retries a transaction that cannot succeed. It is called
    only then (building it costs an encode). ``context`` is the handler's own (metrics after the
    commit, say); the loop never looks inside.
    """

    ref: MessageRef
    records: list[OutputRecord] = field(default_factory=list)
    fallback: Callable[[], list[OutputRecord] | None] | None = None
    context: Any = None
    # Other assigned partitions whose in-memory state this completion changed (admission's
    # direct path adds a dedupe entry to a repartition partition's store). It commits only while
    # each is still in the generation it changed: their commit points go in the same
    # transaction (KIP-447: a member that lost one of them cannot commit), and when the loop
    # discards the completion uncommitted, each of them still assigned is rewound — its state
    # holds an effect that was never written.
    touches: tuple[Touched, ...] = ()


@dataclass(frozen=True, slots=True)
class Touched:
    """A partition a completion's work changed the state of, in the generation it changed."""

    topic: str
    partition: int
    generation: int

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)
