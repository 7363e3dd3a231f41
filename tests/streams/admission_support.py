"""Helpers for admission tests: an admission instance in a thread, publishing as outside teams do
(any partitioner, any key or none, either ingress topic), and reading status events."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from connectors.kafka import make_producer
from connectors.settings import Settings
from schemas.codec import AvroCodec
from schemas.records import GenerationRequest
from streams.admission.config import AdmissionConfig
from streams.admission.quotas import QuotaPolicy
from streams.admission.service import Admission


@contextmanager
def running_admission(
    settings: Settings,
    *,
    policy: QuotaPolicy | None = None,
    wrap_producer: Callable[[Any], Any] | None = None,
    **config: object,
) -> Iterator[Admission]:
    """An Admission instance running in a background thread; stopped (gracefully) on exit.

    ``wrap_producer`` sees each real transactional producer admission makes and returns what
    admission uses instead (a fault-injecting proxy)."""
    config.setdefault("instance_id", f"adm-{threading.get_ident()}-{id(config)}")
    config.setdefault("group_id", "adm-" + settings.topics.results)
    create_producer = None
    if wrap_producer is not None:
        wrap = wrap_producer

        def create_producer(timeouts: Any) -> Any:
            return wrap(admission._real_producer(timeouts))

    admission = Admission(
        settings,
        AdmissionConfig(**config),  # type: ignore[arg-type]
        policy=policy,
        create_producer=create_producer,
    )
    errors: list[BaseException] = []

    def target() -> None:
        try:
            admission.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"admission-{config['instance_id']}", daemon=True)
    thread.start()
    try:
        yield admission
    finally:
        admission.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "admission did not stop"
        if errors:
            raise errors[0]


def publish_as(
    settings: Settings,
    codec: AvroCodec,
    requests: list[GenerationRequest],
    *,
    topic: str | None = None,
    key: str = "request_id",
    partitioner: str = "murmur2_random",
) -> None:
    """Produce to an ingress topic the way some upstream client might: ``key`` is
    ``request_id``, ``none`` or ``other`` (a key that is not the request_id); ``partitioner``
    any of librdkafka's."""
    producer = make_producer(settings, partitioner=partitioner)
    for request in requests:
        target = topic or (
            settings.topics.requests_interactive
            if request.lane.value == "INTERACTIVE"
            else settings.topics.requests_batch
        )
        value = codec.encode(target, request)
        message_key = {
            "request_id": request.request_id.encode(),
            "none": None,
            "other": b"not-the-id-" + request.request_id[:8].encode(),
        }[key]
        producer.produce(target, key=message_key, value=value)
    assert producer.flush(30) == 0
