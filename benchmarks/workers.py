"""Worker subprocesses for the benchmarks, and the CPU they (and the machine) use.

Workers run as ``python -m benchmarks.runner '<spec>'`` so that they do not share a GIL with the
harness or with each other, and so that ``kill -9`` is real.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupState

from benchmarks.harness import PARTITIONS, REPO_ROOT, BenchError
from connectors.kafka import make_admin
from connectors.settings import Settings

log = logging.getLogger(__name__)


# -- workers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What ``benchmarks.runner`` starts: which implementation, engine timing, worker options."""

    impl: str  # "ours" or "naive"
    worker_id: str
    group_id: str
    topic_suffix: str
    time_scale: float
    max_batch_size: int = 4
    options: dict[str, Any] = field(default_factory=dict)  # WorkerConfig overrides (ours only)


class WorkerProcess:
    """One worker subprocess; its stderr goes to a log file, its stats to a JSON file."""

    def __init__(self, spec: WorkerSpec, log_dir: Path, *, incarnation: int = 0) -> None:
        self.spec = spec
        name = spec.worker_id if not incarnation else f"{spec.worker_id}.{incarnation}"
        self.log_path = log_dir / f"{name}.log"
        self.stats_path = log_dir / f"{name}.stats.json"
        payload = {**dataclasses.asdict(spec), "stats_path": str(self.stats_path)}
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.runner", json.dumps(payload)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """``kill -9``: no drain, no commit, no goodbye to the group."""
        if self.alive():
            self.proc.kill()

    def wait(self, timeout_s: float) -> dict[str, Any]:
        """Wait for exit (killing after ``timeout_s``); return the stats the runner wrote."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("worker %s did not stop in %.0f s; killing", self.spec.worker_id, timeout_s)
            self.proc.kill()
            self.proc.wait()
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class WorkerPool:
    """Starts workers, waits until their group has settled, stops them all at once."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.admin = make_admin(settings)
        self.workers: list[WorkerProcess] = []

    def start(self, specs: Iterable[WorkerSpec]) -> list[WorkerProcess]:
        started = [WorkerProcess(spec, self.log_dir) for spec in specs]
        self.workers.extend(started)
        return started

    def restart(self, worker: WorkerProcess) -> WorkerProcess:
        """A new process with ``worker``'s spec (same worker id, so the same transactional.id
        and, with static membership, the same group.instance.id): a pod that comes back."""
        incarnation = sum(1 for w in self.workers if w.spec == worker.spec)
        again = WorkerProcess(worker.spec, self.log_dir, incarnation=incarnation)
        self.workers.append(again)
        return again

    def check_alive(self, allow_dead: Iterable[WorkerProcess] = ()) -> None:
        allowed = set(map(id, allow_dead))
        for worker in self.workers:
            if id(worker) not in allowed and not worker.alive():
                raise BenchError(
                    f"worker {worker.spec.worker_id} exited with {worker.proc.returncode}:\n"
                    + worker.log_tail()
                )

    def wait_settled(
        self, group_id: str, topic: str, members: int, timeout_s: float = 90
    ) -> dict[str, list[int]]:
        """Block until ``members`` members share ``topic``'s partitions evenly; return them.

        Returns ``{worker id: [partitions]}``.
        """
        deadline = time.monotonic() + timeout_s
        want = PARTITIONS // members
        assignment: dict[str, list[int]] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                description = self.admin.describe_consumer_groups([group_id])[group_id].result()
            except Exception:  # the group does not exist yet
                time.sleep(0.25)
                continue
            assignment = {
                # Static members are named by instance id; dynamic ones by client.id, which
                # the client factories make "<worker id>@<host>".
                m.group_instance_id or m.client_id.split("@")[0]: sorted(
                    tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic
                )
                for m in description.members
            }
            counts = sorted(len(parts) for parts in assignment.values())
            if (
                description.state == ConsumerGroupState.STABLE
                and len(assignment) == members
                and counts == [want] * members
            ):
                return assignment
            time.sleep(0.25)
        raise BenchError(f"group {group_id} did not settle on {members} members: {assignment}")

    def stop_all(self, timeout_s: float = 40) -> list[dict[str, Any]]:
        """SIGTERM every worker at once (graceful drain), then collect their stats."""
        for worker in self.workers:
            worker.terminate()
        return [worker.wait(timeout_s) for worker in self.workers]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot; busy excludes idle and iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def stack_pids() -> dict[str, int]:
    """Process ids of the embedded stack's Kafka, S3 and registry (empty for a remote cluster)."""
    try:
        from infra.stack.config import load_stack_config
        from infra.stack.launcher import stack_status

        components = stack_status(load_stack_config(), probe=False)["components"]
    except Exception:  # no embedded stack: nothing to attribute
        return {}
    return {
        name: info["pid"]
        for name, info in components.items()
        if info.get("state") == "running" and info.get("pid")
    }


class CpuWindow:
    """CPU used between construction and ``stop()``: by the machine and by named processes."""

    def __init__(self, processes: dict[str, list[int]]) -> None:
        self._machine = machine_busy()
        self._start = {
            name: {pid: cpu_seconds(pid) for pid in pids} for name, pids in processes.items()
        }
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """``wall_s``, ``machine_busy_ratio`` (0..1 of all CPUs) and ``<name>_cpu_s`` each."""
        busy, total = machine_busy()
        busy0, total0 = self._machine
        usage = {
            "wall_s": time.monotonic() - self._wall,
            "machine_busy_ratio": (busy - busy0) / max(1, total - total0),
        }
        for name, start in self._start.items():
            usage[f"{name}_cpu_s"] = sum(cpu_seconds(pid) - s for pid, s in start.items())
        return usage
