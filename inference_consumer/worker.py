"""``f2p worker``: one consumer-group member per GPU, exactly-once output.

Threads and their one job each (after Dramatiq's worker):

* **poll thread** (``Worker.run``, the caller's thread) owns the consumer and the transactional
  producer: polls, tracks offsets, pauses/resumes partitions, handles rebalances and writes
  completed outcomes with their offsets in short transactions. It never waits on the engine.
* **prefetch pool**: decode, validate, fetch and decode the face (``stages.prefetch``).
* **engine thread**: batches from the ``RequestBatcher`` through the engine.
* **output pool**: encode and upload images.

Stages hand outcomes back through one queue. Shutdown order: stop intake → drain in-flight
work within a bound → commit → close the consumer (leaves or hands back partitions) → close.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from connectors.kafka import make_admin, make_consumer
from connectors.registry import make_registry_client
from connectors.s3 import make_s3_client
from connectors.settings import Settings
from f2p_errors import ConfigError, F2PError
from inference_consumer.batcher import RequestBatcher
from inference_consumer.config import WorkerConfig
from inference_consumer.dedupe import DedupeState
from inference_consumer.engines.base import Engine
from inference_consumer.metrics import HealthServer, WorkerMetrics
from inference_consumer.offsets import OffsetTracker
from inference_consumer.stages import EngineLoop, StageContext, engine_params, prefetch
from inference_consumer.transactions import (
    CommitBatch,
    ProducerFenced,
    TransactionAborted,
    TransactionalOutput,
)
from inference_consumer.work import Outcome, OutcomeKind, WorkItem
from schemas.codec import AvroCodec
from schemas.records import Lane
from schemas.validation import RequestLimits

log = logging.getLogger(__name__)

TP = tuple[str, int]

# Aborted transactions retried with the same outcomes before falling back to a full rewind.
MAX_COMMIT_RETRIES = 2


class WorkerFatal(F2PError):
    """The worker cannot continue (e.g. its consumer was fenced by a duplicate instance)."""


class ConsumerFatal(F2PError):
    """The consumer hit a fatal error; librdkafka's rule: replace the instance."""


class Worker:
    """One inference worker: construct, then ``run()`` until ``stop()`` (or a signal)."""

    def __init__(
        self,
        settings: Settings,
        config: WorkerConfig,
        engine: Engine,
        *,
        limits: RequestLimits | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.engine = engine
        self.metrics = WorkerMetrics(config.worker_id)
        self.lanes = config.lanes or settings.topics.request_lanes
        self.topics = (
            [*self.lanes, settings.topics.retry] if config.serve_retry_topic else list(self.lanes)
        )
        self.codec = AvroCodec(make_registry_client(settings), auto_register=settings.embedded)
        self.offsets = OffsetTracker()
        self.dedupe = DedupeState()
        self.generations: dict[TP, int] = {}
        self._generation_counter = itertools.count(1)
        self.completions: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.pending: list[Outcome] = []
        self.delayed: list[tuple[int, int, WorkItem]] = []  # (not_before_ms, seq, item) heap
        self._seq = itertools.count()
        self.paused: set[TP] = set()
        self.backpressure = False
        self._stop = threading.Event()
        self._last_commit = time.monotonic()
        self._last_loop = time.monotonic()
        self._last_lag = 0.0
        self._aborts_in_row = 0
        self._consumer_fatal_at = float("-inf")
        self._assigned_once = False
        self.batcher = RequestBatcher(
            ("interactive", "batch"),
            lambda item: engine.batch_key(engine_params(item.request)),
            max_batch_size=engine.max_batch_size,
            max_wait_s=config.max_batch_wait_ms / 1000,
        )
        self.ctx = StageContext(
            config=config,
            codec=self.codec,
            s3=make_s3_client(settings, max_pool_connections=config.prefetch_threads * 2 + 8),
            results_bucket=settings.results_bucket,
            engine=engine,
            limits=limits or RequestLimits(),
            metrics=self.metrics,
            emit=self.completions.put,
            is_current=self._is_current,
        )
        self.consumer: Consumer | None = None
        self.output: TransactionalOutput | None = None

    # -- life cycle --

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (safe from signal handlers and other threads)."""
        self._stop.set()

    def healthy(self) -> bool:
        return time.monotonic() - self._last_loop < 30

    def ready(self) -> bool:
        return self.output is not None and self._assigned_once and not self._stop.is_set()

    def run(self) -> None:
        """Serve until stopped; raises WorkerFatal when the worker must not continue."""
        self._check_topics()
        self.output = TransactionalOutput(self.settings, self.config, self.codec)
        self.consumer = self._create_consumer()
        prefetch_pool = ThreadPoolExecutor(self.config.prefetch_threads, "prefetch")
        self._prefetch_pool = prefetch_pool
        engine_loop = EngineLoop(self.ctx, self.batcher)
        engine_thread = threading.Thread(target=engine_loop.run, name="engine", daemon=True)
        engine_thread.start()
        health = None
        if self.config.metrics_port:
            health = HealthServer(
                self.config.metrics_port,
                self.metrics,
                self.healthy,
                self.ready,
                host=self.config.metrics_host,
            )
            health.start()
        log.info(
            "worker started", extra={"worker_id": self.config.worker_id, "topics": self.topics}
        )
        try:
            while not self._stop.is_set():
                try:
                    self._turn()
                except ConsumerFatal as exc:
                    self._replace_consumer(exc)
            self._drain()
        finally:
            engine_loop.stop()
            engine_thread.join(timeout=10)
            prefetch_pool.shutdown(wait=False, cancel_futures=True)
            self.consumer.close()
            self.output.producer.flush(5)
            if health:
                health.stop()
            log.info("worker stopped", extra={"worker_id": self.config.worker_id})

    def _create_consumer(self) -> Consumer:
        c = self.config
        extra: dict[str, Any] = {
            "session.timeout.ms": c.session_timeout_ms,
            "heartbeat.interval.ms": c.heartbeat_interval_ms,
            # The poll thread never blocks on inference, so this only catches a wedged process.
            "max.poll.interval.ms": 300_000,
        }
        if c.static_membership:
            extra["group.instance.id"] = c.worker_id
        consumer = make_consumer(self.settings, c.group_id, client_id=c.worker_id, config=extra)
        consumer.subscribe(
            self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return consumer

    def _replace_consumer(self, exc: ConsumerFatal) -> None:
        """Drop every partition's work, close the dead consumer and subscribe a new one.

        Seen after a broker restart: a static member that rejoined after its session timed out
        was fenced by its own new member id (FENCED_INSTANCE_ID, fatal in librdkafka). Fenced
        again within a minute means another live process has this worker id: WorkerFatal.
        """
        now = time.monotonic()
        if now - self._consumer_fatal_at < 60:
            raise WorkerFatal(f"{exc} (again within 60 s: is this worker id in use twice?)")
        self._consumer_fatal_at = now
        log.error("%s: replacing the consumer", exc)
        self._drop_partitions(list(self.generations))
        self.backpressure = False
        with contextlib.suppress(Exception):  # it is dead; its revoke commits nothing now
            self.consumer.close()
        self.consumer = self._create_consumer()
        self._update_assignment_metrics()

    def _check_topics(self) -> None:
        """The dedupe changelog must have a partition for every source partition."""
        metadata = make_admin(self.settings).list_topics(timeout=30).topics
        for topic in [*self.topics, self.settings.topics.dedupe, self.settings.topics.results]:
            if topic not in metadata:
                raise ConfigError(f"topic {topic} does not exist; run `f2p topics apply`")
        dedupe = len(metadata[self.settings.topics.dedupe].partitions)
        for topic in self.topics:
            if len(metadata[topic].partitions) > dedupe:
                raise ConfigError(
                    f"{topic} has more partitions than {self.settings.topics.dedupe} ({dedupe})"
                )

    # -- the poll loop --

    def _turn(self) -> None:
        """One iteration: poll, collect finished work, commit when due, apply backpressure."""
        self._last_loop = time.monotonic()
        busy = self.offsets.in_flight() > 0 or self.pending
        room = max(0, self.config.max_in_flight - self.offsets.in_flight())
        first = self.consumer.poll(0.005 if busy else 0.05)
        if first is not None:
            rest = self.consumer.consume(max(0, room - 1), timeout=0) if room > 1 else []
            for msg in [first, *rest]:
                self._on_message(msg)
        self._release_delayed()
        self._collect_outcomes()
        if self._commit_due():
            self.commit()
        self._apply_backpressure()
        if self._last_loop - self._last_lag >= 0.25:
            self._update_lag()

    def _on_message(self, msg: Any) -> None:
        if msg.error() is not None:
            error: KafkaError = msg.error()
            # A fatal error reaches poll() as an event with code _FATAL and fatal() False.
            if error.fatal() or error.code() == KafkaError._FATAL:
                raise ConsumerFatal(f"consumer fatal error: {error}")
            log.warning("consumer error: %s", error)
            return
        tp = (msg.topic(), msg.partition())
        generation = self.generations.get(tp)
        if generation is None:
            return  # a straggler of a partition revoked during this poll
        item = WorkItem(
            generation=generation,
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            headers=msg.headers() or [],
        )
        self.offsets.get(*tp).polled(msg.offset())
        rid = item.request_id
        if rid and self.dedupe.seen(msg.topic(), msg.partition(), rid):
            self.completions.put(Outcome(item=item, kind=OutcomeKind.DUPLICATE))
        elif item.not_before_ms > time.time() * 1000:
            heapq.heappush(self.delayed, (item.not_before_ms, next(self._seq), item))
        else:
            self._prefetch_pool.submit(self._prefetch_then_batch, item)

    def _prefetch_then_batch(self, item: WorkItem) -> None:
        if not self._is_current(item):
            return
        ready = prefetch(self.ctx, item)
        if ready is not None and ready.request is not None:
            lane = "interactive" if ready.request.lane is Lane.INTERACTIVE else "batch"
            self.batcher.put(ready, lane)

    def _release_delayed(self) -> None:
        now_ms = time.time() * 1000
        while self.delayed and self.delayed[0][0] <= now_ms:
            _, _, item = heapq.heappop(self.delayed)
            if self._is_current(item):
                self._prefetch_pool.submit(self._prefetch_then_batch, item)

    def _collect_outcomes(self) -> None:
        while True:
            try:
                outcome = self.completions.get_nowait()
            except queue.Empty:
                return
            item = outcome.item
            if not self._is_current(item):
                continue  # revoked or rewound meanwhile: the work will be redone
            part = self.offsets.get(item.topic, item.partition)
            if item.offset not in part.in_flight:
                continue  # a second outcome for the same message: the first one stands
            rid = outcome.request_id
            if outcome.kind is not OutcomeKind.DUPLICATE and rid:
                if self.dedupe.seen(item.topic, item.partition, rid):
                    outcome = Outcome(item=item, kind=OutcomeKind.DUPLICATE)
                elif outcome.settles(self.settings.topics.retry):
                    self.dedupe.add_pending(item.topic, item.partition, rid)
            part.completed(item.offset)
            self.pending.append(outcome)

    def _commit_due(self) -> bool:
        if not self.pending and not self.offsets.committable():
            return False
        elapsed_ms = (time.monotonic() - self._last_commit) * 1000
        return elapsed_ms >= self.config.commit_interval_ms or len(self.pending) >= 256

    # -- the commit path --

    def commit(self) -> None:
        """Write pending outcomes and committable offsets in one transaction (poll thread only).

        Step 1. Collect the outcomes and the contiguous committable offset per partition.
        Step 2. Commit them in one transaction (``TransactionalOutput.commit``).
        Step 3. On success: dedupe entries become committed, offsets move forward, metrics.
        Step 4. On abort: keep the outcomes and try again at the next turn (after the poll has
                run any rebalance callbacks, which drop outcomes of partitions we no longer
                own) — a rebalance racing the commit is the usual cause, and redoing the GPU
                work would be waste. After ``MAX_COMMIT_RETRIES`` aborts in a row, or on a
                fatal producer error (recreate the producer first), rewind to the committed
                offsets and redo the work.
        """
        # Step 1.
        batch = CommitBatch(outcomes=self.pending, offsets=self._offsets_to_send())
        self._last_commit = time.monotonic()
        if not batch.outcomes and not batch.offsets:
            return
        # Step 2.
        try:
            self.output.commit(batch, self.consumer.consumer_group_metadata())
        except TransactionAborted:
            self.metrics.transactions.labels(outcome="aborted").inc()
            self._aborts_in_row += 1
            if self._aborts_in_row > MAX_COMMIT_RETRIES:
                self._aborts_in_row = 0
                self._rewind()
            return
        except ProducerFenced:
            self.metrics.transactions.labels(outcome="fatal").inc()
            self.output.recreate()
            self._rewind()
            return
        # Step 3.
        self._aborts_in_row = 0
        self.pending = []
        self.dedupe.commit_pending()
        for (topic, partition), offset in batch.offsets.items():
            self.offsets.get(topic, partition).committed(offset)
        self.metrics.transactions.labels(outcome="committed").inc()
        self._record_committed(batch.outcomes)

    def _offsets_to_send(self) -> dict[TP, int]:
        """Committable offsets, plus the unchanged commit point of every partition that has an
        outcome in this transaction.

        Re-sending an unchanged offset is harmless and makes the group coordinator check our
        generation for that partition (KIP-447): a zombie that lost the partition cannot commit
        an out-of-order result for it, because its whole transaction fails.
        """
        offsets = self.offsets.committable()
        for outcome in self.pending:
            key = (outcome.item.topic, outcome.item.partition)
            if key not in offsets:
                base = self.offsets.get(*key).base
                if base is not None:
                    offsets[key] = base
        return offsets

    def _record_committed(self, outcomes: list[Outcome]) -> None:
        now = time.time()
        for outcome in outcomes:
            if outcome.kind is OutcomeKind.RESULT and outcome.result is not None:
                status = str(outcome.result.status)
                submitted = outcome.result.submitted_at.timestamp()
                self.metrics.end_to_end_seconds.labels(status=status).observe(now - submitted)
            else:
                status = outcome.kind.value.upper()
            self.metrics.results.labels(status=status).inc()
            log.debug("outcome committed", extra={**outcome.item.where(), "status": status})

    def _rewind(self) -> None:
        """Drop all in-flight work and seek every assigned partition to its committed offset."""
        assignment = self.consumer.assignment()
        keys = [(tp.topic, tp.partition) for tp in assignment]
        log.warning("rewinding to committed offsets", extra={"partitions": len(keys)})
        self._forget(keys)
        for key in keys:
            self.generations[key] = next(self._generation_counter)
        committed = self.consumer.committed(assignment, timeout=30)
        for tp in committed:
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
            self.consumer.seek(tp)

    def _forget(self, keys: list[TP]) -> None:
        """Drop pending outcomes, offsets, dedupe state and queued work of ``keys``."""
        gone = set(keys)
        self.pending = [o for o in self.pending if (o.item.topic, o.item.partition) not in gone]
        self.dedupe.abort_pending()
        for outcome in self.pending:  # pending outcomes of other partitions stay pending
            rid = outcome.request_id
            if rid and outcome.settles(self.settings.topics.retry):
                self.dedupe.add_pending(outcome.item.topic, outcome.item.partition, rid)
        self.offsets.drop(keys)
        self.delayed = [d for d in self.delayed if (d[2].topic, d[2].partition) not in gone]
        heapq.heapify(self.delayed)
        self.batcher.drop(lambda item: (item.topic, item.partition) not in gone)

    def _is_current(self, item: WorkItem) -> bool:
        return self.generations.get((item.topic, item.partition)) == item.generation

    # -- rebalancing --

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if keys:
            self.dedupe.restore(self.settings, keys, timeout_s=60)
        for key in keys:
            self.generations[key] = next(self._generation_counter)
        consumer.incremental_assign(partitions)
        if self.backpressure and partitions:
            consumer.pause(partitions)  # keep a full worker full: re-pause the newcomers
            self.paused.update(keys)
        elif partitions:
            # librdkafka keeps a partition's pause flag across unassign/assign: one revoked while
            # paused would come back paused, untracked by ``self.paused``, and never be fetched.
            consumer.resume(partitions)
        self._assigned_once = True
        self._update_assignment_metrics()
        log.info("partitions assigned", extra={"partitions": keys})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._collect_outcomes()
        self.commit()  # hand over what is complete; in-flight work of these is dropped
        self._drop_partitions(keys)
        consumer.incremental_unassign(partitions)
        self._update_assignment_metrics()
        log.info("partitions revoked", extra={"partitions": keys})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: nothing of theirs may be committed by us.
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._drop_partitions(keys)
        consumer.incremental_unassign(partitions)
        self._update_assignment_metrics()
        log.warning("partitions lost", extra={"partitions": keys})

    def _drop_partitions(self, keys: list[TP]) -> None:
        self._forget(keys)
        self.dedupe.drop(keys)
        for key in keys:
            self.generations.pop(key, None)
            self.paused.discard(key)

    def _update_assignment_metrics(self) -> None:
        self.metrics.assigned_partitions.set(len(self.generations))
        self.metrics.paused_partitions.set(len(self.paused))

    def _update_lag(self) -> None:
        """Consumer lag: high watermark minus position, summed over the assignment (cached
        watermarks from fetch responses, no broker round trip)."""
        self._last_lag = time.monotonic()
        lag = 0
        for tp in self.consumer.position(self.consumer.assignment()):
            if tp.offset < 0:
                continue  # nothing consumed yet
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                lag += max(0, high - tp.offset)
        self.metrics.consumer_lag.set(lag)

    # -- backpressure and shutdown --

    def _apply_backpressure(self) -> None:
        in_flight = self.offsets.in_flight()
        self.metrics.in_flight.set(in_flight)
        if not self.backpressure and in_flight >= self.config.max_in_flight:
            assignment = self.consumer.assignment()
            self.consumer.pause(assignment)
            self.paused = {(tp.topic, tp.partition) for tp in assignment}
            self.backpressure = True
        elif self.backpressure and in_flight <= self.config.max_in_flight // 2:
            resumed = [TopicPartition(t, p) for t, p in self.paused]
            self.consumer.resume(resumed)
            self._wake_fetcher(resumed)
            self.paused.clear()
            self.backpressure = False
        self.metrics.paused_partitions.set(len(self.paused))

    def _wake_fetcher(self, partitions: list[TopicPartition]) -> None:
        """Make librdkafka fetch resumed partitions now rather than at its next wake-up.

        After ``resume()`` the broker thread notices the partitions only when it next wakes up,
        up to 1 s later, and ``pause()`` purged their prefetched messages: each backpressure
        cycle would idle the engine for up to a second. A seek to the current position (where
        the fetch resumes anyway) wakes it at once.
        """
        for tp in self.consumer.position(partitions):
            if tp.offset < 0:
                continue  # nothing consumed yet: the fetch starts at the committed offset
            try:
                self.consumer.seek(tp)
            except KafkaException as exc:  # only a wake-up: the resume stands without it
                log.debug("seek after resume failed: %s", exc)

    def _drain(self) -> None:
        """Graceful shutdown: no new intake; finish in-flight work within the bound; commit."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        # Retries not due yet stay uncommitted: the next owner reads them again.
        waiting = {(i.topic, i.partition, i.offset) for _, _, i in self.delayed}
        self.delayed = []
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        log.info("draining", extra={"in_flight": self.offsets.in_flight()})
        while time.monotonic() < deadline:
            self._collect_outcomes()
            self.commit()
            unfinished = {
                (t, p, o)
                for (t, p), part in self.offsets.partitions.items()
                for o in part.in_flight
            }
            if unfinished <= waiting:
                break
            self.consumer.poll(0.05)  # keeps the group session alive while we wait
        self._collect_outcomes()
        self.commit()
