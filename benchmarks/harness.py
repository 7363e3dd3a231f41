"""The benchmark harness: private topics, worker subprocesses, load at a target rate, results.

What is measured, precisely:

* **sent** — ``time.time()`` in the harness just before ``produce()`` of a request; the request's
  ``submitted_at`` is the same instant (truncated to milliseconds by Avro).
* **received** — ``time.time()`` in the harness when its ``read_committed`` reader returns the
  result record. A result is only visible once the worker's transaction has committed, so
  ``received - sent`` is *publish → committed result*, plus the reader's own fetch latency
  (``fetch.wait.max.ms=10``). Harness and workers share one host and one clock.
* **engine** — ``timings.engine_ms`` of the result: the wall time of the ``generate`` call that
  made it (for a batch, the whole batch's call).

Workers run as subprocesses (``python -m benchmarks.runner``) so they do not share the GIL with
the harness or with each other; the harness only publishes and reads.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from connectors.kafka import located, make_admin, make_consumer, make_producer
from connectors.partitioner import partition_for
from connectors.registry import make_registry_client
from connectors.settings import Settings
from f2p_errors import F2PError
from infra.topics import apply_topics, load_topic_specs
from schemas.codec import AvroCodec
from schemas.records import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8  # of the request lanes in infra/topics.toml; one worker per partition at most
# The lanes a bench topic set needs: the batch lane carries the load; interactive and analytics
# are not used (workers are given the batch lane only, so 8 partitions spread evenly).
_UNUSED_TOPICS = ("f2p.requests.interactive", "f2p.analytics.v1")


class BenchError(F2PError):
    """A benchmark could not run to completion (a worker died, the group never settled, ...)."""


# -- keys ------------------------------------------------------------------------------------------


def partition_of(request_id: str, partitions: int = PARTITIONS) -> int:
    """The partition the default partitioner sends ``request_id`` (as the key) to."""
    return partition_for(request_id, partitions)


def balanced_request_ids(n: int, partitions: int = PARTITIONS) -> list[str]:
    """``n`` fresh uuid4 request ids, in partition round-robin order.

    Keys still go through the default partitioner; the ids are drawn so that every partition gets
    the same share (any prefix of the list is balanced too). Random ids would leave the busiest
    partition ~10 % above the mean at these sizes, and with one partition per worker that skew,
    not the worker, would set the scaling figures.
    """
    buckets: list[list[str]] = [[] for _ in range(partitions)]
    per = -(-n // partitions)
    while min(len(b) for b in buckets) < per:
        rid = str(uuid.uuid4())
        bucket = buckets[partition_of(rid, partitions)]
        if len(bucket) < per:
            bucket.append(rid)
    return [buckets[i % partitions][i // partitions] for i in range(n)]


# -- topics ----------------------------------------------------------------------------------------


class BenchTopics:
    """Creates a private topic set per run and deletes them all at the end of the suite."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = make_admin(settings)
        self.created: list[str] = []

    def fresh(self, tag: str) -> tuple[Settings, str]:
        """A new private topic set ``<topic>.bench-<tag>-<random>``: its settings and suffix."""
        suffix = f".bench-{tag}-{uuid.uuid4().hex[:6]}"
        specs = [
            s
            for s in load_topic_specs(suffix=suffix)
            if s.name.removesuffix(suffix) not in _UNUSED_TOPICS
        ]
        apply_topics(self.admin, specs)
        self.created.extend(s.name for s in specs)
        topics = self.settings.topics.with_suffix(suffix)
        return dataclasses.replace(self.settings, topics=topics), suffix

    def delete_all(self) -> None:
        if not self.created:
            return
        futures = self.admin.delete_topics(self.created, operation_timeout=30)
        for name, future in futures.items():
            try:
                future.result()
            except Exception as exc:  # cleanup is best effort
                log.warning("could not delete %s: %s", name, exc)
        self.created = []


# -- load ------------------------------------------------------------------------------------------


RequestFactory = Callable[[str, Any], GenerationRequest]  # (request_id, submitted_at) → request


class LoadPublisher:
    """Produces requests to the internal batch lane (what admission writes and workers serve),
    as fast as possible or at a steady rate."""

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self.settings = settings
        self.codec = codec
        self.topic = settings.topics.lanes_batch
        self.producer = make_producer(settings, client_id="f2p-bench-load")
        self.sent: dict[str, float] = {}
        self.partitions: dict[str, int] = {}
        self.failed = 0

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            return
        self.partitions[msg.key().decode()] = msg.partition()

    def publish(
        self,
        ids: list[str],
        factory: RequestFactory,
        *,
        rate: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Send one request per id; ``rate`` per second on a fixed schedule (None: at once)."""
        from datetime import UTC, datetime

        start = time.monotonic()
        for index, rid in enumerate(ids):
            if stop is not None and stop.is_set():
                break
            if rate:
                delay = start + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            now = time.time()
            request = factory(rid, datetime.fromtimestamp(now, UTC))
            value = self.codec.encode(self.topic, request)
            while True:
                try:
                    self.producer.produce(
                        self.topic, key=rid.encode(), value=value, on_delivery=self._on_delivery
                    )
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.sent[rid] = now
            self.producer.poll(0)
        if self.producer.flush(60) != 0:
            raise BenchError("requests were not delivered within 60 s")
        if self.failed:
            raise BenchError(f"{self.failed} requests failed to publish")


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One committed result as the harness's reader saw it."""

    request_id: str
    received: float
    worker_id: str
    status: str
    engine_s: float
    partition: int
    completed_at: float  # the worker's completed_at: outputs uploaded, before the commit
    # The worker's own stage timings (whole milliseconds): queued (polled → engine start,
    # fetch excluded), fetch (decode + face), encode and upload of the outputs.
    stages: tuple[int, int, int, int] = (0, 0, 0, 0)


class ResultCollector:
    """Reads the results topic with ``read_committed`` on a thread, timestamping each record."""

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self.topic = settings.topics.results
        self.codec = codec
        self.consumer = make_consumer(
            settings, f"f2p-bench-reader-{uuid.uuid4().hex[:8]}", config={"fetch.wait.max.ms": 10}
        )
        partitions = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        self.consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(partitions)]
        )
        self.received: list[Received] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-results", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            # poll() returns as soon as one record is there; consume(n, timeout) would wait for
            # all n or the whole timeout, adding up to that timeout to every receive time.
            first = self.consumer.poll(0.05)
            now = time.time()
            if first is None:
                continue
            messages = [first, *self.consumer.consume(500, 0)]
            batch = []
            for msg in messages:
                if msg.error() is not None:
                    continue
                result = self.codec.decode(self.topic, msg.value(), expect=GenerationResult)
                batch.append(
                    Received(
                        request_id=result.request_id,
                        received=now,
                        worker_id=result.worker_id,
                        status=str(result.status),
                        engine_s=result.timings.engine_ms / 1000,
                        partition=located(msg)[1],
                        completed_at=result.completed_at.timestamp(),
                        stages=(
                            result.timings.queued_ms,
                            result.timings.fetch_ms,
                            result.timings.encode_ms,
                            result.timings.upload_ms,
                        ),
                    )
                )
            if batch:
                with self._lock:
                    self.received.extend(batch)
                    for item in batch:
                        self.counts[item.request_id] = self.counts.get(item.request_id, 0) + 1

    def done(self, ids: Iterable[str]) -> int:
        with self._lock:
            return sum(1 for rid in ids if rid in self.counts)

    def wait(
        self,
        ids: list[str],
        timeout_s: float,
        progress: Callable[[int, int], None] | None = None,
        check: Callable[[], None] | None = None,
    ) -> bool:
        """Wait until every id has a result; False on timeout. ``progress(done, total)``."""
        deadline = time.monotonic() + timeout_s
        next_report = time.monotonic() + 2
        while True:
            done = self.done(ids)
            if done == len(ids):
                return True
            if time.monotonic() > deadline:
                return False
            if check is not None:
                check()
            if progress is not None and time.monotonic() >= next_report:
                progress(done, len(ids))
                next_report = time.monotonic() + 2
            time.sleep(0.05)

    def results_for(self, ids: Iterable[str]) -> list[Received]:
        wanted = set(ids)
        with self._lock:
            return [r for r in self.received if r.request_id in wanted]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.consumer.close()


# -- helpers ---------------------------------------------------------------------------------------


def make_codec(settings: Settings) -> AvroCodec:
    return AvroCodec(make_registry_client(settings), auto_register=settings.embedded)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def log_dir() -> Path:
    """Where worker logs and stats of this bench run go (kept for inspection)."""
    path = Path(tempfile.gettempdir()) / f"f2p-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path
