"""A process of a benchmark pipeline with admission: ``python -m benchmarks.lane_runner SPEC``.

``role`` is ``worker`` (our ``Worker`` on a ``sim`` engine, serving the internal lanes
``f2p.lanes.{interactive,batch,overquota}`` of the spec's topic set, as in production) or
``admission`` (one ``f2p streams admission`` instance with the spec's quotas file). Runs until
SIGTERM, then writes its stats to the spec's ``stats_path``: engine intervals for a worker (the
runner's ``RecordingEngine``), outcome counts and hop-time histogram for admission. After
``kill -9`` nothing is written.

``benchmarks.runner`` stays what the other scenarios use (workers on the batch ingress topic,
the naive baseline); this one adds what only the admission benchmarks need.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from benchmarks.runner import RecordingEngine
from connectors.settings import load_settings
from inference_consumer.engines.sim import SimEngine
from infra.logs import configure_logging

log = logging.getLogger("benchmarks.lane_runner")


def _worker(spec: dict[str, Any]) -> tuple[Any, Any]:
    from inference_consumer.config import WorkerConfig
    from inference_consumer.worker import Worker

    settings = load_settings(topic_suffix=spec["topic_suffix"])
    sim = SimEngine(max_batch_size=spec["max_batch_size"], time_scale=spec["time_scale"])
    engine = RecordingEngine(sim)
    config = WorkerConfig(
        worker_id=spec["process_id"],
        group_id=spec["group_id"],
        serve_retry_topic=False,  # nothing fails transiently here; one topic less to fetch
        **_worker_options(spec.get("options", {})),
    )

    def stats() -> dict[str, Any]:
        return {"engine_intervals": engine.intervals, "busy_seconds": sim.busy_seconds}

    return Worker(settings, config, engine), stats


def _worker_options(options: dict[str, Any]) -> dict[str, Any]:
    """JSON has no tuples: ``lane_weights`` comes back as lists of [lane, weight]."""
    if "lane_weights" in options:
        options = {**options, "lane_weights": tuple(tuple(p) for p in options["lane_weights"])}
    return options


def _admission(spec: dict[str, Any]) -> tuple[Any, Any]:
    from streams.admission.config import AdmissionConfig
    from streams.admission.service import Admission

    settings = load_settings(topic_suffix=spec["topic_suffix"])
    # F2P_ADMISSION_* variables apply (tuning experiments: F2P_ADMISSION_COMMIT_INTERVAL_MS=1).
    config = AdmissionConfig.from_env(
        instance_id=spec["process_id"],
        group_id=spec["group_id"],
        quotas_file=spec["quotas_file"],
        **spec.get("options", {}),
    )
    admission = Admission(settings, config)

    def stats() -> dict[str, Any]:
        outcomes: dict[str, float] = {}
        hop: dict[str, float] = {}
        for metric in admission.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "f2p_admission_requests_total":
                    outcomes[sample.labels["outcome"]] = sample.value
                elif sample.name == "f2p_admission_hop_seconds_bucket":
                    hop[sample.labels["le"]] = sample.value
        return {"outcomes": outcomes, "hop_buckets": hop}

    return admission, stats


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    configure_logging("INFO")
    process, stats = (_admission if spec["role"] == "admission" else _worker)(spec)

    def on_signal(signum: int, _frame: object) -> None:
        process.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        process.run()
    finally:
        Path(spec["stats_path"]).write_text(
            json.dumps({"process_id": spec["process_id"], "role": spec["role"], **stats()})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
