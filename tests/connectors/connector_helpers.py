"""Helpers of the publisher/results/replay tests: private topics, independent decoding, S3 and
offset snapshots, CLI subprocesses."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastavro

from connectors.kafka import make_consumer, make_transactional_producer
from connectors.registry import make_registry_client
from connectors.results import partitions_of, watermarks
from connectors.settings import Settings, TopicNames
from connectors.topic_reader import read_to_end
from infra.topics import apply_topics, load_topic_specs
from schemas.codec import AvroCodec
from schemas.records import GenerationResult

REPO = Path(__file__).resolve().parents[2]


_NEEDED = ("f2p.requests.interactive", "f2p.requests.batch", "f2p.results.v1")


@contextmanager
def private_topics(stack_settings: Settings, admin, unique_name) -> Iterator[Settings]:
    """Settings whose request lanes and results topic are a fresh private set
    (``<name>.t-<hex>``), deleted afterwards."""
    suffix = "." + unique_name("t")
    specs = [s for s in load_topic_specs(suffix=suffix) if s.name.removesuffix(suffix) in _NEEDED]
    apply_topics(admin, specs)
    try:
        yield dataclasses.replace(stack_settings, topics=stack_settings.topics.with_suffix(suffix))
    finally:
        for future in admin.delete_topics([s.name for s in specs], operation_timeout=10).values():
            future.exception(timeout=15)  # best effort: a leftover topic harms nobody


def suffix_of(settings: Settings) -> str:
    """The topic suffix of private settings (for ``F2P_TOPIC_SUFFIX``)."""
    return settings.topics.results.removeprefix(TopicNames().results)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """High watermark per partition."""
    consumer = make_consumer(settings, "f2p-test-offsets")
    try:
        partitions = partitions_of(consumer, topic)
        return {p: high for p, (_, high) in watermarks(consumer, topic, partitions).items()}
    finally:
        consumer.close()


def lane_end_offsets(settings: Settings) -> dict[str, dict[int, int]]:
    return {topic: end_offsets(settings, topic) for topic in settings.topics.request_lanes}


def list_keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


class IndependentReader:
    """Decodes Confluent-framed Avro without the project codec: magic byte, schema id,
    ``registry.get_schema(id)``, ``fastavro.schemaless_reader``."""

    def __init__(self, settings: Settings) -> None:
        self._registry = make_registry_client(settings)
        self._schemas: dict[int, Any] = {}

    def decode(self, value: bytes) -> dict[str, Any]:
        magic, schema_id = struct.unpack(">bI", value[:5])
        assert magic == 0, f"magic byte {magic}"
        if schema_id not in self._schemas:
            schema_str = self._registry.get_schema(schema_id).schema_str
            self._schemas[schema_id] = fastavro.parse_schema(json.loads(schema_str))
        body = io.BytesIO(value[5:])
        record = fastavro.schemaless_reader(body, self._schemas[schema_id], None)
        assert body.tell() == len(value) - 5, "trailing bytes after the record"
        return record


def read_requests(settings: Settings, topics: tuple[str, ...] | None = None) -> list[Any]:
    """Every message of the request lanes (or ``topics``), oldest first per partition."""
    messages = []
    for topic in topics or settings.topics.request_lanes:
        messages.extend(read_to_end(settings, topic, timeout_s=30))
    return messages


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment of a CLI subprocess on the private topics of ``settings``."""
    env = dict(os.environ)
    env["F2P_TOPIC_SUFFIX"] = suffix_of(settings)
    env["F2P_LOG_LEVEL"] = "WARNING"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_f2p(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    """``python -m f2p_cli ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "f2p_cli", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class ResultWriter:
    """Writes results the way workers do: in Kafka transactions, keyed by request_id."""

    def __init__(self, settings, transactional_id: str) -> None:
        self.topic = settings.topics.results
        self.codec = AvroCodec(make_registry_client(settings), auto_register=True)
        self.producer = make_transactional_producer(settings, transactional_id)
        self.producer.init_transactions(10)

    def write(self, results: list[GenerationResult], *, commit: bool = True) -> None:
        self.producer.begin_transaction()
        for result in results:
            value = self.codec.encode(self.topic, result)
            self.producer.produce(self.topic, key=result.request_id.encode(), value=value)
        if commit:
            self.producer.commit_transaction(10)
        else:
            self.producer.flush(10)
            self.producer.abort_transaction(10)
