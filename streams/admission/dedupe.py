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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from connectors.settings import Settings
from connectors.topic_reader import read_batches_to_end

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


# An entry in memory is one int: first seen (epoch ms) << 3 | outcome; the expiry queue holds
# only the ids (the time is the entry's). A tuple per entry and a (time, id) tuple per queue slot
# took 342 bytes per entry at 1 M entries, this 197 (``f2p bench -s restore``,
# docs/BENCHMARKS.md).
_OUTCOME_BITS = 3
_OUTCOME_MASK = (1 << _OUTCOME_BITS) - 1
_OUTCOMES = {int(seen): seen for seen in Seen}


def _pack(first_seen_ms: int, outcome: int) -> int:
    # An outcome byte this version does not know still means "seen": a duplicate of it gets no
    # second outcome (a restore must not fail on it, or the partition would never serve).
    code = outcome if outcome in _OUTCOMES else Seen.ACCEPTED
    return first_seen_ms << _OUTCOME_BITS | code


@dataclass
class PartitionStore:
    """The request_ids of one repartition partition first seen within the horizon."""

    horizon_ms: int
    # request_id -> first seen ms << 3 | outcome (``_pack``).
    entries: dict[str, int] = field(default_factory=dict)
    # request_ids in first-seen order: the expiry queue (the time is the entry's).
    order: deque[str] = field(default_factory=deque)
    # request_id -> duplicates seen since its first sighting (only those with any).
    duplicates: dict[str, int] = field(default_factory=dict)

    def get(self, request_id: str) -> tuple[int, Seen, int] | None:
        """(first seen ms, outcome, duplicates seen since), or None for a new request_id."""
        packed = self.entries.get(request_id)
        if packed is None:
            return None
        outcome = _OUTCOMES[packed & _OUTCOME_MASK]
        return packed >> _OUTCOME_BITS, outcome, self.duplicates.get(request_id, 0)

    def add(self, request_id: str, first_seen_ms: int, outcome: Seen) -> None:
        self.entries[request_id] = _pack(first_seen_ms, outcome)
        self.order.append(request_id)

    def duplicate(self, request_id: str) -> int:
        """Count one more duplicate of a known request_id; the count so far."""
        count = self.duplicates.get(request_id, 0) + 1
        self.duplicates[request_id] = count
        return count

    def expire(self, now_ms: int, limit: int) -> list[str]:
        """Remove up to ``limit`` entries older than the horizon; their ids (to tombstone)."""
        cutoff = now_ms - self.horizon_ms
        gone: list[str] = []
        order, entries = self.order, self.entries
        while order and len(gone) < limit:
            packed = entries.get(order[0])
            if packed is not None and packed >> _OUTCOME_BITS >= cutoff:
                break
            request_id = order.popleft()
            if packed is not None:
                del entries[request_id]
                self.duplicates.pop(request_id, None)
                gone.append(request_id)
        return gone

    def __len__(self) -> int:
        return len(self.entries)


class StoreRestore:
    """Restores one partition's store from the changelog on a background thread.

    Its own consumer (a separate handle: librdkafka handles are not to be shared with the loop's
    poll thread), read_committed to the end: a previous owner's open transaction is waited for,
    so nothing it committed is missed. Read in batches of ``consume()``: 1 M entries took 14 s
    one ``poll()`` at a time, see docs/BENCHMARKS.md for the figure now.
    """

    # Bigger fetches than the lanes' consumers: the changelog is read start to end in bulk.
    CONSUMER = {"max.partition.fetch.bytes": 8 * 1024 * 1024}

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
        batches = read_batches_to_end(
            self._settings,
            self._topic,
            partitions=[self.partition],
            timeout_s=self._timeout_s,
            config=self.CONSUMER,
        )
        self.store.entries = entries = load_entries(batches)
        # The expiry queue in first-seen order (packed values sort by time first); entries
        # already past the horizon expire (and are tombstoned) on the partition's first sweep.
        self.store.order = deque(sorted(entries, key=entries.__getitem__))
        self.loaded = len(entries)


def load_entries(batches: Iterable[list[Any]]) -> dict[str, int]:
    """The live entries of a changelog read in order (later records win, tombstones delete).

    The per-message work is kept to a few calls: it is the whole cost of a restore."""
    entries: dict[str, int] = {}
    size, unpack, known, bits = _VALUE.size, _VALUE.unpack, _OUTCOMES, _OUTCOME_BITS
    for batch in batches:
        for msg in batch:
            key = msg.key()
            if key is None:
                continue
            request_id = key.decode("utf-8", errors="replace")
            value = msg.value()
            if value is None or len(value) != size:
                entries.pop(request_id, None)  # a tombstone (or not ours): the entry is gone
                continue
            first_seen, code = unpack(value)  # _pack, inlined
            entries[request_id] = first_seen << bits | (code if code in known else Seen.ACCEPTED)
    return entries
