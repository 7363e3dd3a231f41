"""Read a topic's committed records from the beginning to its current end.

The end is the high watermark of each partition when reading starts. With
``isolation.level=read_committed`` librdkafka moves the position past transaction markers and
aborted records, so "position >= high watermark on every partition" is an exact end condition:
no idle-timeout guessing.

The high watermark is queried with ``read_uncommitted``: asked by a read_committed consumer the
broker answers with the last stable offset, which stops short of records committed after a
still-open transaction (a crashed producer's, until the coordinator aborts it). Reading to the
true end waits for such a transaction to be resolved and misses nothing committed before.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator, Mapping

from confluent_kafka import Message, TopicPartition

from connectors.kafka import make_consumer
from connectors.kafka_retry import retry_kafka
from connectors.settings import Settings
from f2p_errors import F2PError


class ReadTimeout(F2PError):
    """The end of the topic was not reached before the deadline."""


def read_to_end(
    settings: Settings,
    topic: str,
    *,
    timeout_s: float = 60.0,
    partitions: list[int] | None = None,
    start_offsets: dict[int, int] | None = None,
) -> Iterator[Message]:
    """Yield every committed message of ``topic`` (all or some partitions) up to its end.

    Uses a throw-away group id and assigns partitions explicitly: it joins no group and commits
    nothing. Raises ReadTimeout (naming the lagging partitions) if the end is not reached in time.
    """
    consumer = make_consumer(settings, f"f2p-reader-{uuid.uuid4().hex[:12]}")
    try:
        metadata = retry_kafka(
            f"metadata of {topic}", lambda: consumer.list_topics(topic, timeout=10).topics[topic]
        )
        if metadata.error is not None:
            raise F2PError(f"cannot read topic {topic}: {metadata.error}")
        numbers = partitions if partitions is not None else sorted(metadata.partitions)
        starts = start_offsets or {}
        assignment = [TopicPartition(topic, p, starts.get(p, 0)) for p in numbers]
        ends = _high_watermarks(settings, assignment)
        todo = [tp for tp in assignment if ends[tp.partition] > max(tp.offset, 0)]
        if not todo:
            return
        consumer.assign(todo)
        deadline = time.monotonic() + timeout_s
        remaining = {tp.partition for tp in todo}
        while remaining:
            if time.monotonic() > deadline:
                raise ReadTimeout(
                    f"{topic}: end not reached in {timeout_s:.0f} s; partitions {sorted(remaining)}"
                )
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                offset, partition = msg.offset(), msg.partition()
                if offset is not None and partition is not None and offset < ends[partition]:
                    yield msg
            positions = consumer.position([TopicPartition(topic, p) for p in remaining])
            remaining = {tp.partition for tp in positions if tp.offset < ends[tp.partition]}
    finally:
        consumer.close()


def read_batches_to_end(
    settings: Settings,
    topic: str,
    *,
    partitions: list[int],
    timeout_s: float = 60.0,
    batch_size: int = 10_000,
    config: Mapping[str, object] | None = None,
) -> Iterator[list[Message]]:
    """``read_to_end`` for bulk reads (state restores): the same messages, in lists of up to
    ``batch_size`` from ``consume()``, with one position check per list instead of per message.

    ``config`` overrides the consumer's (larger fetches, say). Raises ReadTimeout likewise.
    """
    assignment = [TopicPartition(topic, p, 0) for p in partitions]
    ends = _high_watermarks(settings, assignment)
    todo = [tp for tp in assignment if ends[tp.partition] > 0]
    if not todo:
        return
    consumer = make_consumer(
        settings, f"f2p-reader-{uuid.uuid4().hex[:12]}", config=dict(config or {})
    )
    try:
        consumer.assign(todo)
        deadline = time.monotonic() + timeout_s
        remaining = [TopicPartition(topic, tp.partition) for tp in todo]
        while remaining:
            if time.monotonic() > deadline:
                lagging = sorted(tp.partition for tp in remaining)
                raise ReadTimeout(f"{topic}: end not reached in {timeout_s:.0f} s; {lagging}")
            kept = []
            for m in consumer.consume(batch_size, timeout=0.1):
                partition, offset = m.partition(), m.offset()
                if partition is None or offset is None or m.error() is not None:
                    continue
                if offset < ends[partition]:
                    kept.append(m)
            if kept:
                yield kept
            remaining = [
                TopicPartition(topic, tp.partition)
                for tp in consumer.position(remaining)
                if tp.offset < ends[tp.partition]
            ]
    finally:
        consumer.close()


def _high_watermarks(settings: Settings, partitions: list[TopicPartition]) -> dict[int, int]:
    """The high watermark (not the last stable offset) of each partition.

    Retried while the partition's leader moves: right after a broker restart a leader can answer
    NOT_LEADER_FOR_PARTITION until it has loaded the partition.
    """
    probe = make_consumer(
        settings, f"f2p-reader-{uuid.uuid4().hex[:12]}", isolation_level="read_uncommitted"
    )
    try:
        return {
            tp.partition: retry_kafka(
                f"watermarks of {tp.topic}[{tp.partition}]",
                functools.partial(probe.get_watermark_offsets, tp, timeout=10),
            )[1]
            for tp in partitions
        }
    finally:
        probe.close()
