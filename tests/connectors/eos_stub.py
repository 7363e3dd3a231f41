"""An in-memory stand-in for a Kafka cluster, for unit tests of the exactly-once loop (after
Dramatiq's ``StubBroker``): logs per partition, a group's committed offsets with metadata, and
transactions that make records and offsets visible together or not at all.

It models what the loop relies on, not Kafka: read_committed visibility (a committed
transaction's records plus a control marker offset), offsets fetched at assignment, pause/resume,
seek, and errors injected per call. The real-stack tests prove the promises; these prove the
loop's logic, deterministically and in milliseconds.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

TP = tuple[str, int]


@dataclass
class StubMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, bytes]] | None = None
    _error: KafkaError | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def error(self) -> KafkaError | None:
        return self._error


def kafka_exception(
    code: int, *, retriable: bool = False, abort: bool = False, fatal: bool = False
):
    error = KafkaError(
        code, f"injected {code}", retriable=retriable, fatal=fatal, txn_requires_abort=abort
    )
    return KafkaException(error)


@dataclass
class StubBroker:
    """Logs, committed offsets and the failure script shared by stub clients."""

    # (topic, partition) -> list of messages (None marks a transaction control record).
    logs: dict[TP, list[StubMessage | None]] = field(default_factory=lambda: defaultdict(list))
    committed: dict[tuple[str, TP], tuple[int, str | None]] = field(default_factory=dict)
    # op name -> queue of exceptions to raise on the next calls of that op
    failures: dict[str, deque[BaseException]] = field(default_factory=lambda: defaultdict(deque))
    # Max record size (key + value) the "broker" accepts per topic.
    max_record_bytes: dict[str, int] = field(default_factory=dict)
    transactions_committed: int = 0
    # Delivery reports wait for the producer's next poll, as librdkafka's do: a refusal then
    # fails commit_transaction before the report naming the refused record is served.
    reports_on_poll: bool = False
    # A failed send_offsets_to_transaction's TxnOffsetCommit reaches the group coordinator
    # late, after the abort, and commits with the next transaction of the same producer
    # instance: what Kafka allows a client without KIP-890 (librdkafka), whose next transaction
    # runs under the same epoch. A new instance (a new epoch) fences it.
    late_requests: bool = False
    # Transactions that committed a late request of a failed one (the hazard above).
    late_commits: int = 0

    def append(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        key: bytes | None = None,
        headers=None,
    ) -> int:
        log = self.logs[(topic, partition)]
        offset = len(log)
        log.append(StubMessage(topic, partition, offset, key, value, headers))
        return offset

    def records(self, topic: str) -> list[StubMessage]:
        return [
            m
            for (t, _), log in sorted(self.logs.items())
            if t == topic
            for m in log
            if m is not None
        ]

    def fail(self, op: str, *errors: BaseException) -> None:
        self.failures[op].extend(errors)

    def maybe_fail(self, op: str) -> None:
        queue = self.failures.get(op)
        if queue:
            raise queue.popleft()


class StubConsumer:
    """The consumer calls the loop makes; the test drives rebalances with ``assign``/``revoke``."""

    _members = itertools.count(1)

    def __init__(self, broker: StubBroker, group_id: str) -> None:
        self.broker = broker
        self.group_id = group_id
        self.poll_timeouts: deque[float] = deque(maxlen=100)  # the last 100 polls' timeouts
        self.member = next(self._members)
        self.callbacks: dict[str, Callable[..., Any]] = {}
        self.assigned: list[TP] = []
        # Where the next fetch starts, and what position() reports: librdkafka reports the
        # offset after the last message handed out (or control record passed), INVALID before
        # any and again after a seek, until the next one.
        self.positions: dict[TP, int] = {}
        self.app_positions: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self._rebalances: deque[tuple[str, list[TP]]] = deque()
        self.closed = False
        self.seeks: list[tuple[TP, int]] = []
        # Partitions whose OffsetFetch librdkafka loses (issue #5586): assigned without an
        # offset, they are never fetched, and a seek on them fails with _STATE.
        self.offset_fetch_lost: set[TP] = set()
        self.not_fetching: set[TP] = set()
        # Partitions that deliver one message although paused: a fetch response already queued
        # when the pause came (then they leave the set).
        self.queued_before_pause: set[TP] = set()
        self.stats_cb: Callable[[str], None] | None = None
        # Partitions a fetch has returned from: only those have a cached high watermark.
        self.fetched: set[TP] = set()
        # Broker asks for partition ends and seeks, in call order: ("ends", [tp, ...]) once per
        # call, ("seek", tp) per seek.
        self.calls: list[tuple[str, Any]] = []

    def configure(self, config: dict[str, Any]) -> StubConsumer:
        """Take the settings the loop asks for (its statistics callback)."""
        self.stats_cb = config.get("stats_cb")
        return self

    # -- test controls --
    def assign(self, tps: list[TP]) -> None:
        self._rebalances.append(("assign", tps))

    def revoke(self, tps: list[TP]) -> None:
        self._rebalances.append(("revoke", tps))

    def lose(self, tps: list[TP]) -> None:
        self._rebalances.append(("lost", tps))

    # -- consumer API --
    def subscribe(self, topics, on_assign=None, on_revoke=None, on_lost=None) -> None:
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def _run_rebalances(self) -> None:
        while self._rebalances:
            kind, tps = self._rebalances.popleft()
            self.callbacks[kind](self, [TopicPartition(t, p) for t, p in tps])

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.assigned.append(key)
            if tp.offset >= 0:  # an explicit offset: no OffsetFetch
                self.positions[key] = tp.offset
                continue
            if key in self.offset_fetch_lost:
                self.not_fetching.add(key)
                continue
            committed = self.broker.committed.get((self.group_id, key))
            self.positions[key] = committed[0] if committed else 0

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if key in self.assigned:
                self.assigned.remove(key)
            self.positions.pop(key, None)
            self.app_positions.pop(key, None)
            self.not_fetching.discard(key)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, tp: TopicPartition) -> None:
        self.broker.maybe_fail("seek")
        key = (tp.topic, tp.partition)
        if key in self.not_fetching:
            raise kafka_exception(KafkaError._STATE)
        self.positions[key] = tp.offset
        self.app_positions.pop(key, None)
        self.seeks.append((key, tp.offset))
        self.calls.append(("seek", key))

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self.app_positions.get((tp.topic, tp.partition), -1001)
            )
            for tp in partitions
        ]

    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        self.broker.maybe_fail("committed")
        out = []
        for tp in partitions:
            offset, metadata = self.broker.committed.get(
                (self.group_id, (tp.topic, tp.partition)), (-1001, None)
            )
            out.append(
                TopicPartition(tp.topic, tp.partition, offset, metadata=metadata)
                if metadata is not None
                else TopicPartition(tp.topic, tp.partition, offset)
            )
        return out

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = -1, cached: bool = False):
        self.broker.maybe_fail("watermarks")
        key = (tp.topic, tp.partition)
        if cached and key not in self.fetched:
            return -1001, -1001  # librdkafka: no fetch response for it yet
        if not cached:
            self.calls.append(("ends", [key]))
        return 0, len(self.broker.logs[key])

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        """Only the "latest" timestamp (-1) is modelled: the partition's end."""
        self.broker.maybe_fail("watermarks")
        assert all(tp.offset == -1 for tp in partitions), "only the end is modelled"
        self.calls.append(("ends", [(tp.topic, tp.partition) for tp in partitions]))
        return [
            TopicPartition(tp.topic, tp.partition, len(self.broker.logs[(tp.topic, tp.partition)]))
            for tp in partitions
        ]

    def _next(self) -> StubMessage | None:
        for key in self.assigned:
            if key in self.not_fetching:
                continue
            if key in self.paused:
                if key not in self.queued_before_pause:
                    continue
                self.queued_before_pause.discard(key)
            log = self.broker.logs[key]
            self.fetched.add(key)
            start = position = self.positions.get(key, 0)
            while position < len(log) and log[position] is None:
                position += 1  # control records are never delivered
            self.positions[key] = position
            if position > start:
                self.app_positions[key] = position
            if position < len(log):
                self.positions[key] = self.app_positions[key] = position + 1
                return log[position]
        return None

    def poll(self, timeout: float = -1) -> StubMessage | None:
        self.poll_timeouts.append(timeout)
        self._run_rebalances()
        if self.stats_cb is not None:
            self.stats_cb(json.dumps({"topics": self._stats_topics()}))
        return self._next()

    def _stats_topics(self) -> dict[str, Any]:
        topics: dict[str, Any] = {}
        for topic, partition in self.assigned:
            state = "none" if (topic, partition) in self.not_fetching else "active"
            partitions = topics.setdefault(topic, {"partitions": {"-1": {"fetch_state": "none"}}})
            partitions["partitions"][str(partition)] = {"fetch_state": state}
        return topics

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[StubMessage]:
        out = []
        while len(out) < num_messages:
            message = self._next()
            if message is None:
                break
            out.append(message)
        return out

    def consumer_group_metadata(self) -> tuple[str, int]:
        return (self.group_id, self.member)

    def close(self) -> None:
        if self.assigned and self.callbacks.get("revoke"):
            self.callbacks["revoke"](self, self.assignment())
        self.closed = True


class StubProducer:
    """A transactional producer: staged records and offsets become visible on commit."""

    def __init__(self, broker: StubBroker) -> None:
        self.broker = broker
        self.staged: list[tuple[str, int, bytes | None, bytes | None, Any, Callable | None]] = []
        self.staged_offsets: list[tuple[str, TopicPartition]] = []
        self.in_txn = False
        self.initialised = False
        self.aborts = 0
        # Offsets of a failed send_offsets that land late (``StubBroker.late_requests``).
        self.late_offsets: list[tuple[str, TopicPartition]] = []
        # Delivery reports not served yet (``StubBroker.reports_on_poll``).
        self.pending_reports: list[tuple[Callable, KafkaError]] = []

    def init_transactions(self, timeout: float = -1) -> None:
        self.broker.maybe_fail("init_transactions")
        self.initialised = True

    def begin_transaction(self) -> None:
        assert self.initialised and not self.in_txn
        self.in_txn = True
        self.staged, self.staged_offsets = [], []

    def produce(
        self, topic, value=None, key=None, headers=None, partition=-1, on_delivery=None
    ) -> None:
        assert self.in_txn, "produce outside a transaction"
        self.broker.maybe_fail("produce")
        self.staged.append((topic, max(partition, 0), key, value, headers, on_delivery))

    def send_offsets_to_transaction(self, offsets, group_metadata, timeout=-1) -> None:
        assert self.in_txn
        group_id = group_metadata[0]
        try:
            self.broker.maybe_fail("send_offsets_to_transaction")
        except KafkaException:
            if self.broker.late_requests:
                self.late_offsets = [(group_id, tp) for tp in offsets]
            raise
        self.staged_offsets.extend((group_id, tp) for tp in offsets)

    def commit_transaction(self, timeout: float = -1) -> None:
        assert self.in_txn
        # Delivery reports first: a record over its topic's limit fails, the transaction aborts.
        failed = False
        for topic, _, key, value, _, on_delivery in self.staged:
            limit = self.broker.max_record_bytes.get(topic)
            if limit is not None and len(key or b"") + len(value or b"") > limit:
                failed = True
                if on_delivery:
                    report = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large")
                    if self.broker.reports_on_poll:
                        self.pending_reports.append((on_delivery, report))
                    else:
                        on_delivery(report, None)
        if failed:  # the transaction fails with the refused record's code, as librdkafka's does
            raise kafka_exception(KafkaError.MSG_SIZE_TOO_LARGE, abort=True)
        self.broker.maybe_fail("commit_transaction")
        touched = set()
        for topic, partition, key, value, headers, _ in self.staged:
            self.broker.append(topic, partition, value, key, headers)
            touched.add((topic, partition))
        for tp in touched:
            self.broker.logs[tp].append(None)  # the commit marker occupies an offset
        # A late request of a failed transaction lands after this one's own offsets.
        for group_id, tp in self.staged_offsets + self.late_offsets:
            self.broker.committed[(group_id, (tp.topic, tp.partition))] = (tp.offset, tp.metadata)
        self.broker.late_commits += bool(self.late_offsets)
        self.late_offsets = []
        self.broker.transactions_committed += 1
        self.in_txn = False
        self.staged, self.staged_offsets = [], []
        # The commit landed, yet the client reports an error (librdkafka: "EndTxn(commit) may
        # have succeeded" after a timeout).
        self.broker.maybe_fail("commit_landed")

    def abort_transaction(self, timeout: float = -1) -> None:
        self.broker.maybe_fail("abort_transaction")
        self.in_txn = False
        self.aborts += 1
        self.staged, self.staged_offsets = [], []

    def poll(self, timeout: float = 0) -> int:
        served, self.pending_reports = self.pending_reports, []
        for on_delivery, report in served:
            on_delivery(report, None)
        return len(served)

    def flush(self, timeout: float = -1) -> int:
        return 0

    def purge(self, *args: Any, **kwargs: Any) -> None:
        self.staged = []
