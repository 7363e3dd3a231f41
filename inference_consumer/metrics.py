"""Prometheus metrics of a worker (served with /healthz and /readyz by ``connectors.health``).

Each worker has its own ``CollectorRegistry`` so several workers can live in one process (tests,
benchmarks). GPU utilisation is exported when NVML (``pynvml``) is importable and finds a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from inference_consumer.threads import thread_cpu_by_stage

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class StageCpu(Collector):
    """``f2p_worker_thread_cpu_seconds{stage}``: CPU of the process's threads by pipeline stage,
    read from their clocks at scrape time (nothing on the hot path). Per process: workers that
    share one (tests) report the same totals."""

    def __init__(self) -> None:
        # The stage the main thread runs; set by Worker.run (None: it runs none of them).
        self.main_thread_stage: str | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "f2p_worker_thread_cpu_seconds",
            "CPU time of the worker's threads by stage (loop, prefetch, engine, output), native "
            "work without the GIL included",
            labels=["stage"],
        )
        for stage, seconds in thread_cpu_by_stage(main_thread_stage=self.main_thread_stage).items():
            family.add_metric([stage], seconds)
        yield family


class WorkerMetrics:
    """The worker's instruments (names prefixed ``f2p_worker_``)."""

    def __init__(self, worker_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.end_to_end_seconds = Histogram(
            "f2p_worker_end_to_end_seconds",
            "Submit to committed result, by status",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "f2p_worker_queue_wait_seconds",
            "Arrival at the worker to engine start",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_seconds = Histogram(
            "f2p_worker_engine_seconds",
            "Wall time of one engine.generate call",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "f2p_worker_batch_size",
            "Requests per engine call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )
        self.results = Counter(
            "f2p_worker_results", "Committed outcomes by status", ["status"], registry=r
        )
        self.errors = Counter(
            "f2p_worker_errors", "Failures by machine-readable reason", ["reason"], registry=r
        )
        self.transactions = Counter(
            "f2p_worker_transactions", "Transactions by outcome", ["outcome"], registry=r
        )
        self.in_flight = Gauge("f2p_worker_in_flight", "Polled, not yet committed", registry=r)
        self.paused_partitions = Gauge(
            "f2p_worker_paused_partitions", "Partitions paused by backpressure", registry=r
        )
        self.assigned_partitions = Gauge(
            "f2p_worker_assigned_partitions", "Partitions currently assigned", registry=r
        )
        self.consumer_lag = Gauge(
            "f2p_worker_consumer_lag", "High watermark minus position, summed", registry=r
        )
        self.gpu_utilisation = Gauge(
            "f2p_worker_gpu_utilisation_ratio", "NVML GPU utilisation (0..1)", ["gpu"], registry=r
        )
        self.held_bytes = Gauge(
            "f2p_worker_held_bytes", "Bytes held by in-flight work between stages", registry=r
        )
        self.redelivered_done = Counter(
            "f2p_worker_redelivered_done",
            "Redelivered messages skipped because their outcome was already committed",
            registry=r,
        )
        self.fetch_restarts = Counter(
            "f2p_worker_fetch_restarts",
            "Partitions assigned again because the consumer never started fetching them",
            registry=r,
        )
        self.engine_recompiles = Gauge(
            "f2p_worker_engine_recompiles",
            "torch.compile graphs built after warm-up (0 when not compiled)",
            registry=r,
        )
        self.producers_created = Counter(
            "f2p_worker_producers_created",
            "Transactional producers created (more than one: replaced after a fatal error)",
            registry=r,
        )
        self.stage_cpu = StageCpu()
        r.register(self.stage_cpu)
        self.worker_id = worker_id

    # -- connectors.eos.loop.LoopMetrics -------------------------------------------------------

    def transaction(self, outcome: str) -> None:
        self.transactions.labels(outcome=outcome).inc()

    def set_assignment(self, assigned: int, paused: int, in_flight: int) -> None:
        self.assigned_partitions.set(assigned)
        self.paused_partitions.set(paused)
        self.in_flight.set(in_flight)

    def set_lag(self, lag: int) -> None:
        self.consumer_lag.set(lag)

    def redelivered(self, count: int) -> None:
        self.redelivered_done.inc(count)

    def fetch_restarted(self) -> None:
        self.fetch_restarts.inc()

    def sample_gpu(self) -> None:
        """Read NVML utilisation when available; silently absent on CPU-only machines."""
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]

            pynvml.nvmlInit()
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                self.gpu_utilisation.labels(gpu=str(index)).set(rates.gpu / 100)
        except Exception:  # no pynvml, no driver, no GPU: nothing to report
            return
