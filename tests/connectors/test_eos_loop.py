"""Unit tests of the exactly-once loop's logic against the stub cluster (no broker).

Each test ends with the loop's promise read from the stub's logs: every input message has its
output exactly once, whatever failed in between.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition
from eos_stub import StubBroker, StubConsumer, StubProducer, kafka_exception

from connectors.eos.exceptions import ProcessorFatal, ProducerWedged
from connectors.eos.loop import EosLoop, LoopConfig
from connectors.eos.offsets import decode_done, encode_done
from connectors.eos.producer import RecordRefused, TransactionalProducer
from connectors.eos.records import TP, Completion, MessageRef, OutputRecord, Touched

IN = "in"
OUT = "out"


class EchoHandler:
    """Completes each message with one output record carrying its value; ``hold`` keeps the
    completions of chosen values back until ``release``."""

    def __init__(self) -> None:
        self.loop: EosLoop | None = None
        self.handled: list[bytes] = []
        self.held: dict[bytes, Completion] = {}
        self.hold: set[bytes] = set()
        self.forgotten: list[TP] = []
        self.committed_count = 0
        self.oversize: set[bytes] = set()
        self.completion_due = False

    def handle(self, message: Any, ref: MessageRef) -> None:
        value = message.value()
        self.handled.append(value)
        body = value * 1000 if value in self.oversize else value
        completion = Completion(
            ref,
            [OutputRecord(OUT, body, key=message.key())],
            fallback=lambda: [OutputRecord("dlq", b"refused:" + value)],
        )
        if value in self.hold:
            self.held[value] = completion
        else:
            self.loop.complete(completion)

    def release(self, value: bytes) -> None:
        self.loop.complete(self.held.pop(value))

    def failed(self, message: Any, ref: MessageRef, error: BaseException) -> Completion:
        return Completion(ref, [])

    def forget(self, tps: list[TP]) -> None:
        self.forgotten.extend(tps)
        self.held = {v: c for v, c in self.held.items() if c.ref.tp not in tps}

    def committed(self, completions: list[Completion]) -> None:
        self.committed_count += len(completions)

    def tick(self) -> None:
        pass

    def saturated(self) -> bool:
        return False

    def parked(self) -> int:
        return 0

    def last_progress(self) -> float:
        return 0.0

    def finishing(self) -> bool:
        return self.completion_due

    def ready(self, tp: TP) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_loop(
    broker: StubBroker, handler: EchoHandler, clock: Clock | None = None, **config: Any
) -> tuple[EosLoop, StubConsumer]:
    consumer = StubConsumer(broker, "group")
    producer = TransactionalProducer(lambda: StubProducer(broker), transactional_id="t-1")
    config.setdefault("commit_interval_ms", 0)
    loop = EosLoop(
        topics=[IN],
        create_consumer=consumer.configure,
        producer=producer,
        handler=handler,
        config=LoopConfig(**config),
        clock=clock or time.monotonic,
    )
    handler.loop = loop
    loop.start()
    return loop, consumer


def run_turns(loop: EosLoop, n: int = 20) -> None:
    for _ in range(n):
        loop.turn()


def outputs(broker: StubBroker, topic: str = OUT) -> Counter:
    return Counter(m.value() for m in broker.records(topic))


def fill(broker: StubBroker, partition: int, values: list[bytes]) -> None:
    for v in values:
        broker.append(IN, partition, v, key=v)


def test_metadata_round_trip_of_done_offsets() -> None:
    done = {105, 106, 110, 4200}
    assert decode_done(100, encode_done(100, done)) == done
    assert decode_done(100, encode_done(100, set())) == set()
    assert decode_done(100, "something-else") == set()  # foreign metadata: nothing known


def test_every_message_gets_one_output_and_offsets_reach_the_end() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a", b"b", b"c"])
    fill(broker, 1, [b"d", b"e"])
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0), (IN, 1)])
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1, b"b": 1, b"c": 1, b"d": 1, b"e": 1})
    assert broker.committed[("group", (IN, 0))][0] == 3
    assert broker.committed[("group", (IN, 1))][0] == 2


def test_done_offsets_above_the_commit_point_survive_a_crash() -> None:
    """Completed out of order: the commit point stays at the unfinished message, the done ones
    travel in the metadata; a new member skips them and redoes only the unfinished one."""
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"slow", b"x", b"y"])
    handler.hold = {b"slow"}
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    run_turns(loop)
    offset, metadata = broker.committed[("group", (IN, 0))]
    assert offset == 0
    assert decode_done(0, metadata) == {1, 2}
    assert outputs(broker) == Counter({b"x": 1, b"y": 1})
    # "kill -9": the loop is gone; another member takes over.
    handler2 = EchoHandler()
    loop2, consumer2 = make_loop(broker, handler2)
    consumer2.assign([(IN, 0)])
    run_turns(loop2)
    assert handler2.handled == [b"slow"]
    assert outputs(broker) == Counter({b"slow": 1, b"x": 1, b"y": 1})
    assert broker.committed[("group", (IN, 0))] == (3, "f2p1:")


def test_a_partition_never_committed_gets_its_start_committed_at_once() -> None:
    """Lag must be visible before the first message is done (an autoscaler reads it)."""
    broker, handler = StubBroker(), EchoHandler()
    broker.append(IN, 0, b"only")
    handler.hold = {b"only"}
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    run_turns(loop)
    assert broker.committed[("group", (IN, 0))][0] == 0
    assert outputs(broker) == Counter()


def test_an_aborted_transaction_keeps_its_completions() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a", b"b"])
    broker.fail("commit_transaction", kafka_exception(KafkaError._FAIL, abort=True))
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1, b"b": 1})
    assert handler.handled == [b"a", b"b"]  # not redone


@pytest.mark.parametrize("failure", ["aborts", "fatal"])
def test_repeated_aborts_or_a_fatal_error_rewind_and_redo(failure: str) -> None:
    broker, handler = StubBroker(), EchoHandler()
    loop, consumer = make_loop(broker, handler, max_aborts_in_row=2)
    first_producer = loop.producer.producer
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)  # assigned, restored, start position committed
    if failure == "aborts":
        errors = [kafka_exception(KafkaError._FAIL, abort=True) for _ in range(3)]
    else:
        errors = [kafka_exception(KafkaError._FENCED, fatal=True)]
    broker.fail("commit_transaction", *errors)
    fill(broker, 0, [b"a", b"b", b"c"])
    run_turns(loop, 40)
    assert outputs(broker) == Counter({b"a": 1, b"b": 1, b"c": 1})
    assert Counter(handler.handled)[b"a"] == 2  # redone after the rewind
    assert (IN, 0) in handler.forgotten
    # Replaced either way: a failed transaction's producer is never reused (producer.py).
    assert loop.producer.producer is not first_producer


def test_a_failed_transactions_late_request_cannot_commit_with_a_later_one() -> None:
    """librdkafka has no KIP-890: a request of a failed transaction that the broker applies
    late (a TxnOffsetCommit delayed through a coordinator failover) commits with the next
    transaction of the same producer epoch. Here three transactions of "a" and "b" fail in
    send_offsets (offset 2 lands late each time) and the partition is rewound; the redo of "b"
    is still running when "a" commits again. Reusing the producer, the late offset 2 committed
    with "a" and "b" — never written — was lost to the next restart; a new producer (new epoch)
    after each failure leaves the committed offset at 1, below "b"."""
    broker, handler = StubBroker(late_requests=True), EchoHandler()
    loop, consumer = make_loop(broker, handler, max_aborts_in_row=2)
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)  # assigned, restored, start position committed
    first_producer = loop.producer.producer
    broker.fail(
        "send_offsets_to_transaction",
        *[kafka_exception(KafkaError._TRANSPORT, retriable=True) for _ in range(3)],
    )
    fill(broker, 0, [b"a", b"b"])
    for _ in range(40):
        loop.turn()
        if (IN, 0) in handler.forgotten:
            break
    assert (IN, 0) in handler.forgotten, "three failed transactions rewind the partition"
    handler.hold = {b"b"}  # the redo of "b" runs long
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1})
    assert broker.committed[("group", (IN, 0))][0] == 1  # not past "b"
    assert loop.producer.producer is not first_producer
    handler.release(b"b")
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1, b"b": 1})
    assert broker.committed[("group", (IN, 0))][0] == 2
    assert broker.late_commits == 0


def test_after_one_failed_transaction_the_retry_runs_on_a_new_producer() -> None:
    """One failed send_offsets, then the completions are written again at once (no rewind): the
    retry must not run on the failed transaction's producer, whose late request would commit
    with it (``StubBroker.late_requests``)."""
    broker, handler = StubBroker(late_requests=True), EchoHandler()
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)
    failed = loop.producer.producer
    broker.fail(
        "send_offsets_to_transaction", kafka_exception(KafkaError._TRANSPORT, retriable=True)
    )
    fill(broker, 0, [b"a", b"b"])
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1, b"b": 1})
    assert handler.handled == [b"a", b"b"]  # written again, not redone
    assert broker.late_commits == 0
    assert loop.producer.producer is not failed


def test_a_record_refused_before_sending_aborts_and_keeps_the_producer() -> None:
    """The one failure after which the producer is reused: the client refused a record before
    sending it (nothing of it on the wire), so an abort is enough — a flood of such records
    costs no new producers."""
    broker = StubBroker()
    producer = TransactionalProducer(lambda: StubProducer(broker), transactional_id="t-1")
    assert producer.prepare(1.0)
    first = producer.producer
    broker.fail("produce", kafka_exception(KafkaError.MSG_SIZE_TOO_LARGE))
    with pytest.raises(RecordRefused):
        producer.begin_and_send([OutputRecord(OUT, b"x")], [], ("group",))
    assert producer.ready and producer.producer is first and first.aborts == 1
    assert producer.recreated == 0


def test_a_message_delivered_before_the_partition_is_restored_is_delivered_again() -> None:
    """A freshly assigned partition is paused until its commit point is known, but a fetch
    response already queued can still deliver a message. The loop drops it (nothing is known
    yet) and must seek back at activation: the consumer's position has passed it, and without
    the seek "a" was never delivered again while "b" committed the offset past it."""
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a", b"b"])
    broker.committed[("group", (IN, 0))] = (0, None)
    broker.fail("committed", kafka_exception(KafkaError._TIMED_OUT, retriable=True))
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    consumer.queued_before_pause.add((IN, 0))
    loop.turn()  # assigned; the restore read times out; "a" arrives anyway and is dropped
    assert handler.handled == []
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1, b"b": 1})
    assert broker.committed[("group", (IN, 0))][0] == 2


def test_a_commit_that_timed_out_and_then_failed_is_judged_by_the_committed_state() -> None:
    """commit_transaction times out, and the retry reports an abortable error although the
    commit landed (librdkafka's EndTxn "may have succeeded"). Writing the completions again
    would duplicate them; a rewind reads the committed offsets and redoes nothing."""
    broker, handler = StubBroker(), EchoHandler()
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)  # assigned, restored, start position committed
    broker.fail("commit_transaction", kafka_exception(KafkaError._TIMED_OUT, retriable=True))
    broker.fail("commit_landed", kafka_exception(KafkaError._FAIL, abort=True))
    fill(broker, 0, [b"a"])
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1})
    assert handler.handled == [b"a"]
    assert (IN, 0) in handler.forgotten  # rewound, then restored past "a"


def test_a_wedged_producer_counts_as_live_until_its_call_returns(monkeypatch) -> None:
    """A producer whose send_offsets never returns is abandoned and replaced; it stays counted
    until that call returns (its thread holds the producer: destroying it earlier frees
    nothing), so a fourth wedge in a row ends the process instead of leaking producers and
    threads without bound."""
    import connectors.eos.producer as producer_module

    monkeypatch.setattr(producer_module, "WEDGED_GRACE_S", 0.0)
    gate = threading.Event()

    class WedgingProducer(StubProducer):
        def send_offsets_to_transaction(self, offsets, group_metadata, timeout=-1) -> None:
            gate.wait()

    producer = TransactionalProducer(
        lambda: WedgingProducer(StubBroker()), transactional_id="t-1", call_timeout_s=0.05
    )
    offsets = [TopicPartition(IN, 0, 1)]
    try:
        for _ in range(3):
            assert producer.prepare(1.0)
            with pytest.raises(ProducerWedged):
                producer.begin_and_send([], offsets, ("group",))
        assert producer.abandoned_live == 3
        assert producer.prepare(1.0)
        with pytest.raises(ProcessorFatal):
            producer.begin_and_send([], offsets, ("group",))
    finally:
        gate.set()
    deadline = time.monotonic() + 10
    while producer.abandoned_live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert producer.abandoned_live == 0  # freed once their calls returned


def test_a_commit_that_times_out_is_finished_later_not_redone() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a"])
    broker.fail("commit_transaction", kafka_exception(KafkaError._TIMED_OUT, retriable=True))
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1})
    assert handler.handled == [b"a"]
    assert loop.producer.recreated == 0


def test_a_record_the_broker_refuses_is_replaced_by_its_fallback_and_the_line_moves_on() -> None:
    broker, handler = StubBroker(), EchoHandler()
    broker.max_record_bytes[OUT] = 500
    handler.oversize = {b"big"}
    fill(broker, 0, [b"ok1", b"big", b"ok2"])
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    run_turns(loop, 40)
    assert outputs(broker) == Counter({b"ok1": 1, b"ok2": 1})
    assert outputs(broker, "dlq") == Counter({b"refused:big": 1})
    assert broker.committed[("group", (IN, 0))][0] == 3


def test_a_refusal_reported_after_the_failed_commit_is_not_written_again() -> None:
    """librdkafka may fail the commit with the refused record's code before it serves the
    delivery report naming the record (CI run 17): the producer serves reports for a while
    before sorting the failure, so the record is replaced at once — one new producer for the
    fallback, not a second attempt of a record that can never be written."""
    broker, handler = StubBroker(reports_on_poll=True), EchoHandler()
    broker.max_record_bytes[OUT] = 500
    handler.oversize = {b"big"}
    fill(broker, 0, [b"big", b"ok"])
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    run_turns(loop, 40)
    assert outputs(broker) == Counter({b"ok": 1})
    assert outputs(broker, "dlq") == Counter({b"refused:big": 1})
    assert loop.producer.recreated == 1


def test_a_due_completion_wakes_the_turn_that_waits_for_it() -> None:
    """Nothing wakes a consumer poll when another thread completes work: while the handler says
    a completion is due, the turn waits for the completion itself (then polls without waiting),
    so a finished request is committed at once instead of after the poll's timeout."""
    broker, handler = StubBroker(), EchoHandler()
    handler.hold = {b"a"}
    fill(broker, 0, [b"a"])
    loop, consumer = make_loop(broker, handler, busy_poll_s=60.0)
    consumer.assign([(IN, 0)])
    deadline = time.monotonic() + 10
    while handler.handled != [b"a"] and time.monotonic() < deadline:
        loop.turn()
    loop.turn()
    assert consumer.poll_timeouts[-1] == 60.0  # work in flight, none due: waits for messages
    handler.completion_due = True
    threading.Timer(0.05, handler.release, args=(b"a",)).start()
    started = time.monotonic()
    loop.turn()
    # Woken by the completion, far inside the 60 s it would otherwise have waited.
    assert time.monotonic() - started < 30
    assert consumer.poll_timeouts[-1] == 0
    run_turns(loop, 5)
    assert outputs(broker) == Counter({b"a": 1})


def test_restore_is_retried_while_the_committed_offsets_are_not_readable() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a"])
    timeouts = [kafka_exception(KafkaError._TIMED_OUT, retriable=True) for _ in range(3)]
    broker.fail("committed", *timeouts)
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    loop.turn()
    assert handler.handled == []  # paused while restoring
    assert (IN, 0) in consumer.paused
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1})


def test_revoke_commits_what_is_complete_and_late_completions_are_dropped() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"done", b"late"])
    handler.hold = {b"late"}
    loop, consumer = make_loop(broker, handler, commit_interval_ms=10_000)
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)
    held = handler.held[b"late"]
    consumer.revoke([(IN, 0)])
    loop.turn()
    assert outputs(broker) == Counter({b"done": 1})
    loop.complete(held)  # the engine finished after the revoke: stale
    run_turns(loop)
    assert outputs(broker) == Counter({b"done": 1})
    assert broker.committed[("group", (IN, 0))][0] == 1


def test_lost_partitions_commit_nothing() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a"])
    loop, consumer = make_loop(broker, handler, commit_interval_ms=10_000)
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)
    consumer.lose([(IN, 0)])
    run_turns(loop, 3)
    assert outputs(broker) == Counter()


def test_in_flight_caps_pause_partitions_and_release_them() -> None:
    broker, handler = StubBroker(), EchoHandler()
    values = [f"v{i}".encode() for i in range(20)]
    fill(broker, 0, values)
    handler.hold = set(values)
    loop, consumer = make_loop(broker, handler, max_in_flight=8)
    consumer.assign([(IN, 0)])
    run_turns(loop, 10)
    assert len(handler.handled) <= 8 + 1
    assert (IN, 0) in consumer.paused
    for v in list(handler.held):
        handler.release(v)
    handler.hold = set()
    run_turns(loop, 20)
    assert outputs(broker) == Counter(dict.fromkeys(values, 1))


def test_the_window_cap_pauses_a_partition_behind_a_stuck_message() -> None:
    broker, handler = StubBroker(), EchoHandler()
    values = [b"stuck"] + [f"v{i}".encode() for i in range(30)]
    fill(broker, 0, values)
    handler.hold = {b"stuck"}
    loop, consumer = make_loop(broker, handler, max_window=10, max_in_flight=5)
    consumer.assign([(IN, 0)])
    run_turns(loop, 30)
    # The window is checked between polls: one poll (at most max_in_flight) may overshoot it.
    assert 10 <= len(handler.handled) <= 10 + 5
    assert (IN, 0) in consumer.paused
    offset, metadata = broker.committed[("group", (IN, 0))]
    assert offset == 0 and len(decode_done(0, metadata)) == len(handler.handled) - 1


def test_a_partition_librdkafka_never_starts_fetching_is_assigned_again_at_its_offset() -> None:
    """librdkafka #5586: a lost OffsetFetch leaves an assigned partition unfetched for good."""
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a", b"b"])
    fill(broker, 1, [b"c"])
    clock = Clock()
    loop, consumer = make_loop(broker, handler, clock, fetch_start_timeout_s=10)
    broker.committed[("group", (IN, 0))] = (1, None)  # "a" was done by an earlier owner
    consumer.offset_fetch_lost = {(IN, 0)}
    consumer.assign([(IN, 0), (IN, 1)])
    run_turns(loop)
    assert outputs(broker) == Counter({b"c": 1})
    for _ in range(9):  # not yet: the fetch may still start
        clock.now += 1
        run_turns(loop, 2)
    assert outputs(broker) == Counter({b"c": 1}) and (IN, 0) in consumer.not_fetching
    for _ in range(3):
        clock.now += 1
        run_turns(loop, 5)
    assert outputs(broker) == Counter({b"b": 1, b"c": 1})  # from the restored offset, not 0
    assert broker.committed[("group", (IN, 0))][0] == 2
    assert (IN, 0) in consumer.assigned and not consumer.not_fetching


def test_a_rewind_of_a_partition_that_is_not_fetched_starts_it_at_the_commit_point() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a"])
    loop, consumer = make_loop(broker, handler)
    consumer.offset_fetch_lost = {(IN, 0)}
    consumer.assign([(IN, 0)])
    run_turns(loop)
    loop.rewind("aborted")  # as after aborted transactions: the seek finds no fetch to move
    run_turns(loop)
    assert outputs(broker) == Counter({b"a": 1})
    assert broker.committed[("group", (IN, 0))][0] == 1


def test_health_fails_when_waiting_work_makes_no_progress() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"stuck"])
    handler.hold = {b"stuck"}
    clock = Clock()
    consumer = StubConsumer(broker, "group")
    loop = EosLoop(
        topics=[IN],
        create_consumer=lambda loop_config: consumer,
        producer=TransactionalProducer(lambda: StubProducer(broker), transactional_id="t"),
        handler=handler,
        config=LoopConfig(stall_timeout_s=60, commit_interval_ms=0),
        clock=clock,
    )
    handler.loop = loop
    loop.start()
    consumer.assign([(IN, 0)])
    run_turns(loop, 5)
    assert loop.healthy()
    clock.now += 61
    loop.turn()
    assert not loop.healthy()
    handler.release(b"stuck")
    loop.turn()
    assert loop.healthy()


def test_run_drains_and_closes_on_stop() -> None:
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a", b"b"])
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0)])
    stop = threading.Event()
    run_turns(loop, 5)
    stop.set()
    loop.run(stop, drain_timeout_s=1)
    assert consumer.closed
    assert outputs(broker) == Counter({b"a": 1, b"b": 1})


def test_an_idle_partition_is_committed_past_trailing_transaction_markers() -> None:
    """Input written in transactions ends in a commit marker the consumer skips: committing
    "last processed + 1" would leave a lag of 1 for ever (a lag-based autoscaler never sees 0)."""
    broker, handler = StubBroker(), EchoHandler()
    broker.append(IN, 0, b"a")
    broker.logs[(IN, 0)].append(None)  # the marker of the transaction that wrote "a"
    loop, consumer = make_loop(broker, handler, lag_interval_s=0)
    consumer.assign([(IN, 0)])
    run_turns(loop, 5)
    consumer.poll()  # the stub moves its position past the marker on the next fetch
    run_turns(loop, 5)
    assert broker.committed[("group", (IN, 0))][0] == 2


def test_commits_space_out_with_the_backlog_and_not_when_idle() -> None:
    """At most every commit_interval_ms with nothing in flight; up to max_commit_interval_ms
    as the in-flight count reaches max_in_flight (issue 10: fewer, bigger transactions)."""
    broker, handler = StubBroker(), EchoHandler()
    clock = Clock()
    consumer = StubConsumer(broker, "group")
    loop = EosLoop(
        topics=[IN],
        create_consumer=consumer.configure,
        producer=TransactionalProducer(lambda: StubProducer(broker), transactional_id="t-1"),
        handler=handler,
        config=LoopConfig(max_in_flight=10, commit_interval_ms=5, max_commit_interval_ms=50),
        clock=clock,
    )
    handler.loop = loop
    loop.start()
    fill(broker, 0, [b"first"])
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)  # restored, its start committed at once, "first" polled and done
    assert outputs(broker) == Counter()
    clock.now += 0.006  # nothing in flight: 5 ms since the last commit is enough
    run_turns(loop, 3)
    assert outputs(broker) == Counter({b"first": 1})
    held = [f"h{i}".encode() for i in range(10)]
    handler.hold = set(held)
    fill(broker, 0, [*held, b"second"])
    run_turns(loop, 3)
    assert loop.assignment.in_flight() == 10  # the bound: the interval is 50 ms now
    handler.release(held[0])
    clock.now += 0.030
    run_turns(loop, 3)  # 30 ms < 45.5 ms (9 of 10 in flight): h0 waits
    assert outputs(broker) == Counter({b"first": 1})
    clock.now += 0.020
    run_turns(loop, 3)
    assert outputs(broker) == Counter({b"first": 1, b"h0": 1})
    for value in held[1:]:  # the backlog gone, nothing in flight: 5 ms again
        handler.release(value)
    clock.now += 0.006
    run_turns(loop, 3)
    assert outputs(broker) == Counter(dict.fromkeys([b"first", *held], 1))
    clock.now += 0.006  # "second", polled once the partition resumed
    run_turns(loop, 3)
    assert outputs(broker) == Counter(dict.fromkeys([b"first", *held, b"second"], 1))


def test_a_capped_topic_at_its_cap_spaces_commits_like_a_full_worker() -> None:
    """A backlog on one capped lane is a backlog: with the batch lane at its 4 of 16 slots the
    interval is max_commit_interval_ms, not a quarter of the way there (the merged tree's
    zero-service-time transactions fell from 10 to 6 results each: broker CPU per request
    3.4 ms instead of 0.6)."""
    broker, handler = StubBroker(), EchoHandler()
    clock = Clock()
    consumer = StubConsumer(broker, "group")
    loop = EosLoop(
        topics=[IN],
        create_consumer=consumer.configure,
        producer=TransactionalProducer(lambda: StubProducer(broker), transactional_id="t-1"),
        handler=handler,
        config=LoopConfig(
            max_in_flight=16,
            topic_in_flight={IN: 4},
            commit_interval_ms=0,
            max_commit_interval_ms=50,
        ),
        clock=clock,
    )
    handler.loop = loop
    loop.start()
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)  # restored, its start committed
    held = [f"h{i}".encode() for i in range(4)]
    handler.hold = set(held)
    fill(broker, 0, held)
    run_turns(loop, 3)
    assert loop.assignment.in_flight() == 4  # the topic's cap, a quarter of the global bound
    handler.release(held[0])
    clock.now += 0.030
    run_turns(loop, 3)  # 3 of 4 in flight: 37.5 ms apart; at 3 of 16 it would be 9.4 ms
    assert outputs(broker) == Counter()
    clock.now += 0.010
    run_turns(loop, 3)
    assert outputs(broker) == Counter({b"h0": 1})


def test_side_records_wait_for_a_completion_to_carry_them() -> None:
    broker, handler = StubBroker(), EchoHandler()
    clock = Clock()
    consumer = StubConsumer(broker, "group")
    loop = EosLoop(
        topics=[IN],
        create_consumer=consumer.configure,
        producer=TransactionalProducer(lambda: StubProducer(broker), transactional_id="t-1"),
        handler=handler,
        config=LoopConfig(commit_interval_ms=0, side_record_delay_ms=100),
        clock=clock,
    )
    handler.loop = loop
    loop.start()
    consumer.assign([(IN, 0)])
    run_turns(loop, 3)
    loop.side(OutputRecord("status", b"running-1"))
    clock.now += 0.050
    run_turns(loop, 3)
    assert outputs(broker, "status") == Counter()  # alone, younger than 100 ms: waits
    fill(broker, 0, [b"a"])
    run_turns(loop, 3)  # a completion: both in one transaction at once
    assert outputs(broker) == Counter({b"a": 1})
    assert outputs(broker, "status") == Counter({b"running-1": 1})
    loop.side(OutputRecord("status", b"running-2"))
    run_turns(loop, 3)
    assert outputs(broker, "status") == Counter({b"running-1": 1})
    clock.now += 0.101  # nothing came to carry it: its own transaction
    run_turns(loop, 3)
    assert outputs(broker, "status") == Counter({b"running-1": 1, b"running-2": 1})


def test_a_polled_backlog_is_handed_on_round_robin_over_partitions() -> None:
    """A fetch returns one partition's backlog after the other's; the handler gets them
    interleaved, so the second partition is not served only after the first's backlog."""
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a1", b"a2", b"a3"])
    fill(broker, 1, [b"b1", b"b2"])
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0), (IN, 1)])
    run_turns(loop, 5)
    assert handler.handled == [b"a1", b"b1", b"a2", b"b2", b"a3"]
    assert outputs(broker) == Counter(dict.fromkeys(handler.handled, 1))


def test_a_low_lanes_backlog_stays_within_its_cap_and_leaves_the_other_lanes_fetching() -> None:
    """One consume() returns any topic's messages: it may take no more than the room of the
    tightest capped topic, or a low lane's backlog overshoots its cap up to the global bound,
    which pauses every lane (the fairness bench measured seconds of stall for the lane above)."""
    broker, handler = StubBroker(), EchoHandler()
    low = [f"low{i}".encode() for i in range(100)]
    high = [f"high{i}".encode() for i in range(10)]
    for v in low:
        broker.append("low", 0, v, key=v)
    for v in high:
        broker.append(IN, 0, v, key=v)
    handler.hold = set(low) | set(high)  # nothing completes: in-flight only grows
    consumer = StubConsumer(broker, "group")
    loop = EosLoop(
        topics=["low", IN],
        create_consumer=consumer.configure,
        producer=TransactionalProducer(lambda: StubProducer(broker), transactional_id="t-1"),
        handler=handler,
        config=LoopConfig(max_in_flight=16, topic_in_flight={"low": 2}, commit_interval_ms=0),
    )
    handler.loop = loop
    loop.start()
    consumer.assign([("low", 0), (IN, 0)])  # the stub serves the first partition first
    run_turns(loop, 20)
    assert sum(v.startswith(b"low") for v in handler.handled) <= 2 + 1  # cap + one poll
    assert [v for v in handler.handled if v.startswith(b"high")] == high
    assert ("low", 0) in consumer.paused and (IN, 0) not in consumer.paused


def test_an_inherited_partition_with_a_backlog_is_woken_at_its_commit_point() -> None:
    """A failover's heir resumes the partitions it inherits with a seek to their commit point
    when they hold more than a trailing marker (librdkafka otherwise started fetching them up
    to 1 s later); an inherited partition with nothing to fetch keeps librdkafka's position
    (the lag logic needs it to commit past a trailing marker)."""
    broker, handler = StubBroker(), EchoHandler()
    fill(broker, 0, [b"a", b"b", b"c"])
    broker.committed[("group", (IN, 0))] = (1, None)  # the dead owner got as far as "b"
    fill(broker, 1, [b"x"])
    broker.logs[(IN, 1)].append(None)  # its transaction's commit marker
    broker.committed[("group", (IN, 1))] = (1, None)  # done up to the marker
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0), (IN, 1)])
    run_turns(loop, 3)
    assert consumer.seeks == [((IN, 0), 1)]  # partition 1: nothing to fetch, no seek
    run_turns(loop, 10)
    assert sorted(handler.handled) == [b"b", b"c"]


def test_inherited_partitions_are_asked_for_their_ends_at_once_and_then_all_woken() -> None:
    """The heir asks where all its inherited partitions end in one broker call and seeks them
    only then, together: seeking each as soon as its own end was known let the fetcher start
    on the first alone, and the first engine batch held only the first partition's backlog."""
    broker, handler = StubBroker(), EchoHandler()
    for partition in (0, 1):
        fill(broker, partition, [b"a%d" % partition, b"b%d" % partition])
        broker.committed[("group", (IN, partition))] = (0, None)
    loop, consumer = make_loop(broker, handler)
    consumer.assign([(IN, 0), (IN, 1)])
    run_turns(loop, 3)
    wake_up = [call for call in consumer.calls if call[0] in ("ends", "seek")]
    assert wake_up == [("ends", [(IN, 0), (IN, 1)]), ("seek", (IN, 0)), ("seek", (IN, 1))]
    run_turns(loop, 10)
    assert sorted(handler.handled) == [b"a0", b"a1", b"b0", b"b1"]


STATE = (IN, 1)  # the partition whose in-memory state TouchingHandler keeps (a dedupe store)


class TouchingHandler(EchoHandler):
    """Admission's direct path in miniature: a message on partition 0 is deduplicated against
    the in-memory state of partition 1 (the entry added before the commit, the completion
    touching partition 1); when partition 1 is not ours it is forwarded instead. Its state is
    restored from what was committed when partition 1 is forgotten (a changelog restore)."""

    def __init__(self, broker: StubBroker) -> None:
        super().__init__()
        self.broker = broker
        self.seen: set[bytes] = set()

    def handle(self, message: Any, ref: MessageRef) -> None:
        value = message.value()
        self.handled.append(value)
        assert self.loop is not None
        state = self.loop.assignment.get(STATE)
        if state is None:
            self.loop.complete(Completion(ref, [OutputRecord("forwarded", value)]))
            return
        touched = Touched(*STATE, state.generation)
        records = [] if value in self.seen else [OutputRecord(OUT, value)]
        self.seen.add(value)
        self.loop.complete(Completion(ref, records, touches=(touched,)))

    def forget(self, tps: list[TP]) -> None:
        super().forget(tps)
        if STATE in tps:
            self.seen = set(outputs(self.broker))


def touching_loop_with_a_pending() -> tuple[StubBroker, TouchingHandler, EosLoop, StubConsumer]:
    """Partitions 0 and 1 assigned; "a" on partition 0 handled, its completion pending."""
    broker = StubBroker()
    handler = TouchingHandler(broker)
    broker.committed[("group", STATE)] = (0, None)
    fill(broker, 0, [b"a"])
    loop, consumer = make_loop(broker, handler, commit_interval_ms=10_000)
    consumer.assign([(IN, 0), STATE])
    run_turns(loop, 3)
    return broker, handler, loop, consumer


def test_work_discarded_with_a_revoked_partition_rewinds_the_state_it_touched() -> None:
    """The direct path's dedupe entry must not outlive a completion that never commits: the
    request would be answered DUPLICATE (no outcome) when its ingress partition's next owner
    sends it back (CI lost one of 900 requests in a broker-kill run)."""
    broker, handler, loop, consumer = touching_loop_with_a_pending()
    assert handler.seen == {b"a"} and outputs(broker) == Counter()
    # The revoke's hand-over commit fails (the broker is down): "a" is dropped uncommitted.
    broker.fail("commit_transaction", kafka_exception(KafkaError._FAIL, abort=True))
    generation = loop.assignment.generation(STATE)
    consumer.revoke([(IN, 0)])
    run_turns(loop, 3)
    assert loop.assignment.generation(STATE) != generation  # rewound
    assert b"a" not in handler.seen  # the dedupe entry went with the work
    consumer.assign([(IN, 0)])  # back (or at its next owner, whose copy lands here)
    run_turns(loop, 20)
    loop.commit()
    assert outputs(broker) == Counter({b"a": 1})


def test_work_that_touched_a_revoked_partition_is_redone_not_committed() -> None:
    """The other way round: the touched partition leaves first. The completion must not commit
    (the new owner of partition 1 would not know its entry): its own partition is rewound and
    the message handled again — forwarded, now that partition 1 is someone else's."""
    broker, handler, loop, consumer = touching_loop_with_a_pending()
    broker.fail("commit_transaction", kafka_exception(KafkaError._FAIL, abort=True))
    consumer.revoke([STATE])
    run_turns(loop, 20)
    loop.commit()
    assert handler.handled == [b"a", b"a"]
    assert outputs(broker) == Counter()
    assert outputs(broker, "forwarded") == Counter({b"a": 1})
    assert broker.committed[("group", (IN, 0))][0] == 1
