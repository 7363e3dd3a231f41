"""Cancellation at every stage, and write-once result objects, against the real stack.

A cancel command (``f2p cancel`` / ``connectors.control.send_cancel``) reaches every worker
through the control topic. A request still queued ends CANCELLED without the engine; one alone
on the engine is stopped between denoising steps; one already answered keeps its result. And a
late upload of a request whose result another worker committed never replaces that result's
object.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import Counter

import pytest
from PIL import Image

from connectors.control import send_cancel
from connectors.s3 import make_s3_client
from schemas.control_records import RequestState
from schemas.records import GenerationRequest, ResultStatus
from tests.inference_consumer.conftest import (
    CountingSimEngine,
    publish,
    read_results,
    read_statuses,
    running_worker,
    sample_request,
    wait_for_results,
    wait_until,
)

pytestmark = pytest.mark.integration


def cancel_seen(worker, request_id: str) -> bool:
    return worker.cancellations is not None and worker.cancellations.is_cancelled(request_id)


def test_a_queued_request_is_cancelled_without_the_engine(pipeline, codec) -> None:
    blocker = GenerationRequest.new(
        "acme", "hold the engine", sample_request().face, width=64, height=64, steps=2,
        true_cfg_scale=1.0,
    )  # fmt: skip
    queued = sample_request()
    engine = CountingSimEngine(gated_prompt="hold the engine", max_batch_size=1)
    engine.gate.clear()
    with running_worker(pipeline, engine) as worker:
        publish(pipeline, codec, [blocker])
        assert engine.entered_gate.wait(30)
        publish(pipeline, codec, [queued])
        send_cancel(pipeline, codec, queued.request_id, reason="test")
        wait_until(lambda: cancel_seen(worker, queued.request_id), 30, "the cancel")
        engine.gate.set()
        results = {
            r.request_id: r
            for r in wait_for_results(pipeline, codec, {queued.request_id, blocker.request_id})
        }
    assert results[queued.request_id].status is ResultStatus.CANCELLED
    assert results[queued.request_id].error.code == "CANCELLED"
    assert queued.request_id not in engine.seen
    assert results[blocker.request_id].status is ResultStatus.OK


def test_a_running_request_stops_between_steps(pipeline, codec) -> None:
    """Alone on the (simulated) GPU, 40 steps of ~0.1 s: cancelled after a few."""
    long = GenerationRequest.new(
        "acme", "a long one", sample_request().face, width=1024, height=1024, steps=40,
        true_cfg_scale=1.0,
    )  # fmt: skip
    engine = CountingSimEngine(time_scale=0.35)  # 0.3 s/step x 0.35 ~ 0.1 s per step
    with running_worker(pipeline, engine) as worker:
        publish(pipeline, codec, [long])
        wait_until(lambda: long.request_id in engine.seen, 30, "the engine to start")
        send_cancel(pipeline, codec, long.request_id)
        wait_until(lambda: cancel_seen(worker, long.request_id), 30, "the cancel")
        [result] = wait_for_results(pipeline, codec, {long.request_id}, timeout_s=30)
        statuses = [s for s in read_statuses(pipeline, codec) if s.request_id == long.request_id]
    assert result.status is ResultStatus.CANCELLED
    assert 0 < result.timings.steps_executed < 40, result.timings
    assert result.images == ()
    assert [s.status for s in statuses] == [RequestState.RUNNING, RequestState.CANCELLED]


def test_a_finished_request_keeps_its_result(pipeline, codec) -> None:
    done = sample_request()
    with running_worker(pipeline, CountingSimEngine()) as worker:
        publish(pipeline, codec, [done])
        [result] = wait_for_results(pipeline, codec, {done.request_id})
        send_cancel(pipeline, codec, done.request_id)
        wait_until(lambda: cancel_seen(worker, done.request_id), 30, "the cancel")
        publish(pipeline, codec, [sample_request()])  # the worker keeps going
    assert result.status is ResultStatus.OK
    assert Counter(r.request_id for r in read_results(pipeline, codec))[done.request_id] == 1


class GatedUploads:
    """S3 whose uploads of one request_id wait for ``gate``."""

    def __init__(self, s3, request_id: str) -> None:
        self._s3 = s3
        self.request_id = request_id
        self.gate = threading.Event()
        self.entered = threading.Event()

    def put_if_absent(self, bucket, key, body, **kwargs):
        if self.request_id in key:
            self.entered.set()
            assert self.gate.wait(60)
        return self._s3.put_if_absent(bucket, key, body, **kwargs)

    def __getattr__(self, name):
        return getattr(self._s3, name)


class OtherBytesEngine(CountingSimEngine):
    """Images differ from the plain sim engine's (as a redo on a GPU would): one pixel off."""

    def generate(self, batch):
        outputs = super().generate(batch)
        for output in outputs:
            for image in output.images:
                image.putpixel((0, 0), (1, 2, 3))
        return outputs


def test_a_late_upload_never_replaces_a_committed_result(pipeline, codec, unique_name) -> None:
    request = sample_request()
    group = unique_name("write-once")
    engine_a = OtherBytesEngine()
    with running_worker(
        pipeline, engine_a, worker_id="wo-a", group_id=group, shutdown_timeout_s=0.2
    ) as a:
        gated = GatedUploads(a.ctx.s3, request.request_id)
        object.__setattr__(a.ctx, "s3", gated)
        publish(pipeline, codec, [request])
        assert gated.entered.wait(30)
        # Worker a is stuck mid-upload; it stops (its partitions go), b takes over.
        stopping = threading.Thread(target=a.stop)
        stopping.start()
        with running_worker(pipeline, CountingSimEngine(), worker_id="wo-b", group_id=group):
            [result] = wait_for_results(pipeline, codec, {request.request_id})
            gated.gate.set()  # a's upload goes out now, after b's result is committed
            wait_until(lambda: not a.loop.consumer, 30, "worker a to finish")
    assert result.worker_id == "wo-b"
    [image] = result.images
    bucket, key = image.uri.removeprefix("s3://").split("/", 1)
    stored = make_s3_client(pipeline).get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == image.sha256
    assert Image.open(io.BytesIO(stored)).size == (image.width, image.height)
    assert Counter(r.request_id for r in read_results(pipeline, codec)) == Counter(
        {request.request_id: 1}
    )
