"""RequestBatcher: lanes in priority order, compatible requests grouped into one engine call.

The engine thread calls :meth:`RequestBatcher.next_batch`. A batch is formed from the
highest-priority lane that has work: its oldest request picks the batch key (size, steps, CFG…),
then up to ``max_batch_size`` requests with the same key join — waiting at most ``max_wait_s``
after the oldest one arrived for more to come. Requests with other keys keep their place.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from inference_consumer.work import WorkItem


class RequestBatcher:
    """A bounded multi-lane queue that hands out batches of compatible work items."""

    def __init__(
        self,
        lanes: tuple[str, ...],
        batch_key: Callable[[WorkItem], Hashable],
        *,
        max_batch_size: int,
        max_wait_s: float,
    ) -> None:
        self._lanes = {lane: deque() for lane in lanes}
        self._order = lanes
        self._batch_key = batch_key
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: WorkItem, lane: str) -> None:
        """Queue an item; ``lane`` must be one of the configured lanes (unknown → last lane)."""
        with self._cond:
            queue = self._lanes.get(lane, self._lanes[self._order[-1]])
            # The key is computed once here: next_batch scans the queue on every wake-up.
            queue.append((time.monotonic(), self._batch_key(item), item))
            self._cond.notify()

    def close(self) -> None:
        """Wake the engine thread; ``next_batch`` returns [] from now on once empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._lanes.values())

    def drop(self, keep: Callable[[WorkItem], bool]) -> list[WorkItem]:
        """Remove and return queued items for which ``keep`` is False (revoked partitions)."""
        dropped = []
        with self._cond:
            for lane, queue in self._lanes.items():
                kept = deque()
                for entry in queue:
                    (kept if keep(entry[2]) else dropped).append(entry)
                self._lanes[lane] = kept
        return [entry[2] for entry in dropped]

    def next_batch(self, timeout_s: float = 0.5) -> list[WorkItem]:
        """Block up to ``timeout_s`` for work; return one batch (possibly []) of equal keys."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not any(self._lanes.values()):
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return []
                self._cond.wait(remaining)
            lane = next(q for q in (self._lanes[name] for name in self._order) if q)
            first_at, key, _ = lane[0]
            # Wait for companions until the batch is full or the oldest item waited long enough.
            while self._count(key) < self._max_batch_size and not self._closed:
                remaining = first_at + self._max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take(key)

    def _count(self, key: Hashable) -> int:
        return sum(1 for q in self._lanes.values() for _, k, _ in q if k == key)

    def _take(self, key: Hashable) -> list[WorkItem]:
        batch: list[WorkItem] = []
        for name in self._order:
            queue = self._lanes[name]
            kept = deque()
            while queue:
                entry = queue.popleft()
                if len(batch) < self._max_batch_size and entry[1] == key:
                    batch.append(entry[2])
                else:
                    kept.append(entry)
            self._lanes[name] = kept
        return batch
