"""The naive baseline worker: one message at a time, every step synchronous.

    poll one message → decode, validate, fetch + decode the face → engine → encode + upload
    → begin transaction → produce the result → send the offset → commit transaction → poll …

It is the textbook exactly-once loop (librdkafka ``examples/transactions.c`` with one message per
transaction), made honest rather than crippled:

* the *same stage code* as our worker (``stages.prefetch``, ``stages.run_engine_batch`` with its
  output step run inline), the same engine, codec, S3 client and image encoder;
* the same tuned client factories (``connectors.kafka``), static membership and session and
  transaction timeouts as our worker, so failover is detected equally fast;
* ``linger.ms=0`` on its producer: a synchronous loop gains nothing from lingering.

What it lacks is exactly what our worker adds: overlap of I/O with inference, batching, and
amortising one transaction over many results. It needs no done-offsets in its commits (one
message per transaction already gives exactly-once for redeliveries). It writes the same records
as ours (``outcomes.OutcomeWriter``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from connectors.eos.records import MessageRef
from connectors.kafka import located, make_consumer, make_transactional_producer
from connectors.object_store import make_object_store
from connectors.registry import make_registry_client
from connectors.settings import Settings
from f2p_errors import F2PError
from inference_consumer.config import KafkaTimeouts, WorkerConfig
from inference_consumer.engines.base import Engine
from inference_consumer.generation import run_engine_batch
from inference_consumer.memory import DecodeBudget, HeldBytes
from inference_consumer.metrics import WorkerMetrics
from inference_consumer.outcomes import OutcomeWriter
from inference_consumer.prefetch import prefetch
from inference_consumer.stages import StageContext
from inference_consumer.work import Outcome, WorkItem
from schemas.codec import AvroCodec
from schemas.validation import RequestLimits

log = logging.getLogger(__name__)


class NaiveFatal(F2PError):
    """The naive worker hit an error it does not recover from."""


@dataclass(frozen=True)
class NaiveConfig:
    """Settings of one naive worker (the timing fields mirror ``WorkerConfig``)."""

    worker_id: str
    group_id: str
    lanes: tuple[str, ...]
    # Our worker's timeouts on a single-node cluster (the benchmarks' embedded stack).
    session_timeout_ms: int = KafkaTimeouts.for_cluster(1).session_timeout_ms
    heartbeat_interval_ms: int = KafkaTimeouts.for_cluster(1).heartbeat_interval_ms
    transaction_timeout_ms: int = KafkaTimeouts.for_cluster(1).transaction_timeout_ms
    static_membership: bool = True
    poll_timeout_s: float = 0.1
    # The same S3 client as ours (WorkerConfig.object_store) unless a run compares clients.
    object_store: str = WorkerConfig.object_store


class _Inline:
    """An executor that runs the submitted call at once, on the caller's thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> None:
        fn(*args)


def _log_assignment(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """The moment partitions arrive (a failover's heir): compared with ours' own log line."""
    log.info("partitions assigned partitions=%s", [(p.topic, p.partition) for p in partitions])


class NaiveWorker:
    """Poll one → process → produce → commit, synchronously; ``run()`` until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        config: NaiveConfig,
        engine: Engine,
        *,
        limits: RequestLimits | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.engine = engine
        self.codec = AvroCodec(make_registry_client(settings), auto_register=settings.embedded)
        self._outcomes: list[Outcome] = []
        self._stop = threading.Event()
        worker_config = WorkerConfig(worker_id=config.worker_id, group_id=config.group_id)
        self.ctx = StageContext(
            config=worker_config,
            codec=self.codec,
            s3=make_object_store(settings, config.object_store, max_pool_connections=2),
            results_bucket=settings.results_bucket,
            engine=engine,
            limits=limits or RequestLimits(),
            metrics=WorkerMetrics(config.worker_id),
            emit=self._outcomes.append,
            is_current=lambda _item: True,
            decode_budget=DecodeBudget(worker_config.decode_budget_bytes),
            held=HeldBytes(worker_config.held_bytes_limit),
        )
        self.writer = OutcomeWriter(
            settings.topics, self.codec, lane_topics=settings.topics.worker_lanes
        )

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Serve until stopped; the message in hand is finished and committed first."""
        consumer = self._create_consumer()
        producer = self._create_producer()
        try:
            while not self._stop.is_set():
                msg = consumer.poll(self.config.poll_timeout_s)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise NaiveFatal(f"consumer fatal error: {error}")
                    log.warning("consumer error: %s", error)
                    continue
                outcome = self.process(msg)
                self.commit(consumer, producer, msg, outcome)
        finally:
            consumer.close()

    def _create_consumer(self) -> Consumer:
        c = self.config
        extra: dict[str, Any] = {
            "session.timeout.ms": c.session_timeout_ms,
            "heartbeat.interval.ms": c.heartbeat_interval_ms,
            "max.poll.interval.ms": 300_000,  # the engine runs on the poll thread here
        }
        if c.static_membership:
            extra["group.instance.id"] = c.worker_id
        consumer = make_consumer(self.settings, c.group_id, client_id=c.worker_id, config=extra)
        consumer.subscribe(list(c.lanes), on_assign=_log_assignment)
        return consumer

    def _create_producer(self) -> Producer:
        producer = make_transactional_producer(
            self.settings,
            f"f2p-naive-{self.config.worker_id}",
            client_id=self.config.worker_id,
            transaction_timeout_ms=self.config.transaction_timeout_ms,
            delivery_timeout_ms=self.config.transaction_timeout_ms,
            linger_ms=0,
        )
        producer.init_transactions(30)
        return producer

    def process(self, msg: Message) -> Outcome:
        """Run one message through the stages on this thread; return its one outcome."""
        item = WorkItem(
            ref=MessageRef(*located(msg), 0),
            key=msg.key(),
            value=msg.value(),
            # A consumed message's headers are a list of (name, bytes) pairs (never a dict).
            headers=cast("list[tuple[str, bytes | None]]", list(msg.headers() or [])),
        )
        self._outcomes.clear()
        ready = prefetch(self.ctx, item)
        if ready is not None:
            run_engine_batch(self.ctx, [ready], _Inline())
        if len(self._outcomes) != 1:
            raise NaiveFatal(f"expected one outcome, got {len(self._outcomes)}")
        return self._outcomes[0]

    def commit(
        self, consumer: Consumer, producer: Producer, msg: Message, outcome: Outcome
    ) -> None:
        """Write ``outcome`` and the message's offset in one transaction.

        Step 1. Begin the transaction.
        Step 2. Produce the outcome (result, retry or dead letter).
        Step 3. Send the next offset with the consumer group metadata.
        Step 4. Commit. An abortable error aborts and rewinds to this message; anything else
                that is not retriable is fatal for the baseline.
        """
        try:
            # Step 1.
            producer.begin_transaction()
            # Step 2.
            for record in self.writer.completion(outcome).records:
                producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=list(record.headers) if record.headers else None,
                )
            # Step 3.
            topic, partition, offset = located(msg)
            offsets = [TopicPartition(topic, partition, offset + 1)]
            _retry(
                lambda: producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), 30
                )
            )
            # Step 4.
            _retry(lambda: producer.commit_transaction(30))
        except KafkaException as exc:
            failure: KafkaError = exc.args[0]
            if not failure.txn_requires_abort():
                raise NaiveFatal(f"transaction failed: {failure}") from exc
            log.warning("aborting transaction: %s", failure)
            producer.abort_transaction(30)
            consumer.seek(TopicPartition(*located(msg)))


def _retry(call: Callable[[], object], deadline_s: float = 30) -> None:
    """Call again while librdkafka says the error is retriable."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            call()
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
