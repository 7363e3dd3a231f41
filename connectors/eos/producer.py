"""The transactional producer, kept in a known state across loop turns.

Errors are sorted into librdkafka's three bins (``examples/transactions.c``):

* retriable: call the same operation again. A commit that timed out may still complete at the
  coordinator, so it is *finished* on a later turn (``finish``) — never aborted, never treated as
  fatal (a broker failover can take longer than any single call's timeout);
* abortable (``txn_requires_abort``, or retriable while sending): the transaction failed; the
  completions can be written again, but never by this producer instance (below);
* anything else is fatal for this producer: it is replaced (``init_transactions`` with the same
  ``transactional.id`` fences the old epoch) and the caller rewinds to the committed offsets.

A failed transaction's producer is replaced, not aborted and reused. librdkafka has no KIP-890
(transactions v2, confluentinc/librdkafka#5423): after an abort the next transaction runs under
the same producer epoch, so a request of the failed one that the client gave up on but the
broker applies late — a produce or a TxnOffsetCommit delayed during a coordinator or leader
failover — lands in the next transaction and commits with it: an output of aborted work, or a
consumer offset past work whose outputs were aborted (a lost request). A new instance's
``init_transactions`` bumps the epoch, which fences every request of the old one and aborts its
open transaction at the coordinator. This is the workaround the librdkafka maintainers describe
for the missing KIP-890; it costs one InitProducerId per failed transaction (failovers only).
Records the client refuses before sending them are the exception (nothing was sent for them,
the rest is drained by the abort): the transaction is aborted and the producer reused. A record
the broker refuses leaves a gap in the idempotent sequence, which needs a new epoch anyway.

No call blocks the poll thread without a bound: initialising, replacing and finishing are retried
turn after turn with short timeouts (``prepare``/``finish``), while the loop keeps polling.

Records the broker refuses for good (too large, invalid) are reported as ``RecordRefused`` with
their positions, so the caller can replace them instead of retrying a transaction that can never
succeed (one oversized dead letter used to wedge a worker in an abort/rewind loop, issue 7).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connectors.eos.exceptions import (
    ProcessorFatal,
    ProducerFenced,
    ProducerWedged,
    TransactionAborted,
)
from connectors.eos.records import OutputRecord
from connectors.kafka_retry import is_retriable, kafka_error

log = logging.getLogger(__name__)

# Record-level errors that no retry can fix: the record must be replaced.
REFUSED_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
    }
)
# A librdkafka call still blocked this long past its own timeout is given up, with its producer
# (confluentinc/librdkafka#5456, #5511: send_offsets_to_transaction after a coordinator loss).
# A call that has not returned a few seconds after its timeout is that bug, not slowness (the
# timeout runs on librdkafka's threads), and the process commits nothing until it is given up:
# each second here is a second of stalled results after a broker loss, which must stay under
# the cluster's own failover (broker session 9 s). 10 s made the stall 15 s in the cluster
# chaos runs where it happened; a false alarm only costs a new producer and redone work.
WEDGED_GRACE_S = 3.0
# How long a transaction that failed with a record-level code waits for that record's delivery
# report: the broker's refusal can fail the transaction call before librdkafka has queued (or the
# poll thread served) the report that says which record it was.
REFUSAL_REPORT_WAIT_S = 1.0
# Wedged producers whose destruction is still pending; more than this and the process should be
# restarted rather than leak further.
MAX_ABANDONED = 3


class RecordRefused(TransactionAborted):
    """The transaction was aborted because the broker refused some records for good."""

    def __init__(self, refused: dict[int, KafkaError]) -> None:
        names = sorted({e.name() for e in refused.values()})
        super().__init__(f"{len(refused)} record(s) refused: {', '.join(names)}")
        self.refused = refused


class State(Enum):
    NEW = "new"  # init_transactions not done yet
    READY = "ready"  # may begin a transaction
    COMMITTING = "committing"  # commit_transaction started, outcome not known yet
    # The client refused records before sending them (nothing of them on the wire): abort,
    # then reuse the producer.
    MUST_ABORT = "must_abort"
    FAILED = "failed"  # the transaction failed otherwise: replace the producer before the next
    BROKEN = "broken"  # fatal: replace the producer


class TransactionalProducer:
    """A transactional producer with a stable ``transactional.id``; poll thread only."""

    def __init__(
        self,
        create: Callable[[], Any],
        *,
        transactional_id: str,
        call_timeout_s: float = 5.0,
    ) -> None:
        self._create = create
        self.transactional_id = transactional_id
        self.call_timeout_s = call_timeout_s
        self.state = State.NEW
        self.producer: Any = create()
        self.recreated = 0
        self._caller = _BoundedCaller()
        self._abandoned_live = 0
        self._abandoned_lock = threading.Lock()
        self._delivery_errors: dict[int, KafkaError] = {}
        # Since when the producer has not been READY (None: it is), and when that was last said.
        self._unready_since: float | None = None
        self._unready_logged = 0.0

    # -- getting ready --------------------------------------------------------------------------

    def prepare(self, budget_s: float) -> bool:
        """Bring the producer to READY if possible within about ``budget_s``; False if not yet.

        NEW → init_transactions; MUST_ABORT → abort_transaction; FAILED or BROKEN → a new
        producer (then init_transactions). Retriable failures leave the state as it is for the
        next turn.
        """
        if self.state in (State.FAILED, State.BROKEN):
            try:
                self._replace()
            except Exception as exc:  # a new client could not be made: try again next turn
                self._not_ready(exc)
                return False
        timeout = max(0.1, min(budget_s, self.call_timeout_s))
        try:
            if self.state is State.NEW:
                self.producer.init_transactions(timeout)
                self.state = State.READY
            elif self.state is State.MUST_ABORT:
                self.producer.abort_transaction(timeout)
                self.state = State.READY
        except KafkaException as exc:
            if is_retriable(exc):
                self._not_ready(exc)
                return False
            log.error("producer %s failed: %s", self.state.value, exc)
            self.state = State.BROKEN
            return False
        self._unready_since = None
        return self.state is State.READY

    def _not_ready(self, exc: BaseException) -> None:
        """Say (every 10 s at most) that the producer has been waiting to become ready."""
        now = time.monotonic()
        if self._unready_since is None:
            self._unready_since = now
        if now - self._unready_logged >= 10:
            self._unready_logged = now
            log.warning(
                "producer not ready for %.0f s (%s): %s",
                now - self._unready_since,
                self.state.value,
                exc,
            )

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    # -- one transaction ------------------------------------------------------------------------

    def begin_and_send(
        self,
        records: Sequence[OutputRecord],
        offsets: list[TopicPartition],
        group_metadata: object,
    ) -> None:
        """Step 1-3 of a commit: begin, produce every record, send the input offsets.

        Raises RecordRefused (some records can never be written), TransactionAborted (the
        transaction failed; the producer is replaced before the next) or ProducerFenced (fatal).
        """
        assert self.state is State.READY, self.state
        self._delivery_errors = {}
        try:
            # Step 1.
            self.producer.begin_transaction()
            # Step 2.
            refused: dict[int, KafkaError] = {}
            for index, record in enumerate(records):
                error = self._produce(index, record)
                if error is not None:
                    refused[index] = error
            if refused:
                # Refused by the client before sending: nothing of them is on the wire and the
                # abort drains the rest, so reusing the producer is safe (and cheaper than a new
                # one for a flood of such records).
                self.state = State.MUST_ABORT
                self.prepare(self.call_timeout_s)  # abort now if the broker lets us
                raise RecordRefused(refused)
            # Step 3.
            if offsets:
                self._caller.call(
                    "send_offsets_to_transaction",
                    lambda: self.producer.send_offsets_to_transaction(
                        offsets, group_metadata, self.call_timeout_s
                    ),
                    timeout_s=self.call_timeout_s + WEDGED_GRACE_S,
                )
        except _Wedged as exc:
            self._abandon(exc.slot)
            raise ProducerWedged(str(exc)) from None
        except KafkaException as exc:
            self._sort(exc, "sending")

    def finish(self, budget_s: float) -> bool:
        """Step 4: commit_transaction. True once committed; False while still in progress
        (retriable: call again next turn). Raises TransactionAborted / RecordRefused /
        ProducerFenced."""
        self.state = State.COMMITTING
        try:
            self.producer.commit_transaction(max(0.1, budget_s))
        except KafkaException as exc:
            if is_retriable(exc):
                log.warning("commit not finished yet, will wait for it: %s", exc)
                return False
            self._sort(exc, "committing")
        self.state = State.READY
        return True

    def refused_deliveries(self) -> dict[int, KafkaError]:
        """Records of the last transaction that the broker refused for good."""
        return {i: e for i, e in self._delivery_errors.items() if e.code() in REFUSED_CODES}

    def _produce(self, index: int, record: OutputRecord) -> KafkaError | None:
        """Produce one record; a synchronous refusal (too large for the producer) is returned."""

        def on_delivery(err: KafkaError | None, _msg: object, index: int = index) -> None:
            if err is not None:
                self._delivery_errors[index] = err

        refreshed = False
        while True:
            try:
                self.producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=list(record.headers) if record.headers else None,
                    partition=record.partition,
                    on_delivery=on_delivery,
                )
                return None
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.05)
            except KafkaException as exc:
                error = kafka_error(exc)
                if error is not None and error.code() in REFUSED_CODES:
                    return error
                if (
                    error is not None
                    and error.code() == KafkaError._UNKNOWN_PARTITION
                    and not refreshed
                ):
                    # A partition added since the producer last fetched metadata (a topic
                    # grown mid-run): fetch it now rather than in minutes.
                    refreshed = True
                    self.producer.list_topics(record.topic, timeout=self.call_timeout_s)
                    continue
                raise

    def _sort(self, exc: KafkaException, doing: str) -> None:
        """Raise the exception of ``exc``'s bin; a failed transaction's producer is replaced on
        the next ``prepare`` (the module's docstring: a request of the failed transaction may
        still land)."""
        error = kafka_error(exc)
        refused = self._await_refusals(error)
        # Retriable while sending (a coordinator moving, a broker restarting): not the
        # producer's fault; the completions are written again later, without a rewind (issue
        # 7: a timed-out send_offsets_to_transaction used to rewind everything).
        if error is not None and (error.txn_requires_abort() or is_retriable(exc)):
            log.warning(
                "transaction failed (%s): %s; a new producer (new epoch) writes it again",
                doing,
                error,
            )
            self.state = State.FAILED
            if refused:
                raise RecordRefused(refused) from exc
            raise TransactionAborted(str(error)) from exc
        log.error("producer fatal error (%s): %s", doing, error or exc)
        self.state = State.BROKEN
        raise ProducerFenced(str(error or exc)) from exc

    def _await_refusals(self, error: KafkaError | None) -> dict[int, KafkaError]:
        """The records the broker refused, once their delivery reports are served.

        A transaction failed by a refusal (its code is the record's: MSG_SIZE_TOO_LARGE...) may
        raise before the report naming the record reaches ``on_delivery``; sorting it then as an
        ordinary failure would write the same record again with a new producer, to be refused
        again. Serve reports for a bounded while instead."""
        refused = self.refused_deliveries()
        if refused or error is None or error.code() not in REFUSED_CODES:
            return refused
        deadline = time.monotonic() + REFUSAL_REPORT_WAIT_S
        while not refused and time.monotonic() < deadline:
            self.producer.poll(0.05)
            refused = self.refused_deliveries()
        return refused

    # -- replacing and freeing producers --------------------------------------------------------

    def mark_broken(self) -> None:
        self.state = State.BROKEN

    def _replace(self) -> None:
        """A new producer with the same transactional.id: the old one is destroyed first, then
        the new one's init (next in ``prepare``) bumps the epoch, fencing whatever the old one
        still had on the wire and aborting its open transaction."""
        started = time.monotonic()
        old = self.producer
        self.producer = self._create()
        self.recreated += 1
        self.state = State.NEW
        with contextlib.suppress(Exception):  # the old one is broken anyway
            old.purge()
        del old  # destroyed here unless it was abandoned (then the reaper holds it)
        log.info(
            "producer replaced",
            extra={"replaced": self.recreated, "ms": round((time.monotonic() - started) * 1000)},
        )

    def _abandon(self, call: _Slot) -> None:
        """Give up a producer whose ``call`` is wedged: destroy it on a reaper thread once the
        call returns (the call's thread holds the producer until then), and go on with a new
        one, whose init fences whatever the old one still sends."""
        with self._abandoned_lock:
            if self._abandoned_live >= MAX_ABANDONED:
                raise ProcessorFatal(
                    f"{self._abandoned_live} wedged producers not freed yet: restart the process"
                )
            self._abandoned_live += 1
        wedged = self.producer
        self._caller = _BoundedCaller()  # the old helper thread is stuck in the wedged call
        self.producer = self._create()
        self.recreated += 1
        self.state = State.NEW
        # The reaper takes the only reference: the handle is destroyed on its thread.
        holder = [wedged]
        del wedged
        threading.Thread(
            target=self._reap, args=(holder, call), name="producer-reaper", daemon=True
        ).start()

    def _reap(self, holder: list[Any], call: _Slot) -> None:
        try:
            # Counted as live until the wedged call has returned: until then its thread holds
            # the producer, and ``del`` below would free nothing (MAX_ABANDONED must see it).
            call.done.wait()
            producer = holder.pop()
            with contextlib.suppress(Exception):
                producer.purge()
            del producer  # rd_kafka_destroy: may block this thread, never the loop
        finally:
            with self._abandoned_lock:
                self._abandoned_live -= 1

    @property
    def abandoned_live(self) -> int:
        with self._abandoned_lock:
            return self._abandoned_live

    def close(self, timeout_s: float = 5.0) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                if self.state in (State.FAILED, State.MUST_ABORT):
                    # Nothing follows on this producer: aborting now spares the partitions' next
                    # owner the wait for the transaction's timeout.
                    self.producer.abort_transaction(timeout_s)
                elif self.state is State.NEW and self.recreated:
                    # A failed transaction's successor not initialised yet: its init fences the
                    # old epoch and aborts that transaction now, not at its timeout.
                    self.producer.init_transactions(timeout_s)
                self.producer.flush(timeout_s)
        self._caller.stop()


class _Wedged(Exception):
    def __init__(self, message: str, slot: _Slot) -> None:
        super().__init__(message)
        self.slot = slot


class _BoundedCaller:
    """Runs blocking librdkafka calls on one persistent helper thread, so that a call that never
    returns can be given up (a thread per call would cost ~0.1 ms each on the hot path)."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Callable[[], object], _Slot] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def call(self, what: str, fn: Callable[[], object], *, timeout_s: float) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="txn-call", daemon=True)
            self._thread.start()
        slot = _Slot()
        self._requests.put((fn, slot))
        if not slot.done.wait(timeout_s):
            log.error("%s blocked for %.0f s: giving up its producer", what, timeout_s)
            raise _Wedged(f"{what} did not return in {timeout_s:.0f} s", slot)
        if slot.error is not None:
            raise slot.error

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            fn, slot = request
            try:
                fn()
            except BaseException as exc:  # handed to the caller's thread
                slot.error = exc
            slot.done.set()

    def stop(self) -> None:
        if self._thread is not None:
            self._requests.put(None)


class _Slot:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
