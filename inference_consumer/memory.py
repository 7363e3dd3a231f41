"""The worker's memory, bounded in bytes rather than in requests.

Two budgets (issue 7: 40 legal 4096² 16-bit PNGs took a worker from 1.1 to 4.4 GiB):

* ``DecodeBudget`` bounds the pixels being decoded at once. A 130 KB PNG can decode to 100 MB;
  four prefetch threads doing that together is what the budget prevents. A decode reserves its
  pixel bytes first and waits while others hold the budget (one image larger than the whole
  budget runs alone).
* ``HeldBytes`` counts what waits in memory between stages (decoded faces, already scaled down
  to the engine's condition area, plus raw message bytes). Above its limit the worker stops
  fetching (the loop pauses every partition) until work drains.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from schemas.images import pixel_bytes


def image_bytes(image: Image.Image) -> int:
    """Bytes held by a loaded image."""
    return pixel_bytes(image.size, image.mode)


class DecodeBudget:
    """A byte semaphore for decodes in progress."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self._used = 0
        self._cond = threading.Condition()
        self.peak = 0

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        need = min(nbytes, self.limit)  # larger than everything: wait until it runs alone
        with self._cond:
            while self._used + need > self.limit:
                self._cond.wait()
            self._used += need
            self.peak = max(self.peak, self._used)
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used


class HeldBytes:
    """Bytes held by in-flight work between stages; ``over()`` pauses intake."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self._held = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self._held += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    def over(self) -> bool:
        return self.held >= self.limit
