"""Admission's dedupe state: which request_ids were seen, per repartition partition.

Every request_id lives in one partition of the repartition topic (the project's partitioner),
so the state is partitioned the same way and owned by whichever admission instance owns that
partition. Each first sighting is written to the compacted changelog
``f2p.admission.dedupe.v1`` (same partition number) in the transaction that admits or answers
the request, and the state is restored from it when the partition is assigned.

Bounded by the *horizon* (default 7 days, the ingress retention): an entry older than that is
removed from memory and tombstoned in the changelog, so state and restore time are proportional
to the traffic of one horizon, not to the life of the system. A duplicate inside the horizon
gets no second outcome; one arriving later is admitted again as a new request (the ingress no
longer holds the original by then; docs/PUBLISHING.md says so).

Changelog record: key = request_id (UTF-8), value = 9 bytes ``>qB`` (first seen, epoch ms;
outcome code), ``None`` = tombstone.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from connectors.settings import Settings
from connectors.topic_reader import read_to_end

log = logging.getLogger(__name__)

_VALUE = struct.Struct(">qB")


class Seen(IntEnum):
    """What admission did with a request_id the first time (the changelog's outcome byte)."""

    ACCEPTED = 1
    REJECTED = 2
    EXPIRED = 3
    CANCELLED = 4


def encode_entry(first_seen_ms: int, outcome: Seen) -> bytes:
    return _VALUE.pack(first_seen_ms, outcome)


def decode_entry(value: bytes) -> tuple[int, Seen]:
    first_seen_ms, outcome = _VALUE.unpack(value)
    return first_seen_ms, Seen(outcome)


@dataclass
class PartitionStore:
    """The request_ids of one repartition partition first seen within the horizon."""

    horizon_ms: int
    # request_id -> (first seen ms, outcome, duplicates seen since).
    entries: dict[str, tuple[int, Seen, int]] = field(default_factory=dict)
    # (first seen ms, request_id) in first-seen order: the expiry queue.
    order: deque[tuple[int, str]] = field(default_factory=deque)

    def get(self, request_id: str) -> tuple[int, Seen, int] | None:
        return self.entries.get(request_id)

    def add(self, request_id: str, first_seen_ms: int, outcome: Seen) -> None:
        self.entries[request_id] = (first_seen_ms, outcome, 0)
        self.order.append((first_seen_ms, request_id))

    def duplicate(self, request_id: str) -> int:
        """Count one more duplicate of a known request_id; the count so far."""
        first, outcome, count = self.entries[request_id]
        self.entries[request_id] = (first, outcome, count + 1)
        return count + 1

    def expire(self, now_ms: int, limit: int) -> list[str]:
        """Remove up to ``limit`` entries older than the horizon; their ids (to tombstone)."""
        cutoff = now_ms - self.horizon_ms
        gone: list[str] = []
        while self.order and self.order[0][0] < cutoff and len(gone) < limit:
            first_seen, request_id = self.order.popleft()
            entry = self.entries.get(request_id)
            if entry is not None and entry[0] == first_seen:
                del self.entries[request_id]
                gone.append(request_id)
        return gone

    def __len__(self) -> int:
        return len(self.entries)


class StoreRestore:
    """Restores one partition's store from the changelog on a background thread.

    Its own consumer (a separate handle: librdkafka handles are not to be shared with the loop's
    poll thread), read_committed to the end: a previous owner's open transaction is waited for,
    so nothing it committed is missed.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        partition: int,
        horizon_ms: int,
        *,
        timeout_s: float = 600.0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.partition = partition
        self.store = PartitionStore(horizon_ms)
        self.loaded = 0
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._settings = settings
        self._topic = topic
        self._timeout_s = timeout_s
        self._clock_ms = clock_ms
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"dedupe-restore-{partition}", daemon=True
        )
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self._load()
        except BaseException as exc:  # handed to the poll thread, which logs and retries
            self.error = exc
        finally:
            self.seconds = time.monotonic() - started
            self._done.set()

    def _load(self) -> None:
        latest: dict[str, int] = {}
        for msg in read_to_end(
            self._settings, self._topic, partitions=[self.partition], timeout_s=self._timeout_s
        ):
            key = msg.key()
            if key is None:
                continue
            request_id = key.decode("utf-8", errors="replace")
            value = msg.value()
            if value is None or len(value) != _VALUE.size:
                latest.pop(request_id, None)  # a tombstone (or not ours): the entry is gone
                continue
            first_seen, outcome = decode_entry(value)
            latest[request_id] = first_seen
            self.store.entries[request_id] = (first_seen, outcome, 0)
        for request_id in set(self.store.entries) - set(latest):
            del self.store.entries[request_id]
        # The expiry queue in first-seen order; entries already past the horizon expire (and are
        # tombstoned) on the partition's first sweep.
        self.store.order = deque(sorted((t, rid) for rid, t in latest.items()))
        self.loaded = len(self.store.entries)
