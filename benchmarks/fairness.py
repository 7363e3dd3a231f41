"""``f2p bench -s fairness``: one tenant floods 20x its quota; do the others still get served?

DESIGN.md: "a tenant flooding 20x its quota leaves other tenants' P99 queue wait within 2x of
their baseline; the flooder still gets its quota and the leftover capacity."

Setup (one invocation, two pipelines on fresh topic sets, same seeded schedules):

* a fleet of ``workers`` sim workers serving the internal lanes, batch size 1, ``service_s``
  of engine time per request: capacity = workers / service_s requests per second, and the
  fleet, not the CPU, is the bottleneck (64² outputs, inline faces);
* tenants A, B, C with quotas of ``shares`` of that capacity (GPU-seconds per second from the
  latency model, as admission charges them; every bucket's burst is ``burst_s`` of its rate:
  10 s, where infra/quotas.toml ships 30 s, because the flooder's burst lands in the batch lane
  ahead of B and C and sets their P99 for as long as it takes to drain: see
  docs/BENCHMARKS.md), all on the batch lane (lane priority would protect an interactive tenant
  trivially);
* phase 1, *no flood*: A, B and C each send at their quota (Poisson arrivals, seeded);
  phase 2, *flood*: B and C send the very same schedule again, A sends ``flood`` x its quota.

**with admission** (the ``ours`` column): requests go to the ingress; one admission instance
applies the quotas (A's excess to the over-quota lane). **without admission** (``naive``):
every request goes straight to the batch lane as if admitted, no quotas.

*Queue wait* = committed result seen by a ``read_committed`` reader - publish - engine time:
everything a request spends not on the GPU (admission hop, lanes, worker queue, commit). A
request with no result when the bounded wait ends counts with the wait so far (the P99 is then
a lower bound, and the row of incomplete requests says so).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from benchmarks.harness import percentile
from benchmarks.pipeline import delete_results, in_thread, pipeline, poisson_times, quotas_toml
from benchmarks.scenarios import SMALL, SMALL_STEPS, inline_factory, time_scale_for
from benchmarks.session import Bench
from streams.admission.quotas import QuotaPolicy, TenantQuota

TENANTS = ("a", "b", "c")


@dataclass(frozen=True)
class FairnessSizes:
    workers: int
    service_s: float  # engine time of one request (batch of one)
    max_batch_size: int
    shares: tuple[float, float, float]  # quotas of A, B, C as fractions of the fleet capacity
    flood: float  # A's offered rate in the flood phase, in multiples of its quota
    window_s: float  # length of each phase
    burst_s: float  # every bucket's burst, in seconds of its tenant's rate
    drain_s: float  # results are awaited this long after a phase at most
    seed: int = 8


STANDARD = FairnessSizes(
    workers=2,
    service_s=0.100,
    max_batch_size=1,
    shares=(0.1, 0.3, 0.3),
    flood=20,
    window_s=40,
    burst_s=10,
    drain_s=30,
)
QUICK = FairnessSizes(
    workers=2,
    service_s=0.100,
    max_batch_size=1,
    shares=(0.1, 0.3, 0.3),
    flood=20,
    window_s=5,
    burst_s=10,
    drain_s=10,
)


def request_cost(tenant: str) -> float:
    """GPU-seconds admission charges for one bench request (the latency model, unscaled)."""
    sample = inline_factory(tenant)("00000000-0000-4000-8000-000000000000", datetime.now(UTC))
    policy = QuotaPolicy(TenantQuota(1.0, 1.0, "overquota"), {})
    return policy.cost(sample.params)


def _schedule(rates: dict[str, float], duration_s: float, seed: int, phase: str) -> list:
    """Merged ``(offset, tenant)`` events; each tenant's draws depend on (seed, tenant, phase)."""
    events = []
    for tenant, rate in rates.items():
        rng = random.Random(f"{seed}/{tenant}/{phase}")
        events += [(t, tenant) for t in poisson_times(rate, duration_s, rng)]
    return sorted(events)


def _waits(run: Any, publisher: Any, ids: list[str], until: float) -> tuple[list[float], int]:
    """Queue waits of ``ids`` (seconds); missing results count as ``until - sent``."""
    results = {r.request_id: r for r in run.collector.results_for(ids)}
    waits, missing = [], 0
    for rid in ids:
        sent = publisher.sent[rid]
        result = results.get(rid)
        if result is None:
            missing += 1
            waits.append(until - sent)
        else:
            waits.append(result.received - sent - result.engine_s)
    return waits, missing


def _timeline(
    publisher: Any, tenant: str, start: float, end: float, waits: list[float]
) -> list[tuple[float, float]]:
    ids = publisher.ids_of(tenant, start, end)
    return [
        (round(publisher.sent[rid] - start, 3), round(1000 * w, 1))
        for rid, w in zip(ids, waits, strict=True)
    ]


def _busy(stats: list[dict[str, Any]], start: float, end: float, workers: int) -> float:
    """Share of the fleet's engine time in [start, end] spent inside ``generate``."""
    busy = 0.0
    for s in stats:
        for a, b, _ in s.get("engine_intervals", []):
            busy += max(0.0, min(b, end) - max(a, start))
    return busy / max(1e-9, workers * (end - start))


def fairness(bench: Bench, mode: str, sizes: FairnessSizes) -> dict[str, Any]:
    """One pipeline (``mode`` admission or direct), two phases; figures of B, C and A."""
    names = {t: f"{bench.tenant}-{t}" for t in TENANTS}
    factories = {t: inline_factory(names[t]) for t in TENANTS}
    factories["warmup"] = inline_factory(bench.tenant)
    capacity = sizes.workers / sizes.service_s  # requests per second, engine bound
    rates = {t: share * capacity for t, share in zip(TENANTS, sizes.shares, strict=True)}
    cost = request_cost(names["a"])
    quotas = {names[t]: (rates[t] * cost, rates[t] * cost * sizes.burst_s) for t in TENANTS}
    quotas_file = bench.log_dir / f"quotas-fairness-{bench.run_id}.toml"
    quotas_file.write_text(quotas_toml(quotas))
    admission = mode == "admission"
    via = "ingress" if admission else "lanes"
    scale = time_scale_for(sizes.service_s, steps=SMALL_STEPS, width=SMALL, height=SMALL)
    try:
        with pipeline(
            bench,
            f"fair-{mode[:3]}",
            workers=sizes.workers,
            admissions=1 if admission else 0,
            time_scale=scale,
            max_batch_size=sizes.max_batch_size,
            quotas_file=quotas_file if admission else None,
        ) as run:
            run.warmup(factories["warmup"], via)
            publisher = run.publisher()
            # Phase 1. Everyone at quota.
            base_start = time.time()
            publisher.publish(_schedule(rates, sizes.window_s, sizes.seed, "same"), factories,
                              via=via)  # fmt: skip
            base_end = time.time()
            base_ids = [rid for t in TENANTS for rid in publisher.ids_of(t, base_start)]
            run.wait(base_ids, sizes.drain_s)
            base_until = time.time()
            # Phase 2. B and C replay their schedule; A floods.
            flood_rates = {**rates, "a": rates["a"] * sizes.flood}
            events = _schedule({t: rates[t] for t in ("b", "c")}, sizes.window_s, sizes.seed,
                               "same")  # fmt: skip
            events += _schedule({"a": flood_rates["a"]}, sizes.window_s, sizes.seed, "flood")
            flood_start = time.time()
            publishing = in_thread("fairness-publish", lambda: publisher.publish(
                sorted(events), factories, via=via))  # fmt: skip
            publishing.join()
            flood_end = time.time()
            if publishing.errors:  # type: ignore[attr-defined]
                raise publishing.errors[0]  # type: ignore[attr-defined]
            bc_ids = [rid for t in ("b", "c") for rid in publisher.ids_of(t, flood_start)]
            run.wait(bc_ids, sizes.drain_s)
            flood_until = time.time()
            admitted = run.admitted() if admission else {}
            stats = run.stop()
            received = list(run.collector.received)
    finally:
        delete_results(bench, list(names.values()))

    figures: dict[str, Any] = {
        "mode": mode,
        "capacity_rps": capacity,
        "quota_rps": rates,
        "flood_rps": flood_rates["a"],
        "time_scale": scale,
        "request_cost_gpu_s": cost,
        "burst_s": sizes.burst_s,
        "baseline_window": (base_start, base_end),
        "flood_window": (flood_start, flood_end),
    }
    for t in ("b", "c"):
        base, base_missing = _waits(run, publisher, publisher.ids_of(t, base_start, base_end),
                                    base_until)  # fmt: skip
        flood, flood_missing = _waits(run, publisher, publisher.ids_of(t, flood_start),
                                      flood_until)  # fmt: skip
        figures.update({
            f"{t}_samples": len(flood),
            f"{t}_base_p50_ms": 1000 * percentile(base, 50),
            f"{t}_base_p99_ms": 1000 * percentile(base, 99),
            f"{t}_flood_p50_ms": 1000 * percentile(flood, 50),
            f"{t}_flood_p99_ms": 1000 * percentile(flood, 99),
            f"{t}_ratio_p99": percentile(flood, 99) / max(1e-9, percentile(base, 99)),
            f"{t}_incomplete": base_missing + flood_missing,
            # (offset into the phase s, wait ms) of every request: where the tail comes from.
            f"{t}_base_waits": _timeline(publisher, t, base_start, base_end, base),
            f"{t}_flood_waits": _timeline(publisher, t, flood_start, float("inf"), flood),
        })  # fmt: skip
    window = flood_end - flood_start
    in_flood = [r for r in received if flood_start <= r.received < flood_end]
    a_flood = set(publisher.ids_of("a", flood_start))
    b_sent = len(publisher.ids_of("b", flood_start)) / window
    c_sent = len(publisher.ids_of("c", flood_start)) / window
    busy = _busy(stats, flood_start, flood_end, sizes.workers)
    figures.update({
        "a_sent_rps": len(a_flood) / window,
        "a_flood_rps": sum(1 for r in in_flood if r.request_id in a_flood) / window,
        # Its quota + the leftover: what the engine delivered (busy share of its bound) minus
        # what B and C asked for; the engine's own idle time is the row below, not A's due.
        "a_target_rps": busy * capacity - b_sent - c_sent,
        "a_target_nominal_rps": capacity - b_sent - c_sent,
        "fleet_flood_rps": len(in_flood) / window,
        "engine_busy_flood": busy,
        "bc_incomplete": figures["b_incomplete"] + figures["c_incomplete"],
    })  # fmt: skip
    if admission:
        bc = set(publisher.ids_of("b")) | set(publisher.ids_of("c"))
        lane = {rid: admitted[rid][0] for rid in admitted}
        figures["bc_overquota"] = sum(1 for rid in bc if lane.get(rid) == "overquota")
        figures["a_overquota"] = sum(1 for rid in a_flood if lane.get(rid) == "overquota")
        # Where B's and C's flood-phase wait goes: publish → admitted (the admission hop,
        # including any queue at admission) and the rest (lane, worker, commit).
        hop = [admitted[rid][1] - publisher.sent[rid] for rid in bc & set(admitted)
               if publisher.sent[rid] >= flood_start]  # fmt: skip
        figures["bc_flood_admitted_p50_ms"] = 1000 * percentile(hop, 50)
        figures["bc_flood_admitted_p99_ms"] = 1000 * percentile(hop, 99)
        figures["bc_flood_admitted"] = sorted(
            (round(publisher.sent[rid] - flood_start, 3), round(1000 * (admitted[rid][1]
             - publisher.sent[rid]), 1)) for rid in bc & set(admitted)
            if publisher.sent[rid] >= flood_start
        )  # fmt: skip
    return figures


def add_rows(bench: Bench, quick: bool, report: Any, console: Any) -> None:
    """Run both modes and add the fairness rows to the suite's report."""
    from benchmarks.suite import Row, _attempt

    sizes = QUICK if quick else STANDARD

    def run(mode: str) -> dict[str, Any]:
        return (
            _attempt(report, console, f"fairness/{mode}", lambda: fairness(bench, mode, sizes))
            or {}
        )

    ours, naive = run("admission"), run("direct")
    name = "fairness (ours: admission | naive: straight to lanes)"

    def row(metric: str, unit: str, key: str, target: str = "", scale: float = 1.0) -> Row:
        a, b = ours.get(key), naive.get(key)
        if scale != 1.0:
            a, b = (None if v is None else v * scale for v in (a, b))
        return Row(name, metric, unit, a, b, target)

    flood = f"A at {sizes.flood:.0f}x its quota"
    target = ours.get("a_target_rps")
    quota = sizes.shares[0] * sizes.workers / sizes.service_s
    report.rows.extend([
        row("B P99 queue wait, no flood", "ms", "b_base_p99_ms"),
        row(f"B P99 queue wait, {flood}", "ms", "b_flood_p99_ms"),
        row("B P99 flood / no flood", "x", "b_ratio_p99", "≤ 2"),
        row("C P99 queue wait, no flood", "ms", "c_base_p99_ms"),
        row(f"C P99 queue wait, {flood}", "ms", "c_flood_p99_ms"),
        row("C P99 flood / no flood", "x", "c_ratio_p99", "≤ 2"),
        row("B, C requests without result in time", "requests", "bc_incomplete", "0"),
        row("B, C requests sent to over-quota lane", "requests", "bc_overquota", "0"),
        row("A throughput while flooding", "req/s", "a_flood_rps",
            f"≥ {target:.1f} (quota {quota:.0f} + leftover of the busy engine)"
            if target else ""),
        row("fleet throughput while A floods", "req/s", "fleet_flood_rps",
            f"engine bound {sizes.workers / sizes.service_s:.0f}"),
        row("engine busy while A floods", "%", "engine_busy_flood",
            "≈ 100 (work-conserving)", scale=100),
    ])  # fmt: skip
