"""The exactly-once commit path: outcomes + dedupe entries + input offsets in one transaction.

Structure after librdkafka's ``examples/transactions.c``: small functions, errors sorted into
three bins by what librdkafka says about them —

* retriable (``error.retriable()``): call the same operation again until its deadline;
* abortable (``error.txn_requires_abort()``): abort, and the caller rewinds the consumer to the
  committed offsets and redoes the work;
* anything else is fatal for the producer (fenced by a newer instance, or broken): the caller
  recreates the producer (``init_transactions`` fences the old epoch) and rewinds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from connectors.kafka import make_transactional_producer
from connectors.settings import Settings
from f2p_errors import F2PError
from inference_consumer.config import WorkerConfig
from inference_consumer.dedupe import DedupeEntry
from inference_consumer.work import (
    ATTEMPT_HEADER,
    NOT_BEFORE_HEADER,
    ORIGIN_HEADER,
    Outcome,
    OutcomeKind,
)
from schemas.codec import AvroCodec

log = logging.getLogger(__name__)

# librdkafka can block in send_offsets_to_transaction() long past its timeout when it lost the
# group coordinator (confluentinc/librdkafka#5456, #5511; seen here after a broker restart).
# A call still blocked this long after its own timeout is given up, and so is its producer.
WEDGED_GRACE_S = 10.0
# A broker restart can take minutes: a new producer's init_transactions is retried this long.
INIT_DEADLINE_S = 300.0


class TransactionAborted(F2PError):
    """The transaction was aborted; the caller must rewind to the committed offsets."""


class ProducerFenced(F2PError):
    """The producer hit a fatal error (fenced or broken); recreate it, then rewind."""


class ProducerWedged(ProducerFenced):
    """A librdkafka call did not return in time; its producer is abandoned and replaced."""


@dataclass(frozen=True)
class CommitBatch:
    """What one transaction writes: outcomes and the next offset to consume per partition."""

    outcomes: list[Outcome]
    offsets: dict[tuple[str, int], int]


class TransactionalOutput:
    """Owns the worker's transactional producer; used only from the poll thread."""

    def __init__(self, settings: Settings, config: WorkerConfig, codec: AvroCodec) -> None:
        self.settings = settings
        self.config = config
        self.codec = codec
        self.transactional_id = f"f2p-worker-{config.worker_id}"
        # Wedged producers: kept referenced, never freed (rd_kafka_destroy would block too).
        self._abandoned: list[Producer] = []
        self.producer = self._create_producer()

    def _create_producer(self) -> Producer:
        """Create the producer and fence any older instance with the same transactional.id."""
        producer = make_transactional_producer(
            self.settings,
            self.transactional_id,
            client_id=self.config.worker_id,
            transaction_timeout_ms=self.config.transaction_timeout_ms,
            delivery_timeout_ms=self.config.transaction_timeout_ms,
        )
        self._retry(
            "init_transactions",
            lambda: producer.init_transactions(30),
            deadline_s=INIT_DEADLINE_S,
        )
        return producer

    def recreate(self) -> None:
        """Replace a producer that hit a fatal error (or is wedged: then it is left alone)."""
        if not any(p is self.producer for p in self._abandoned):
            with contextlib.suppress(Exception):  # the old producer is broken anyway
                self.producer.flush(0)
        self.producer = self._create_producer()

    def commit(self, batch: CommitBatch, group_metadata: object) -> None:
        """Write ``batch`` atomically.

        Step 1. Begin the transaction.
        Step 2. Produce every outcome (result, retry or dead letter) and its dedupe entry.
        Step 3. Send the input offsets with the consumer group metadata (KIP-447 fencing).
        Step 4. Commit; the coordinator makes outputs and offsets visible together.

        Raises TransactionAborted (caller rewinds) or ProducerFenced (caller recreates the
        producer, then rewinds). Any other failure while the transaction is open (encoding a
        record needs the registry the first time) aborts it too: nothing is left open.
        """
        try:
            # Step 1.
            self.producer.begin_transaction()
            # Step 2.
            for outcome in batch.outcomes:
                self._produce_outcome(outcome)
            # Step 3.
            if batch.offsets:
                offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
                self._retry(
                    "send_offsets_to_transaction",
                    lambda: self._bounded(
                        "send_offsets_to_transaction",
                        lambda: self.producer.send_offsets_to_transaction(
                            offsets, group_metadata, self._timeout()
                        ),
                    ),
                )
            # Step 4.
            self._retry("commit_transaction", lambda: self.producer.commit_transaction(30))
        except KafkaException as exc:
            self._handle(exc)
        except ProducerWedged:
            raise  # no abort: the handle is busy for good; the caller replaces the producer
        except Exception as exc:  # not Kafka's (e.g. the registry down while encoding): undo
            log.warning("transaction failed before its commit: %s: %s", type(exc).__name__, exc)
            self.abort()
            raise TransactionAborted(f"{type(exc).__name__}: {exc}") from exc

    def _handle(self, exc: KafkaException) -> None:
        error: KafkaError = exc.args[0]
        if error.txn_requires_abort():
            log.warning("transaction must be aborted: %s", error)
            self.abort()
            raise TransactionAborted(str(error)) from exc
        log.error("producer fatal error: %s", error)
        raise ProducerFenced(str(error)) from exc

    def abort(self) -> None:
        """Abort the open transaction; a failure here is fatal for the producer."""
        try:
            self._retry("abort_transaction", lambda: self.producer.abort_transaction(30))
        except KafkaException as exc:
            raise ProducerFenced(f"abort failed: {exc}") from exc

    def _produce_outcome(self, outcome: Outcome) -> None:
        item = outcome.item
        topics = self.settings.topics
        if outcome.kind is OutcomeKind.DUPLICATE:
            return
        if outcome.kind is OutcomeKind.RESULT:
            assert outcome.result is not None
            value = self.codec.encode(topics.results, outcome.result)
            self._produce(topics.results, outcome.result.request_id.encode(), value)
        elif outcome.kind is OutcomeKind.DEAD_LETTER:
            assert outcome.dead_letter is not None
            self._produce(topics.dlq, item.key, self.codec.encode(topics.dlq, outcome.dead_letter))
        elif outcome.kind is OutcomeKind.RETRY:
            not_before_ms = int((time.time() + outcome.retry_delay_s) * 1000)
            headers = [
                (ATTEMPT_HEADER, str(item.attempt + 1).encode()),
                (NOT_BEFORE_HEADER, str(not_before_ms).encode()),
                (ORIGIN_HEADER, item.topic.encode()),
            ]
            self._produce(topics.retry, item.key, item.value, headers=headers)
        rid = outcome.request_id
        # A retry handed on from the retry topic itself gets no entry (Outcome.settles).
        if rid and outcome.settles(topics.retry):
            entry = DedupeEntry(item.topic, item.offset, outcome.status)
            self._produce(topics.dedupe, rid.encode(), entry.to_bytes(), partition=item.partition)

    def _produce(self, topic: str, key, value, *, headers=None, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, value=value, key=key, headers=headers, partition=partition
                )
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.05)

    def _timeout(self) -> float:
        return self.config.transaction_timeout_ms / 1000

    def _bounded(self, what: str, call: Callable[[], object]) -> None:
        """Run a blocking producer call on a helper thread; raise ProducerWedged (and abandon the
        producer) when it has not returned ``WEDGED_GRACE_S`` after its own timeout."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                call()
                outcome.append(None)
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        helper = threading.Thread(target=run, name=f"txn-{what}", daemon=True)
        helper.start()
        helper.join(self._timeout() + WEDGED_GRACE_S)
        if not outcome:
            log.error("%s blocked past its timeout: replacing the producer", what)
            self._abandoned.append(self.producer)
            raise ProducerWedged(f"{what} did not return")
        if outcome[0] is not None:
            raise outcome[0]

    def _retry(
        self, what: str, call: Callable[[], object], *, deadline_s: float | None = None
    ) -> None:
        """Call again while librdkafka says the error is retriable, until the deadline."""
        deadline = time.monotonic() + (deadline_s or max(self._timeout(), 10))
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or time.monotonic() > deadline:
                    raise
                log.warning("%s: retriable error, retrying: %s", what, error)
                time.sleep(0.1)


def now_utc() -> datetime:
    return datetime.now(UTC)
