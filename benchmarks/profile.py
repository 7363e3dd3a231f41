"""Where a worker's CPU goes: per-thread-kind CPU from /proc, and a py-spy profile.

``thread_cpu(pid)`` splits a process's CPU by what runs on each thread: librdkafka's threads
(``rdk:*``), the Rust runtime of obstore (``tokio-*``) and the rest, which in our worker are the
Python threads (poll loop, prefetch, engine, output). py-spy sees only the last kind, so the
split says how much of the total a Python profile can explain.

``Profiler`` attaches ``py-spy record --gil --format raw`` to a running worker for a window
(samples of the thread holding the GIL: Python CPU, not threads blocked in native waits)
(``F2P_BENCH_PROFILE=1 f2p bench -s control``); ``summarize`` turns the collapsed stacks into
the functions that hold the most samples (self and inclusive), which docs/BENCHMARKS.md quotes.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from inference_consumer.threads import thread_cpu_times

THREAD_KINDS = ("python", "librdkafka", "obstore")


def thread_kind(name: str) -> str:
    if name.startswith("rdk:"):
        return "librdkafka"
    if name.startswith("tokio"):
        return "obstore"
    return "python"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s live threads by kind (threads that ended are not counted), and
    ``python_kernel``: the part of the Python threads' that the kernel spent for them (system
    calls, futex wake-ups of thread hand-offs, the GIL's condition variable)."""
    totals = dict.fromkeys((*THREAD_KINDS, "python_kernel"), 0.0)
    for thread in thread_cpu_times(pid):
        kind = thread_kind(thread.name)
        totals[kind] += thread.user_s + thread.system_s
        if kind == "python":
            totals["python_kernel"] += thread.system_s
    return totals


def py_spy() -> str | None:
    """The py-spy executable of this interpreter's environment, if installed."""
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` of one process until ``stop()``; raw collapsed stacks in ``path``."""

    def __init__(self, pid: int, path: Path, *, rate: int = 200) -> None:
        self.path = path
        exe = py_spy()
        self.proc: subprocess.Popen[bytes] | None = None
        if exe is None:
            return
        self.proc = subprocess.Popen(
            # --nonblocking: the worker is not paused per sample (its timing stays honest).
            [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
             "--nonblocking", "--gil", "--output", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> Path | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        return self.path if self.path.exists() else None


def summarize(raw: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """The ``top`` functions by self and by inclusive share of samples (0..1), and the share of
    each thread's root function (what the thread is: loop, prefetch, engine, output)."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    roots: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        roots[_thread_root(frames)] += count
    if not total:
        return {"self": [], "inclusive": [], "threads": []}

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(top)]

    return {"self": shares(self_counts), "inclusive": shares(inclusive), "threads": shares(roots)}


def _short(frame: str) -> str:
    """``put (obstore/_put.py:98)`` → ``obstore/_put.py:put`` (line numbers dropped)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{path}:{name}" if path else name


def _thread_root(frames: list[str]) -> str:
    """The first frame of ours below the threading machinery: what the thread does."""
    for frame in frames:
        if frame.split(":")[0].startswith(("inference_consumer/", "connectors/", "benchmarks/")):
            return frame
    return frames[0]
