"""Run by test_tracing.py in its own process (a TracerProvider can be set once per process):
admission and a sim worker in threads, requests published through the SDK, every span kept in
memory and printed as JSON lines on stdout."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from connectors.publisher import Publisher
from connectors.registry import make_registry_client
from connectors.settings import load_settings
from connectors.tracing import configure_tracing
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.sim import SimEngine
from inference_consumer.worker import Worker
from schemas.codec import AvroCodec
from schemas.images import make_sample_face
from streams.admission.config import AdmissionConfig
from streams.admission.service import Admission
from tests.inference_consumer.conftest import wait_for_results


def main(suffix: str, count: int) -> None:
    exporter = InMemorySpanExporter()
    assert configure_tracing("f2p-test", exporter=exporter)
    base = load_settings()
    settings = dataclasses.replace(base, topics=base.topics.with_suffix(suffix))
    codec = AvroCodec(make_registry_client(settings), auto_register=True)
    admission = Admission(
        settings, AdmissionConfig(instance_id="trace-adm", group_id="adm" + suffix)
    )
    worker = Worker(
        settings,
        WorkerConfig(worker_id="trace-w", group_id="w" + suffix),
        SimEngine(time_scale=0.01),
    )
    threads = [threading.Thread(target=admission.run), threading.Thread(target=worker.run)]
    for thread in threads:
        thread.start()
    try:
        with Publisher(settings, codec=codec, inline_small_images=True) as publisher:
            futures = [
                publisher.submit(
                    tenant_id="acme",
                    prompt="studio portrait",
                    face=make_sample_face(96, seed=i),
                    width=64,
                    height=64,
                    steps=2,
                    true_cfg_scale=1.0,
                )
                for i in range(count)
            ]
            ids = {f.result(30).request_id for f in futures}
        wait_for_results(settings, codec, ids, timeout_s=60)
        # The worker's spans are made just after its commit; give its loop a few turns.
        for _ in range(50):
            if sum(s.name == "worker" for s in exporter.get_finished_spans()) >= count:
                break
            threading.Event().wait(0.1)
    finally:
        admission.stop()
        worker.stop()
        for thread in threads:
            thread.join(30)
    for span in exporter.get_finished_spans():
        print(
            json.dumps(
                {
                    "name": span.name,
                    "trace": format(span.context.trace_id, "032x"),
                    "span": format(span.context.span_id, "016x"),
                    "parent": format(span.parent.span_id, "016x") if span.parent else None,
                    "start": span.start_time,
                    "end": span.end_time,
                    "request_id": span.attributes.get("request_id"),
                    "outcome": span.attributes.get("outcome"),
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
