"""Fixtures for worker tests: a private set of pipeline topics, workers in threads, publishing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from connectors.kafka import make_producer
from connectors.settings import Settings
from connectors.topic_reader import read_to_end
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.base import Engine
from inference_consumer.engines.sim import SimEngine
from inference_consumer.worker import Worker
from schemas.codec import AvroCodec
from schemas.control_records import RequestStatus
from schemas.images import make_sample_face
from schemas.records import GenerationRequest, GenerationResult, InlineImage


def sample_request(tenant: str = "acme", size: int = 64, **fields) -> GenerationRequest:
    """A valid request with a small inline face."""
    face = InlineImage(content_type="image/png", data=make_sample_face(96, seed=1))
    fields.setdefault("steps", 2)
    fields.setdefault("true_cfg_scale", 1.0)
    return GenerationRequest.new(tenant, "studio portrait", face, width=size, height=size, **fields)


def publish(settings: Settings, codec: AvroCodec, requests, topic: str | None = None) -> None:
    """Produce requests (keyed by request_id) to their internal lane, as admission would, or to
    ``topic``; wait for delivery. (Worker tests: admission is not running.)"""
    producer = make_producer(settings)
    for request in requests:
        target = topic or (
            settings.topics.lanes_interactive
            if request.lane.value == "INTERACTIVE"
            else settings.topics.lanes_batch
        )
        producer.produce(
            target, key=request.request_id.encode(), value=codec.encode(target, request)
        )
    assert producer.flush(30) == 0


def read_statuses(settings: Settings, codec: AvroCodec) -> list[RequestStatus]:
    """Every committed RequestStatus event (read_committed, from the beginning)."""
    return [
        codec.decode(settings.topics.status, m.value())
        for m in read_to_end(settings, settings.topics.status, timeout_s=60)
    ]


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


# -- added for the worker's functional tests (test_worker.py, test_poison.py, test_shutdown.py) --


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, step_s: float = 0.05):
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(step_s)


def publish_raw(
    settings: Settings,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
) -> list[tuple[int, int]]:
    """Produce ``(key, value, headers)`` as they are; return each one's (partition, offset)."""
    producer = make_producer(settings)
    where: dict[int, tuple[int, int]] = {}
    errors: list[object] = []

    def report(index: int):
        def on_delivery(err, msg) -> None:
            if err is not None:
                errors.append(err)
            else:
                where[index] = (msg.partition(), msg.offset())

        return on_delivery

    for index, (key, value, headers) in enumerate(messages):
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report(index))
    assert producer.flush(30) == 0
    assert not errors, errors
    return [where[i] for i in range(len(messages))]


def read_dead_letters(settings: Settings, codec: AvroCodec) -> list:
    """Every committed DeadLetter on the DLQ topic."""
    return [
        codec.decode(settings.topics.dlq, m.value())
        for m in read_to_end(settings, settings.topics.dlq, timeout_s=60)
    ]


def metric(worker: Worker, name: str, **labels: str) -> float:
    """Current value of one of the worker's Prometheus samples (0 when not yet present)."""
    value = worker.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


class CountingSimEngine(SimEngine):
    """The sim engine, recording every request_id that reached ``generate`` (in call order).

    ``fail_prompts`` maps a prompt to how many times its requests raise EngineTransientError
    before they succeed (``-1``: always); ``gate`` (set by default) holds back batches with the
    prompt ``gated_prompt`` until it is set.
    """

    def __init__(
        self,
        *,
        fail_prompts: dict[str, int] | None = None,
        gated_prompt: str | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("time_scale", 0)
        super().__init__(**kwargs)
        self.seen: list[str] = []
        self.batches: list[list[str]] = []
        self.fail_prompts = dict(fail_prompts or {})
        self.failures: dict[str, int] = {}
        self.gated_prompt = gated_prompt
        self.gate = threading.Event()
        self.gate.set()
        self.entered_gate = threading.Event()

    def generate(self, batch):
        from inference_consumer.engines.exceptions import EngineTransientError

        self.seen.extend(r.request_id for r in batch)
        self.batches.append([r.request_id for r in batch])
        for request in batch:
            limit = self.fail_prompts.get(request.prompt)
            if limit is None:
                continue
            done = self.failures.get(request.request_id, 0)
            if limit < 0 or done < limit:
                self.failures[request.request_id] = done + 1
                raise EngineTransientError(f"simulated transient failure of {request.request_id}")
        if self.gated_prompt is not None and any(r.prompt == self.gated_prompt for r in batch):
            self.entered_gate.set()
            assert self.gate.wait(60), "gate never opened"
        return super().generate(batch)
