"""The five benchmark scenarios of DESIGN.md, each run for our worker and the naive baseline.

Every scenario returns a dict of figures for one implementation; ``cli.py`` puts ours and the
naive one side by side. Sizes come from ``Sizes`` (``STANDARD`` or ``QUICK``); every wait is
bounded, and a bound that is hit is reported (``completed`` < ``requests``), never hidden.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from benchmarks.harness import (
    PARTITIONS,
    BenchError,
    RequestFactory,
    balanced_request_ids,
    partition_of,
    percentile,
)
from benchmarks.profile import Profiler, summarize, thread_cpu
from benchmarks.session import Bench
from benchmarks.workers import CpuWindow, stack_pids
from connectors.claim_check import ClaimCheckStore, face_ref
from connectors.s3 import make_s3_client
from connectors.topic_reader import read_to_end
from inference_consumer.engines.sim import expected_service_time
from inference_consumer.threads import thread_cpu_by_stage
from schemas.images import make_sample_face
from schemas.records import GenerationRequest, InlineImage

SMALL = 64  # output side of the control-plane scenarios
SMALL_STEPS = 2


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; ``STANDARD`` fits ~10 min on 2 cores, ``QUICK`` < 2 min."""

    control_requests: int
    control_max_s: float
    overhead_service_s: float
    overhead_capacity_requests: int
    overhead_duration_s: float
    duty_requests: int
    duty_service_s: float  # one 1024² 8-step request; the sim time_scale is derived
    scaling_workers: tuple[int, ...]
    scaling_per_worker: int
    scaling_service_s: float
    failover_workers: int
    failover_rate: float
    failover_duration_s: float
    failover_kill_at_s: float
    failover_service_s: float
    failover_restarts: bool  # also the quick-restart variants (same worker id)
    s3_puts: int  # per S3 client, object size and thread count (benchmarks/s3_clients.py)
    publish_requests: int  # 0: skip the publisher benchmark
    publish_naive_requests: int


STANDARD = Sizes(
    control_requests=3000,
    control_max_s=30,
    overhead_service_s=0.020,
    overhead_capacity_requests=400,
    overhead_duration_s=30,
    duty_requests=64,
    duty_service_s=0.25,
    scaling_workers=(1, 2, 4, 8),
    scaling_per_worker=100,
    scaling_service_s=0.100,
    failover_workers=4,
    failover_rate=40,
    failover_duration_s=24,
    failover_kill_at_s=8,
    failover_service_s=0.050,
    failover_restarts=True,
    s3_puts=300,
    publish_requests=1000,
    publish_naive_requests=200,
)

QUICK = Sizes(
    control_requests=200,
    control_max_s=8,
    overhead_service_s=0.020,
    overhead_capacity_requests=50,
    overhead_duration_s=3,
    duty_requests=8,
    duty_service_s=0.25,
    scaling_workers=(1, 2),
    scaling_per_worker=12,
    scaling_service_s=0.100,
    failover_workers=2,
    failover_rate=20,
    failover_duration_s=10,
    failover_kill_at_s=2,
    failover_service_s=0.050,
    failover_restarts=False,
    s3_puts=40,
    publish_requests=0,
    publish_naive_requests=0,
)


# -- requests --------------------------------------------------------------------------------------


def time_scale_for(service_s: float, *, steps: int, width: int, height: int) -> float:
    """The sim ``time_scale`` that makes one request of this shape take ``service_s``."""
    unscaled = expected_service_time(steps=steps, true_cfg_scale=1.0, width=width, height=height)
    return service_s / unscaled


def inline_factory(tenant: str, size: int = SMALL, steps: int = SMALL_STEPS) -> RequestFactory:
    """Small requests with the face inline (64 px sample PNG), no CFG."""
    face = InlineImage(content_type="image/png", data=make_sample_face(64, seed=1))

    def make(request_id: str, submitted_at: datetime) -> GenerationRequest:
        return GenerationRequest.new(
            tenant, "studio portrait, soft light", face, width=size, height=size, steps=steps,
            true_cfg_scale=1.0, request_id=request_id, submitted_at=submitted_at,
        )  # fmt: skip

    return make


def s3_factory(bench: Bench, *, faces: int = 8, size: int = 1024, steps: int = 8) -> RequestFactory:
    """Full-size requests (8-step Lightning, no CFG) whose faces are claim-checked in S3."""
    store = ClaimCheckStore(make_s3_client(bench.settings))
    refs = []
    for seed in range(faces):
        data = make_sample_face(512, seed=seed)
        ref = face_ref(bench.settings.inputs_bucket, bench.tenant, data, "image/png")
        store.store(ref, data)
        refs.append(ref)

    def make(request_id: str, submitted_at: datetime) -> GenerationRequest:
        return GenerationRequest.new(
            bench.tenant, "full body, studio light, product photo", refs[hash(request_id) % faces],
            width=size, height=size, steps=steps, true_cfg_scale=1.0, request_id=request_id,
            submitted_at=submitted_at,
        )  # fmt: skip

    return make


def _throughput(results: list[Any], started: float) -> float:
    if not results:
        return 0.0
    return len(results) / max(1e-9, max(r.received for r in results) - started)


# -- 1. control plane ------------------------------------------------------------------------------


def control_plane(
    bench: Bench, impl: str, sizes: Sizes, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Zero service time, 64 px images, inline faces: publish N at once → committed results.

    ``options`` (e.g. ``{"object_store": "boto3"}``) apply to both implementations' workers.
    ``F2P_BENCH_PROFILE=1`` also records a py-spy profile of the worker over the window.
    """
    factory = inline_factory(bench.tenant)
    tag = "cp" if not options else "cp-" + "-".join(str(v) for v in options.values())
    with bench.session(tag, impl, 1, time_scale=0.0, options=options) as run:
        run.warmup(factory)
        ids = balanced_request_ids(sizes.control_requests)
        worker_pid = run.pool.workers[0].pid
        processes = {"worker": [worker_pid], "harness": [os.getpid()]}
        processes.update({name: [pid] for name, pid in stack_pids().items()})
        threads_before = thread_cpu(worker_pid)
        stages_before = thread_cpu_by_stage(worker_pid, main_thread_stage="loop")
        profiler = None
        if os.environ.get("F2P_BENCH_PROFILE") == "1":
            profiler = Profiler(worker_pid, bench.log_dir / f"{run.label.replace('/', '-')}.txt")
        cpu = CpuWindow(processes)
        started = time.time()
        publishing = run.publish_in_background(ids, factory)
        run.wait(ids, sizes.control_max_s)
        usage = cpu.stop()
        threads_after = thread_cpu(worker_pid)
        stages_after = thread_cpu_by_stage(worker_pid, main_thread_stage="loop")
        profile = profiler.stop() if profiler is not None else None
        publishing.join()
        results = run.collector.results_for(ids)
        stats = run.stop()
    done = len(results)
    finished = max((r.received for r in results), default=started)
    figures = {
        "requests": len(ids),
        "completed": done,
        "throughput_rps": _throughput(results, started),
        **_transactions(stats, started, finished),
        "machine_cpu_busy": usage["machine_busy_ratio"],
        "window_s": usage["wall_s"],
        "loadavg": os.getloadavg(),
    }
    # The sim engine draws its images on the worker's CPU: simulated GPU work, not the worker's.
    engine_cpu = sum(c for s in stats for start, c in s.get("engine_cpu", []) if start >= started)
    figures["sim_engine_cpu_ms_per_request"] = 1000 * engine_cpu / max(1, done)
    figures["worker_without_engine_cpu_ms_per_request"] = (
        1000 * usage.get("worker_cpu_s", 0.0) - 1000 * engine_cpu
    ) / max(1, done)
    # The worker's CPU by thread kind: Python threads, librdkafka's, obstore's runtime.
    for kind, seconds in threads_after.items():
        used = seconds - threads_before.get(kind, 0.0)
        figures[f"worker_{kind}_cpu_ms_per_request"] = 1000 * used / max(1, done)
    # ... and our worker's Python threads by stage, from their own clocks (the runner polls on
    # the main thread; the naive loop does every stage there).
    for stage, seconds in stages_after.items():
        used = seconds - stages_before.get(stage, 0.0)
        figures[f"worker_stage_{stage}_cpu_ms_per_request"] = 1000 * used / max(1, done)
    if profile is not None:
        figures["profile_path"] = str(profile)
        figures["profile"] = summarize(profile)
    # CPU milliseconds per completed request, by process: where the 2 cores go.
    for key, seconds in usage.items():
        if key.endswith("_cpu_s"):
            figures[f"{key[:-6]}_cpu_ms_per_request"] = 1000 * seconds / max(1, done)
    return figures


def _transactions(stats: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Transactions the workers committed in [start, end] and their mean size (completions)
    and duration, from the commit spans the runner records (on unless ``F2P_BENCH_TRACE=0``)."""
    spans = [s for w in stats for s in w.get("commits", []) if start <= s[0] <= end]
    workers = sum(1 for w in stats if w.get("commits"))
    if not spans:
        return {}
    return {
        "transactions": len(spans),
        "completions_per_transaction": sum(s[2] for s in spans) / len(spans),
        "transaction_ms_mean": 1000 * sum(s[1] - s[0] for s in spans) / len(spans),
        # Per worker: the share of the window in which one of its transactions was open.
        "transaction_open_share": sum(s[1] - s[0] for s in spans)
        / max(1e-9, (end - start) * max(1, workers)),
    }


# -- 2. overhead at 50 % load ----------------------------------------------------------------------


def _fixed_rate(variable: str) -> float | None:
    """A request rate from the environment (None when unset); 0 < rate <= 10,000 req/s."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0 < rate <= 10_000:  # NaN fails too
        raise ValueError(f"{variable} must be a rate in req/s, 0 < rate <= 10000; got {text!r}")
    return rate


def overhead(bench: Bench, impl: str, sizes: Sizes) -> dict[str, Any]:
    """Capacity with a fixed service time, then 50 % of it at a steady rate: added latency."""
    scale = time_scale_for(sizes.overhead_service_s, steps=SMALL_STEPS, width=SMALL, height=SMALL)
    factory = inline_factory(bench.tenant)
    with bench.session("oh", impl, 1, time_scale=scale) as run:
        run.warmup(factory)
        # Step 1. Capacity: drain a backlog.
        ids = balanced_request_ids(sizes.overhead_capacity_requests)
        started = time.time()
        run.publish(ids, factory)
        run.wait(ids, 60)
        capacity = _throughput(run.collector.results_for(ids), started)
        # Step 2. Half of it, evenly spaced. F2P_BENCH_OVERHEAD_RPS offers one fixed rate to
        # every implementation instead: ours batches, so its 50 % is about twice the naive
        # loop's, and the machine's 2 cores are busier for it (an equal-load comparison).
        rate = _fixed_rate("F2P_BENCH_OVERHEAD_RPS") or capacity / 2
        ids = balanced_request_ids(max(20, int(rate * sizes.overhead_duration_s)))
        run.console.log(f"{run.label}: capacity {capacity:.1f} req/s; offering {rate:.1f} req/s")
        phase_start = time.time()
        run.publish(ids, factory, rate=rate)
        run.wait(ids, 60)
        results = run.collector.results_for(ids)
        sent = run.publisher.sent
        stats = run.stop()
    e2e = [r.received - sent[r.request_id] for r in results]
    added = [r.received - sent[r.request_id] - r.engine_s for r in results]
    engine = [r.engine_s for r in results]
    # Where the added latency goes: before the worker finished the outputs, and after (commit
    # interval + transaction + the reader's fetch). completed_at has millisecond precision.
    before_commit = [r.completed_at - sent[r.request_id] - r.engine_s for r in results]
    commit_and_read = [r.received - r.completed_at for r in results]
    finished = max((r.received for r in results), default=phase_start)
    # The worker's stages (P50, whole ms); what they leave of "before commit" is the publisher's
    # linger, the fetch and the hand-offs between threads.
    stages = {
        f"{name}_p50_ms": percentile([float(r.stages[i]) for r in results], 50)
        for i, name in enumerate(("queued", "fetch", "encode", "upload"))
    }
    return {
        **stages,
        **_transactions(stats, phase_start, finished),
        "loadavg": os.getloadavg(),
        "service_time_ms": 1000 * sizes.overhead_service_s,
        "capacity_rps": capacity,
        "offered_rps": rate,
        "samples": len(results),
        "added_p50_ms": 1000 * percentile(added, 50),
        "added_p99_ms": 1000 * percentile(added, 99),
        "added_max_ms": 1000 * max(added, default=float("nan")),
        "e2e_p50_ms": 1000 * percentile(e2e, 50),
        "e2e_p99_ms": 1000 * percentile(e2e, 99),
        "engine_mean_ms": 1000 * sum(engine) / max(1, len(engine)),
        "pre_commit_p50_ms": 1000 * percentile(before_commit, 50),
        "pre_commit_p99_ms": 1000 * percentile(before_commit, 99),
        "commit_read_p50_ms": 1000 * percentile(commit_and_read, 50),
        "commit_read_p99_ms": 1000 * percentile(commit_and_read, 99),
    }


# -- 3. engine duty cycle --------------------------------------------------------------------------


def duty_cycle(bench: Bench, impl: str, sizes: Sizes) -> dict[str, Any]:
    """Realistic (scaled) service time, 1024² WebP outputs, faces in S3: engine busy / wall."""
    factory = s3_factory(bench)
    scale = time_scale_for(sizes.duty_service_s, steps=8, width=1024, height=1024)
    with bench.session("duty", impl, 1, time_scale=scale) as run:
        run.warmup(factory, n=2)
        ids = balanced_request_ids(sizes.duty_requests)
        started = time.time()
        run.publish(ids, factory)
        run.wait(ids, 180)
        results = run.collector.results_for(ids)
        stats = run.stop()
    intervals = [
        (start, end, n)
        for s in stats
        for start, end, n in s.get("engine_intervals", [])
        if start >= started
    ]
    if not intervals:
        raise BenchError(f"duty/{impl}: the worker reported no engine calls")
    first = min(start for start, _, _ in intervals)
    last = max(end for _, end, _ in intervals)
    busy = sum(end - start for start, end, _ in intervals)
    return {
        "requests": len(ids),
        "completed": len(results),
        "time_scale": scale,
        "single_request_engine_s": sizes.duty_service_s,
        "engine_calls": len(intervals),
        "mean_batch": sum(n for _, _, n in intervals) / len(intervals),
        "duty_cycle": busy / max(1e-9, last - first),
        "window_s": last - first,
        "images_per_s": _throughput(results, started),
        # Encoding one 1024² WebP image on an output thread (whole ms): the worker's largest
        # CPU item per real image, set by ``WorkerConfig.webp_method``.
        "encode_p50_ms": percentile([float(r.stages[2]) for r in results], 50),
        "upload_p50_ms": percentile([float(r.stages[3]) for r in results], 50),
    }


# -- 4. scaling ------------------------------------------------------------------------------------


def scaling(bench: Bench, impl: str, sizes: Sizes, workers: int) -> dict[str, Any]:
    """``workers`` workers, fixed service time per request (batch size 1): backlog throughput."""
    scale = time_scale_for(sizes.scaling_service_s, steps=SMALL_STEPS, width=SMALL, height=SMALL)
    factory = inline_factory(bench.tenant)
    with bench.session(f"scale{workers}", impl, workers, time_scale=scale, max_batch_size=1) as run:
        run.warmup(factory)
        ids = balanced_request_ids(sizes.scaling_per_worker * workers)
        started = time.time()
        run.publish(ids, factory)
        run.wait(ids, 120)
        results = run.collector.results_for(ids)
    return {
        "workers": workers,
        "requests": len(ids),
        "completed": len(results),
        "throughput_rps": _throughput(results, started),
        "engine_bound_rps": workers / sizes.scaling_service_s,
    }


# -- 5. failover -----------------------------------------------------------------------------------


def failover(
    bench: Bench, impl: str, sizes: Sizes, *, restart: bool = False, static: bool | None = None
) -> dict[str, Any]:
    """Steady load on N workers; ``kill -9`` one; time until its partitions produce again.

    ``restart``: the victim comes back at once under the same worker id (a StatefulSet pod):
    its producer's ``init_transactions`` aborts the dead one's open transaction at once instead
    of the coordinator after ``transaction.timeout.ms``. ``static``: KIP-345 membership for both
    implementations (None: each one's default). A result counts as recovery when it was
    completed after the kill by anyone (the new incarnation included).
    """
    scale = time_scale_for(sizes.failover_service_s, steps=SMALL_STEPS, width=SMALL, height=SMALL)
    factory = inline_factory(bench.tenant)
    options = {} if static is None else {"static_membership": static}
    tag = "fo" + ("-restart" if restart else "") + ("" if static is None else f"-static{static:d}")
    with bench.session(tag, impl, sizes.failover_workers, time_scale=scale, options=options) as run:
        run.warmup(factory)
        victim = run.pool.workers[-1]
        partitions = run.assignment[victim.spec.worker_id]
        ids = balanced_request_ids(int(sizes.failover_rate * sizes.failover_duration_s))
        publishing = run.publish_in_background(ids, factory, rate=sizes.failover_rate)
        time.sleep(sizes.failover_kill_at_s)
        killed_at = time.time()
        victim.kill()
        if restart:
            run.pool.restart(victim)
        run.console.log(
            f"{run.label}: kill -9 {victim.spec.worker_id} (partitions {partitions})"
            + (", restarted at once" if restart else "")
        )
        publishing.join()
        if publishing.errors:  # type: ignore[attr-defined]
            raise publishing.errors[0]  # type: ignore[attr-defined]
        complete = run.wait(ids, 120, allow_dead=(victim,))
        received = run.collector.results_for(ids)
        # The independent check: a fresh read_committed scan of the whole results topic.
        counts: dict[str, int] = {}
        for msg in read_to_end(run.settings, run.settings.topics.results, timeout_s=60):
            key = msg.key()
            rid = key.decode() if isinstance(key, bytes) else str(key)
            counts[rid] = counts.get(rid, 0) + 1
        stats = run.stop()  # the survivors' (the victim wrote none)
    recovery, gaps = {}, {}
    for p in partitions:
        mine = [r for r in received if partition_of(r.request_id) == p]
        before = [r.received for r in mine if r.received < killed_at]
        after = [r.received for r in mine if r.completed_at >= killed_at]
        if after:
            recovery[p] = min(after) - killed_at
            gaps[p] = min(after) - max(before, default=killed_at)
    return {
        "workers": sizes.failover_workers,
        "restart": restart,
        "static_membership": static,
        # How often a transaction was open (survivors, before the kill): the chance that a kill
        # leaves one for the coordinator to abort after transaction.timeout.ms.
        **_transactions(stats, killed_at - sizes.failover_kill_at_s + 1, killed_at),
        "loadavg": os.getloadavg(),
        "requests": len(ids),
        "complete": complete,
        "victim_partitions": partitions,
        "killed_at": killed_at,  # epoch seconds: to line up with the workers' logs
        "recovery_s": max(recovery.values()) if len(recovery) == len(partitions) else None,
        "recovery_first_s": min(recovery.values(), default=None),
        "recovery_by_partition_s": recovery,
        "gap_max_s": max(gaps.values(), default=None),
        "lost": sum(1 for rid in ids if rid not in counts),
        "duplicated": sum(1 for rid in ids if counts.get(rid, 0) > 1),
    }


__all__ = [
    "PARTITIONS",
    "QUICK",
    "STANDARD",
    "Sizes",
    "control_plane",
    "duty_cycle",
    "failover",
    "overhead",
    "scaling",
]
