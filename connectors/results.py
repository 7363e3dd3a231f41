"""Reading committed results: the library behind ``f2p results`` and the demo.

Results are written by workers in Kafka transactions; this reader uses ``read_committed`` (via
:func:`connectors.kafka.make_consumer`), so an aborted attempt is never seen. It assigns the
partitions itself under a throw-away group id: it joins no group and commits nothing.

Without ``follow`` the reader stops at the end of the topic as it was when reading started (each
partition's high watermark; a transaction still open there is waited for up to ``timeout_s``).
With ``follow`` it keeps reading until ``idle_timeout_s`` passes without a matching result or,
when ``request_ids`` are given, until each of them has been seen once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, TopicPartition

from connectors.kafka import make_consumer
from connectors.kafka_retry import retry_kafka
from connectors.registry import make_registry_client
from connectors.settings import Settings
from connectors.topic_reader import ReadTimeout
from f2p_errors import F2PError
from schemas.codec import AvroCodec
from schemas.exceptions import UndecodableMessage
from schemas.records import GenerationResult, ResultStatus

logger = logging.getLogger(__name__)

_BATCH = 500


class ResultsError(F2PError):
    """The results topic or a result image could not be read."""


@dataclasses.dataclass(frozen=True)
class ResultFilter:
    """Which results to yield; empty sets match everything."""

    tenant: str | None = None
    request_ids: frozenset[str] = frozenset()
    statuses: frozenset[ResultStatus] = frozenset()

    def wants_key(self, key: bytes | None) -> bool:
        """Cheap pre-check on the message key (the request_id) before decoding."""
        return not self.request_ids or (
            key is not None and key.decode(errors="replace") in self.request_ids
        )

    def matches(self, result: GenerationResult) -> bool:
        return (
            (self.tenant is None or result.tenant_id == self.tenant)
            and (not self.request_ids or result.request_id in self.request_ids)
            and (not self.statuses or result.status in self.statuses)
        )


_T = TypeVar("_T")


def retrying(call: Callable[[], _T], timeout_s: float = 10.0) -> _T:
    """``call()``, retried while it raises a retriable Kafka error (a partition whose leader is
    not known yet, e.g. right after topic creation) until ``timeout_s``."""
    return retry_kafka("results reader", call, deadline_s=timeout_s)


def partitions_of(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    """The partition numbers of ``topic``; ResultsError when it does not exist."""
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        error = metadata.error if metadata is not None else "unknown topic"
        raise ResultsError(f"cannot read topic {topic}: {error}")
    return sorted(metadata.partitions)


def watermarks(
    consumer: Consumer, topic: str, partitions: Iterable[int], timeout_s: float = 10.0
) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` queried from the broker."""
    return {
        p: retrying(
            functools.partial(consumer.get_watermark_offsets, TopicPartition(topic, p), timeout_s),
            timeout_s,
        )
        for p in partitions
    }


def offsets_at(
    consumer: Consumer,
    topic: str,
    partitions: Iterable[int],
    when: datetime,
    timeout_s: float = 10.0,
) -> dict[int, int]:
    """Per partition, the first offset whose timestamp is at or after ``when``; -1 for none."""
    millis = int(when.timestamp() * 1000)
    query = [TopicPartition(topic, p, millis) for p in partitions]
    found = retrying(lambda: consumer.offsets_for_times(query, timeout=timeout_s), timeout_s)
    return {tp.partition: tp.offset for tp in found}


def start_offsets(
    consumer: Consumer, topic: str, since: datetime | None, timeout_s: float = 10.0
) -> dict[int, int]:
    """Per partition: the first offset with a timestamp at or after ``since`` (the end when none
    is), or 0 without ``since``. Raises ResultsError when the topic does not exist."""
    partitions = partitions_of(consumer, topic, timeout_s)
    if since is None:
        return dict.fromkeys(partitions, 0)
    starts = offsets_at(consumer, topic, partitions, since, timeout_s)
    missing = [p for p, offset in starts.items() if offset < 0]  # nothing that late: the end
    for p, (_, high) in watermarks(consumer, topic, missing, timeout_s).items():
        starts[p] = high
    return starts


def iter_results(
    settings: Settings,
    *,
    follow: bool = False,
    tenant: str | None = None,
    request_ids: Iterable[str] = (),
    statuses: Iterable[ResultStatus | str] = (),
    since: datetime | None = None,
    timeout_s: float = 60.0,
    idle_timeout_s: float | None = None,
    codec: AvroCodec | None = None,
    topic: str | None = None,
) -> Iterator[GenerationResult]:
    """Yield committed results matching the filters, in partition order.

    ``timeout_s`` bounds reaching the end without ``follow`` (ReadTimeout otherwise). With
    ``follow``, ``idle_timeout_s`` (None: forever) ends the iteration after that long without a
    matching result. Given ``request_ids``, iteration ends once each has been seen. Messages that
    do not decode are logged with their location and skipped.
    """
    topic = topic or settings.topics.results
    wanted = ResultFilter(
        tenant=tenant,
        request_ids=frozenset(request_ids),
        statuses=frozenset(ResultStatus(str(s).upper()) for s in statuses),
    )
    codec = codec or AvroCodec(make_registry_client(settings), auto_register=False)
    consumer = make_consumer(settings, f"f2p-results-reader-{uuid.uuid4().hex[:12]}")
    try:
        yield from _read(consumer, codec, topic, wanted, follow, since, timeout_s, idle_timeout_s)
    finally:
        consumer.close()


def _read(
    consumer: Consumer,
    codec: AvroCodec,
    topic: str,
    wanted: ResultFilter,
    follow: bool,
    since: datetime | None,
    timeout_s: float,
    idle_timeout_s: float | None,
) -> Iterator[GenerationResult]:
    # Step 1. Where to start and, without follow, where to stop.
    starts = start_offsets(consumer, topic, since)
    ends: dict[int, int] = {}
    if not follow:
        ends = {p: high for p, (_, high) in watermarks(consumer, topic, starts).items()}
    consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    remaining = {p for p in starts if follow or ends[p] > starts[p]}
    unseen = set(wanted.request_ids)
    deadline = time.monotonic() + timeout_s
    last_match = time.monotonic()

    # Step 2. Consume, filter, decode, yield.
    while remaining:
        for msg in consumer.consume(_BATCH, 0.2):
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise ResultsError(f"reading {topic}: {error.str()}")
                continue
            if not wanted.wants_key(msg.key()):
                continue
            try:
                result = codec.decode(
                    topic, msg.value(), partition=msg.partition(), offset=msg.offset(),
                    expect=GenerationResult,
                )  # fmt: skip
            except UndecodableMessage as exc:
                logger.warning("skipping undecodable result: %s", exc)
                continue
            if wanted.matches(result):
                last_match = time.monotonic()
                unseen.discard(result.request_id)
                yield result
                if wanted.request_ids and not unseen:
                    return

        # Step 3. End conditions.
        now = time.monotonic()
        if follow:
            if idle_timeout_s is not None and now - last_match > idle_timeout_s:
                return
            continue
        positions = consumer.position([TopicPartition(topic, p) for p in remaining])
        remaining = {tp.partition for tp in positions if tp.offset < ends[tp.partition]}
        if remaining and now > deadline:
            raise ReadTimeout(
                f"{topic}: end not reached in {timeout_s:.0f} s; partitions {sorted(remaining)}"
            )


def wait_for_results(
    settings: Settings, request_ids: Iterable[str], *, timeout_s: float = 60.0, **filters: Any
) -> dict[str, GenerationResult]:
    """Follow the results topic until each of ``request_ids`` has a result, or ``timeout_s``
    without a new one; returns what was found by request_id (missing ids are absent)."""
    ids = set(request_ids)
    found: dict[str, GenerationResult] = {}
    if not ids:
        return found
    for result in iter_results(
        settings, follow=True, request_ids=ids, idle_timeout_s=timeout_s, **filters
    ):
        found.setdefault(result.request_id, result)
    return found


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``; ResultsError for anything else."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ResultsError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    if not bucket or not key:
        raise ResultsError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def download_images(s3: Any, result: GenerationResult, dest: Path) -> list[Path]:
    """Fetch a result's images to ``dest/<request_id>/<file name>``, checking each SHA-256.

    Only the last path segment of each key is used as file name, so a key cannot write outside
    ``dest``. Files already present with the right hash are not fetched again.
    """
    folder = dest / result.request_id
    paths = []
    for index, image in enumerate(result.images):
        bucket, key = split_s3_uri(image.uri)
        name = key.rsplit("/", 1)[-1]
        if name in ("", ".", "..") or name.startswith("."):
            name = f"{index}.{image.format.value.lower()}"
        path = folder / name
        if path.exists() and _sha256_file(path) == image.sha256:
            paths.append(path)
            continue
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        if digest != image.sha256:
            raise ResultsError(f"{image.uri}: SHA-256 is {digest}, the result says {image.sha256}")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.part")
        tmp.write_bytes(body)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
