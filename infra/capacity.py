"""Capacity model: a target load → GPUs, partitions, KEDA lag threshold, queue wait and P99.

Service time
    From the sim engine's latency model (``inference_consumer/engines/sim.py``, calibrated on
    published H100/H200 figures): one engine call on a batch of ``k`` images of one preset and
    size takes ``S(k) = S(1) * k**0.85`` with ``S(1) = 0.3 s * steps * (2 if CFG) * pixels/1024²``.
    A GPU's throughput at full batches is ``B / S(B)`` requests/s.

Queueing: one M/D^[1,B]/1 bulk-service queue per GPU, not M/D/c
    Kafka assigns whole partitions to group members, so a request waits for *its* partition's
    worker even when another GPU is idle: the fleet is ``c`` independent queues, each fed by the
    Poisson traffic of its partitions, not one pooled queue. M/D/c would assume the pooling and
    understate the wait (at 80 % load and c = 1,000 its wait is near zero; a single GPU's is
    not). Each GPU serves up to ``B`` waiting requests at once (the batcher takes what is queued
    when the engine frees up, ``max_batch_wait_ms`` ≈ 0), with a service time that depends on
    the batch size and is nearly deterministic (lognormal jitter, CV 5 %): a bulk-service
    M/D^[1,B]/1 queue. It has no closed form for tail latency with batch-dependent service
    times, so :func:`simulate_gpu` evaluates it with a small seeded discrete-event simulation of
    the *model* (not of the system): 100,000 arrivals in well under a second, deterministic for
    a seed. With ``B = 1`` it is M/D/1 and matches Pollaczek-Khinchine (a test checks that).

Partitions
    A worker owns ``floor(P/c)`` or ``ceil(P/c)`` partitions, so with ``P`` not a multiple of
    ``c`` some GPUs carry more traffic than others (``P = 1.25 c``: a quarter of the GPUs get two
    partitions and twice the load). The plan sizes for the most loaded GPU, and by default
    provisions exactly one partition per GPU of the sized fleet (the KEDA maximum): partitions
    per lane must be at least the number of GPUs that lane needs, or GPUs sit idle.

KEDA lag threshold
    KEDA's Kafka scaler wants ``ceil(total lag / lagThreshold)`` replicas. A worker's share of
    the group's lag is the requests in its system (queued in Kafka or in memory, or on the GPU):
    by Little's law ``L = λ_gpu * E[T]``. Setting ``lagThreshold = L`` at the target operating
    point makes that point KEDA's equilibrium whatever the total load: lag per replica above it
    (load above target) scales out, below it scales in.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from f2p_errors import ConfigError
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.sim import BATCH_EXPONENT, JITTER_SIGMA, expected_service_time

SIM_REQUESTS = 100_000
# The first arrivals see an empty system: dropped from the statistics.
WARMUP_SHARE = 0.05


@dataclass(frozen=True)
class Preset:
    """Denoising steps and true-CFG scale of a speed preset."""

    name: str
    steps: int
    true_cfg_scale: float
    source: str


# Until the engine's presets (issue 9) land, the same table as its brief: quality is the model
# card's 50 steps with true CFG 4.0 (Qwen/Qwen-Image-Edit), fast and fastest the Lightning LoRA's
# 8 and 4 steps without CFG.
PRESETS: dict[str, Preset] = {
    "quality": Preset("quality", 50, 4.0, "Qwen-Image-Edit model card: 50 steps, true CFG 4.0"),
    "fast": Preset("fast", 8, 1.0, "Lightning LoRA, 8 steps, CFG 1"),
    "fastest": Preset("fastest", 4, 1.0, "Lightning LoRA, 4 steps, CFG 1"),
}


@dataclass(frozen=True)
class ServiceModel:
    """Batch service time of one GPU: ``S(k) = per_image_s * k**0.85`` for ``k <= max_batch``."""

    per_image_s: float
    max_batch: int = 4
    jitter_sigma: float = JITTER_SIGMA

    @classmethod
    def for_preset(
        cls,
        preset: Preset,
        width: int,
        height: int,
        *,
        max_batch: int = 4,
        seconds_per_step: float = 0.3,
    ) -> ServiceModel:
        per_image = expected_service_time(
            steps=preset.steps,
            true_cfg_scale=preset.true_cfg_scale,
            width=width,
            height=height,
            seconds_per_step=seconds_per_step,
        )
        return cls(per_image_s=per_image, max_batch=max_batch)

    def batch_s(self, k: int) -> float:
        return self.per_image_s * k**BATCH_EXPONENT

    @property
    def gpu_throughput(self) -> float:
        """Requests/s of one GPU at full batches: its capacity."""
        return self.max_batch / self.batch_s(self.max_batch)


@dataclass(frozen=True)
class QueueStats:
    """What one GPU's queue looks like at an arrival rate (seconds; from :func:`simulate_gpu`)."""

    arrival_rate: float
    utilisation: float  # busy share of wall time
    mean_batch: float
    wait_mean: float
    wait_p50: float
    wait_p99: float
    sojourn_mean: float  # wait + batch service: arrival at the GPU's queue to batch done
    sojourn_p50: float
    sojourn_p90: float
    sojourn_p99: float
    stable: bool = True


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _run_queue(
    arrival_rate: float, service: ServiceModel, requests: int, batch_wait_s: float, seed: int
) -> tuple[list[float], list[float], float, float]:
    """One GPU's queue: (waits, sojourns) after warm-up, busy share, mean batch size."""
    rng = random.Random(seed)
    jitter_mu = -(service.jitter_sigma**2) / 2
    queue: deque[float] = deque()
    t_next = rng.expovariate(arrival_rate)
    generated = 1
    free_at = busy = 0.0
    waits: list[float] = []
    sojourns: list[float] = []
    batches = served = 0
    skip = int(requests * WARMUP_SHARE)
    while generated <= requests or queue:
        # The engine starts a batch when it is free and something is queued; an idle engine
        # waits batch_wait_s after the arrival that wakes it.
        head = queue[0] if queue else t_next
        start = free_at if head + batch_wait_s <= free_at else head + batch_wait_s
        while generated <= requests and t_next <= start:
            queue.append(t_next)
            t_next += rng.expovariate(arrival_rate)
            generated += 1
        k = min(len(queue), service.max_batch)
        duration = service.batch_s(k) * rng.lognormvariate(jitter_mu, service.jitter_sigma)
        done = start + duration
        for _ in range(k):
            arrived = queue.popleft()
            served += 1
            if served > skip:
                waits.append(start - arrived)
                sojourns.append(done - arrived)
        busy += duration
        batches += 1
        free_at = done
    return waits, sojourns, busy / free_at, served / batches


def simulate_gpu(
    arrival_rate: float,
    service: ServiceModel,
    *,
    requests: int = SIM_REQUESTS,
    batch_wait_s: float = 0.002,
    seed: int = 0,
) -> QueueStats:
    """Evaluate one GPU's M/D^[1,B]/1 queue at ``arrival_rate`` requests/s (module docstring).

    Poisson arrivals; a free engine takes up to ``max_batch`` queued requests; an idle engine
    starts ``batch_wait_s`` after the arrival that wakes it, with whatever arrived meanwhile.
    """
    if arrival_rate <= 0:
        raise ConfigError(f"arrival rate must be positive, got {arrival_rate}")
    if arrival_rate >= service.gpu_throughput:
        inf = math.inf
        return QueueStats(arrival_rate, 1.0, service.max_batch, *(inf,) * 7, stable=False)
    waits, sojourns, busy, mean_batch = _run_queue(
        arrival_rate, service, requests, batch_wait_s, seed
    )
    waits.sort()
    sojourns.sort()
    return QueueStats(
        arrival_rate=arrival_rate,
        utilisation=busy,
        mean_batch=mean_batch,
        wait_mean=sum(waits) / len(waits),
        wait_p50=percentile(waits, 50),
        wait_p99=percentile(waits, 99),
        sojourn_mean=sum(sojourns) / len(sojourns),
        sojourn_p50=percentile(sojourns, 50),
        sojourn_p90=percentile(sojourns, 90),
        sojourn_p99=percentile(sojourns, 99),
    )


@dataclass(frozen=True)
class FleetStats:
    """The fleet's latency distribution: every GPU class weighted by the traffic it carries."""

    waits: list[float]  # ascending
    sojourns: list[float]  # ascending
    worst_load: float  # offered load of the most loaded GPU / its capacity
    worst_busy: float  # busy share of the most loaded GPU
    mean_batch: float

    @property
    def stable(self) -> bool:
        return self.worst_load < 1


def simulate_fleet(
    qps: float,
    gpus: int,
    partitions: int,
    service: ServiceModel,
    *,
    requests: int = SIM_REQUESTS,
    seed: int = 0,
) -> FleetStats:
    """``gpus`` independent GPU queues over ``partitions`` equally loaded partitions."""
    per_partition = qps / partitions
    low, extra = divmod(partitions, gpus)
    # (partitions a GPU owns, GPUs owning that many); GPUs owning none are idle.
    classes = [(n, count) for n, count in ((low + 1, extra), (low, gpus - extra)) if n and count]
    worst_load = max(per_partition * n for n, _ in classes) / service.gpu_throughput
    if worst_load >= 1:
        return FleetStats([math.inf], [math.inf], worst_load, 1.0, float(service.max_batch))
    waits: list[float] = []
    sojourns: list[float] = []
    worst_busy = mean_batch = 0.0
    for owned, count in classes:
        share = owned * count / partitions  # of all requests
        n = max(2_000, round(requests * share))
        w, s, busy, batch = _run_queue(per_partition * owned, service, n, 0.002, seed)
        waits.extend(w)
        sojourns.extend(s)
        worst_busy = max(worst_busy, busy)
        mean_batch += batch * share
    waits.sort()
    sojourns.sort()
    return FleetStats(waits, sojourns, worst_load, worst_busy, mean_batch)


@dataclass(frozen=True)
class CapacityPlan:
    """What ``f2p capacity`` prints: the fleet for a load, and what it will look like."""

    qps: float
    preset: str
    width: int
    height: int
    max_batch: int
    seconds_per_step: float
    max_load: float
    p99_slo_s: float | None
    per_image_s: float
    full_batch_s: float
    gpu_throughput: float
    gpus: int
    partitions_per_lane: int
    load_mean: float
    load_worst: float
    busy_worst: float
    mean_batch: float
    queue_wait_p50_s: float
    queue_wait_p99_s: float
    end_to_end_mean_s: float
    end_to_end_p50_s: float
    end_to_end_p90_s: float
    end_to_end_p99_s: float
    overhead_s: float
    keda_lag_threshold: int
    keda_activation_lag_threshold: int
    keda_max_replicas: int
    max_in_flight: int
    drain_bound_s: float
    shutdown_timeout_s: int
    termination_grace_s: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_capacity(
    qps: float,
    preset: str = "fast",
    width: int = 1024,
    height: int = 1024,
    *,
    max_batch: int = 4,
    seconds_per_step: float = 0.3,
    max_load: float = 0.8,
    p99_slo_s: float | None = None,
    partitions: int | None = None,
    overhead_s: float = 0.025,
    max_in_flight: int | None = None,
    requests: int = SIM_REQUESTS,
) -> CapacityPlan:
    """Size the fleet for ``qps`` requests/s of one preset and size (module docstring).

    GPUs: the fewest whose most loaded GPU stays at or below ``max_load`` of its capacity (the
    headroom absorbs bursts, a lost node and the minutes a new GPU needs to load the model),
    and, with ``p99_slo_s``, whose end-to-end P99 meets it. Partitions per lane: ``partitions``,
    or one per GPU. ``overhead_s`` is the pipeline's added latency (Kafka, fetch, encode,
    upload, commit: DESIGN's P99 target is 25 ms), added to the queue's sojourn.
    """
    _check_inputs(qps, preset, width, height, max_batch, max_load, p99_slo_s, partitions)
    service = ServiceModel.for_preset(
        PRESETS[preset], width, height, max_batch=max_batch, seconds_per_step=seconds_per_step
    )
    capacity = service.gpu_throughput
    notes: list[str] = []
    min_gpus = math.ceil(qps / (max_load * capacity))
    if partitions is not None and partitions < min_gpus:
        raise ConfigError(
            f"partitions={partitions}: {qps:g} req/s of {preset} at {width}x{height} needs at "
            f"least {min_gpus} GPUs at {max_load:.0%} load, and a lane cannot feed more GPUs "
            f"than it has partitions; provision >= {min_gpus} partitions per lane"
        )

    def evaluate(gpus: int) -> FleetStats:
        return simulate_fleet(qps, gpus, partitions or gpus, service, requests=requests)

    gpus = min_gpus if partitions is None else _fewest_gpus_for(qps, partitions, capacity, max_load)
    stats = evaluate(gpus)
    if p99_slo_s is not None:
        floor_s = service.per_image_s + overhead_s
        if floor_s > p99_slo_s:
            notes.append(
                f"P99 SLO {p99_slo_s:g} s is below one image's service time plus overhead "
                f"({floor_s:.2f} s) for {preset} at {width}x{height}: no fleet meets it; sized "
                f"for {max_load:.0%} load instead"
            )
        else:
            gpus, stats = _fewest_gpus_meeting(gpus, partitions, p99_slo_s - overhead_s, evaluate)
    partitions_per_lane = partitions or gpus
    per_replica = qps * _mean(stats.sojourns) / gpus  # Little's law, per GPU
    lag_threshold = max(1, round(per_replica))
    in_flight = max_in_flight or default_max_in_flight(max_batch)
    drain = math.ceil(in_flight / max_batch) * service.batch_s(max_batch) * (1 + 4 * JITTER_SIGMA)
    shutdown = math.ceil(drain * 1.2 + 5)
    return CapacityPlan(
        qps=qps,
        preset=preset,
        width=width,
        height=height,
        max_batch=max_batch,
        seconds_per_step=seconds_per_step,
        max_load=max_load,
        p99_slo_s=p99_slo_s,
        per_image_s=service.per_image_s,
        full_batch_s=service.batch_s(max_batch),
        gpu_throughput=capacity,
        gpus=gpus,
        partitions_per_lane=partitions_per_lane,
        load_mean=qps / (gpus * capacity),
        load_worst=stats.worst_load,
        busy_worst=stats.worst_busy,
        mean_batch=stats.mean_batch,
        queue_wait_p50_s=percentile(stats.waits, 50),
        queue_wait_p99_s=percentile(stats.waits, 99),
        end_to_end_mean_s=_mean(stats.sojourns) + overhead_s,
        end_to_end_p50_s=percentile(stats.sojourns, 50) + overhead_s,
        end_to_end_p90_s=percentile(stats.sojourns, 90) + overhead_s,
        end_to_end_p99_s=percentile(stats.sojourns, 99) + overhead_s,
        overhead_s=overhead_s,
        keda_lag_threshold=lag_threshold,
        # Wake a scaled-to-zero fleet once a replica's worth of work waits (min replicas >= 1
        # for interactive lanes: a cold GPU needs minutes to load 40 GB of weights).
        keda_activation_lag_threshold=lag_threshold,
        keda_max_replicas=partitions_per_lane,
        max_in_flight=in_flight,
        drain_bound_s=drain,
        shutdown_timeout_s=shutdown,
        # The drain, then closing the consumer (leave group), the producer flush (5 s) and the
        # engine thread's join (10 s).
        termination_grace_s=shutdown + 15,
        notes=notes,
    )


def default_max_in_flight(max_batch: int) -> int:
    """Two batches per lane a worker serves (interactive, batch, overquota): 24 for batches of 4.

    The worker caps each lane at a weight share of max_in_flight but at least two batches
    (``Worker._loop_config``): with the default weights (16, 4, 1) and 2B per lane the lower
    lanes' caps are 2B each, so their backlog together still leaves two batches of slots for
    interactive requests, and a lane served alone runs full batches (one on the GPU, one
    prefetched). ``tests/infra/test_capacity.py`` checks this against the worker's caps."""
    return 2 * max_batch * len(WorkerConfig().lane_weights)


def _fewest_gpus_for(qps: float, partitions: int, capacity: float, max_load: float) -> int:
    """The fewest GPUs whose busiest member (ceil(P/c) partitions) stays within max_load."""
    most_per_gpu = math.floor(max_load * capacity * partitions / qps)
    return math.ceil(partitions / max(1, min(most_per_gpu, partitions)))


def _fewest_gpus_meeting(gpus, partitions, target_s, evaluate) -> tuple[int, FleetStats]:
    """Binary search for the fewest GPUs (>= ``gpus``) whose sojourn P99 is <= ``target_s``."""
    high = gpus
    stats = evaluate(high)
    while percentile(stats.sojourns, 99) > target_s:
        if partitions is not None and high >= partitions:
            raise ConfigError(
                f"even {partitions} GPUs (one per partition) miss the P99 SLO; "
                f"raise the partition count"
            )
        high = min(high * 2, partitions) if partitions else high * 2
        stats = evaluate(high)
    low = gpus - 1  # known to miss (or be the floor)
    best = (high, stats)
    while high - low > max(1, high // 100):  # within 1 %
        mid = (low + high) // 2
        mid_stats = evaluate(mid)
        if percentile(mid_stats.sojourns, 99) <= target_s:
            high, best = mid, (mid, mid_stats)
        else:
            low = mid
    return best


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _check_inputs(qps, preset, width, height, max_batch, max_load, p99_slo_s, partitions) -> None:
    if not (isinstance(qps, int | float) and math.isfinite(qps) and 0 < qps <= 1_000_000):
        raise ConfigError(f"qps must be in (0, 1e6], got {qps!r}")
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    for name, value in (("width", width), ("height", height)):
        if not 16 <= value <= 2048 or value % 16:
            raise ConfigError(f"size {name} must be a multiple of 16 in 16..2048, got {value}")
    if not 1 <= max_batch <= 64:
        raise ConfigError(f"max_batch must be in 1..64, got {max_batch}")
    if not 0 < max_load < 1:
        raise ConfigError(f"max_load must be in (0, 1), got {max_load}")
    if p99_slo_s is not None and not 0 < p99_slo_s <= 86_400:
        raise ConfigError(f"p99_slo_s must be in (0, 86400], got {p99_slo_s}")
    if partitions is not None and not 1 <= partitions <= 100_000:
        raise ConfigError(f"partitions must be in 1..100000, got {partitions}")


def parse_size(text: str) -> tuple[int, int]:
    """``1024x1024`` → (1024, 1024); a clear error naming the option otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 5 for p in parts):
        raise ConfigError(f"--size must look like 1024x1024, got {text!r}")
    return int(parts[0]), int(parts[1])


def format_plan(plan: CapacityPlan) -> str:
    """The plan as the lines ``f2p capacity`` prints."""
    p = plan
    lines = [
        f"load            {p.qps:g} req/s, preset {p.preset}, {p.width}x{p.height}, "
        f"batches of up to {p.max_batch}",
        f"service time    {p.per_image_s:.2f} s for 1 image, {p.full_batch_s:.2f} s for "
        f"{p.max_batch} ({p.seconds_per_step:g} s per transformer pass at 1024²)",
        f"GPU capacity    {p.gpu_throughput:.3f} req/s at full batches",
        f"GPUs            {p.gpus}  (load {p.load_mean:.0%} of capacity, busiest GPU "
        f"{p.load_worst:.0%}, busy {p.busy_worst:.0%} of the time; target <= {p.max_load:.0%})",
        f"partitions      {p.partitions_per_lane} per lane (one per GPU at most is used)",
        f"queue wait      P50 {p.queue_wait_p50_s:.2f} s, P99 {p.queue_wait_p99_s:.2f} s "
        f"(mean batch {p.mean_batch:.2f})",
        f"end-to-end      P50 {p.end_to_end_p50_s:.2f} s, P90 {p.end_to_end_p90_s:.2f} s, "
        f"P99 {p.end_to_end_p99_s:.2f} s (incl. {p.overhead_s * 1000:.0f} ms pipeline overhead)",
        f"KEDA            lagThreshold {p.keda_lag_threshold}, activationLagThreshold "
        f"{p.keda_activation_lag_threshold}, maxReplicaCount {p.keda_max_replicas}",
        f"drain           F2P_WORKER_MAX_IN_FLIGHT={p.max_in_flight}: <= {p.drain_bound_s:.1f} s; "
        f"F2P_WORKER_SHUTDOWN_TIMEOUT_S={p.shutdown_timeout_s}, "
        f"terminationGracePeriodSeconds={p.termination_grace_s}",
    ]
    if p.p99_slo_s is not None:
        lines.append(f"P99 SLO         {p.p99_slo_s:g} s")
    lines += [f"note            {n}" for n in p.notes]
    return "\n".join(lines)
