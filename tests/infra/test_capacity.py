"""The capacity model's logic (no stack): the queue against closed forms, sizing rules, CLI.

The model checked against a real ``sim`` run is ``test_capacity_vs_sim.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from f2p_errors import ConfigError
from infra.capacity import (
    PRESETS,
    ServiceModel,
    percentile,
    plan_capacity,
    simulate_fleet,
    simulate_gpu,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("load", [0.5, 0.8])
def test_single_image_batches_match_pollaczek_khinchine(load: float) -> None:
    """With B = 1 and no jitter the queue is M/D/1: mean wait = rho S / (2 (1 - rho))."""
    service = ServiceModel(per_image_s=1.0, max_batch=1, jitter_sigma=0.0)
    stats = simulate_gpu(load, service, requests=200_000, batch_wait_s=0.0, seed=3)
    expected = load * 1.0 / (2 * (1 - load))
    assert stats.wait_mean == pytest.approx(expected, rel=0.05)
    assert stats.utilisation == pytest.approx(load, rel=0.02)


def test_batches_grow_with_load_and_cap_at_max_batch() -> None:
    service = ServiceModel.for_preset(PRESETS["fast"], 1024, 1024)
    low = simulate_gpu(0.2 * service.gpu_throughput, service, requests=20_000)
    high = simulate_gpu(0.95 * service.gpu_throughput, service, requests=20_000)
    assert 1 <= low.mean_batch < high.mean_batch <= service.max_batch
    assert high.sojourn_p99 > low.sojourn_p99


def test_overload_is_reported_unstable_not_simulated_forever() -> None:
    service = ServiceModel(per_image_s=1.0, max_batch=2)
    stats = simulate_gpu(service.gpu_throughput * 1.01, service)
    assert not stats.stable and math.isinf(stats.sojourn_p99)


def test_presets_follow_the_latency_model() -> None:
    """0.3 s per transformer pass at 1024²: fast (8 steps, no CFG) 2.4 s, quality (50 steps,
    CFG doubles the passes) 30 s, fastest 1.2 s; a 512² image costs a quarter."""
    assert ServiceModel.for_preset(PRESETS["fast"], 1024, 1024).per_image_s == pytest.approx(2.4)
    assert ServiceModel.for_preset(PRESETS["quality"], 1024, 1024).per_image_s == pytest.approx(30)
    assert ServiceModel.for_preset(PRESETS["fastest"], 1024, 1024).per_image_s == pytest.approx(1.2)
    assert ServiceModel.for_preset(PRESETS["fast"], 512, 512).per_image_s == pytest.approx(0.6)


def test_plan_uses_the_fewest_gpus_within_the_load_target() -> None:
    plan = plan_capacity(600, "fast", requests=20_000)
    capacity = plan.gpu_throughput
    assert plan.load_worst <= 0.8
    assert 600 / ((plan.gpus - 1) * capacity) > 0.8  # one GPU fewer would exceed the target
    assert plan.partitions_per_lane == plan.gpus == plan.keda_max_replicas


def test_lag_threshold_is_littles_law_per_replica() -> None:
    plan = plan_capacity(50, "fastest", requests=20_000, overhead_s=0.0)
    per_replica = 50 * plan.end_to_end_mean_s / plan.gpus
    assert plan.keda_lag_threshold == max(1, round(per_replica))


def test_uneven_partitions_load_some_gpus_twice() -> None:
    """5 partitions on 4 GPUs: one GPU owns two and carries twice a single partition's load."""
    service = ServiceModel(per_image_s=1.0, max_batch=1)
    fleet = simulate_fleet(2.0, 4, 5, service, requests=20_000)
    assert fleet.worst_load == pytest.approx(2 * (2.0 / 5) / 1.0)
    even = simulate_fleet(2.0, 5, 5, service, requests=20_000)
    assert percentile(fleet.sojourns, 99) > percentile(even.sojourns, 99)


def test_given_partitions_size_for_the_busiest_gpu() -> None:
    plan = plan_capacity(10, "fastest", partitions=64, requests=20_000)
    owned = math.ceil(64 / plan.gpus)
    assert owned * (10 / 64) / plan.gpu_throughput <= 0.8
    assert plan.partitions_per_lane == 64


def test_too_few_partitions_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"partitions=256.*at least 1463 GPUs"):
        plan_capacity(600, "fast", partitions=256, requests=2_000)


def test_p99_slo_adds_gpus_until_met_and_says_when_it_cannot() -> None:
    base = plan_capacity(100, "fastest", requests=30_000)
    slo = plan_capacity(100, "fastest", p99_slo_s=5.0, requests=30_000)
    assert slo.gpus > base.gpus and slo.end_to_end_p99_s <= 5.0
    impossible = plan_capacity(100, "fast", p99_slo_s=2.0, requests=5_000)
    assert any("below one image's service time" in n for n in impossible.notes)


def test_drain_bound_covers_the_in_flight_batches() -> None:
    plan = plan_capacity(100, "quality", requests=5_000, max_in_flight=8)
    assert plan.drain_bound_s >= 2 * plan.full_batch_s  # 8 in flight = 2 batches of 4
    assert plan.termination_grace_s > plan.shutdown_timeout_s > plan.drain_bound_s


@pytest.mark.parametrize("max_batch", [1, 4, 8])
def test_default_in_flight_gives_every_lane_two_batches_and_interactive_room(max_batch) -> None:
    """Against the worker's own caps (``Worker._loop_config``): at the plan's max_in_flight a
    lane alone holds two batches, and the other lanes' backlog leaves two for interactive."""
    from connectors.settings import Settings
    from inference_consumer.config import WorkerConfig
    from inference_consumer.engines.sim import SimEngine
    from inference_consumer.worker import Worker

    in_flight = plan_capacity(100, "fast", requests=2_000, max_batch=max_batch).max_in_flight
    settings = Settings("127.0.0.1:1", "http://127.0.0.1:1", None, None, None)
    worker = Worker(
        settings,
        WorkerConfig(worker_id="plan", max_in_flight=in_flight),
        SimEngine(max_batch_size=max_batch),
        codec=object(),  # type: ignore[arg-type]
        s3=object(),
    )
    caps = worker._loop_config().topic_in_flight
    lanes = settings.topics
    assert min(caps.values()) >= 2 * max_batch, caps
    lower = caps[lanes.lanes_batch] + caps[lanes.lanes_overquota]
    assert in_flight - lower >= 2 * max_batch, (in_flight, caps)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"qps": -1}, "qps"),
        ({"qps": 10, "preset": "turbo"}, "preset"),
        ({"qps": 10, "width": 1000}, "width"),
        ({"qps": 10, "max_load": 1.5}, "max_load"),
    ],
)
def test_bad_inputs_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        plan_capacity(**kwargs)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "f2p_cli", "capacity", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_prints_the_plan_and_json() -> None:
    out = _cli("--qps", "600", "--preset", "fast", "--size", "1024x1024")
    assert out.returncode == 0, out.stderr
    for word in ("GPUs", "partitions", "lagThreshold", "queue wait", "P99"):
        assert word in out.stdout
    data = json.loads(_cli("--qps", "60", "--preset", "fastest", "--json").stdout)
    assert data["gpus"] >= 1 and data["keda_lag_threshold"] >= 1


def test_cli_rejects_a_bad_size_without_traceback() -> None:
    out = _cli("--qps", "10", "--size", "big")
    assert out.returncode == 1
    assert "--size must look like 1024x1024" in out.stderr and "Traceback" not in out.stderr
