"""OS-level names for the worker's threads, so that ``top -H``, ``/proc`` and profilers tell the
stages apart (CPython sets them itself only from 3.14 on).

Each stage's threads are named ``f2p-<stage>...`` (Linux allows 15 bytes); ``stage_of`` maps a
name back to its stage. ``thread_cpu_by_stage`` reads the threads' CPU clocks from ``/proc``:
it is what ``f2p_worker_thread_cpu_seconds`` exports and what ``f2p bench`` splits the worker's
CPU with. Unlike a GIL-sampling profile, a thread's clock counts the native work that runs
without the GIL (libwebp's encoder, obstore's requests on the calling thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The worker's stages, in pipeline order; "loop" is the poll thread (consume, commit).
STAGES = ("loop", "prefetch", "engine", "output")

_PREFIX = "f2p-"
_PR_SET_NAME = 15
_MAX_NAME_BYTES = 15


def _load_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def name_this_thread(stage: str, suffix: str = "") -> None:
    """Give the calling thread the OS name ``f2p-<stage><suffix>`` (cut to 15 bytes); a no-op
    where the platform has no thread names. The Python-level name is left as it is."""
    if _prctl is None:
        return
    name = f"{_PREFIX}{stage}{suffix}".encode()[:_MAX_NAME_BYTES]
    if _prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0) != 0:  # type: ignore[operator]
        log.debug("prctl(PR_SET_NAME) failed: errno %d", ctypes.get_errno())


def name_pool_thread(stage: str) -> None:
    """``ThreadPoolExecutor`` initializer: ``f2p-output_0`` for the pool's ``output_0``."""
    python_name = threading.current_thread().name
    index = python_name.rpartition("_")[2]
    name_this_thread(stage, f"_{index}" if index.isdigit() else "")


def stage_pool(stage: str, threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads named for ``stage``, all started before it is returned.

    ``ThreadPoolExecutor`` starts a thread inside ``submit`` when no idle one is left, and
    ``Thread.start`` waits until the new thread runs, which needs the GIL: on a busy machine
    the engine thread waited 20-67 ms in one ``submit`` of its first full batch's outputs.
    """
    pool = ThreadPoolExecutor(
        threads, thread_name_prefix=stage, initializer=name_pool_thread, initargs=(stage,)
    )
    everyone = threading.Barrier(threads + 1, timeout=60)  # raises if threads cannot start
    for _ in range(threads):  # each holds a thread until all are up, so none is reused
        pool.submit(everyone.wait)
    everyone.wait()
    return pool


def stage_of(os_name: str) -> str | None:
    """The stage of a thread from its OS name; None for threads that are not a stage's."""
    if not os_name.startswith(_PREFIX):
        return None
    rest = os_name[len(_PREFIX) :]
    return next((stage for stage in STAGES if rest.startswith(stage)), None)


@dataclass(frozen=True)
class ThreadCpu:
    """One live thread of a process: its id, OS name and CPU seconds so far."""

    tid: int
    name: str
    user_s: float
    system_s: float


def thread_cpu_times(pid: int | None = None) -> list[ThreadCpu]:
    """The live threads of ``pid`` (this process by default) from ``/proc``; threads that end
    while they are read are left out."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        tasks = list(Path(f"/proc/{pid or 'self'}/task").iterdir())
    except OSError:
        return []
    threads = []
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # The name is in parentheses and may itself hold spaces and parentheses.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        threads.append(
            ThreadCpu(int(task.name), name, int(fields[11]) / ticks, int(fields[12]) / ticks)
        )
    return threads


def thread_cpu_by_stage(
    pid: int | None = None, *, main_thread_stage: str | None = None
) -> dict[str, float]:
    """CPU seconds (user + system) of ``pid``'s live threads (this process by default), summed
    by stage. Threads that ended are not counted, and neither are threads of no stage.

    The main thread keeps the process's name (``ps``, ``pgrep`` show it), so it is never
    renamed: ``main_thread_stage`` says which stage it runs (``f2p worker`` polls on it)."""
    main_tid = pid or os.getpid()
    totals = dict.fromkeys(STAGES, 0.0)
    for thread in thread_cpu_times(pid):
        stage = main_thread_stage if thread.tid == main_tid else stage_of(thread.name)
        if stage is not None:
            totals[stage] += thread.user_s + thread.system_s
    return totals
