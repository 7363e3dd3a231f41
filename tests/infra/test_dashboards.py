"""Grafana dashboards as code: the committed JSON is current, and every panel's query returns
data from a real Prometheus after a short demo-like run: requests through the ingress topics,
admission, two sim workers, analytics and the lag exporter, each process on its own group."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

import pytest
from monitoring_support import F2PProcess, Monitoring, free_port, monitoring, wait_for

from connectors.kafka import make_producer
from connectors.registry import make_registry_client
from connectors.settings import Settings
from connectors.topic_reader import read_to_end
from infra.monitoring.dashboards import DASHBOARDS, panel_queries
from infra.monitoring.render import DASHBOARD_DIR, stale_files
from infra.topics import apply_topics, delete_topics, load_topic_specs
from schemas.codec import AvroCodec
from schemas.images import make_sample_face
from schemas.records import FaceImageRef, GenerationRequest, InlineImage, Lane

FACE = InlineImage(content_type="image/png", data=make_sample_face(96, seed=3))
TENANTS = ("acme", "globex", "initech")


def test_committed_dashboards_and_prometheus_rule_are_current() -> None:
    stale = stale_files()
    assert not stale, f"stale generated files (run `make generate`): {stale}"


def test_dashboards_cover_the_fleet_and_the_tenants() -> None:
    fleet = json.loads((DASHBOARD_DIR / "f2p-fleet.json").read_text())
    exprs = " ".join(expr for _, expr in panel_queries(fleet))
    for series in (
        "f2p_worker_results_total",  # throughput
        "f2p_worker_end_to_end_seconds_bucket",  # P50/P90/P99 end-to-end per lane
        "f2p_worker_queue_wait_seconds_bucket",  # queue wait per lane
        "kafka_consumergroup_lag",  # lag
        "f2p_worker_engine_seconds_sum",  # engine duty
        "f2p_worker_batch_size",  # batch size
        "f2p_worker_errors_total",  # errors by reason
        "f2p_worker_transactions_total",  # transactions
        "f2p_worker_held_bytes",  # memory between stages
        "f2p_worker_thread_cpu_seconds_total",  # CPU by stage
        "f2p_worker_redelivered_done_total",  # redeliveries skipped
        "f2p_worker_producers_created_total",  # producer replacements
        "f2p_worker_engine_recompiles",  # torch.compile after warm-up
        "f2p_admission_requests_total",  # admission outcomes
        "f2p_admission_hop_seconds_bucket",  # ingress -> lane
        "f2p_admission_errors_total",  # admission's dead letters by reason
        "f2p_admission_consumer_lag",  # admission backlog
    ):
        assert series in exprs, series
    tenants = json.loads((DASHBOARD_DIR / "f2p-tenants.json").read_text())
    assert all("f2p_analytics_tenant" in e for _, e in panel_queries(tenants)[:-1])


def _substitute(expr: str, group: str) -> str:
    """Grafana's variables as the test run's values."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$group", group)
        .replace("$tenant", ".*")
    )


def _publish(settings: Settings, codec: AvroCodec) -> set[str]:
    """To the ingress topics, as upstream systems do: good requests of three tenants on both
    lanes (admission admits them), two out of range (admission: REJECTED), two whose face
    object does not exist (admitted; the worker fails them: FACE_NOT_FOUND), two undecodable
    records (admission's dead letters); returns the request ids that must get a result."""
    producer = make_producer(settings)
    t = settings.topics
    expected = set()
    for n in range(36):
        lane = Lane.INTERACTIVE if n % 2 else Lane.BATCH
        steps = 500 if n in (5, 6) else 8  # 500 > max_steps: PARAM_OUT_OF_RANGE
        tenant = TENANTS[n % 3]
        face = _missing_face(settings, tenant) if n in (7, 8) else FACE
        request = GenerationRequest.new(
            tenant, "studio portrait", face, width=256, height=256, steps=steps,
            true_cfg_scale=1.0, lane=lane,
        )  # fmt: skip
        topic = t.requests_interactive if lane is Lane.INTERACTIVE else t.requests_batch
        value = codec.encode(topic, request)
        producer.produce(topic, key=request.request_id.encode(), value=value)
        expected.add(request.request_id)
        producer.poll(0)
        time.sleep(0.1)  # spread over a few seconds: rates, not one burst
    for _ in range(2):
        producer.produce(t.requests_batch, key=b"poison", value=b"\x00\x00\x00\x00\x63garbage")
    assert producer.flush(30) == 0
    return expected


def _missing_face(settings: Settings, tenant: str) -> FaceImageRef:
    """A well-formed reference (admission checks form, not existence) to no object."""
    return FaceImageRef(
        bucket=settings.inputs_bucket,
        key=f"tenants/{tenant}/faces/missing-{uuid.uuid4().hex}.png",
        sha256="0" * 64,
        content_type="image/png",
        size_bytes=1000,
    )


@pytest.mark.integration
def test_every_panel_query_returns_data_after_a_demo_run(
    stack_settings: Settings, admin, tmp_path: Path
) -> None:
    suffix = f".dash-{uuid.uuid4().hex[:8]}"
    group = f"dash{uuid.uuid4().hex[:8]}"  # no regex or PromQL escapes needed
    specs = load_topic_specs(suffix=suffix)
    apply_topics(admin, specs)
    settings = stack_settings.with_topics(stack_settings.topics.with_suffix(suffix))
    codec = AvroCodec(make_registry_client(settings), auto_register=True)
    env = {"F2P_TOPIC_SUFFIX": suffix, "F2P_WORKER_GROUP_ID": group, "F2P_LOG_LEVEL": "INFO"}
    processes: list[F2PProcess] = []
    try:
        with monitoring(tmp_path / "stack", group_regex=group) as mon:
            for n in range(2):
                port = free_port()
                processes.append(
                    F2PProcess(
                        ["worker", "--worker-id", f"{group}-w{n}", "--engine", "sim",
                         "--sim-time-scale", "0.05", "--metrics-port", str(port)],
                        env,
                        tmp_path / f"worker-{n}.log",
                    )
                )  # fmt: skip
                mon.register(f"{group}-w{n}", "f2p-worker", port)
            port = free_port()
            processes.append(
                F2PProcess(
                    ["streams", "analytics", "--window-s", "2", "--grace-s", "0.5",
                     "--idle-s", "1", "--metrics-port", str(port)],
                    env,
                    tmp_path / "analytics.log",
                )
            )  # fmt: skip
            mon.register("analytics", "f2p-analytics", port)
            # Its own group and transactional id per run: runs never fence each other.
            port = free_port()
            processes.append(
                F2PProcess(
                    ["streams", "admission", "--instance-id", f"{group}-admission",
                     "--group", f"{group}-admission", "--metrics-port", str(port)],
                    env,
                    tmp_path / "admission.log",
                )
            )  # fmt: skip
            mon.register("admission", "f2p-admission", port)
            wait_for(
                lambda: (
                    mon.targets_up("f2p-worker") == 2
                    and mon.targets_up("f2p-analytics")
                    and mon.targets_up("f2p-admission")
                ),
                120,
                "workers, analytics and admission to answer scrapes",
            )
            expected = _publish(settings, codec)
            wait_for(lambda: _results(settings, codec) >= expected, 120, "every result")
            try:
                # Windows of 2 s close 0.5 s after the watermark passes them; the rest is the
                # analytics process joining its group and reading, on a loaded 2-core machine.
                wait_for(
                    lambda: mon.value('sum(f2p_analytics_tenant_results_total{tenant="acme"})') > 0,
                    120,
                    "analytics windows to close",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{_logs(processes)}") from None
            # Scrapes are 1 s apart: give every counter its second sample, then judge.
            deadline = time.monotonic() + 30
            while (empty := _empty_panels(mon, group)) and time.monotonic() < deadline:
                time.sleep(1)
    finally:
        for process in processes:
            process.stop()
        delete_topics(admin, [s.name for s in specs])
    assert not empty, f"panels whose query returned nothing: {empty}\n{_logs(processes)}"


def _logs(processes: list[F2PProcess]) -> str:
    return "\n".join(f"--- {p.log.name}\n{p.tail()}" for p in processes)


def _results(settings: Settings, codec: AvroCodec) -> set[str]:
    return {
        codec.decode(settings.topics.results, m.value()).request_id
        for m in read_to_end(settings, settings.topics.results, timeout_s=30)
    }


def _empty_panels(mon: Monitoring, group: str) -> list[str]:
    """'dashboard / panel: expr' of every query with no series or only NaN values."""
    empty = []
    for name in DASHBOARDS:
        data = json.loads((DASHBOARD_DIR / f"{name}.json").read_text())
        for title, expr in panel_queries(data):
            result = mon.query(_substitute(expr, group))
            values = [float(r["value"][1]) for r in result]
            if not values or all(math.isnan(v) for v in values):
                empty.append(f"{name} / {title}: {expr}")
    return empty
