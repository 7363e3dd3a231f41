"""How fast this machine ran Python while a scenario ran: a speed indicator beside its figures.

On the shared 2-vCPU machine the same pure-Python work costs up to twice the CPU time from one
second to the next (2026-12-06: this module's unit took 4.7 ms in one sample and 19.6 ms in
another, with no steal time and no page faults), and per-request CPU figures drift with it. In
ten control-plane runs of the same tree within 15 minutes the worker's CPU per request ranged
1.64-2.59 ms while the unit's median ranged 5.1-9.8 ms, correlated (r = 0.79), but not in
proportion: worker / unit varied as much as the worker figure alone. So the unit is an
indicator, not a normaliser: two runs whose unit medians differ by more than ~20 % ran on
differently fast machines, and an A/B across them measures the machine (docs/BENCHMARKS.md,
*Machine speed*).

``SpeedSampler`` runs ``reference_unit`` in a separate process (its own interpreter: no GIL
shared with the harness) every ``interval_s`` while a scenario runs and records the CPU time
(``thread_time``) of each run: CPU time, not wall time, so waiting for a core does not count,
only how fast the core executes interpreter work when it has it. It costs ~1-2 % of one core,
the same for both implementations.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any

# ~5 ms of interpreter work on a fast day: dict updates and string formatting, what the worker's
# own code mostly does.
UNIT_ITERATIONS = 20_000


def reference_unit() -> int:
    counts: dict[str, int] = {}
    for i in range(UNIT_ITERATIONS):
        key = f"k{i % 1000}"
        counts[key] = counts.get(key, 0) + i
    return len(counts)


def unit_cpu_ms() -> float:
    """CPU milliseconds of one ``reference_unit`` on this thread."""
    started = time.thread_time()
    reference_unit()
    return (time.thread_time() - started) * 1000


class SpeedSampler:
    """Samples ``unit_cpu_ms`` every ``interval_s`` in a child process until ``stop``."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self._process: subprocess.Popen[str] | None = None
        if os.environ.get("F2P_BENCH_MACHINE_SPEED") == "0":
            return  # an experiment without the sampler's own CPU
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.machine_speed", str(interval_s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def stop(self) -> list[float]:
        """The samples so far (ms each); the child is stopped."""
        if self._process is None:
            return []
        self._process.terminate()
        try:
            output, _ = self._process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            output, _ = self._process.communicate()
        samples = []
        for line in output.splitlines():
            try:
                samples.append(float(line))
            except ValueError:
                continue  # a line cut by the termination
        return samples


def summarize(samples: list[float]) -> dict[str, Any]:
    """The figures a scenario reports: the median unit time (None without samples), the spread
    (10th and 90th percentile) and the count."""
    if not samples:
        return {"machine_unit_ms": None, "machine_unit_p10_p90_ms": None, "machine_samples": 0}
    ordered = sorted(samples)
    spread = None
    if len(ordered) >= 2:
        deciles = statistics.quantiles(ordered, n=10)
        spread = (round(deciles[0], 2), round(deciles[-1], 2))
    return {
        "machine_unit_ms": round(statistics.median(ordered), 2),
        "machine_unit_p10_p90_ms": spread,
        "machine_samples": len(ordered),
    }


def main(argv: list[str]) -> int:
    interval_s = float(argv[0]) if argv else 0.5
    while True:
        print(f"{unit_cpu_ms():.3f}", flush=True)
        time.sleep(interval_s)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
