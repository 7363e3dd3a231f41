"""RequestBatcher: weighted lanes, fair partitions, compatible requests grouped into one call.

The engine thread calls :meth:`RequestBatcher.next_batch`. The lane goes by stride scheduling
over the lanes that have work (weights, e.g. interactive 16 : batch 4 : over-quota 1): every
lane gets its share when all are busy and all the capacity when it is alone — weighted, work
conserving, never starving a lane. Inside a lane the partitions take turns the same way (equal
weights, one turn per request taken): a partition's backlog — an heir's inherited partition
after a failover, a replay — does not hold back a partition that queued a moment later, and
each partition's requests keep their order. The lane's next partition's oldest request picks
the batch key (size, steps, CFG…); up to ``max_batch_size`` requests with that key join, the
chosen lane's first (its partitions in turn), then other lanes' in weight order (a free ride
costs the engine nothing). With ``max_wait_s`` 0 the batch starts at once with what queued
while the engine was busy (opportunistic batching); a positive wait holds an incomplete batch
up to that long after its oldest request arrived.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping

from connectors.eos.records import TP
from inference_consumer.work import WorkItem

_Entry = tuple[float, Hashable, WorkItem]


class _LaneQueue:
    """One lane's queued work: a FIFO per partition, served in turns (the fewest taken first)."""

    def __init__(self) -> None:
        self.partitions: dict[TP, deque[_Entry]] = {}
        # Requests taken from each queued partition, on the lane's virtual time: a partition
        # that starts queueing starts at ``clock`` (idling earns no credit).
        self.turns: dict[TP, int] = {}
        self.clock = 0
        self.keys: Counter[Hashable] = Counter()
        self.size = 0

    def append(self, entry: _Entry) -> None:
        tp = entry[2].ref.tp
        queue = self.partitions.get(tp)
        if queue is None:
            queue = self.partitions[tp] = deque()
            self.turns[tp] = max(self.turns.get(tp, 0), self.clock)
        queue.append(entry)
        self.keys[entry[1]] += 1
        self.size += 1

    def head(self) -> _Entry:
        """The oldest entry of the partition whose turn it is (the lane is not empty)."""
        tp = min(self.partitions, key=lambda tp: (self.turns[tp], self.partitions[tp][0][0]))
        return self.partitions[tp][0]

    def take(self, key: Hashable, limit: int) -> list[WorkItem]:
        """Up to ``limit`` entries with ``key``, the partitions in turn, each in its order."""
        if limit <= 0 or not self.keys[key]:
            return []
        matching: dict[TP, deque[_Entry]] = {}
        for tp, queue in self.partitions.items():
            entries = deque(entry for entry in queue if entry[1] == key)
            if entries:
                matching[tp] = entries
        taken: list[_Entry] = []
        while matching and len(taken) < limit:
            tp = min(matching, key=lambda tp: (self.turns[tp], matching[tp][0][0]))
            taken.append(matching[tp].popleft())
            self.clock = self.turns[tp]
            self.turns[tp] += 1
            if not matching[tp]:
                del matching[tp]
        chosen = {id(entry) for entry in taken}
        for tp in {entry[2].ref.tp for entry in taken}:
            kept = deque(entry for entry in self.partitions[tp] if id(entry) not in chosen)
            self._replace(tp, kept)
        self.keys[key] -= len(taken)
        if not self.keys[key]:
            del self.keys[key]
        self.size -= len(taken)
        return [entry[2] for entry in taken]

    def drop(self, keep: Callable[[WorkItem], bool]) -> list[WorkItem]:
        dropped: list[WorkItem] = []
        for tp, queue in list(self.partitions.items()):
            kept: deque[_Entry] = deque()
            for entry in queue:
                if keep(entry[2]):
                    kept.append(entry)
                else:
                    dropped.append(entry[2])
                    self.keys[entry[1]] -= 1
            self._replace(tp, kept)
        self.keys = +self.keys
        self.size -= len(dropped)
        return dropped

    def _replace(self, tp: TP, kept: deque[_Entry]) -> None:
        if kept:
            self.partitions[tp] = kept
        else:  # an empty partition leaves the turns: it rejoins at the clock
            del self.partitions[tp]
            del self.turns[tp]


class RequestBatcher:
    """A multi-lane queue that hands out batches of compatible work items."""

    def __init__(
        self,
        lanes: Mapping[str, float],
        batch_key: Callable[[WorkItem], Hashable],
        *,
        max_batch_size: int,
        max_wait_s: float = 0.0,
    ) -> None:
        if not lanes or min(lanes.values()) <= 0:
            raise ValueError(f"lane weights must be positive, got {dict(lanes)}")
        self._order = tuple(sorted(lanes, key=lambda name: -lanes[name]))
        self._weights = dict(lanes)
        self._queues: dict[str, _LaneQueue] = {lane: _LaneQueue() for lane in lanes}
        self._pass: dict[str, float] = dict.fromkeys(lanes, 0.0)
        self._clock = 0.0  # the pass of the lane served last: the scheduler's virtual time
        self._batch_key = batch_key
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._closed = False
        self._size = 0

    def put(self, item: WorkItem, lane: str) -> None:
        """Queue an item; an unknown ``lane`` goes to the lowest-weight lane."""
        with self._cond:
            if lane not in self._queues:
                lane = self._order[-1]
            queue = self._queues[lane]
            if not queue.size:
                # A lane waking up starts at the current virtual time: idling earns no credit.
                self._pass[lane] = max(self._pass[lane], self._clock)
            # The key is computed once here, under the lock only for the append.
            queue.append((time.monotonic(), self._batch_key(item), item))
            self._size += 1
            self._cond.notify()

    def close(self) -> None:
        """Wake the engine thread; ``next_batch`` returns [] from now on once empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return self._size

    def drop(self, keep: Callable[[WorkItem], bool]) -> list[WorkItem]:
        """Remove and return queued items for which ``keep`` is False (revoked partitions)."""
        with self._cond:
            dropped = [item for queue in self._queues.values() for item in queue.drop(keep)]
            self._size -= len(dropped)
        return dropped

    def next_batch(self, timeout_s: float = 0.5) -> list[WorkItem]:
        """Block up to ``timeout_s`` for work; return one batch (possibly []) of equal keys."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._size:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return []
                self._cond.wait(remaining)
            lane = self._next_lane()
            first_at, key, _ = self._queues[lane].head()
            # Wait for companions until the batch is full or the oldest item waited long enough.
            while self._count(key) < self._max_batch_size and not self._closed:
                remaining = first_at + self._max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take(lane, key)

    def _next_lane(self) -> str:
        """The non-empty lane with the smallest pass (ties: the heavier lane)."""
        busy = [lane for lane in self._order if self._queues[lane].size]
        return min(busy, key=lambda lane: self._pass[lane])

    def _count(self, key: Hashable) -> int:
        return sum(queue.keys[key] for queue in self._queues.values())

    def _take(self, lane: str, key: Hashable) -> list[WorkItem]:
        batch: list[WorkItem] = []
        for name in (lane, *(n for n in self._order if n != lane)):
            taken = self._queues[name].take(key, self._max_batch_size - len(batch))
            batch += taken
            # Each lane pays for the slots its requests took.
            self._pass[name] += len(taken) / self._weights[name]
        self._size -= len(batch)
        self._clock = self._pass[lane]
        return batch
