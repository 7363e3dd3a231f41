"""The poll loop of an exactly-once processor (the inference worker, admission).

The loop owns the consumer and the transactional producer; only its thread touches them. Each
``turn``: restore partitions that were just assigned or rewound, poll as much as the in-flight
budget allows and hand each message to the ``Handler``, collect the handler's completions (from
any thread), commit them with their offsets when there is something to commit and no
transaction is running, and pause or resume partitions to keep the budgets.

Nothing in a turn blocks without a bound: librdkafka calls that wait on the broker get short
timeouts and are retried on the next turn (restore, producer init/abort, a commit still in
progress), so a broker failover slows the loop down but never stops it polling, and a retriable
error never ends the process.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import OFFSET_END, KafkaError, KafkaException, TopicPartition

from connectors.eos.checkpoint import Checkpoint
from connectors.eos.exceptions import (
    ConsumerFatal,
    ProcessorFatal,
    ProducerFenced,
    ProducerWedged,
)
from connectors.eos.fetch_watch import FetchWatch
from connectors.eos.offsets import CorruptCommitMetadata, PartitionOffsets
from connectors.eos.partition import Assignment, PartitionState, Phase
from connectors.eos.producer import RecordRefused, TransactionAborted, TransactionalProducer
from connectors.eos.records import TP, Completion, MessageRef, OutputRecord
from connectors.eos.restore import read_restore_points

log = logging.getLogger(__name__)


class Handler(Protocol):
    """What the loop calls; every method runs on the loop's thread and must not block long."""

    def handle(self, message: Any, ref: MessageRef) -> None:
        """Take one message; call ``loop.complete`` for it now or later (from any thread)."""

    def failed(self, message: Any, ref: MessageRef, error: BaseException) -> Completion:
        """``handle`` raised (a bug): the completion that ends the message anyway."""

    def forget(self, tps: list[TP]) -> None:
        """Drop queued work of these partitions (revoked, lost or rewound)."""

    def committed(self, completions: list[Completion]) -> None:
        """These completions are committed (metrics, logs)."""

    def tick(self) -> None:
        """Called once per turn (release delayed work, say)."""

    def saturated(self) -> bool:
        """True while the handler cannot take more work (a memory budget is used up)."""

    def parked(self) -> int:
        """Messages in flight that wait for time, not work (delayed retries): not drained."""

    def last_progress(self) -> float:
        """Monotonic time of the handler's last sign of progress (an engine batch ending)."""

    def finishing(self) -> bool:
        """True while taken-up work (an engine batch, its outputs) is under way, so the next
        thing to happen is a completion: the loop then waits for completions rather than for
        messages (a new message waits at most ``busy_poll_s``; it would queue behind that work
        anyway)."""

    def ready(self, tp: TP) -> bool:
        """Whether the handler's own state of a newly assigned (or rewound) partition is
        restored: the partition stays paused until it is (start restoring on the first call)."""


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """How the loop polls, commits and bounds its work (resolved once by the component)."""

    # In-flight bound (polled, not completed); all partitions pause at it, resume at half.
    max_in_flight: int = 64
    # Per-topic caps below max_in_flight: a backlog on a low lane cannot take every slot.
    topic_in_flight: Mapping[str, int] = field(default_factory=dict)
    # Offsets between a partition's commit point and its highest polled offset; its done
    # offsets travel in the commit metadata (offsets.MAX_METADATA_WINDOW bounds this).
    max_window: int = 4096
    # Commit whenever there is something and no transaction runs, but at most this often
    # while little is in flight (sparse completions are committed at once: their last commit
    # is older than this) ...
    commit_interval_ms: float = 5.0
    # ... rising linearly to at most this often as the in-flight count nears max_in_flight (a
    # backlog): dense completions then share fewer, bigger transactions (broker CPU per record
    # falls; see docs/BENCHMARKS.md). None: commit_interval_ms throughout.
    max_commit_interval_ms: float | None = None
    # Side records alone (RUNNING status events) wait this long for a completion to share its
    # transaction before they get one of their own: with short service times nearly every one
    # rides with its result, halving the transactions at moderate load.
    side_record_delay_ms: float = 0.0
    # ... and at once when this many completions wait.
    max_commit_completions: int = 512
    # Aborted transactions retried with the same completions before a full rewind.
    max_aborts_in_row: int = 2
    # How long a turn waits in poll() while work is in flight: a completion handed over
    # meanwhile waits for the poll to return (half this on average) before it is collected,
    # unless the handler says one is due (``Handler.finishing``: the turn waits for it
    # instead); an idle turn costs ~5 us of Python plus the poll call.
    busy_poll_s: float = 0.005
    # A static member restarted after a crash is refused (UNRELEASED_INSTANCE_ID) until its
    # old incarnation's session times out; it tries again this often (each try is a new
    # consumer): the join lands at most this long after the session ends.
    rejoin_wait_s: float = 0.25
    # Timeouts of the librdkafka calls made on the loop's thread (retried next turn).
    call_timeout_s: float = 2.0
    # The first wait for commit_transaction; a commit still running continues next turn.
    commit_wait_s: float = 5.0
    # /healthz fails when work is waiting and nothing committed or progressed for this long.
    stall_timeout_s: float = 300.0
    lag_interval_s: float = 1.0
    # An activated partition librdkafka has not started fetching after this long is assigned
    # again at its restored offset (fetch_watch.py: a lost OffsetFetch leaves it unfetched).
    fetch_start_timeout_s: float = 10.0


# How long one resume may spend asking the broker where its freshly assigned partitions end
# (one ListOffsets call for all of them, on the poll thread); without the answer they start
# without a wake-up, at most ~1 s later.
_WAKE_BUDGET_S = 0.25


class LoopMetrics(Protocol):
    def transaction(self, outcome: str) -> None: ...
    def set_assignment(self, assigned: int, paused: int, in_flight: int) -> None: ...
    def set_lag(self, lag: int) -> None: ...
    def redelivered(self, count: int) -> None: ...
    def fetch_restarted(self) -> None: ...


class _NoMetrics:
    def transaction(self, outcome: str) -> None:
        pass

    def set_assignment(self, assigned: int, paused: int, in_flight: int) -> None:
        pass

    def set_lag(self, lag: int) -> None:
        pass

    def redelivered(self, count: int) -> None:
        pass

    def fetch_restarted(self) -> None:
        pass


def _interleaved(messages: list[Any]) -> list[Any]:
    """``messages`` round-robin over their partitions, each partition's in order.

    A fetch returns one partition's backlog after another's; handed on in that order, the last
    partition waits for every other's backlog (a survivor that takes over two partitions of a
    dead worker served the second 0.7 s after the first). Completions may come in any order:
    the offsets bookkeeping commits each partition's lowest undone offset."""
    by_partition: dict[tuple[str, int], list[Any]] = {}
    for message in messages:
        by_partition.setdefault((message.topic(), message.partition()), []).append(message)
    if len(by_partition) == 1:
        return messages
    queues = list(by_partition.values())
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


class EosLoop:
    """Consume ``topics`` in group ``group_id`` and commit the handler's completions exactly
    once. Construct, then ``run(stop)`` on the thread that will own the clients."""

    def __init__(
        self,
        *,
        topics: list[str],
        create_consumer: Callable[[dict[str, Any]], Any],
        producer: TransactionalProducer,
        handler: Handler,
        config: LoopConfig,
        metrics: LoopMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = topics
        self._create_consumer = create_consumer
        self.producer = producer
        self.handler = handler
        self.config = config
        self.metrics = metrics or _NoMetrics()
        self.clock = clock
        self.assignment = Assignment()
        self.consumer: Any = None
        self._completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        # Set by ``complete``: a consumer poll cannot be woken by another thread, this can.
        self._completed = threading.Event()
        self._side: queue.SimpleQueue[OutputRecord] = queue.SimpleQueue()
        self._pending = Checkpoint()
        self._committing: Checkpoint | None = None
        self._aborts_in_row = 0
        self._global_paused = False
        self._topic_paused: set[str] = set()
        self._last_commit = clock()
        self._side_since = clock()  # when the oldest pending side record was collected
        self._last_progress = clock()
        self._last_turn = clock()
        self._last_lag = float("-inf")
        self._consumer_fatal_at = float("-inf")
        self._unreleased_since: float | None = None
        self._restore_turn = 0
        # Something that moves a partition's in-flight set, window, phase or commit point
        # happened since the pauses were last applied / since _offsets_moved last said no:
        # turns where nothing did skip those O(partitions) passes.
        self._pauses_stale = True
        self._offsets_stale = True
        self._was_saturated = False
        self._restoring = False  # some partition may be RESTORING (assigned or rewound)
        self._next_prepare = float("-inf")
        self._last_fetch_check = float("-inf")
        self.fetch_watch = FetchWatch(clock=clock)
        self.assigned_once = False

    # -- thread-safe entry points for the handler's threads ----------------------------------

    def complete(self, completion: Completion) -> None:
        """Hand a message's completion to the loop (any thread)."""
        self._completions.put(completion)
        self._completed.set()

    def side(self, record: OutputRecord) -> None:
        """Write ``record`` in the next transaction, tied to no input message (a RUNNING status
        event, say: written at most once per transaction that commits; any thread)."""
        self._side.put(record)

    def is_current(self, ref: MessageRef) -> bool:
        """Whether work for ``ref`` still counts (its partition was not revoked or rewound)."""
        return self.assignment.generation(ref.tp) == ref.generation

    def _counts(self, completion: Completion) -> bool:
        """Whether ``completion`` may still be committed: its partition and every partition
        it touched are in the generations it was made in."""
        generation = self.assignment.generation
        return generation(completion.ref.tp) == completion.ref.generation and all(
            generation(t.tp) == t.generation for t in completion.touches
        )

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.consumer = self._subscribe()

    def _subscribe(self) -> Any:
        # The consumer reports its partitions' fetch states to the loop (fetch_watch.py).
        consumer = self._create_consumer(self.fetch_watch.consumer_config())
        consumer.subscribe(
            self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return consumer

    def run(self, stop: threading.Event, *, drain_timeout_s: float = 30.0) -> None:
        """Turn until ``stop`` is set; then drain within the bound, commit and close."""
        if self.consumer is None:
            self.start()
        try:
            while not stop.is_set():
                try:
                    self.turn()
                except ConsumerFatal as exc:
                    self._replace_consumer(exc)
                    if exc.unreleased:
                        # The old member's session has to run out first.
                        stop.wait(self.config.rejoin_wait_s)
            self.drain(drain_timeout_s)
        finally:
            self.close()

    def close(self) -> None:
        """Leave the group (the revoke callback commits what is complete), close the producer."""
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.close()
            self.consumer = None
        self.producer.close()

    def healthy(self) -> bool:
        """The loop turns, and work that waits is making progress."""
        now = self.clock()
        if now - self._last_turn > 30:
            return False
        waiting = self.assignment.in_flight() > self.handler.parked() or bool(self._pending)
        progress = max(self._last_progress, self.handler.last_progress())
        return not waiting or now - progress < self.config.stall_timeout_s

    def ready(self) -> bool:
        return self.assigned_once and self.producer.ready

    # -- one turn -----------------------------------------------------------------------------

    def turn(self) -> None:
        """Restore, poll, dispatch, collect, commit, pause: one iteration of the loop."""
        now = self._last_turn = self.clock()
        if not self.producer.ready and self._committing is None and now >= self._next_prepare:
            # Become ready (and fence any older instance with our transactional.id) before
            # there is something to commit: readiness means able to commit at once.
            self._next_prepare = now + 0.5
            self.producer.prepare(self.config.call_timeout_s)
        self._restore()
        if now - self._last_fetch_check >= 1.0:
            self._last_fetch_check = now
            self._restart_stalled_fetches()
        self._poll()
        self.handler.tick()
        self._collect()
        self._commit_when_due()
        self._apply_pauses()
        if now - self._last_lag >= self.config.lag_interval_s:
            self._update_lag()

    def _poll(self) -> None:
        busy = self.assignment.in_flight() > 0 or bool(self._pending)
        if busy and self.handler.finishing():
            # The next thing to happen is a completion, and nothing wakes a consumer poll for
            # it: a finished request used to wait for the poll to time out (busy_poll_s / 2 on
            # average) before its commit. Wait for the completion instead, then take the
            # messages already fetched (a message waits at most busy_poll_s for that).
            self._completed.clear()
            if self._completions.empty():
                self._completed.wait(self.config.busy_poll_s)
            first = self.consumer.poll(0)
        else:
            first = self.consumer.poll(self.config.busy_poll_s if busy else 0.05)
        if first is None:
            return
        self._moved()
        room = self._room()  # idle turns skip it; ``first`` is not dispatched yet
        rest = self.consumer.consume(min(room - 1, 500), timeout=0) if room > 1 else []
        redelivered = 0
        for message in _interleaved([first, *rest]) if rest else [first]:
            redelivered += self._on_message(message)
        if redelivered:
            self.metrics.redelivered(redelivered)

    def _room(self) -> int:
        """How many messages this poll may take: the global room, and no more than the room
        of the tightest capped topic still fetching. One consume returns any topic's
        messages; without this, a low lane's prefetched backlog overshoots its cap up to the
        global bound, which then pauses every lane above it until half of it is done."""
        if not self.config.topic_in_flight:
            return self.config.max_in_flight - self.assignment.in_flight()
        by_topic = self.assignment.in_flight_by_topic()
        room = self.config.max_in_flight - sum(by_topic.values())
        for topic, cap in self.config.topic_in_flight.items():
            if topic in by_topic and topic not in self._topic_paused:
                room = min(room, cap - by_topic[topic])
        return room

    def _on_message(self, message: Any) -> int:
        """Dispatch one message; 1 when it was skipped as already done."""
        error = message.error()
        if error is not None:
            # A fatal error reaches poll() as an event with code _FATAL and fatal() False.
            if error.fatal() or error.code() == KafkaError._FATAL:
                raise ConsumerFatal(
                    f"consumer fatal error: {error}",
                    unreleased="instance ID is still used" in error.str(),
                )
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            return 0
        state = self.assignment.get((message.topic(), message.partition()))
        if state is None:
            return 0  # revoked meanwhile
        if state.phase is not Phase.ACTIVE:
            # A fetch from before a rewind, or one that beat the pause of a fresh assignment:
            # the consumer's position has passed it, so the activation must seek back to the
            # commit point (without that seek it would never be delivered again).
            state.must_seek = True
            return 0
        offset = message.offset()
        if not state.offsets.polled(offset):
            return 1  # done before a restart or rewind: its outputs are committed
        ref = MessageRef(state.topic, state.partition, offset, state.generation)
        try:
            self.handler.handle(message, ref)
        except Exception as exc:  # a bug in the handler must not stop the line
            log.exception("handler failed on %s[%d]@%d", ref.topic, ref.partition, ref.offset)
            self.complete(self.handler.failed(message, ref, exc))
        return 0

    def _collect(self) -> None:
        """Move completions of current work (and side records) into the pending checkpoint."""
        while True:
            try:
                record = self._side.get_nowait()
            except queue.Empty:
                break
            if not self._pending.side_records:
                self._side_since = self.clock()
            self._pending.side_records.append(record)
        while True:
            try:
                completion = self._completions.get_nowait()
            except queue.Empty:
                return
            state = self.assignment.get(completion.ref.tp)
            if (
                state is None
                or state.generation != completion.ref.generation
                or (completion.touches and not self._counts(completion))
            ):
                # Revoked or rewound meanwhile: the work will be redone.
                self._discard([completion], "its partition moved before it was collected")
                continue
            if not state.offsets.completed(completion.ref.offset):
                continue  # a second completion for the same message: the first one stands
            self._pending.add(completion)
            self._last_progress = self.clock()
            self._moved()

    def _moved(self) -> None:
        """A partition's offsets or phase changed: pauses and the commit point need a look."""
        self._pauses_stale = True
        self._offsets_stale = True

    # -- the commit path ----------------------------------------------------------------------

    def _commit_when_due(self) -> None:
        if self._committing is not None:
            self._finish(self.config.call_timeout_s)
            return
        pending = self._pending
        now = self.clock()
        if pending.completions:
            if len(pending.completions) >= self.config.max_commit_completions:
                self.commit()
                return
        elif not self._offsets_moved():
            if not pending.side_records:
                return
            if (now - self._side_since) * 1000 < self.config.side_record_delay_ms:
                return  # side records alone: a completion may come to carry them
        if (now - self._last_commit) * 1000 >= self._commit_interval_ms():
            self.commit()

    def _commit_interval_ms(self) -> float:
        """The least time between two commits now: ``commit_interval_ms`` when nothing is in
        flight, ``max_commit_interval_ms`` when an in-flight bound is reached — the global one
        or a capped topic's. A backlog on one capped lane (batch: 16 of 64 slots) is a backlog
        too: measured against the global bound alone it kept the interval at a quarter of the
        range, and transactions small (6 results each instead of 10 at zero service time)."""
        config = self.config
        low, high = config.commit_interval_ms, config.max_commit_interval_ms
        if high is None or high <= low:
            return low
        if not config.topic_in_flight:
            load = self.assignment.in_flight() / max(1, config.max_in_flight)
        else:
            by_topic = self.assignment.in_flight_by_topic()
            load = sum(by_topic.values()) / max(1, config.max_in_flight)
            for topic, cap in config.topic_in_flight.items():
                if by_topic.get(topic):
                    load = max(load, by_topic[topic] / max(1, cap))
        return low + (high - low) * min(1.0, load)

    def _offsets_moved(self) -> bool:
        """Whether some partition's commit point moved (or was never committed); an O(1)
        no when nothing moved since the last no."""
        if not self._offsets_stale:
            return False
        moved = any(
            s.phase is Phase.ACTIVE
            and (s.needs_initial_commit or s.offsets.committable() is not None)
            for s in self.assignment
        )
        self._offsets_stale = moved
        return moved

    def commit(self, wait_s: float | None = None) -> bool:
        """Write the pending completions and the moved offsets in one transaction; True when it
        committed (or there was nothing to do).

        Step 1. Make sure the producer is ready (init, abort a failed transaction, replace a
                broken producer) — or try again next turn.
        Step 2. Start the checkpoint: begin, produce, send offsets with the group metadata.
        Step 3. Finish it: commit_transaction; a commit still in progress is finished on a
                later turn (``_finish``), never abandoned.
        """
        self._last_commit = self.clock()
        if self._committing is not None and not self._finish(wait_s or self.config.commit_wait_s):
            return False
        if not self._pending and not self._offsets_moved():
            return True
        # Step 1.
        if not self.producer.prepare(self.config.call_timeout_s):
            return False
        checkpoint, self._pending = self._pending, Checkpoint()
        # Step 2.
        try:
            started = checkpoint.start(
                self.producer, self.assignment, self.consumer.consumer_group_metadata()
            )
        except Exception as exc:
            self._moved()
            self._failed(checkpoint, exc)
            return False
        if not started:
            return True
        self._committing = checkpoint
        # Step 3.
        return self._finish(wait_s or self.config.commit_wait_s)

    def _finish(self, wait_s: float) -> bool:
        checkpoint = self._committing
        assert checkpoint is not None
        try:
            if not checkpoint.finish(self.producer, self.assignment, wait_s):
                return False
        except Exception as exc:
            self._committing = None
            self._moved()
            self._failed(checkpoint, exc)
            return False
        self._committing = None
        self._aborts_in_row = 0
        self._last_progress = self.clock()
        self._moved()  # bases moved: windows shrank
        self.metrics.transaction("committed")
        if checkpoint.completions:
            self.handler.committed(checkpoint.completions)
        return True

    def _failed(self, checkpoint: Checkpoint, exc: BaseException) -> None:
        """Sort a failed transaction: refused records are replaced and the rest written again;
        an abort keeps the completions (a rebalance racing the commit is the usual cause, and
        redoing GPU work would be waste) until too many in a row; a fatal producer error (or a
        failure of ours mid-transaction) rewinds every partition to its committed state."""
        if isinstance(exc, RecordRefused):
            self.metrics.transaction("refused")
            checkpoint.replace_refused(exc)
            self._requeue(checkpoint)
        elif isinstance(exc, TransactionAborted):
            self.metrics.transaction("aborted")
            self._aborts_in_row += 1
            if checkpoint.commit_timed_out:
                # A commit that timed out and then failed may still have landed: writing the
                # completions again could duplicate them; the committed state decides.
                self._aborts_in_row = 0
                self.rewind(f"commit outcome unknown after a timeout: {exc}")
            elif self._aborts_in_row > self.config.max_aborts_in_row:
                self._aborts_in_row = 0
                self.rewind(f"{self.config.max_aborts_in_row + 1} aborts in a row: {exc}")
            else:
                self._requeue(checkpoint)
        elif isinstance(exc, ProducerFenced):
            self.metrics.transaction("fatal")
            if not isinstance(exc, ProducerWedged):  # a wedged one was replaced already
                self.producer.mark_broken()
            self.rewind(f"producer replaced: {exc}")
        elif isinstance(exc, ProcessorFatal):
            raise exc
        else:
            # Not Kafka's (a bug, an encoding failure): nothing may be left open or half-known.
            log.error("transaction failed: %s: %s", type(exc).__name__, exc)
            self.metrics.transaction("fatal")
            self.producer.mark_broken()
            self.rewind(f"{type(exc).__name__} inside a transaction")

    def _requeue(self, checkpoint: Checkpoint) -> None:
        """Put a checkpoint's completions (of partitions still ours) back in front."""
        keep: list[Completion] = []
        gone: list[Completion] = []
        for completion in checkpoint.completions:
            (keep if self._counts(completion) else gone).append(completion)
        if gone:
            self._discard(gone, "its transaction aborted after a partition moved")
        pending = self._pending
        pending.completions[:0] = keep
        if checkpoint.side_records and not pending.side_records:
            self._side_since = self.clock()
        pending.side_records[:0] = checkpoint.side_records

    # -- restore and rewind -------------------------------------------------------------------

    def rewind(self, why: str) -> None:
        """Forget every partition's in-memory state and restore it from the committed offsets
        (and their metadata): what the broker has is the truth again."""
        log.warning("rewinding to the committed offsets: %s", why)
        self._moved()
        self._pending = Checkpoint()
        tps = self.assignment.keys()
        self.handler.forget(tps)
        for tp in tps:
            self.assignment.restart(tp).must_seek = True
        self._restoring = True

    def _rewind_partitions(self, tps: set[TP], why: str) -> None:
        """``rewind`` for some partitions: each is restored from its committed state, with the
        pending completions that belong to it or touched it (their other partitions too: the
        closure, so that no partition keeps the effect of a discarded completion)."""
        rewound = {tp for tp in tps if tp in self.assignment}
        pending = self._pending.completions
        while True:
            grown = set(rewound)
            for completion in pending:
                involved = {completion.ref.tp, *(t.tp for t in completion.touches)}
                if involved & rewound:
                    grown.update(tp for tp in involved if tp in self.assignment)
            if grown == rewound:
                break
            rewound = grown
        if not rewound:
            return
        log.warning(
            "rewinding %d partition(s) to their committed state: %s",
            len(rewound),
            why,
            extra={"partitions": sorted(rewound)[:20]},
        )
        self._moved()
        self._pending.completions = [
            c
            for c in pending
            if c.ref.tp not in rewound and not any(t.tp in rewound for t in c.touches)
        ]
        self.handler.forget(sorted(rewound))
        for tp in rewound:
            self.assignment.restart(tp).must_seek = True
        self._restoring = True

    def _restore(self) -> None:
        """Read the restore point of RESTORING partitions (``restore.py``: within a budget, so a
        partition waiting for a dead owner's transaction holds back neither the others nor the
        loop) and make those that answered ACTIVE at their commit point."""
        if not self._restoring:
            return  # every partition is ACTIVE: no pass over them
        restoring = [s for s in self.assignment.restoring() if s.restore_point is None]
        if restoring:
            # Rotate, so that with many waiting partitions each gets its turn.
            self._restore_turn = (self._restore_turn + 1) % len(restoring)
            restoring = restoring[self._restore_turn :] + restoring[: self._restore_turn]
            points, errors = read_restore_points(
                self.consumer,
                [s.tp for s in restoring],
                batch_timeout_s=self.config.call_timeout_s,
                single_timeout_s=0.2,
                budget_s=self.config.call_timeout_s,
                clock=self.clock,
            )
            for point in points:
                state = self.assignment.get(point.tp)
                if state is not None:
                    state.restore_point = point
            for tp, error in errors.items():
                state = self.assignment.get(tp)
                if state is not None:
                    self._restore_failed([state], error)
        still = 0
        restored: list[tuple[str, int, int | None, int]] = []
        for state in self.assignment.restoring():
            if state.restore_point is not None and self.handler.ready(state.tp):
                self._activate(state)
                if state.phase is Phase.ACTIVE:
                    offsets = state.offsets
                    restored.append((state.topic, state.partition, offsets.base, len(offsets.done)))
            still += state.phase is Phase.RESTORING
        self._restoring = still > 0
        if restored:
            # Where each partition resumes (commit point, offsets done above it): the first
            # thing to know when a request goes missing.
            log.info("partitions restored", extra={"points": restored[:50]})

    def _activate(self, state: PartitionState) -> None:
        point = state.restore_point
        assert point is not None
        if point.committed >= 0:
            try:
                state.offsets = PartitionOffsets.restored(point.committed, point.metadata)
            except CorruptCommitMetadata as exc:
                # Not ours to interpret: the messages above the point will be processed again.
                log.error("%s[%d]: %s; ignoring it", state.topic, state.partition, exc)
                state.offsets = PartitionOffsets(base=point.committed)
        else:
            state.offsets = PartitionOffsets(base=point.start)
            state.needs_initial_commit = True
        base = state.offsets.base
        assert base is not None
        if state.must_seek:
            # A rewind: the consumer's position is past the commit point. (After an assignment
            # the fetch starts at the committed offset by itself; a seek there would only cost
            # the consumer its position, which committing past trailing markers needs.)
            try:
                self.consumer.seek(TopicPartition(state.topic, state.partition, base))
            except KafkaException as exc:
                not_fetching = exc.args[0].code() == KafkaError._STATE
                # A partition whose fetch never started refuses seeks: start it at base instead.
                if not not_fetching or not self._restart_fetch(state, base, "seek refused"):
                    self._restore_failed([state], exc)
                    return  # a rewind must not continue from the old position: seek next turn
        state.must_seek = False
        state.phase = Phase.ACTIVE
        state.restore_failures = 0
        state.activated_at = self.clock()
        state.fetch_confirmed = False
        self._moved()

    def _restart_stalled_fetches(self) -> None:
        """Assign again, at the restored offset, each active partition librdkafka has not
        started fetching ``fetch_start_timeout_s`` after its activation (fetch_watch.py)."""
        watch = self.fetch_watch
        for state in self.assignment:
            if state.phase is not Phase.ACTIVE or state.fetch_confirmed:
                continue
            if watch.fetching(state.tp) or state.offsets.highest is not None:
                state.fetch_confirmed = True  # a message came: it is fetching
                continue
            activated_at, base = state.activated_at, state.offsets.base
            if activated_at is None or base is None:
                continue
            # Judged only on statistics taken a full timeout after the activation.
            if watch.reported_at >= activated_at + self.config.fetch_start_timeout_s:
                reason = f"fetch state {watch.state(state.tp)!r} since activation"
                if self._restart_fetch(state, base, reason):
                    state.activated_at = self.clock()

    def _restart_fetch(self, state: PartitionState, base: int, reason: str) -> bool:
        """Start fetching ``state``'s partition at ``base`` without librdkafka's OffsetFetch:
        remove it from the consumer's assignment and add it back with an explicit offset."""
        tp = TopicPartition(state.topic, state.partition)
        try:
            self.consumer.incremental_unassign([tp])
            self.consumer.incremental_assign([TopicPartition(state.topic, state.partition, base)])
            (self.consumer.pause if state.paused else self.consumer.resume)([tp])
        except KafkaException as exc:
            log.warning("%s[%d]: restarting its fetch failed: %s", tp.topic, tp.partition, exc)
            return False
        log.warning(
            "%s[%d]: librdkafka was not fetching it (%s); assigned again at offset %d",
            tp.topic,
            tp.partition,
            reason,
            base,
        )
        self.metrics.fetch_restarted()
        return True

    def _restore_failed(self, states: list[PartitionState], error: object) -> None:
        for state in states:
            state.restore_failures += 1
            if state.restore_failures in (1, 10) or state.restore_failures % 100 == 0:
                log.warning(
                    "%s[%d]: committed offset not readable yet (%d tries): %s",
                    state.topic,
                    state.partition,
                    state.restore_failures,
                    error,
                )

    # -- rebalancing ----------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._moved()
        self._restoring = True
        for tp in partitions:
            state = self.assignment.add((tp.topic, tp.partition))
            state.paused = True
        consumer.incremental_assign(partitions)
        if partitions:
            # Paused until restored. librdkafka also keeps a pause flag across unassign/assign.
            consumer.pause(partitions)
        self.assigned_once = True
        self._unreleased_since = None  # joined: a later UNRELEASED_INSTANCE_ID is a new episode
        self._update_assignment_metrics()
        log.info(
            "partitions assigned",
            extra={"partitions": [(p.topic, p.partition) for p in partitions]},
        )

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Hand over what is complete (a commit bounded in time), drop the rest."""
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self._collect()
        with contextlib.suppress(Exception):  # a failed hand-over only means redoing work
            self.commit(wait_s=self.config.commit_wait_s)
        self._drop(tps)
        consumer.incremental_unassign(partitions)
        log.info("partitions revoked", extra={"partitions": tps})

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: nothing of theirs may be committed by us.
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self._drop(tps)
        consumer.incremental_unassign(partitions)
        log.warning("partitions lost", extra={"partitions": tps})

    def _drop(self, tps: list[TP]) -> None:
        self._moved()
        gone = set(tps)
        self.handler.forget(tps)
        for tp in tps:
            self.assignment.remove(tp)
        kept: list[Completion] = []
        dropped: list[Completion] = []
        for completion in self._pending.completions:
            (kept if self._counts(completion) else dropped).append(completion)
        if dropped:
            self._pending.completions = kept
            self._discard(dropped, f"partitions {sorted(gone)[:5]} left this member")
        self._update_assignment_metrics()

    def _discard(self, completions: list[Completion], why: str) -> None:
        """``completions`` will never be committed (their partition or one they touched moved):
        rewind the partitions still ours whose state holds their effect — their own, and any
        they touched — so that nothing in memory claims what was never written (admission's
        dedupe entry of a request that was not admitted would suppress it when it comes back)."""
        generation = self.assignment.generation
        stale: set[TP] = set()
        for completion in completions:
            if completion.touches and generation(completion.ref.tp) == completion.ref.generation:
                stale.add(completion.ref.tp)
            stale.update(t.tp for t in completion.touches if generation(t.tp) == t.generation)
        if stale:
            self._rewind_partitions(stale, f"work that changed their state was discarded: {why}")

    def _replace_consumer(self, exc: ConsumerFatal) -> None:
        """Drop every partition's work, close the dead consumer and subscribe a new one.

        Seen after a broker restart: a static member that rejoined after its session timed out
        was fenced by its own new member id (FENCED_INSTANCE_ID, fatal in librdkafka). Fenced
        again within a minute means another live process has this id: ProcessorFatal.

        UNRELEASED_INSTANCE_ID is different: a static member restarted after a crash (KIP-848)
        finds its old incarnation still in the group until that one's session times out; it
        simply joins again a second later, for up to two minutes.
        """
        now = self.clock()
        if exc.unreleased:
            if self._unreleased_since is None:
                self._unreleased_since = now
            if now - self._unreleased_since > 120:
                raise ProcessorFatal(f"{exc} (for 2 minutes: is this member id in use twice?)")
            log.warning("static member id still held by a previous incarnation; joining again")
        else:
            if now - self._consumer_fatal_at < 60:
                raise ProcessorFatal(f"{exc} (again within 60 s: is this member id in use twice?)")
            self._consumer_fatal_at = now
        log.error("%s: replacing the consumer", exc)
        self._drop(self.assignment.keys())
        with contextlib.suppress(Exception):  # it is dead; its revoke commits nothing now
            self.consumer.close()
        self.consumer = self._subscribe()

    # -- backpressure and lag -----------------------------------------------------------------

    def _apply_pauses(self) -> None:
        """Pause partitions that must not fetch now, resume the others (only the changes)."""
        saturated = self.handler.saturated()
        if not self._pauses_stale and saturated == self._was_saturated:
            return  # nothing that decides a pause changed since the last pass
        self._pauses_stale = False
        self._was_saturated = saturated
        config = self.config
        by_topic = self.assignment.in_flight_by_topic()
        in_flight = sum(by_topic.values())
        if in_flight >= config.max_in_flight:
            self._global_paused = True
        elif in_flight <= config.max_in_flight // 2:
            self._global_paused = False
        for topic, cap in config.topic_in_flight.items():
            if by_topic[topic] >= cap:
                self._topic_paused.add(topic)
            elif by_topic[topic] <= cap // 2:
                self._topic_paused.discard(topic)
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        paused = 0
        for state in self.assignment:
            wants = (
                state.phase is not Phase.ACTIVE
                or self._global_paused
                or saturated
                or state.topic in self._topic_paused
                or state.offsets.window() >= config.max_window
            )
            if wants != state.paused:
                (pause if wants else resume).append(TopicPartition(state.topic, state.partition))
                state.paused = wants
            paused += state.paused
        if pause:
            self.consumer.pause(pause)
        if resume:
            self.consumer.resume(resume)
            self._wake_fetcher(resume)
        self.metrics.set_assignment(len(self.assignment), paused, in_flight)

    def _wake_fetcher(self, partitions: list[TopicPartition]) -> None:
        """Make librdkafka fetch resumed partitions now rather than at its next wake-up (up to
        1 s later, measured: pause() also purged their prefetched messages). A seek to the
        current position — where the fetch resumes anyway — wakes it at once.

        Only partitions with a backlog get the seek: after a seek the consumer reports no
        position until the next message arrives, and an idle partition whose tail is a
        transaction marker needs that position to commit past the marker (``_update_lag``).
        The backlog is judged by the end of the partition: more than one offset (a marker)
        beyond what was polled, or, for a partition not consumed yet, beyond its restored
        commit point. A freshly assigned partition (a failover's heir) has no cached end yet:
        the ends of all of them are asked from the broker in one call (without the wake-up
        their first fetch came 1.0 s after the assignment: measured in ``f2p bench -s
        failover``). Every seek comes after that call, together, so one fetch carries all the
        inherited backlogs: seeking each partition as soon as its own end was known let the
        fetcher start on the first alone, and the first engine batch held only its requests
        (the second inherited partition's first result came one batch later, +0.17 s).
        """
        seeks: list[TopicPartition] = []
        fresh: list[tuple[TopicPartition, int]] = []  # (seek target, commit point)
        for tp in self.consumer.position(partitions):
            state = self.assignment.get((tp.topic, tp.partition))
            if state is None:
                continue
            if tp.offset >= 0:  # consumed before: wake it where it stands
                last, high = state.offsets.highest, self._cached_end(tp)
                if last is not None and 0 <= high <= last + 2:
                    continue  # caught up (or only a marker left): a fetch will come anyway
                seeks.append(tp)
            else:  # not consumed yet (assigned, restored): wake it at its commit point
                base = state.offsets.base
                if base is not None and base >= 0:
                    fresh.append((TopicPartition(tp.topic, tp.partition, base), base))
        ends = self._ends([target for target, _ in fresh])
        for target, base in fresh:
            if ends.get((target.topic, target.partition), -1) > base + 1:
                seeks.append(target)  # more than a marker to fetch
        for target in seeks:
            try:
                self.consumer.seek(target)
            except KafkaException as exc:  # only a wake-up: the resume stands without it
                log.debug("seek after resume failed: %s", exc)

    def _cached_end(self, tp: TopicPartition) -> int:
        """The partition's high watermark from the last fetch response; -1 when unknown."""
        try:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            return int(high)
        except KafkaException:
            return -1

    def _ends(self, partitions: list[TopicPartition]) -> dict[TP, int]:
        """Where each partition ends: the cached high watermark, else one ListOffsets call for
        all the unknown ones (their last stable offset: the consumer reads committed data
        only), within ``_WAKE_BUDGET_S``. A partition missing from the answer is unknown."""
        ends: dict[TP, int] = {}
        unknown: list[TopicPartition] = []
        for tp in partitions:
            high = self._cached_end(tp)
            if high >= 0:
                ends[(tp.topic, tp.partition)] = high
            else:  # offsets_for_times reads the offset as a timestamp: -1 asks for the end
                unknown.append(TopicPartition(tp.topic, tp.partition, OFFSET_END))
        if not unknown:
            return ends
        try:
            answered = self.consumer.offsets_for_times(unknown, timeout=_WAKE_BUDGET_S)
        except KafkaException as exc:  # only a wake-up: those partitions start without it
            log.debug("cannot ask where the inherited partitions end: %s", exc)
            return ends
        for tp in answered:
            if tp.error is None and tp.offset >= 0:
                ends[(tp.topic, tp.partition)] = tp.offset
        return ends

    def _update_assignment_metrics(self) -> None:
        self.metrics.set_assignment(
            len(self.assignment),
            sum(s.paused for s in self.assignment),
            self.assignment.in_flight(),
        )

    def _update_lag(self) -> None:
        """High watermark minus the commit point, summed (cached watermarks from fetch
        responses: no broker round trip). Idle partitions first move their commit point past
        what the consumer skipped (``PartitionOffsets.passed_to``)."""
        self._last_lag = self.clock()
        idle = [
            TopicPartition(s.topic, s.partition)
            for s in self.assignment
            if s.phase is Phase.ACTIVE and not s.in_flight and not s.must_seek
        ]
        with contextlib.suppress(KafkaException):
            for tp in self.consumer.position(idle) if idle else []:
                state = self.assignment.get((tp.topic, tp.partition))
                if state is not None and tp.offset >= 0:
                    state.offsets.passed_to(tp.offset)
                    self._offsets_stale = True
        lag = 0
        for state in self.assignment:
            point = state.offsets.point()
            if point is None:
                continue
            with contextlib.suppress(KafkaException):
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(state.topic, state.partition), cached=True
                )
                if high >= 0:
                    lag += max(0, high - point)
        self.metrics.set_lag(lag)

    # -- shutdown -----------------------------------------------------------------------------

    def drain(self, timeout_s: float) -> None:
        """Graceful shutdown: no new intake; finish in-flight work within the bound; commit.
        Parked work (delayed retries) stays uncommitted: the next owner reads it again."""
        assignment = self.consumer.assignment()
        with contextlib.suppress(KafkaException):
            self.consumer.pause(assignment)
        deadline = self.clock() + timeout_s
        log.info("draining", extra={"in_flight": self.assignment.in_flight()})
        while self.clock() < deadline:
            self.handler.tick()
            self._collect()
            self.commit(wait_s=self.config.commit_wait_s)
            if self.assignment.in_flight() <= self.handler.parked():
                break
            self.consumer.poll(0.05)  # keeps the group session and rebalances going
        self._collect()
        self.commit(wait_s=self.config.commit_wait_s)
