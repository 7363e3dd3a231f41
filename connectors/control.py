"""Cancellation: ``ControlCommand`` records on the compacted ``f2p.control.v1``, keyed by
request_id — written by ``f2p cancel`` / ``Publisher.cancel``, read by admission and workers.

``CancellationWatch`` follows every partition of the control topic on a background thread (its
own consumer, no group: every instance needs every cancellation) and answers
``is_cancelled(request_id)`` from memory. Memory is bounded: commands older than the horizon
(the ingress retention; a request cannot be waiting longer) are forgotten, and so is the oldest
command beyond ``max_entries``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from connectors.kafka import make_consumer, make_producer
from connectors.kafka_retry import retry_kafka
from connectors.settings import Settings
from f2p_errors import InvalidInput
from schemas.codec import AvroCodec
from schemas.control_records import ControlCommand, ControlKind

log = logging.getLogger(__name__)

HORIZON_S = 7 * 24 * 3600


class CancellationWatch:
    """Which request_ids have been cancelled (thread-safe reads)."""

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        *,
        horizon_s: float = HORIZON_S,
        max_entries: int = 1_000_000,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.topic = settings.topics.control
        self.horizon_s = horizon_s
        self.max_entries = max_entries
        self._cancelled: OrderedDict[str, float] = OrderedDict()  # request_id -> issued (epoch s)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-watch", daemon=True)

    def start(self) -> CancellationWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def is_cancelled(self, request_id: str | None) -> bool:
        if request_id is None:
            return False
        with self._lock:
            return request_id in self._cancelled

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once the commands that existed at start have been read."""
        return self._caught_up.wait(timeout_s)

    def add(self, request_id: str, issued_s: float) -> None:
        with self._lock:
            self._cancelled[request_id] = issued_s
            self._cancelled.move_to_end(request_id)
            while len(self._cancelled) > self.max_entries:
                self._cancelled.popitem(last=False)

    def _expire(self, now_s: float) -> None:
        cutoff = now_s - self.horizon_s
        with self._lock:
            for request_id in [r for r, t in self._cancelled.items() if t < cutoff]:
                del self._cancelled[request_id]

    def _run(self) -> None:
        consumer = make_consumer(self.settings, f"f2p-control-{uuid.uuid4().hex[:12]}")
        assigned: set[int] = set()
        ends: dict[int, int] = {}
        last_refresh = last_expire = float("-inf")
        failures = 0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    if now - last_refresh > 30:
                        ends |= self._assign_new(consumer, assigned)
                        last_refresh = now
                    message = consumer.poll(0.2)
                    if message is not None and message.error() is None:
                        self._apply(message)
                    if not self._caught_up.is_set() and self._at_end(consumer, ends):
                        self._caught_up.set()
                    failures = 0
                except Exception as exc:  # a broker away: the watch waits and goes on
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        log.warning("control topic watch: %s (retrying)", str(exc)[:300])
                    self._stop.wait(min(5.0, 0.5 * failures))
                if now - last_expire > 60:
                    last_expire = now
                    self._expire(time.time())
        finally:
            consumer.close()

    def _assign_new(self, consumer: Consumer, assigned: set[int]) -> dict[int, int]:
        """Assign partitions not assigned yet (the topic may grow); their current ends."""
        metadata = retry_kafka(
            "control topic metadata",
            lambda: consumer.list_topics(self.topic, timeout=10).topics[self.topic],
        )
        new = sorted(set(metadata.partitions) - assigned)
        if not new:
            return {}
        ends = {
            p: retry_kafka(
                "control topic end",
                functools.partial(
                    consumer.get_watermark_offsets, TopicPartition(self.topic, p), timeout=10
                ),
            )[1]
            for p in new
        }
        assigned.update(new)
        consumer.incremental_assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in new])
        return ends

    def _at_end(self, consumer: Consumer, ends: dict[int, int]) -> bool:
        if not ends:
            return False
        positions = consumer.position([TopicPartition(self.topic, p) for p in ends])
        return all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions)

    def _apply(self, message: Message) -> None:
        value = message.value()
        if value is None:
            return  # compaction's tombstone of an old command
        try:
            command = self.codec.decode(self.topic, value, expect=ControlCommand)
        except Exception as exc:  # not ours: the watch goes on
            log.warning("unreadable control record: %s", str(exc)[:300])
            return
        if command.command is ControlKind.CANCEL:
            self.add(command.request_id, command.issued_at.timestamp())


def send_cancel(
    settings: Settings,
    codec: AvroCodec,
    request_id: str,
    *,
    tenant_id: str | None = None,
    reason: str | None = None,
    issued_by: str | None = None,
    timeout_s: float = 30.0,
) -> ControlCommand:
    """Publish a cancel command for ``request_id`` (idempotent: a second one changes nothing)."""
    try:
        canonical = str(uuid.UUID(request_id)) == request_id
    except (ValueError, TypeError, AttributeError):
        canonical = False
    if not canonical:
        raise InvalidInput(
            "request_id", f"must be a canonical lowercase UUID, got {request_id[:80]!r}",
            code="INVALID_REQUEST_ID",
        )  # fmt: skip
    if reason is not None and len(reason) > 1000:
        raise InvalidInput("reason", "must be at most 1000 characters", code="INVALID_TEXT")
    command = ControlCommand(
        request_id=request_id,
        command=ControlKind.CANCEL,
        tenant_id=tenant_id,
        reason=reason,
        issued_at=datetime.now(UTC),
        issued_by=issued_by,
    )
    producer = make_producer(settings, client_id="f2p-cancel")
    producer.produce(
        settings.topics.control,
        key=request_id.encode(),
        value=codec.encode(settings.topics.control, command),
    )
    if producer.flush(timeout_s):
        raise TimeoutError(f"cancel of {request_id} not delivered in {timeout_s:.0f} s")
    return command
