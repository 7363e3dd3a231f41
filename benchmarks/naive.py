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
amortising one transaction over many results. It writes no dedupe changelog (one message per
transaction already gives exactly-once for redeliveries; duplicate *submissions* are not
deduplicated, which the benchmarks do not exercise).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from connectors.kafka import make_consumer, make_transactional_producer
from connectors.registry import make_registry_client
from connectors.s3 import make_s3_client
from connectors.settings import Settings
from f2p_errors import F2PError
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.base import Engine
from inference_consumer.metrics import WorkerMetrics
from inference_consumer.stages import StageContext, prefetch, run_engine_batch
from inference_consumer.work import (
    ATTEMPT_HEADER,
    NOT_BEFORE_HEADER,
    ORIGIN_HEADER,
    Outcome,
    OutcomeKind,
    WorkItem,
)
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
    session_timeout_ms: int = WorkerConfig.session_timeout_ms
    heartbeat_interval_ms: int = WorkerConfig.heartbeat_interval_ms
    transaction_timeout_ms: int = WorkerConfig.transaction_timeout_ms
    static_membership: bool = True
    poll_timeout_s: float = 0.1


class _Inline:
    """An executor that runs the submitted call at once, on the caller's thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)


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
        self.ctx = StageContext(
            config=WorkerConfig(worker_id=config.worker_id, group_id=config.group_id),
            codec=self.codec,
            s3=make_s3_client(settings, max_pool_connections=2),
            results_bucket=settings.results_bucket,
            engine=engine,
            limits=limits or RequestLimits(),
            metrics=WorkerMetrics(config.worker_id),
            emit=self._outcomes.append,
            is_current=lambda _item: True,
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
                if msg.error() is not None:
                    error: KafkaError = msg.error()
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
        consumer.subscribe(list(c.lanes))
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
            generation=0,
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            headers=msg.headers() or [],
        )
        self._outcomes.clear()
        ready = prefetch(self.ctx, item)
        if ready is not None:
            run_engine_batch(self.ctx, [ready], _Inline())  # type: ignore[arg-type]
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
            self._produce(producer, outcome)
            # Step 3.
            offsets = [TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)]
            _retry(
                lambda: producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), 30
                )
            )
            # Step 4.
            _retry(lambda: producer.commit_transaction(30))
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if not error.txn_requires_abort():
                raise NaiveFatal(f"transaction failed: {error}") from exc
            log.warning("aborting transaction: %s", error)
            producer.abort_transaction(30)
            consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))

    def _produce(self, producer: Producer, outcome: Outcome) -> None:
        topics = self.settings.topics
        item = outcome.item
        if outcome.kind is OutcomeKind.RESULT and outcome.result is not None:
            value = self.codec.encode(topics.results, outcome.result)
            producer.produce(topics.results, value=value, key=outcome.result.request_id.encode())
        elif outcome.kind is OutcomeKind.DEAD_LETTER and outcome.dead_letter is not None:
            value = self.codec.encode(topics.dlq, outcome.dead_letter)
            producer.produce(topics.dlq, value=value, key=item.key)
        elif outcome.kind is OutcomeKind.RETRY:
            not_before_ms = int((time.time() + outcome.retry_delay_s) * 1000)
            headers = [
                (ATTEMPT_HEADER, str(item.attempt + 1).encode()),
                (NOT_BEFORE_HEADER, str(not_before_ms).encode()),
                (ORIGIN_HEADER, item.topic.encode()),
            ]
            producer.produce(topics.retry, value=item.value, key=item.key, headers=headers)


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
