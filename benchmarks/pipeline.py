"""The whole path for the admission benchmarks: ingress → admission → internal lanes → workers.

``pipeline(bench, tag, ...)`` gives a ``Pipeline``: a private topic set with every topic
admission and the workers need, ``workers`` worker subprocesses serving the internal lanes and
``admissions`` admission subprocesses (``benchmarks.lane_runner``), a ``read_committed`` result
collector and a publisher that sends either *through admission* (to an ingress topic, with any
librdkafka partitioner) or *straight to the lanes* as if admitted (the no-admission baseline:
key = request_id with murmur2, the partition admission itself would choose).

Load is a *schedule*: ``(offset seconds, tenant, request_id)`` events, merged over tenants and
published by one thread at their times (open loop). ``poisson_times`` draws a seeded schedule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from benchmarks.harness import REPO_ROOT, BenchError, RequestFactory, ResultCollector
from benchmarks.session import Bench
from benchmarks.workers import WorkerPool, WorkerProcess
from connectors.kafka import make_consumer, make_producer
from connectors.s3 import make_s3_client
from connectors.settings import Settings
from connectors.topic_reader import read_to_end
from infra.topics import apply_topics, load_topic_specs
from schemas.records import Lane
from streams.admission.handler import ADMITTED_MS_HEADER

# Not needed by admission or the workers.
_UNUSED_TOPICS = ("f2p.analytics.v1",)


@dataclass(frozen=True)
class ProcSpec:
    """What ``benchmarks.lane_runner`` starts (``role`` worker or admission)."""

    role: str
    process_id: str
    group_id: str
    topic_suffix: str
    time_scale: float = 0.0
    max_batch_size: int = 1
    quotas_file: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def worker_id(self) -> str:  # what WorkerPool's messages name a process by
        return self.process_id


class PipelineProcess(WorkerProcess):
    """A ``benchmarks.lane_runner`` subprocess (same life cycle as a benchmark worker)."""

    def __init__(self, spec: ProcSpec, log_dir: Path) -> None:
        self.spec = spec  # type: ignore[assignment]
        self.log_path = log_dir / f"{spec.process_id}.log"
        self.stats_path = log_dir / f"{spec.process_id}.stats.json"
        payload = {**dataclasses.asdict(spec), "stats_path": str(self.stats_path)}
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.lane_runner", json.dumps(payload)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )


def fresh_topics(bench: Bench, tag: str) -> tuple[Settings, str]:
    """Every pipeline topic with a private suffix (deleted by ``bench.cleanup()``)."""
    suffix = f".bench-{tag}-{uuid.uuid4().hex[:6]}"
    specs = [
        s
        for s in load_topic_specs(suffix=suffix)
        if s.name.removesuffix(suffix) not in _UNUSED_TOPICS
    ]
    apply_topics(bench.topics.admin, specs)
    bench.topics.created.extend(s.name for s in specs)
    topics = bench.settings.topics.with_suffix(suffix)
    return dataclasses.replace(bench.settings, topics=topics), suffix


class SchedulePublisher:
    """Sends requests through admission (``via="ingress"``) or straight to the lanes."""

    def __init__(self, settings: Settings, codec: Any, *, partitioner: str = "murmur2_random"):
        self.settings = settings
        self.codec = codec
        self.producer = make_producer(settings, client_id="f2p-bench-load", partitioner=partitioner)
        self.sent: dict[str, float] = {}
        self.tenant_of: dict[str, str] = {}
        self.partition_of: dict[str, int] = {}  # where the producer's partitioner put it
        self.failed = 0

    def topic(self, lane: Lane, via: str) -> str:
        t = self.settings.topics
        if via == "ingress":
            return t.requests_interactive if lane is Lane.INTERACTIVE else t.requests_batch
        return t.lanes_interactive if lane is Lane.INTERACTIVE else t.lanes_batch

    def _delivered(self, rid: str) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self.failed += 1
            else:
                self.partition_of[rid] = msg.partition()

        return on_delivery

    def publish(
        self,
        events: list[tuple[float, str]],
        factories: dict[str, RequestFactory],
        *,
        via: str,
        key: str = "request_id",
    ) -> None:
        """Send ``(offset_s, tenant)`` events at their offsets from now (fresh request ids).

        Fills ``sent`` (request_id → send time) and ``tenant_of``; ``key`` ``none`` sends
        without a key (a foreign publisher)."""
        start = time.monotonic()
        for offset, tenant in events:
            delay = start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rid = str(uuid.uuid4())
            now = time.time()
            request = factories[tenant](rid, datetime.fromtimestamp(now, UTC))
            topic = self.topic(request.lane, via)
            value = self.codec.encode(topic, request)
            message_key = rid.encode() if key == "request_id" else None
            while True:
                try:
                    self.producer.produce(
                        topic, key=message_key, value=value, on_delivery=self._delivered(rid)
                    )
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.sent[rid] = now
            self.tenant_of[rid] = tenant
            self.producer.poll(0)
        if self.producer.flush(60) != 0:
            raise BenchError("requests were not delivered within 60 s")
        if self.failed:
            raise BenchError(f"{self.failed} requests failed to publish")

    def ids_of(self, tenant: str, since: float = 0.0, until: float = float("inf")) -> list[str]:
        """Request ids of ``tenant`` sent within [since, until)."""
        return [
            rid
            for rid, t in self.tenant_of.items()
            if t == tenant and since <= self.sent[rid] < until
        ]


class LaneWatcher:
    """Timestamps when each request becomes visible on an internal lane to a ``read_committed``
    reader, as a worker would see it: publish → that is the admission hop (transactions
    included), without the worker's and the engine's own noise."""

    def __init__(self, settings: Settings) -> None:
        topics = list(settings.topics.worker_lanes.values())
        self.consumer = make_consumer(
            settings, f"f2p-bench-lanes-{uuid.uuid4().hex[:8]}", config={"fetch.wait.max.ms": 10}
        )
        metadata = self.consumer.list_topics(timeout=10).topics
        self.consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata[t].partitions]
        )
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-lanes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self.consumer.poll(0.05)
            now = time.time()
            if first is None:
                continue
            for msg in [first, *self.consumer.consume(500, 0)]:
                key = msg.key()
                if msg.error() is None and key is not None:
                    self.seen.setdefault(key.decode(), now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.consumer.close()


def poisson_times(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival offsets of a Poisson process of ``rate`` per second over ``duration_s``."""
    times: list[float] = []
    if rate <= 0:
        return times
    t = rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def even_times(rate: float, duration_s: float) -> list[float]:
    """``rate`` evenly spaced arrivals per second over ``duration_s``."""
    return [i / rate for i in range(int(rate * duration_s))]


@dataclass
class Pipeline:
    """A live pipeline: settings, processes, result reader."""

    settings: Settings
    pool: WorkerPool
    collector: ResultCollector
    codec: Any
    label: str
    console: Any
    # (topic, partition) → admission instance that owns it (ingress and repartition topics).
    admission_owner: dict[tuple[str, int], str] = field(default_factory=dict)
    stats: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False

    def publisher(self, partitioner: str = "murmur2_random") -> SchedulePublisher:
        return SchedulePublisher(self.settings, self.codec, partitioner=partitioner)

    def wait(self, ids: list[str], timeout_s: float) -> bool:
        def progress(done: int, total: int) -> None:
            self.console.log(f"{self.label}: {done}/{total} results")

        return self.collector.wait(ids, timeout_s, progress, check=self.pool.check_alive)

    def warmup(self, factory: RequestFactory, via: str, n: int = 16, timeout_s: float = 90) -> None:
        """``n`` requests through the path under test, and their results: everything warm."""
        publisher = self.publisher()
        publisher.publish([(0.0, "warmup")] * n, {"warmup": factory}, via=via)
        if not self.wait(list(publisher.sent), timeout_s):
            raise BenchError(f"{self.label}: warm-up requests got no results in {timeout_s:.0f} s")

    def stop(self) -> list[dict[str, Any]]:
        if not self.stopped:
            self.stopped = True
            self.stats = self.pool.stop_all()
        return self.stats

    def admitted(self) -> dict[str, tuple[str, float]]:
        """request_id → (the lane admission put it in, when: its ``f2p-admitted-ms`` header)."""
        found: dict[str, tuple[str, float]] = {}
        for lane, topic in self.settings.topics.worker_lanes.items():
            for msg in read_to_end(self.settings, topic, timeout_s=60):
                key, at = msg.key(), dict(msg.headers() or ()).get(ADMITTED_MS_HEADER)
                if key is not None:
                    found[key.decode()] = (lane, int(at) / 1000 if at else float("nan"))
        return found


@contextlib.contextmanager
def pipeline(
    bench: Bench,
    tag: str,
    *,
    workers: int,
    admissions: int,
    time_scale: float,
    max_batch_size: int = 1,
    quotas_file: Path | None = None,
    worker_options: dict[str, Any] | None = None,
) -> Iterator[Pipeline]:
    """``workers`` settled workers on the internal lanes and ``admissions`` settled admission
    instances on a fresh topic set; everything stopped (gracefully) on exit."""
    settings, suffix = fresh_topics(bench, tag)
    run = uuid.uuid4().hex[:6]
    worker_group = f"f2p-bench-{tag}-workers-{run}"
    admission_group = f"f2p-bench-{tag}-admission-{run}"
    pool = WorkerPool(settings, bench.log_dir)
    collector = ResultCollector(settings, bench.codec)
    options = {**bench.ours_options, **(worker_options or {})}
    live: Pipeline | None = None
    try:
        specs = [
            ProcSpec("worker", f"{tag}-w{i}-{run}", worker_group, suffix, time_scale,
                     max_batch_size, options=options)
            for i in range(workers)
        ] + [
            ProcSpec("admission", f"{tag}-a{i}-{run}", admission_group, suffix,
                     quotas_file=str(quotas_file) if quotas_file else None)
            for i in range(admissions)
        ]  # fmt: skip
        pool.workers.extend(PipelineProcess(spec, bench.log_dir) for spec in specs)
        started = time.monotonic()
        pool.wait_settled(worker_group, settings.topics.lanes_batch, workers)
        owner: dict[tuple[str, int], str] = {}
        for topic in (settings.topics.requests_batch, settings.topics.admission_repartition):
            if admissions:
                members = pool.wait_settled(admission_group, topic, admissions)
                owner.update({(topic, p): m for m, parts in members.items() for p in parts})
        bench.console.log(
            f"{tag}: {workers} worker(s) and {admissions} admission instance(s) settled in "
            f"{time.monotonic() - started:.1f} s"
        )
        live = Pipeline(settings, pool, collector, bench.codec, tag, bench.console, owner)
        yield live
    finally:
        if live is not None:
            live.stop()
        else:
            pool.stop_all()
        collector.close()


def quotas_toml(tenants: dict[str, tuple[float, float]], default_rate: float = 1e6) -> str:
    """A quotas file (``infra/quotas.toml`` format): tenant → (GPU-s per second, burst GPU-s);
    tenants not listed (the warm-up) get a quota they cannot exhaust."""
    lines = [
        "[model]",
        "seconds_per_step = 0.3",
        'default_preset = "QUALITY"',
        "[defaults]",
        f"gpu_seconds_per_second = {default_rate}",
        f"burst_gpu_seconds = {default_rate}",
        'over_quota = "overquota"',
    ]
    for tenant, (rate, burst) in tenants.items():
        lines += [
            f'[tenants."{tenant}"]',
            f"gpu_seconds_per_second = {rate!r}",
            f"burst_gpu_seconds = {burst!r}",
        ]
    return "\n".join(lines) + "\n"


def delete_results(bench: Bench, tenants: list[str]) -> None:
    """Remove the result images of ``tenants`` (``bench.cleanup`` knows only its own)."""
    s3 = make_s3_client(bench.settings)
    bucket = bench.settings.results_bucket
    for tenant in tenants:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"tenants/{tenant}/"
        )
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def in_thread(name: str, call: Any) -> threading.Thread:
    """Run ``call`` on a daemon thread; its exception (if any) is in ``thread.errors``."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread
