"""``f2p demo``: the main job, end to end on the embedded stack.

1. Start the embedded stack (or reuse it) and apply the topic spec.
2. Start an admission process (``f2p streams admission``) and N worker processes
   (``f2p worker``), wait until each is ready (``/readyz``).
3. Publish requests with the bundled synthetic sample faces through the publisher SDK
   (claim check to S3, Avro to the ingress topics), half interactive, half batch.
4. Follow the results topic (read_committed) until every request has its result.
5. Print the summary (count by status, end-to-end latency percentiles, throughput), the S3 URIs
   and a local copy of the images; stop the workers (SIGTERM). The stack keeps running.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from connectors.kafka import make_admin
from connectors.publisher import Publisher
from connectors.results import download_images, iter_results
from connectors.s3 import make_s3_client
from connectors.settings import Settings, load_settings
from f2p_errors import F2PError
from infra.stack.config import load_stack_config
from infra.stack.launcher import stack_up
from infra.topics import apply_topics, load_topic_specs
from schemas.images import make_sample_face
from schemas.records import GenerationResult, Lane, ResultStatus

PROMPTS = (
    "full-body studio photo wearing a navy wool coat, soft light",
    "portrait on a city street at dusk wearing a red scarf",
    "standing on a beach in a white linen shirt, golden hour",
    "catalogue photo in a grey hoodie, plain background",
)


@dataclass(frozen=True)
class DemoOptions:
    """Flags of ``f2p demo``."""

    workers: int
    count: int
    engine_name: str
    size: int
    steps: int
    output_dir: str
    timeout_s: float


@dataclass
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen
    metrics_port: int
    log_file: Path


def run_demo(options: DemoOptions) -> None:
    """Run the whole pipeline once and print where everything is."""
    started = time.monotonic()
    click.echo("1/5 embedded stack …")
    report = stack_up(load_stack_config())
    click.echo("    " + ", ".join(f"{n}: {a}" for n, a in report.actions.items()))
    settings = load_settings()
    apply_topics(make_admin(settings), load_topic_specs())

    click.echo(f"2/5 starting admission and {options.workers} {options.engine_name} worker(s) …")
    workers = [_start_admission()]
    workers += [_start_worker(i, options) for i in range(options.workers)]
    try:
        _wait_ready(workers, timeout_s=180)
        click.echo(f"3/5 publishing {options.count} requests …")
        since = datetime.now(UTC) - timedelta(seconds=5)
        submitted = _publish(settings, options)
        click.echo(f"4/5 waiting for {len(submitted)} results …")
        results, seen_at = _collect(settings, set(submitted), since, options.timeout_s)
        click.echo("5/5 summary")
        _summary(settings, options, submitted, results, seen_at)
    finally:
        _stop_workers(workers)
    click.echo(f"demo finished in {time.monotonic() - started:.1f} s; "
               "the stack keeps running (`f2p stack down` stops it)")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_worker(index: int, options: DemoOptions) -> WorkerProcess:
    args = ["worker", "--engine", options.engine_name, "--max-batch", "4"]
    if options.engine_name == "sim":
        args += ["--sim-time-scale", "0.01"]
    return _spawn(f"demo-{index}", "--worker-id", args)


def _start_admission() -> WorkerProcess:
    return _spawn("demo-admission", "--instance-id", ["streams", "admission"])


def _spawn(name: str, id_flag: str, args: list[str]) -> WorkerProcess:
    """Start ``f2p <args>`` with its id and an HTTP port for /readyz, logging to the stack's
    log directory."""
    port = _free_port()
    log_file = load_stack_config().log_dir / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "f2p_cli", *args, id_flag, name, "--metrics-port", str(port)]
    with log_file.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    return WorkerProcess(name, process, port, log_file)


def _wait_ready(workers: list[WorkerProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(workers)
    while pending:
        for worker in list(pending):
            if worker.process.poll() is not None:
                raise F2PError(
                    f"{worker.worker_id} exited with {worker.process.returncode}; "
                    f"see {worker.log_file}"
                )
            try:
                url = f"http://127.0.0.1:{worker.metrics_port}/readyz"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        pending.remove(worker)
                        click.echo(f"    {worker.worker_id} ready (log: {worker.log_file})")
            except OSError:
                pass
        if pending and time.monotonic() > deadline:
            names = ", ".join(w.worker_id for w in pending)
            raise F2PError(f"workers not ready after {timeout_s:.0f} s: {names}")
        time.sleep(0.2)


def _publish(settings: Settings, options: DemoOptions) -> dict[str, float]:
    faces = [make_sample_face(256, seed=seed) for seed in range(4)]
    submitted: dict[str, float] = {}
    with Publisher(settings) as publisher:
        futures = []
        for i in range(options.count):
            future = publisher.submit(
                tenant_id="demo-shop",
                prompt=PROMPTS[i % len(PROMPTS)],
                face=faces[i % len(faces)],
                lane=Lane.INTERACTIVE if i % 2 == 0 else Lane.BATCH,
                width=options.size,
                height=options.size,
                steps=options.steps,
                true_cfg_scale=1.0,
                seed=i,
                attributes={"sku": f"SKU-{1000 + i}"},
            )
            futures.append(future)
        for future in futures:
            submitted[future.result(timeout=60).request_id] = time.time()
    return submitted


def _collect(
    settings: Settings, ids: set[str], since: datetime, timeout_s: float
) -> tuple[dict[str, GenerationResult], dict[str, float]]:
    results: dict[str, GenerationResult] = {}
    seen_at: dict[str, float] = {}
    for result in iter_results(
        settings, follow=True, request_ids=ids, since=since, idle_timeout_s=timeout_s
    ):
        if result.request_id not in results:
            results[result.request_id] = result
            seen_at[result.request_id] = time.time()
            if len(results) % 10 == 0 or len(results) == len(ids):
                click.echo(f"    {len(results)}/{len(ids)} results")
    return results, seen_at


def _summary(
    settings: Settings,
    options: DemoOptions,
    submitted: dict[str, float],
    results: dict[str, GenerationResult],
    seen_at: dict[str, float],
) -> None:
    counts = Counter(str(r.status) for r in results.values())
    missing = len(submitted) - len(results)
    click.echo("    by status: " + ", ".join(f"{s}={n}" for s, n in sorted(counts.items()))
               + (f", MISSING={missing}" if missing else ""))  # fmt: skip
    latencies = sorted(
        seen_at[rid] - r.submitted_at.timestamp() for rid, r in results.items() if rid in seen_at
    )
    if len(latencies) >= 2:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        click.echo(f"    end-to-end latency (submit → committed result seen): "
                   f"P50 {q[49]:.2f} s, P90 {q[89]:.2f} s, P99 {q[98]:.2f} s")  # fmt: skip
    if results:
        first = min(r.submitted_at.timestamp() for r in results.values())
        span = max(seen_at.values()) - first
        click.echo(f"    throughput: {len(results) / span:.2f} results/s over {span:.1f} s")
    engine_ms = [r.timings.engine_ms for r in results.values() if r.status is ResultStatus.OK]
    if engine_ms:
        click.echo(f"    engine time per batch: median {statistics.median(engine_ms):.0f} ms")
    out_dir = Path(options.output_dir).resolve()
    s3 = make_s3_client(settings)
    ok = [r for r in results.values() if r.status is ResultStatus.OK]
    for result in ok:
        download_images(s3, result, out_dir)
    for result in ok[:3]:
        click.echo(f"    {result.images[0].uri}")
    if len(ok) > 3:
        click.echo(f"    … and {len(ok) - 3} more under s3://{settings.results_bucket}/tenants/")
    click.echo(f"    local copies: {out_dir}/<request_id>/")
    if missing or counts.get("OK", 0) != len(submitted):
        raise F2PError(f"{missing} results missing, {len(ok)} of {len(submitted)} OK")


def _stop_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.process.kill()
