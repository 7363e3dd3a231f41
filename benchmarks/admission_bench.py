"""``f2p bench -s admission``: what the admission hop adds to end-to-end latency at 50 % load.

DESIGN.md: "the admission hop adds ≤ 10 ms P99". One pipeline (``workers`` sim workers on the
internal lanes, ``admissions`` admission instances, engine ``service_s`` per 64² request, batch
size 1), one steady load of ``load`` x the engine-bound capacity, evenly spaced, sent three ways
in alternating rounds (so that drift in the machine's load hits all three alike):

* **direct** (the ``naive`` column): straight to the batch lane as if admitted, key =
  request_id with murmur2, the partition admission would choose: no admission at all;
* **SDK**: to the ingress with the SDK's partitioner (murmur2 on the request_id): the ingress
  partition *is* the request's repartition partition, which the range assignor gives to the
  same instance: admitted in one hop;
* **foreign**: to the ingress with librdkafka's ``consistent_random`` (CRC32): the request
  usually lands on a partition another instance owns and goes through the repartition topic
  (two hops, two transactions). The rows split the two cases.

End-to-end = committed result seen by a ``read_committed`` reader - publish. *On its lane* =
the request visible on its internal lane to a ``read_committed`` reader (as a worker sees it) -
publish: the hop itself, admission's transactions included, without the worker's and engine's
noise. *Added by admission* = a percentile with admission - the same percentile without (the
difference of two distributions, not a per-request figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.harness import percentile
from benchmarks.pipeline import LaneWatcher, delete_results, even_times, pipeline
from benchmarks.scenarios import SMALL, SMALL_STEPS, inline_factory, time_scale_for
from benchmarks.session import Bench
from connectors.partitioner import partition_for

# variant → (where to, producer partitioner)
VARIANTS = {
    "direct": ("lanes", "murmur2_random"),
    "sdk": ("ingress", "murmur2_random"),
    "foreign": ("ingress", "consistent_random"),
}


@dataclass(frozen=True)
class HopSizes:
    workers: int
    admissions: int
    service_s: float
    load: float  # offered rate / engine-bound capacity
    duration_s: float  # per variant, split over the rounds
    rounds: int


STANDARD = HopSizes(workers=1, admissions=2, service_s=0.020, load=0.5, duration_s=30, rounds=3)
QUICK = HopSizes(workers=1, admissions=2, service_s=0.020, load=0.5, duration_s=3, rounds=1)


def _ms(values: list[float], q: float) -> float:
    return 1000 * percentile(values, q)


def admission_hop(bench: Bench, sizes: HopSizes) -> dict[str, Any]:
    """Every variant's latencies from one pipeline; figures keyed ``<variant>_<figure>``."""
    tenant = f"{bench.tenant}-hop"
    factory = inline_factory(tenant)
    rate = sizes.load * sizes.workers / sizes.service_s
    scale = time_scale_for(sizes.service_s, steps=SMALL_STEPS, width=SMALL, height=SMALL)
    per_round = sizes.duration_s / sizes.rounds
    sent: dict[str, list[str]] = {v: [] for v in VARIANTS}
    try:
        with pipeline(
            bench, "hop", workers=sizes.workers, admissions=sizes.admissions, time_scale=scale
        ) as run:
            watcher = LaneWatcher(run.settings)
            run.warmup(factory, "ingress")
            run.warmup(factory, "lanes")
            publishers = {v: run.publisher(partitioner) for v, (_, partitioner) in VARIANTS.items()}
            for round_no in range(sizes.rounds):
                for variant, (via, _) in VARIANTS.items():
                    publisher = publishers[variant]
                    events = [(t, "t") for t in even_times(rate, per_round)]
                    before = set(publisher.sent)
                    publisher.publish(events, {"t": factory}, via=via)
                    ids = [rid for rid in publisher.sent if rid not in before]
                    sent[variant] += ids
                    # Drain before the next variant: each one sees the same idle pipeline.
                    run.wait(ids, 60)
                bench.console.log(f"hop: round {round_no + 1}/{sizes.rounds} done")
            admitted = run.admitted()
            owner = run.admission_owner
            topics = run.settings.topics
            repartitions = sum(1 for t, _ in owner if t == topics.admission_repartition)
            results = {r.request_id: r for r in run.collector.received}
            watcher.close()
            on_lane = dict(watcher.seen)
    finally:
        delete_results(bench, [tenant])

    figures: dict[str, Any] = {
        "service_time_ms": 1000 * sizes.service_s,
        "offered_rps": rate,
        "capacity_rps": sizes.workers / sizes.service_s,
        "admissions": sizes.admissions,
    }
    for variant, ids in sent.items():
        publisher = publishers[variant]
        done = [rid for rid in ids if rid in results]
        e2e = {rid: results[rid].received - publisher.sent[rid] for rid in done}
        figures[f"{variant}_requests"] = len(ids)
        figures[f"{variant}_completed"] = len(done)
        figures[f"{variant}_e2e_p50_ms"] = _ms(list(e2e.values()), 50)
        figures[f"{variant}_e2e_p99_ms"] = _ms(list(e2e.values()), 99)
        # Publish → visible on its lane to a read_committed reader: the hop itself.
        lane = [on_lane[rid] - publisher.sent[rid] for rid in ids if rid in on_lane]
        figures[f"{variant}_lane_p50_ms"] = _ms(lane, 50)
        figures[f"{variant}_lane_p99_ms"] = _ms(lane, 99)
        if variant == "direct":
            continue
        hop = [admitted[rid][1] - publisher.sent[rid] for rid in done if rid in admitted]
        figures[f"{variant}_admitted_p50_ms"] = _ms(hop, 50)
        figures[f"{variant}_admitted_p99_ms"] = _ms(hop, 99)
        # Two hops when the ingress partition's owner is not the repartition partition's.
        two = {
            rid
            for rid in done
            if owner.get((topics.requests_batch, publisher.partition_of.get(rid, -1)))
            != owner.get((topics.admission_repartition, partition_for(rid, repartitions)))
        }
        figures[f"{variant}_repartitioned"] = len(two) / max(1, len(done))
        for name, group in (("one_hop", set(done) - two), ("two_hops", two)):
            values = [e2e[rid] for rid in group]
            figures[f"{variant}_{name}_p50_ms"] = _ms(values, 50)
            figures[f"{variant}_{name}_p99_ms"] = _ms(values, 99)
        for q in (50, 99):
            for what in ("e2e", "lane"):
                figures[f"{variant}_{what}_added_p{q}_ms"] = (
                    figures[f"{variant}_{what}_p{q}_ms"] - figures[f"direct_{what}_p{q}_ms"]
                )
    return figures


def add_rows(bench: Bench, quick: bool, report: Any, console: Any) -> None:
    """Run the scenario and add its rows to the suite's report."""
    from benchmarks.suite import Row, _attempt

    sizes = QUICK if quick else STANDARD
    f = _attempt(report, console, "admission", lambda: admission_hop(bench, sizes)) or {}
    name = "admission hop (ours: through admission | naive: straight to lanes)"
    load = f"{100 * sizes.load:.0f} % load"
    sdk = f"SDK-style (murmur2 on request_id), {sizes.admissions} instances"
    foreign = f"consistent_random, {sizes.admissions} instances"
    rows = []
    for key, label in (("sdk", sdk), ("foreign", foreign)):
        rows += [
            Row(name, f"end-to-end P50, {label}, {load}", "ms", f.get(f"{key}_e2e_p50_ms"),
                f.get("direct_e2e_p50_ms")),
            Row(name, f"end-to-end P99, {label}, {load}", "ms", f.get(f"{key}_e2e_p99_ms"),
                f.get("direct_e2e_p99_ms")),
            Row(name, f"  added by admission to end-to-end P99, {label}", "ms",
                f.get(f"{key}_e2e_added_p99_ms"), None, "≤ 10"),
            Row(name, f"publish → on its lane P50, {label}", "ms", f.get(f"{key}_lane_p50_ms"),
                f.get("direct_lane_p50_ms")),
            Row(name, f"publish → on its lane P99, {label}", "ms", f.get(f"{key}_lane_p99_ms"),
                f.get("direct_lane_p99_ms")),
            Row(name, f"  added by admission to on-lane P99, {label}", "ms",
                f.get(f"{key}_lane_added_p99_ms"), None, "≤ 10"),
            Row(name, f"  requests repartitioned (2 hops), {label}", "%",
                _pct(f.get(f"{key}_repartitioned")), None),
        ]  # fmt: skip
    rows += [
        Row(name, f"  end-to-end P99 of those admitted in 1 hop, {foreign}", "ms",
            f.get("foreign_one_hop_p99_ms"), None),
        Row(name, f"  end-to-end P99 of those repartitioned, {foreign}", "ms",
            f.get("foreign_two_hops_p99_ms"), None),
    ]  # fmt: skip
    report.rows.extend(rows)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


__all__ = ["QUICK", "STANDARD", "HopSizes", "add_rows", "admission_hop"]
