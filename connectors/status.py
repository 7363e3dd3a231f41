"""Following one request: its status events (``f2p.status.v1``) and its result.

Status events and results are keyed by request_id and produced with the default (murmur2)
partitioner, so one request's events live in one partition of each topic (its DUPLICATE events,
keyed ``<request_id>:duplicate``, in another): the reader reads those partitions only, skipping
other keys before decoding anything.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition

from connectors.kafka import make_consumer
from connectors.kafka_retry import retry_kafka
from connectors.partitioner import partition_for
from connectors.settings import Settings
from f2p_errors import InvalidInput
from schemas.codec import AvroCodec
from schemas.control_records import RequestState, RequestStatus, duplicate_status_key, status_key
from schemas.records import GenerationResult

FINAL = frozenset(
    {
        RequestState.OK,
        RequestState.FAILED,
        RequestState.EXPIRED,
        RequestState.CANCELLED,
        RequestState.REJECTED,
    }
)


@dataclass
class RequestHistory:
    """What the status and results topics say about one request_id."""

    request_id: str
    events: list[RequestStatus] = field(default_factory=list)
    results: list[GenerationResult] = field(default_factory=list)

    @property
    def state(self) -> RequestState | None:
        lifecycle = [e for e in self.events if e.status is not RequestState.DUPLICATE]
        return lifecycle[-1].status if lifecycle else None

    @property
    def finished(self) -> bool:
        return self.state in FINAL or bool(self.results)


def check_request_id(request_id: str) -> str:
    try:
        canonical = str(uuid.UUID(request_id)) == request_id
    except (ValueError, TypeError, AttributeError):
        canonical = False
    if not canonical:
        raise InvalidInput(
            "request_id",
            f"must be a canonical lowercase UUID, got {request_id[:80]!r}",
            code="INVALID_REQUEST_ID",
        )
    return request_id


def read_history(
    settings: Settings, codec: AvroCodec, request_id: str, *, timeout_s: float = 30.0
) -> RequestHistory:
    """Everything committed so far about ``request_id`` (read_committed, to the current end)."""
    history = RequestHistory(check_request_id(request_id))
    wanted = {status_key(request_id), duplicate_status_key(request_id)}
    t = settings.topics
    for topic, keys in ((t.status, wanted), (t.results, {status_key(request_id)})):
        for message in _messages(settings, topic, keys, timeout_s):
            if topic == t.status:
                history.events.append(codec.decode(topic, message.value(), expect=RequestStatus))
            else:
                history.results.append(
                    codec.decode(topic, message.value(), expect=GenerationResult)
                )
    history.events.sort(key=lambda e: e.at)
    return history


def follow_history(
    settings: Settings,
    codec: AvroCodec,
    request_id: str,
    *,
    timeout_s: float,
    interval_s: float = 0.5,
) -> Iterator[RequestHistory]:
    """Yield the history each time it changes, until the request is finished or the time is up."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while True:
        history = read_history(settings, codec, request_id)
        size = len(history.events) + len(history.results)
        if size != seen:
            seen = size
            yield history
        if history.finished or time.monotonic() > deadline:
            return
        time.sleep(interval_s)


def _messages(settings: Settings, topic: str, keys: set[bytes], timeout_s: float) -> Iterator:
    """Committed messages with one of ``keys`` in their (murmur2) partitions of ``topic``."""
    consumer = make_consumer(settings, f"f2p-status-{uuid.uuid4().hex[:12]}")
    try:
        metadata = retry_kafka(
            f"metadata of {topic}", lambda: consumer.list_topics(topic, timeout=10).topics[topic]
        )
        count = len(metadata.partitions)
        partitions = sorted({partition_for(k.decode(), count) for k in keys})
        ends = {}
        for p in partitions:
            low, high = retry_kafka(
                f"watermarks of {topic}[{p}]",
                functools.partial(
                    consumer.get_watermark_offsets, TopicPartition(topic, p), timeout=10
                ),
            )
            if high > low:
                ends[p] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + timeout_s
        remaining = set(ends)
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is None and message.key() in keys:
                    yield message
            positions = consumer.position([TopicPartition(topic, p) for p in remaining])
            remaining = {tp.partition for tp in positions if tp.offset < ends[tp.partition]}
    finally:
        consumer.close()
