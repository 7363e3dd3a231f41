"""Partition-scoped dedupe state: which request_ids already have their outcome.

Why it exists: results are committed as soon as they are ready, possibly ahead of the
partition's committed offset (work completes out of order). After a crash the same messages are
delivered again; and upstream may submit one request_id twice. Either way the second outcome
must not be written.

How: every outcome's transaction also writes ``request_id → {source, offset, status}`` to the
compacted changelog ``f2p.dedupe.v1``, into the partition with the same number as the source
partition (requests are keyed by request_id, so a request_id always lands in the same partition
number of a lane). When a partition is assigned, its changelog partition is read to the end with
``read_committed`` — after the previous owner's transactions are resolved — and loaded here.

Scope: per lane. The same request_id published to both lanes is not deduplicated across them,
except after a retry: the changelog is keyed by request_id alone, so compaction replaces a
lane's RETRY entry by the final entry written from the retry topic, and a restore counts that
final entry for the lanes of its partition too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from connectors.settings import Settings
from connectors.topic_reader import read_to_end

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DedupeEntry:
    """The changelog record of one completed request."""

    source_topic: str
    source_offset: int
    status: str

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"topic": self.source_topic, "offset": self.source_offset, "status": self.status}
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> DedupeEntry:
        data = json.loads(raw)
        return cls(source_topic=data["topic"], source_offset=data["offset"], status=data["status"])


@dataclass
class DedupeState:
    """Completed request_ids per source (topic, partition): committed and pending (in the open
    transaction). Pending entries become committed when the transaction commits and vanish when
    it aborts."""

    committed: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    pending: dict[tuple[str, int], set[str]] = field(default_factory=dict)

    def seen(self, topic: str, partition: int, request_id: str) -> bool:
        key = (topic, partition)
        return request_id in self.committed.get(key, ()) or request_id in self.pending.get(key, ())

    def add_pending(self, topic: str, partition: int, request_id: str) -> None:
        self.pending.setdefault((topic, partition), set()).add(request_id)

    def commit_pending(self) -> None:
        for key, ids in self.pending.items():
            self.committed.setdefault(key, set()).update(ids)
        self.pending.clear()

    def abort_pending(self) -> None:
        self.pending.clear()

    def drop(self, keys: list[tuple[str, int]]) -> None:
        for key in keys:
            self.committed.pop(key, None)
            self.pending.pop(key, None)

    def restore(self, settings: Settings, keys: list[tuple[str, int]], timeout_s: float) -> int:
        """Load the changelog partitions of newly assigned source partitions; return the count.

        Reads with read_committed to the high watermark, so it waits until the previous owner's
        open transaction (if it died mid-commit) is aborted by the coordinator.
        """
        wanted = {p: set() for _, p in keys}
        for topic, p in keys:
            wanted[p].add(topic)
            self.committed[(topic, p)] = set()
        lanes = set(settings.topics.request_lanes)
        loaded = 0
        for msg in read_to_end(
            settings, settings.topics.dedupe, partitions=sorted(wanted), timeout_s=timeout_s
        ):
            if msg.value() is None:  # a tombstone: the entry was expired on purpose
                continue
            entry = DedupeEntry.from_bytes(msg.value())
            sources = {entry.source_topic}
            if entry.source_topic == settings.topics.retry:
                # Compaction keeps one record per request_id: the final outcome of a retry
                # replaces the lane's RETRY entry, which must still hold after compaction.
                sources |= lanes
            for source in sources & wanted[msg.partition()]:
                self.committed[(source, msg.partition())].add(msg.key().decode())
                loaded += 1
        log.info("dedupe state restored", extra={"partitions": keys, "entries": loaded})
        return loaded
