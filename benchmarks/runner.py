"""One benchmark worker process: ``python -m benchmarks.runner '<WorkerSpec as JSON>'``.

Runs our ``Worker`` or the ``NaiveWorker`` on a ``sim`` engine wrapped to record the wall-clock
interval of every ``generate`` call, until SIGTERM; then writes those intervals (and the sim
engine's own ``busy_seconds``) to the spec's ``stats_path``. After ``kill -9`` nothing is written.

Connection settings come from the environment / embedded stack like ``f2p worker``; the topic
set is the spec's private suffix (``load_settings(topic_suffix=...)``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectors.settings import load_settings
from inference_consumer.engines.base import Engine, EngineOutput, EngineRequest, GenerationParams
from inference_consumer.engines.sim import SimEngine
from infra.logs import configure_logging

log = logging.getLogger("benchmarks.runner")


class RecordingEngine(Engine):
    """Delegates to an engine and records ``(start, end, batch size)`` of each ``generate``."""

    def __init__(self, inner: SimEngine) -> None:
        self.inner = inner
        self.name = inner.name
        self.model_info = inner.model_info
        self.max_batch_size = inner.max_batch_size
        self.intervals: list[tuple[float, float, int]] = []
        # (start, CPU seconds of the call's thread): the simulated GPU's own work (drawing the
        # images) runs in the worker process; the control plane reports the worker without it.
        self.cpu: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def batch_key(self, params: GenerationParams, prompt: str | None = None) -> tuple:
        return self.inner.batch_key(params, prompt)

    def generate(self, batch: Sequence[EngineRequest]) -> list[EngineOutput]:
        start, cpu = time.time(), time.thread_time()
        try:
            return self.inner.generate(batch)
        finally:
            with self._lock:
                self.intervals.append((start, time.time(), len(batch)))
                self.cpu.append((start, time.thread_time() - cpu))


def build_worker(spec: dict[str, Any], engine: Engine) -> Any:
    """Our Worker or the NaiveWorker, serving the internal batch lane of the spec's topic set
    only (the worker's own figures: the bench publishes to the lane, as admission would)."""
    settings = load_settings(topic_suffix=spec["topic_suffix"])
    lanes = (settings.topics.lanes_batch,)
    if spec["impl"] == "naive":
        from benchmarks.naive import NaiveConfig, NaiveWorker

        # The options that the naive worker has too (the S3 client, membership): the rest are
        # tuning knobs of ours.
        known = {f.name for f in dataclasses.fields(NaiveConfig)}
        shared = {k: v for k, v in spec.get("options", {}).items() if k in known}
        naive_config = NaiveConfig(
            worker_id=spec["worker_id"], group_id=spec["group_id"], lanes=lanes, **shared
        )
        return NaiveWorker(settings, naive_config, engine)
    from inference_consumer.config import WorkerConfig
    from inference_consumer.worker import Worker

    config = WorkerConfig(
        worker_id=spec["worker_id"],
        group_id=spec["group_id"],
        lanes=lanes,
        serve_retry_topic=False,
        **spec.get("options", {}),
    )
    return Worker(settings, config, engine)


def trace_commits(worker: Any) -> list[tuple[float, float, int]]:
    """Record ``(start, end, outcomes)`` of every transaction the worker commits: wraps the
    commit method of this one worker instance."""
    spans: list[tuple[float, float, int]] = []
    if hasattr(worker, "loop"):  # ours: every checkpoint's start → finish
        from connectors.eos.checkpoint import Checkpoint

        inner_start, inner_finish = Checkpoint.start, Checkpoint.finish
        started: dict[int, float] = {}

        def start(self: Any, *args: Any) -> bool:
            started[id(self)] = time.time()
            return inner_start(self, *args)

        def finish(self: Any, *args: Any) -> bool:
            done = inner_finish(self, *args)
            if done:
                spans.append(
                    (started.pop(id(self), time.time()), time.time(), len(self.completions))
                )
            return done

        Checkpoint.start = start  # type: ignore[method-assign,assignment]
        Checkpoint.finish = finish  # type: ignore[method-assign,assignment]
    else:
        naive_commit = worker.commit

        def commit_one(*args: Any) -> None:
            start = time.time()
            try:
                naive_commit(*args)
            finally:
                spans.append((start, time.time(), 1))

        worker.commit = commit_one
    return spans


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    configure_logging("INFO")
    if os.environ.get("F2P_BENCH_SWITCH_INTERVAL_MS"):  # experiment: the GIL hand-off period
        sys.setswitchinterval(float(os.environ["F2P_BENCH_SWITCH_INTERVAL_MS"]) / 1000)
    # The sim's default seconds_per_step: scenarios size time_scale with the same default
    # (``expected_service_time``).
    sim = SimEngine(max_batch_size=spec["max_batch_size"], time_scale=spec["time_scale"])
    engine = RecordingEngine(sim)
    worker = build_worker(spec, engine)
    # Every transaction's span (a few microseconds each): results per transaction and the time
    # one is open are figures of their own. F2P_BENCH_TRACE=0 turns it off.
    commits = trace_commits(worker) if os.environ.get("F2P_BENCH_TRACE", "1") != "0" else []

    def on_signal(signum: int, _frame: object) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    finally:
        stats = {
            "worker_id": spec["worker_id"],
            "engine_intervals": engine.intervals,
            "engine_cpu": engine.cpu,
            "busy_seconds": sim.busy_seconds,
            "calls": sim.calls,
            "commits": commits,
        }
        Path(spec["stats_path"]).write_text(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
