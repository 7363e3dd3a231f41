"""Fixtures for worker tests: a private set of pipeline topics, workers in threads, publishing."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from connectors.kafka import make_producer
from connectors.registry import make_registry_client
from connectors.settings import Settings
from connectors.topic_reader import read_to_end
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.base import Engine
from inference_consumer.worker import Worker
from infra.topics import apply_topics, load_topic_specs
from schemas.codec import AvroCodec
from schemas.images import make_sample_face
from schemas.records import GenerationRequest, GenerationResult, InlineImage


@pytest.fixture
def pipeline(stack_settings: Settings, admin, unique_name) -> Settings:
    """Settings whose topics are a fresh, private copy of every pipeline topic."""
    suffix = "." + unique_name("w")
    apply_topics(admin, load_topic_specs(suffix=suffix))
    return dataclasses.replace(stack_settings, topics=stack_settings.topics.with_suffix(suffix))


@pytest.fixture
def codec(stack_settings: Settings) -> AvroCodec:
    return AvroCodec(make_registry_client(stack_settings), auto_register=True)


def sample_request(tenant: str = "acme", size: int = 64, **fields) -> GenerationRequest:
    """A valid request with a small inline face."""
    face = InlineImage(content_type="image/png", data=make_sample_face(96, seed=1))
    fields.setdefault("steps", 2)
    fields.setdefault("true_cfg_scale", 1.0)
    return GenerationRequest.new(tenant, "studio portrait", face, width=size, height=size, **fields)


def publish(settings: Settings, codec: AvroCodec, requests, topic: str | None = None) -> None:
    """Produce requests (keyed by request_id) to their lane, or to ``topic``; wait for delivery."""
    producer = make_producer(settings)
    for request in requests:
        target = topic or (
            settings.topics.requests_interactive
            if request.lane.value == "INTERACTIVE"
            else settings.topics.requests_batch
        )
        producer.produce(
            target, key=request.request_id.encode(), value=codec.encode(target, request)
        )
    assert producer.flush(30) == 0


def read_results(settings: Settings, codec: AvroCodec) -> list[GenerationResult]:
    return [
        codec.decode(settings.topics.results, m.value())
        for m in read_to_end(settings, settings.topics.results, timeout_s=60)
    ]


def wait_for_results(
    settings: Settings, codec: AvroCodec, expected: set[str], timeout_s: float = 90
) -> list[GenerationResult]:
    """Poll the results topic (read_committed) until every expected request_id has a result."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        results = read_results(settings, codec)
        if expected <= {r.request_id for r in results}:
            return results
        assert time.monotonic() < deadline, (
            f"missing results for {len(expected - {r.request_id for r in results})} requests"
        )
        time.sleep(0.2)


@contextmanager
def running_worker(settings: Settings, engine: Engine, **config) -> Iterator[Worker]:
    """A Worker running in a background thread; stopped (gracefully) on exit."""
    config.setdefault("worker_id", f"test-{threading.get_ident()}-{id(engine)}")
    config.setdefault("group_id", "g-" + settings.topics.results)
    worker = Worker(settings, WorkerConfig(**config), engine)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"worker-{config['worker_id']}", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "worker did not stop"
        if errors:
            raise errors[0]


Factory = Callable[..., GenerationRequest]
