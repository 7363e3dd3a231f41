"""/healthz turns 503 when the worker makes no progress, and 200 again when it does (issue 7,
item 1: a worker wedged behind one message answered 200 for ever, so nothing replaced it).

The engine blocks inside ``generate`` (a wedged GPU call) while requests wait behind it; with a
2 s stall timeout the probe must fail within a few seconds, and recover once the call returns.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.inference_consumer.conftest import (
    CountingSimEngine,
    publish,
    running_worker,
    sample_request,
    wait_for_results,
    wait_until,
)
from tests.inference_consumer.test_worker import free_port, http_get

pytestmark = pytest.mark.integration

STALL_TIMEOUT_S = 2.0


def test_healthz_fails_while_the_engine_is_wedged_and_recovers(pipeline, codec) -> None:
    engine = CountingSimEngine(gated_prompt="wedge")
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"
    with running_worker(
        pipeline, engine, metrics_port=port, stall_timeout_s=STALL_TIMEOUT_S
    ) as worker:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "/readyz")
        canary = sample_request()
        publish(pipeline, codec, [canary])
        wait_for_results(pipeline, codec, {canary.request_id})
        assert http_get(healthz) == (200, "ok\n")

        engine.gate.clear()
        wedged = dataclasses.replace(sample_request(), prompt="wedge")
        behind = [sample_request() for _ in range(3)]
        publish(pipeline, codec, [wedged, *behind])
        assert engine.entered_gate.wait(30), "the wedged request never reached the engine"
        entered = time.monotonic()
        wait_until(lambda: http_get(healthz)[0] == 503, STALL_TIMEOUT_S + 10, "/healthz 503")
        unhealthy_after = time.monotonic() - entered
        assert http_get(healthz) == (503, "unhealthy\n")
        assert not worker.healthy()
        # Still 503 a stall timeout later: nothing moves while the call hangs.
        time.sleep(STALL_TIMEOUT_S)
        assert http_get(healthz)[0] == 503

        engine.gate.set()  # the call returns: results flow, the probe recovers
        wait_for_results(pipeline, codec, {wedged.request_id, *(r.request_id for r in behind)})
        wait_until(lambda: http_get(healthz)[0] == 200, 10, "/healthz 200 again")
        assert worker.healthy()
    print(f"\n/healthz 503 {unhealthy_after:.1f} s after the engine wedged (stall timeout 2 s)")
