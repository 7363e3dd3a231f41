"""The capacity model (infra/capacity.py) against a real run: two sim worker processes on the
real stack, Poisson arrivals, the measured end-to-end latency next to the model's prediction.

The requests go straight to the internal batch lane, as admission writes them (keyed by
request_id, admission's partitioner): the model is of the workers' queues, and admission beside
them would only add CPU contention on this 2-core machine.

The workers join with KIP-848 and the broker's range assignor, which spreads every lane evenly
(the classic cooperative-sticky assignor balanced partition *counts* over all topics and was
seen giving one worker every batch-lane partition): the test checks the even split of the lane
and feeds the model the traffic share each worker actually received (from the results'
``worker_id``: murmur2 of random ids fills the partitions unevenly by a few %). The load is
60 % of ONE worker's capacity, so the run stays stable even on a skewed split.

Lives with the worker tests because it drives real workers (fixtures ``pipeline``, ``codec``).
"""

from __future__ import annotations

import os
import random
import statistics
import time
import uuid
from collections import Counter

import pytest
from chaos_support import WorkerFleet, exactly_once_report, group_caught_up, wait_until

from connectors.kafka import make_admin, make_producer
from infra.capacity import PRESETS, ServiceModel, percentile, simulate_fleet
from schemas.images import make_sample_face
from schemas.records import GenerationRequest, InlineImage, Lane

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FACE = InlineImage(content_type="image/png", data=make_sample_face(96, seed=5))
PRESET, SIZE = PRESETS["fast"], 256  # S(1) = 0.15 s, S(4) = 0.49 s: this machine can hold it
WORKERS, LOAD, SECONDS = 2, 0.6, 50.0
OVERHEAD_S = 0.025  # the model's default: Kafka, fetch, encode, upload, commit
# Why these bands (measured / model): ~230 requests give a P50 within a few % run to run but a
# P99 from its 2-3 largest values; and this 2-core machine runs the broker, S3, the registry
# and other test runs beside the workers (load average 3-7 during our runs): the model has no
# CPU contention, so the measurement sits above it (seen with one worker carrying the whole
# lane: mean +45 %, P90 +75 %, P99 +67 % at load average 7; with the lane split evenly: mean
# +6..9 %, P50 -3 %, P90 +20..23 %, P99 +13..22 % at load average 2.3-2.8). The bands catch a
# model off by more than contention explains: mean and P50 within 0.7..1.6x, P90 and P99
# within 0.6..2.5x (an unbatched or pooled M/D/c model would be 2-5x off at the tail).
BANDS = {"mean": (0.7, 1.6), "p50": (0.7, 1.6), "p90": (0.6, 2.5), "p99": (0.6, 2.5)}
# The manifests' F2P_WORKER_MAX_IN_FLIGHT (infra/k8s/base/worker.yaml). The worker caps each lane
# at a weight share of it but at least two batches, so the batch lane holds 8 here. Before that
# floor, 8 in flight gave the batch lane 2 slots and batches of at most 2: one worker at 60 %
# measured mean 1.53x, P90 1.76x, P99 2.02x the model; with the floor 1.24x, 1.32x, 1.37x.
MAX_IN_FLIGHT = 24


def test_model_predicts_a_sim_fleets_latency(pipeline, codec, tmp_path) -> None:
    service = ServiceModel.for_preset(PRESET, SIZE, SIZE, max_batch=4)
    topic = pipeline.topics.lanes_batch
    partitions = len(make_producer(pipeline).list_topics(topic).topics[topic].partitions)
    qps = LOAD * service.gpu_throughput  # of one worker: stable even if one gets everything
    group = f"capacity-{uuid.uuid4().hex[:8]}"
    fleet = WorkerFleet(
        pipeline,
        tmp_path,
        group_id=group,
        sim_time_scale=1.0,
        extra_env={"F2P_WORKER_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT), "F2P_ENGINE_MAX_BATCH": "4"},
    )
    requests: list[GenerationRequest] = []
    try:
        for n in range(WORKERS):
            fleet.start(f"cap-{n}")
        wait_until(lambda: all(w.booted() for w in fleet.alive()), 60)
        # "worker started" comes before the group's first assignment: requests published before
        # it queue in Kafka for ~2 s and their backlog inflated the tail the model is judged on.
        admin = make_admin(pipeline)
        split: list[list[int]] = []  # the lane's partitions per member, as last seen
        owned, _ = wait_until(lambda: _lane_owned(admin, group, topic, partitions, split), 60)
        assert owned, f"lane partitions per member: {split}\n{fleet.log_tail()}"
        requests = _publish_poisson(pipeline, codec, qps, SECONDS, seed=7)
        caught_up, _ = wait_until(lambda: group_caught_up(pipeline, group), 60, interval_s=1)
        assert caught_up, fleet.log_tail()
    finally:
        fleet.stop_all()

    report, results = exactly_once_report(pipeline, codec, {r.request_id for r in requests})
    assert not report.missing and not report.doubled, report.summary()
    # Drop the first 10 %: the model's queue is in steady state, the run starts empty.
    first = sorted(results, key=lambda r: r.submitted_at)[len(results) // 10 :]
    measured = sorted(r.timings.total_ms / 1000 for r in first)
    shares = Counter(r.worker_id for r in first)
    # An even split of the lane's partitions carries about half the traffic each (~210
    # requests: a 30 % share is 5 standard deviations off); one worker with everything fails.
    assert len(shares) == WORKERS and all(0.3 <= n / len(first) <= 0.7 for n in shares.values()), (
        f"traffic share per worker {dict(shares)}, lane partitions {split}"
    )
    predicted = _predicted(qps, {w: n / len(first) for w, n in shares.items()}, service)
    even = simulate_fleet(qps, WORKERS, partitions, service, requests=100_000)
    rows = {
        "mean": (sum(predicted) / len(predicted), sum(measured) / len(measured)),
        "p50": (percentile(predicted, 50), percentile(measured, 50)),
        "p90": (percentile(predicted, 90), percentile(measured, 90)),
        "p99": (percentile(predicted, 99), percentile(measured, 99)),
    }
    print(
        f"\ncapacity model vs sim: {WORKERS} workers, {partitions} partitions, {PRESET.name} "
        f"{SIZE}x{SIZE}, {qps:.2f} req/s ({LOAD:.0%} of capacity), {len(measured)} requests"
    )
    stages = {
        stage: statistics.median(getattr(r.timings, f"{stage}_ms") for r in first) / 1000
        for stage in ("queued", "fetch", "engine", "encode", "upload")
    }
    span = max(r.completed_at for r in results) - min(r.submitted_at for r in results)
    print(
        f"  measured stage medians (s): {stages}; {len(results) / span.total_seconds():.2f} "
        f"results/s over {span.total_seconds():.0f} s"
    )
    print(
        f"  lane partitions per worker: {split}; traffic share per worker: {dict(shares)}; "
        f"model P99 for an even split "
        f"{percentile(even.sojourns, 99) + OVERHEAD_S:.3f} s"
    )
    print(f"  {'':5} {'model':>8} {'measured':>9}")
    for name, (model, real) in rows.items():
        print(f"  {name:5} {model:7.3f}s {real:8.3f}s")
    print(f"  load average during the run: {os.getloadavg()[0]:.1f}")
    for name, (model, real) in rows.items():
        low, high = BANDS[name]
        assert low <= real / model <= high, (
            f"{name}: measured {real:.3f} s vs model {model:.3f} s (band {low}..{high}x)"
        )


def _predicted(qps: float, shares: dict[str, float], service: ServiceModel) -> list[float]:
    """End-to-end latencies the model predicts: each worker's queue at its share of the
    traffic, mixed in proportion (plus the pipeline overhead)."""
    mixed: list[float] = []
    for share in shares.values():
        n = max(2_000, round(100_000 * share))
        stats = simulate_fleet(qps * share, 1, 1, service, requests=n)
        assert stats.stable, f"a worker with {share:.0%} of {qps:.1f} req/s is overloaded"
        mixed += stats.sojourns[:: max(1, len(stats.sojourns) // round(100_000 * share))]
    return sorted(s + OVERHEAD_S for s in mixed)


def _lane_owned(admin, group: str, topic: str, partitions: int, split: list) -> bool:
    """The group is stable with all its workers and every partition of ``topic`` assigned,
    split evenly between them (the range assignor's promise); ``split`` gets the split seen."""
    from confluent_kafka import ConsumerGroupState

    [future] = admin.describe_consumer_groups([group]).values()
    desc = future.result(timeout=10)
    per_member = [
        {tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic}
        for member in desc.members
    ]
    split[:] = [sorted(p) for p in per_member]
    owned = set().union(*per_member)
    stable = desc.state == ConsumerGroupState.STABLE and len(desc.members) == WORKERS
    even = {len(p) for p in per_member} <= {partitions // WORKERS, -(-partitions // WORKERS)}
    return stable and owned == set(range(partitions)) and even


def _publish_poisson(pipeline, codec, qps: float, seconds: float, *, seed: int):
    """Requests with exponential gaps (the model's Poisson arrivals) to the internal batch lane."""
    rng = random.Random(seed)
    producer = make_producer(pipeline, client_id="capacity-publisher")
    topic = pipeline.topics.lanes_batch  # where admission writes it
    sent = []
    started = time.monotonic()
    due = started
    while due - started < seconds:
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        request = GenerationRequest.new(
            "capacity", "studio portrait", FACE, width=SIZE, height=SIZE, steps=PRESET.steps,
            true_cfg_scale=PRESET.true_cfg_scale, lane=Lane.BATCH,
        )  # fmt: skip
        producer.produce(topic, key=request.request_id.encode(), value=codec.encode(topic, request))
        producer.poll(0)
        sent.append(request)
        due += rng.expovariate(qps)
    assert producer.flush(30) == 0
    return sent
