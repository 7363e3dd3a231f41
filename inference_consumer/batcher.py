"""RequestBatcher: weighted lanes, compatible requests grouped into one engine call.

The engine thread calls :meth:`RequestBatcher.next_batch`. The lane goes by stride scheduling
over the lanes that have work (weights, e.g. interactive 16 : batch 4 : over-quota 1): every
lane gets its share when all are busy and all the capacity when it is alone — weighted, work
conserving, never starving a lane. The lane's oldest request picks the batch key (size, steps,
CFG…); up to ``max_batch_size`` requests with that key join, the chosen lane's first, then
other lanes' in weight order (a free ride costs the engine nothing). With ``max_wait_s`` 0 the
batch starts at once with what queued while the engine was busy (opportunistic batching); a
positive wait holds an incomplete batch up to that long after its oldest request arrived.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping

from inference_consumer.work import WorkItem

_Entry = tuple[float, Hashable, WorkItem]


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
        self._queues: dict[str, deque[_Entry]] = {lane: deque() for lane in lanes}
        self._keys: dict[str, Counter[Hashable]] = {lane: Counter() for lane in lanes}
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
            if not queue:
                # A lane waking up starts at the current virtual time: idling earns no credit.
                self._pass[lane] = max(self._pass[lane], self._clock)
            # The key is computed once here, under the lock only for the append.
            key = self._batch_key(item)
            queue.append((time.monotonic(), key, item))
            self._keys[lane][key] += 1
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
        dropped: list[WorkItem] = []
        with self._cond:
            for lane, queue in self._queues.items():
                kept: deque[_Entry] = deque()
                for entry in queue:
                    if keep(entry[2]):
                        kept.append(entry)
                    else:
                        dropped.append(entry[2])
                        self._keys[lane][entry[1]] -= 1
                self._queues[lane] = kept
                self._keys[lane] = +self._keys[lane]
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
            first_at, key, _ = self._queues[lane][0]
            # Wait for companions until the batch is full or the oldest item waited long enough.
            while self._count(key) < self._max_batch_size and not self._closed:
                remaining = first_at + self._max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take(lane, key)

    def _next_lane(self) -> str:
        """The non-empty lane with the smallest pass (ties: the heavier lane)."""
        busy = [lane for lane in self._order if self._queues[lane]]
        return min(busy, key=lambda lane: self._pass[lane])

    def _count(self, key: Hashable) -> int:
        return sum(keys[key] for keys in self._keys.values())

    def _take(self, lane: str, key: Hashable) -> list[WorkItem]:
        batch: list[WorkItem] = []
        for name in (lane, *(n for n in self._order if n != lane)):
            if len(batch) >= self._max_batch_size:
                break
            if not self._keys[name][key]:
                continue
            queue = self._queues[name]
            kept: deque[_Entry] = deque()
            taken = 0
            while queue:
                entry = queue.popleft()
                if len(batch) < self._max_batch_size and entry[1] == key:
                    batch.append(entry[2])
                    taken += 1
                else:
                    kept.append(entry)
            self._queues[name] = kept
            self._keys[name][key] -= taken
            if not self._keys[name][key]:
                del self._keys[name][key]
            # Each lane pays for the slots its requests took.
            self._pass[name] += taken / self._weights[name]
        self._size -= len(batch)
        self._clock = self._pass[lane]
        return batch
