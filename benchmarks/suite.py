"""Run the selected scenarios for both implementations and collect one figures table.

``run_suite`` runs each scenario for our worker, then for the naive baseline, in the same
invocation on the same stack; a scenario that fails is reported as an error and the suite goes
on. The result is a ``Report``: figure rows (ours | naive | target) plus every raw number.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from rich.console import Console

from benchmarks import scenarios
from benchmarks.machine_speed import SpeedSampler, summarize
from benchmarks.scenarios import Sizes
from benchmarks.session import Bench
from connectors.settings import Settings
from inference_consumer.config import WorkerConfig

IMPLS = ("ours", "naive")
SCENARIOS = ("control", "s3", "overhead", "duty", "scaling", "failover", "publish", "engine")
# Admission's figures (issue 8; benchmarks/fairness.py, admission_bench.py, restore_bench.py):
# not in the default run, selected with -s.
ADMISSION_SCENARIOS = ("fairness", "admission", "restore")


@dataclass
class Row:
    """One figure: ours next to the naive baseline, with the DESIGN.md target when there is one."""

    scenario: str
    metric: str
    unit: str
    ours: Any
    naive: Any
    target: str = ""


@dataclass
class Report:
    machine: dict[str, Any]
    sizes: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    impls: tuple[str, ...] = IMPLS  # which implementations run (development: ours alone)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "sizes": self.sizes,
            "rows": [row.__dict__ for row in self.rows],
            "details": self.details,
            "errors": self.errors,
            "seconds": self.seconds,
        }


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, and how busy the machine already was."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), ""
        )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "loadavg_before": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_suite(
    settings: Settings,
    sizes: Sizes,
    selected: Iterable[str] = SCENARIOS,
    console: Console | None = None,
    ours_options: dict[str, Any] | None = None,
    impls: tuple[str, ...] = IMPLS,
) -> Report:
    """Run ``selected`` scenarios (in ``SCENARIOS`` order) for both implementations.

    ``ours_options`` are ``WorkerConfig`` overrides for our worker (tuning experiments);
    ``impls`` limits the run to some implementations (development).
    """
    console = console or Console(stderr=True)
    chosen = [s for s in SCENARIOS + ADMISSION_SCENARIOS if s in set(selected)]
    report = Report(machine=machine_info(), sizes=sizes.__dict__.copy(), impls=impls)
    report.machine["ours_options"] = dict(ours_options or {})
    bench = Bench(settings, console, ours_options)
    console.log(
        f"bench: {', '.join(chosen)} on {report.machine['cpus']} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in report.machine['loadavg_before'])}; "
        f"worker logs in {bench.log_dir}"
    )
    started = time.monotonic()
    try:
        for name in chosen:
            _RUNNERS[name](bench, sizes, report, console)
    finally:
        bench.cleanup()
        report.seconds = time.monotonic() - started
        report.machine["loadavg_after"] = os.getloadavg()
    return report


def _attempt(
    report: Report, console: Console, key: str, call: Callable[[], dict[str, Any]]
) -> dict[str, Any] | None:
    """Run one (scenario, implementation); a failure is recorded, not raised. The machine's
    speed is sampled meanwhile (``machine_speed``): the figures carry it."""
    started = time.monotonic()
    console.log(f"[bold]{key}[/bold] …")
    sampler = SpeedSampler()
    try:
        figures = call()
    except Exception as exc:
        console.log(f"[red]{key} failed: {type(exc).__name__}: {exc}[/red]")
        report.errors[key] = f"{type(exc).__name__}: {exc}"
        return None
    finally:
        speed = summarize(sampler.stop())
    figures.update(speed)
    console.log(
        f"{key} done in {time.monotonic() - started:.0f} s; machine unit "
        f"{speed['machine_unit_ms']} ms (P10-P90 {speed['machine_unit_p10_p90_ms']})"
    )
    report.details[key] = figures
    return figures


def _both(
    report: Report, console: Console, name: str, call: Callable[[str], dict[str, Any]]
) -> dict[str, dict[str, Any] | None]:
    return {
        impl: _attempt(report, console, f"{name}/{impl}", functools.partial(call, impl))
        for impl in report.impls
    }


def _pick(runs: dict[str, dict[str, Any] | None], key: str, scale: float = 1.0) -> tuple[Any, Any]:
    """``key`` of ours and of naive (None where that implementation did not run)."""
    values: list[Any] = []
    for impl in IMPLS:
        figures = runs.get(impl)
        value: Any = None if figures is None else figures.get(key)
        scaled = scale != 1.0 and isinstance(value, int | float) and not isinstance(value, bool)
        values.append(value * scale if scaled else value)
    ours, naive = values
    return ours, naive


# (metric, unit, key in the scenario's figures, scale, target)
Spec = tuple[str, str, str, float, str]

# How fast the machine ran interpreter work during each implementation's run (lower is faster):
# CPU figures of runs with different values do not compare as they are (machine_speed.py).
MACHINE_SPEED: Spec = (
    "machine speed: reference unit CPU, median (lower = faster)",
    "ms",
    "machine_unit_ms",
    1,
    "",
)


def _rows(report: Report, scenario: str, runs: dict[str, Any], specs: list[Spec]) -> None:
    for metric, unit, key, scale, target in specs:
        report.rows.append(Row(scenario, metric, unit, *_pick(runs, key, scale), target))


def _control(bench: Bench, sizes: Sizes, report: Report, console: Console) -> None:
    runs = _both(report, console, "control", lambda i: scenarios.control_plane(bench, i, sizes))
    _rows(report, "control plane", runs, [
        ("throughput, publish → committed result", "req/s", "throughput_rps", 1, "≥ 1000"),
        ("completed within the time bound", "requests", "completed", 1, ""),
        ("CPU per request: worker", "ms", "worker_cpu_ms_per_request", 1, ""),
        ("  of which the sim engine drawing images (GPU work)", "ms",
         "sim_engine_cpu_ms_per_request", 1, ""),
        ("CPU per request: worker without the engine", "ms",
         "worker_without_engine_cpu_ms_per_request", 1, "≤ 1"),
        ("  of which Python threads", "ms", "worker_python_cpu_ms_per_request", 1, ""),
        ("    of which in the kernel (syscalls, thread wake-ups)", "ms",
         "worker_python_kernel_cpu_ms_per_request", 1, ""),
        ("    of which poll loop (consume, commit; naive: all stages)", "ms",
         "worker_stage_loop_cpu_ms_per_request", 1, ""),
        ("    of which prefetch (request and face decode)", "ms",
         "worker_stage_prefetch_cpu_ms_per_request", 1, ""),
        ("    of which engine thread (with the sim's drawing)", "ms",
         "worker_stage_engine_cpu_ms_per_request", 1, ""),
        ("    of which output (image encode, S3 put, records)", "ms",
         "worker_stage_output_cpu_ms_per_request", 1, ""),
        ("  of which librdkafka threads", "ms", "worker_librdkafka_cpu_ms_per_request", 1, ""),
        ("  of which obstore runtime", "ms", "worker_obstore_cpu_ms_per_request", 1, ""),
        ("CPU per request: Kafka broker", "ms", "kafka_cpu_ms_per_request", 1, "≤ 1"),
        ("results per transaction", "results", "completions_per_transaction", 1, ""),
        ("CPU per request: S3 (SeaweedFS)", "ms", "s3_cpu_ms_per_request", 1, ""),
        ("CPU per request: load + reader", "ms", "harness_cpu_ms_per_request", 1, ""),
        ("machine CPU busy (all cores)", "%", "machine_cpu_busy", 100, ""),
        MACHINE_SPEED,
    ])  # fmt: skip


def _s3(bench: Bench, sizes: Sizes, report: Report, console: Console) -> None:
    """Client CPU per put of each S3 client, and our worker's (and the naive one's) CPU per
    request at zero service time with each (the control plane; obstore is the default)."""
    from benchmarks.s3_clients import run_s3_clients
    from connectors.object_store import OBJECT_STORES

    def clients() -> dict[str, Any]:
        return run_s3_clients(bench.settings, sizes.s3_puts)

    figures = _attempt(report, console, "s3/clients", clients)
    if figures is not None:
        for label, text in (("4k_1t", "4 KB"), ("200k_1t", "200 KB"), ("4k_4t", "4 KB, 4 threads")):
            report.rows.append(Row(
                "S3 client", f"client CPU per put, {text} (ours: obstore, naive: boto3)", "ms",
                figures["obstore"][label]["cpu_ms_per_put"],
                figures["boto3"][label]["cpu_ms_per_put"],
            ))  # fmt: skip
    default = WorkerConfig.object_store
    for kind in OBJECT_STORES:
        if kind == default and "control/ours" in report.details:
            runs = {i: report.details.get(f"control/{i}") for i in report.impls}
        else:
            runs = _both(
                report, console, f"control-{kind}",
                functools.partial(
                    scenarios.control_plane, bench, sizes=sizes, options={"object_store": kind}
                ),
            )  # fmt: skip
        _rows(report, "S3 client", runs, [
            (f"worker CPU per request at zero service time, {kind}", "ms",
             "worker_cpu_ms_per_request", 1, ""),
            (f"  the same without the sim engine's drawing, {kind}", "ms",
             "worker_without_engine_cpu_ms_per_request", 1, "≤ 1" if kind == default else ""),
            (f"control-plane throughput, {kind}", "req/s", "throughput_rps", 1, ""),
        ])  # fmt: skip


def _overhead(bench: Bench, sizes: Sizes, report: Report, console: Console) -> None:
    runs = _both(report, console, "overhead", lambda i: scenarios.overhead(bench, i, sizes))
    service = f"{1000 * sizes.overhead_service_s:.0f} ms"
    _rows(report, "overhead", runs, [
        (f"capacity (engine {service}/request)", "req/s", "capacity_rps", 1, ""),
        ("offered load (50 % of capacity)", "req/s", "offered_rps", 1, ""),
        ("added latency P50", "ms", "added_p50_ms", 1, "≤ naive"),
        ("added latency P99", "ms", "added_p99_ms", 1, "≤ 25, ≤ naive"),
        ("  of which before commit, P50", "ms", "pre_commit_p50_ms", 1, ""),
        ("  of which commit + read, P50", "ms", "commit_read_p50_ms", 1, ""),
        ("results per transaction", "results", "completions_per_transaction", 1, ""),
        ("end-to-end P99", "ms", "e2e_p99_ms", 1, ""),
        MACHINE_SPEED,
    ])  # fmt: skip


def _duty(bench: Bench, sizes: Sizes, report: Report, console: Console) -> None:
    runs = _both(report, console, "duty", lambda i: scenarios.duty_cycle(bench, i, sizes))
    _rows(report, "duty cycle", runs, [
        ("engine busy / wall (1024² WebP, S3 faces)", "%", "duty_cycle", 100, "≥ 99.5"),
        ("mean batch size", "requests", "mean_batch", 1, ""),
        ("throughput", "images/s", "images_per_s", 1, ""),
        ("encode of one 1024² WebP image, P50", "ms", "encode_p50_ms", 1, ""),
        ("upload of it to S3, P50", "ms", "upload_p50_ms", 1, ""),
    ])  # fmt: skip


def _scaling(bench: Bench, sizes: Sizes, report: Report, console: Console) -> None:
    per_n = {
        n: _both(
            report,
            console,
            f"scaling{n}",
            functools.partial(scenarios.scaling, bench, sizes=sizes, workers=n),
        )
        for n in sizes.scaling_workers
    }
    one = sizes.scaling_workers[0]
    base = _pick(per_n[one], "throughput_rps")
    for n, runs in per_n.items():
        rates = _pick(runs, "throughput_rps")
        bound = f"engine bound {n / sizes.scaling_service_s:.0f}"
        report.rows.append(Row("scaling", f"throughput, {n} worker(s)", "req/s", *rates, bound))
        if n != one:
            ours, naive = (
                100 * rate * one / (n * first) if rate is not None and first else None
                for rate, first in zip(rates, base, strict=True)
            )
            metric = f"efficiency, {n} vs {n // one} x {one}"
            report.rows.append(Row("scaling", metric, "%", ours, naive, "≥ 95"))


def _failover(bench: Bench, sizes: Sizes, report: Report, console: Console) -> None:
    runs = _both(report, console, "failover", lambda i: scenarios.failover(bench, i, sizes))
    victim = f"kill -9 of 1 of {sizes.failover_workers}"
    _rows(report, "failover", runs, [
        (f"recovery after {victim}, last partition", "s", "recovery_s", 1, "≤ 5, ≤ naive"),
        ("recovery, first partition", "s", "recovery_first_s", 1, ""),
    ])  # fmt: skip
    every = [runs]
    if sizes.failover_restarts:
        # The victim comes back at once under its worker id (a StatefulSet pod), with dynamic
        # and with static membership (a static member waits out UNRELEASED_INSTANCE_ID).
        for static in (False, True):
            kind = "static" if static else "dynamic"
            variant = _both(
                report, console, f"failover-restart-{kind}",
                functools.partial(
                    scenarios.failover, bench, sizes=sizes, restart=True, static=static
                ),
            )  # fmt: skip
            every.append(variant)
            _rows(report, "failover", variant, [
                (f"recovery, restarted at once, same id, {kind} membership", "s", "recovery_s",
                 1, "≤ 5, ≤ naive"),
            ])  # fmt: skip
    for metric, key in (("lost requests", "lost"), ("duplicated results", "duplicated")):
        ours, naive = (
            sum(v for v in values if v is not None) if any(v is not None for v in values) else None
            for values in zip(*(_pick(r, key) for r in every), strict=True)
        )
        label = f"{metric} (all {len(every)} runs)" if len(every) > 1 else metric
        report.rows.append(Row("failover", label, "requests", ours, naive, "0"))


def _publish(bench: Bench, sizes: Sizes, report: Report, console: Console) -> None:
    if not sizes.publish_requests:
        return
    try:
        from benchmarks.publish import run_publish_bench
    except ImportError:
        return

    def call() -> dict[str, Any]:
        return run_publish_bench(
            bench.settings, sizes.publish_requests, naive_n=sizes.publish_naive_requests, quiet=True
        )

    figures = _attempt(report, console, "publish", call)
    if figures is None:
        return
    ours = figures["sdk_distinct_faces"]["requests_per_s"]
    naive = figures["naive_distinct_faces"]["requests_per_s"]
    report.rows.append(Row("publish", "publisher SDK, distinct faces", "req/s", ours, naive))


def _engine(bench: Bench, sizes: Sizes, report: Report, console: Console) -> None:
    """Evaluations and CPU time per image per preset (tiny engine); "naive" is QUALITY."""
    from benchmarks.engine_bench import run_engine_bench

    figures = _attempt(report, console, "engine", lambda: {"presets": run_engine_bench()})
    if figures is None:
        return
    rows = {row["preset"]: row for row in figures["presets"]}
    base = rows["QUALITY"]
    for preset, row in rows.items():
        report.rows.append(
            Row(
                "engine",
                f"{preset}: transformer evaluations per image",
                "evals",
                row["transformer_evaluations_per_image"],
                base["transformer_evaluations_per_image"],
                "reported per preset",
            )
        )
        report.rows.append(Row(
            "engine", f"{preset}: CPU time per image (tiny, 64²)", "ms",
            row["cpu_ms_per_image"], base["cpu_ms_per_image"],
        ))  # fmt: skip


_RUNNERS = {
    "control": _control,
    "s3": _s3,
    "overhead": _overhead,
    "duty": _duty,
    "scaling": _scaling,
    "failover": _failover,
    "publish": _publish,
    "engine": _engine,
    "fairness": lambda *a: _admission_scenario("fairness", *a),
    "admission": lambda *a: _admission_scenario("admission", *a),
    "restore": lambda *a: _admission_scenario("restore", *a),
}


def _admission_scenario(
    name: str, bench: Bench, sizes: Sizes, report: Report, console: Console
) -> None:
    """Admission's scenarios keep their own sizes; ``--quick`` picks their QUICK ones."""
    import importlib

    module = {"fairness": "fairness", "admission": "admission_bench", "restore": "restore_bench"}
    importlib.import_module(f"benchmarks.{module[name]}").add_rows(
        bench, sizes == scenarios.QUICK, report, console
    )
