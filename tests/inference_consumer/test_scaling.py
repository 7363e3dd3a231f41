"""Scale-out and scale-in under load, as KEDA does it: sim worker processes are added when the
group's lag per replica passes the threshold and removed (SIGTERM: drain, commit, leave) when it
stays below, while requests keep arriving. The promise still holds: exactly one outcome per
request (independent read_committed scan); the P99 is printed.

The requests go straight to the internal lanes, as admission writes them (keyed by request_id,
admission's partitioner): the promise is the workers' and KEDA's, and admission beside them
would only take CPU from the sim workers on this 2-core machine.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
import uuid
from collections import Counter

import pytest
from chaos_support import WorkerFleet, exactly_once_report, group_caught_up, wait_until
from confluent_kafka.admin import AdminClient

from connectors.kafka import make_producer
from connectors.settings import Settings
from inference_consumer.engines.sim import expected_service_time
from infra.monitoring.lag_exporter import LagCollector
from schemas.images import make_sample_face
from schemas.records import GenerationRequest, InlineImage, Lane

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FACE = InlineImage(content_type="image/png", data=make_sample_face(96, seed=11))
SIZE, STEPS, BATCH = 256, 8, 4
# One sim worker serves 4 / S(4) = 8.2 req/s of these (256², 8 steps, batch 4: S(4) = 0.49 s).
WORKER_CAPACITY = BATCH / (
    expected_service_time(steps=STEPS, true_cfg_scale=1.0, width=SIZE, height=SIZE) * BATCH**0.85
)
PHASES = ((14.0, 15.0), (3.0, 20.0))  # (req/s, seconds): a burst, then a trickle
LAG_THRESHOLD = 8  # per replica, as the ScaledObject's lagThreshold
MAX_REPLICAS = 4
SCALE_DOWN_STABLE_S = 4.0  # the HPA's scaleDown stabilization window, shortened


def request(n: int) -> GenerationRequest:
    return GenerationRequest.new(
        f"tenant-{n % 3}", "studio portrait", FACE, width=SIZE, height=SIZE, steps=STEPS,
        true_cfg_scale=1.0, lane=Lane.INTERACTIVE if n % 4 == 0 else Lane.BATCH,
    )  # fmt: skip


def publish_phase(
    settings: Settings, codec, first: int, rate: float, seconds: float
) -> list[GenerationRequest]:
    """``rate`` requests/s for ``seconds`` to the internal lanes, as admission writes them (keyed
    by request_id: the murmur2 producer puts each on admission's partition). Each request is
    made as it is sent, so its submitted_at (where end-to-end starts) is its publish time."""
    producer = make_producer(settings, client_id="scaling-publisher")
    errors: list[str] = []
    sent: list[GenerationRequest] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(str(err))

    started = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the arrivals, not waiting for a condition
        r = request(first + n)
        t = settings.topics
        topic = t.lanes_interactive if r.lane is Lane.INTERACTIVE else t.lanes_batch
        producer.produce(
            topic,
            key=r.request_id.encode(),
            value=codec.encode(topic, r),
            on_delivery=on_delivery,
        )
        producer.poll(0)
        sent.append(r)
    assert producer.flush(60) == 0 and not errors, errors
    return sent


class Autoscaler(threading.Thread):
    """KEDA's Kafka scaler + the HPA, in small: desired = ceil(lag / threshold), clamped to
    1..MAX_REPLICAS; scale out at once, scale in one pod at a time after the desired count
    stayed lower for SCALE_DOWN_STABLE_S; a removed pod gets SIGTERM (the highest ordinal
    first, as a StatefulSet does) and drains while the loop goes on."""

    def __init__(self, fleet: WorkerFleet, admin: AdminClient, group: str) -> None:
        super().__init__(name="autoscaler", daemon=True)
        self.fleet = fleet
        self.lag = LagCollector(admin, group_regex=group, topic_regex=".*", timeout_s=5)
        self.running: list[str] = []
        self.events: list[tuple[float, str, int, int]] = []  # (t, action, replicas, lag)
        self.drains: list[threading.Thread] = []
        self.exit_codes: dict[str, int | None] = {}
        self.done = threading.Event()
        self.started_at = time.monotonic()

    def scale_to(self, replicas: int, lag: int) -> None:
        while len(self.running) < replicas:
            worker_id = f"scale-{len(self.running)}"
            self.fleet.start(worker_id)
            self.running.append(worker_id)
            self.events.append((self._t(), "out", len(self.running), lag))
        while len(self.running) > replicas:
            worker_id = self.running.pop()
            worker = self.fleet.workers[worker_id]
            drain = threading.Thread(
                target=lambda w=worker: self.exit_codes.__setitem__(w.worker_id, w.stop(60))
            )
            drain.start()
            self.drains.append(drain)
            self.events.append((self._t(), "in", len(self.running), lag))

    def run(self) -> None:
        self.scale_to(1, 0)
        lower_since: float | None = None
        while not self.done.is_set():
            lag = sum(value for _, _, value in self.lag.lags())
            desired = min(MAX_REPLICAS, max(1, math.ceil(lag / LAG_THRESHOLD)))
            if desired > len(self.running):
                self.scale_to(desired, lag)
                lower_since = None
            elif desired < len(self.running):
                lower_since = lower_since or time.monotonic()
                if time.monotonic() - lower_since >= SCALE_DOWN_STABLE_S:
                    self.scale_to(len(self.running) - 1, lag)
                    lower_since = time.monotonic()
            else:
                lower_since = None
            self.done.wait(1.0)

    def _t(self) -> float:
        return round(time.monotonic() - self.started_at, 1)


def test_workers_added_and_drained_under_load_give_one_outcome_each(
    pipeline, codec, admin, tmp_path
) -> None:
    started = time.monotonic()
    group = f"scale-{uuid.uuid4().hex[:8]}"
    fleet = WorkerFleet(
        pipeline,
        tmp_path,
        group_id=group,
        sim_time_scale=1.0,
        # The manifests' settings (base/worker.yaml): two batches per lane, three lanes.
        extra_env={"F2P_WORKER_MAX_IN_FLIGHT": "24", "F2P_ENGINE_MAX_BATCH": str(BATCH)},
    )
    scaler = Autoscaler(fleet, admin, group)
    requests: list[GenerationRequest] = []
    try:
        scaler.start()
        wait_until(lambda: all(w.booted() for w in fleet.alive()), 60)
        for rate, seconds in PHASES:
            requests += publish_phase(pipeline, codec, len(requests), rate, seconds)
        caught_up, _ = wait_until(lambda: group_caught_up(pipeline, group), 45, interval_s=1)
        assert caught_up, "the group did not catch up\n" + fleet.log_tail()
    finally:
        scaler.done.set()
        scaler.join(10)
        for drain in scaler.drains:
            drain.join(70)
        fleet.stop_all()

    report, results = exactly_once_report(pipeline, codec, {r.request_id for r in requests})
    latencies = sorted(r.timings.total_ms / 1000 for r in results)
    shares = Counter(r.worker_id for r in results)
    first_request = min(r.submitted_at for r in results)
    first_result = {
        w: round((min(r.completed_at for r in results if r.worker_id == w) - first_request)
                 .total_seconds(), 1)
        for w in sorted(shares)
    }  # fmt: skip
    p50 = statistics.median(latencies)
    p99 = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)]
    print(
        f"\nscaling under load: {len(requests)} requests, worker capacity "
        f"{WORKER_CAPACITY:.1f} req/s, phases {PHASES}\n"
        f"  scale events (t s, out/in, replicas, lag): {scaler.events}\n"
        f"  drained workers' exit codes: {scaler.exit_codes}\n"
        f"  results per worker: {dict(sorted(shares.items()))}; each one's first result at "
        f"{first_result} s after the first request\n"
        f"  {report.summary()}\n"
        f"  end-to-end P50 {p50:.2f} s, P99 {p99:.2f} s; run {time.monotonic() - started:.0f} s"
    )
    outs = [e for e in scaler.events if e[1] == "out"]
    ins = [e for e in scaler.events if e[1] == "in"]
    assert max(e[2] for e in outs) >= 3, f"never scaled out: {scaler.events}"
    load_ended = PHASES[0][1] + PHASES[1][1]
    assert any(e[0] < load_ended for e in ins), f"no scale-in while load ran: {scaler.events}"
    assert scaler.exit_codes and all(c == 0 for c in scaler.exit_codes.values()), (
        f"a drained worker did not exit cleanly: {scaler.exit_codes}\n{fleet.log_tail()}"
    )
    assert fleet.grep("draining") >= len(scaler.exit_codes)
    assert not report.missing and not report.doubled and not report.unexpected, report.summary()
    assert report.dead_letters == 0
    assert time.monotonic() - started < 90
