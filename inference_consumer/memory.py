"""The worker's memory, bounded in bytes rather than in requests.

Two budgets (issue 7: 40 legal 4096² 16-bit PNGs took a worker from 1.1 to 4.4 GiB):

* ``DecodeBudget`` bounds the pixels being decoded at once. A 130 KB PNG can decode to 100 MB;
  four prefetch threads doing that together is what the budget prevents. A decode reserves its
  pixel bytes first and waits while others hold the budget (one image larger than the whole
  budget runs alone).
* ``HeldBytes`` counts what waits in memory between stages (decoded faces, already scaled down
  to the engine's condition area, plus raw message bytes). Above its limit the worker stops
  fetching (the loop pauses every partition) until work drains.

A budget bounds what is allocated, not what the process keeps: glibc serves each prefetch thread
from its own arena, and after the first large block is freed it raises its mmap threshold, so the
next 16 MiB blocks of Pillow's images come from the arenas and stay there when freed. Measured on
the 40-PNG case: RSS +530 MiB kept after the decodes, +73 MiB peak with ``malloc_trim`` after each
large decode (and Pillow's EXIF copy avoided, ``schemas/images.py``). So a large reservation ends
with ``malloc_trim(0)`` (glibc only; elsewhere nothing happens).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from PIL import Image

from schemas.images import pixel_bytes

log = logging.getLogger(__name__)

# Decodes reserving at least this much give their freed memory back to the system when done.
TRIM_ABOVE_BYTES = 32 * 1024 * 1024


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)`` (returns free memory of every arena to the system), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


MALLOC_TRIM = _malloc_trim()


def image_bytes(image: Image.Image) -> int:
    """Bytes held by a loaded image."""
    return pixel_bytes(image.size, image.mode)


class DecodeBudget:
    """A byte semaphore for decodes in progress; a large one trims the heap when it ends."""

    def __init__(
        self,
        limit_bytes: int,
        *,
        trim_above: int = TRIM_ABOVE_BYTES,
        trim: Callable[[], object] | None = MALLOC_TRIM,
    ) -> None:
        self.limit = limit_bytes
        self._used = 0
        self._cond = threading.Condition()
        self.peak = 0
        self.trim_above = trim_above
        self._trim = trim
        self.trims = 0

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
            if nbytes >= self.trim_above and self._trim is not None:
                self._release_to_system()

    def _release_to_system(self) -> None:
        trim = self._trim
        if trim is None:
            return
        try:
            trim()
            self.trims += 1
        except Exception as exc:  # only memory hygiene: never fail a decode for it
            log.debug("malloc_trim failed: %s", exc)

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
