"""Per-tenant analytics metrics: what a closed window adds, and the bounded tenant label."""

from __future__ import annotations

import asyncio
import urllib.request

from test_analytics_unit import (
    T0_MS,
    T0_S,
    FakeStream,
    codec,  # noqa: F401 - fixture
    events,
    make_processor,
    result,
)

from schemas.records import ResultStatus
from streams.analytics_metrics import _TENANT as TENANT_PATTERN
from streams.analytics_metrics import INVALID, OTHER, AnalyticsMetrics, BoundedLabel, serve_metrics
from streams.windows import WindowAggregate


def sample(metrics: AnalyticsMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_closed_window_counts_results_errors_gpu_seconds_and_latency(codec) -> None:  # noqa: F811
    processor, _ = make_processor(codec, now=T0_S + 100)
    batch = events(
        codec,
        [
            result(T0_MS + 1_000, total_ms=100, engine_ms=400),
            result(T0_MS + 1_500, total_ms=300, engine_ms=400),
            result(T0_MS + 2_000, status=ResultStatus.FAILED, code="NOT_AN_IMAGE", engine_ms=0),
            result(T0_MS + 12_500),  # closes the first window
        ],
    )
    asyncio.run(processor._consume(FakeStream(batch)))  # type: ignore[arg-type]

    m = processor.metrics
    assert sample(m, "f2p_analytics_tenant_results_total", tenant="acme", status="OK") == 2
    assert sample(m, "f2p_analytics_tenant_results_total", tenant="acme", status="FAILED") == 1
    assert sample(m, "f2p_analytics_tenant_errors_total", tenant="acme", code="NOT_AN_IMAGE") == 1
    assert sample(m, "f2p_analytics_tenant_gpu_seconds_total", tenant="acme") == 0.8
    assert sample(m, "f2p_analytics_tenant_latency_seconds", tenant="acme", quantile="0.99") > 0.2
    assert sample(m, "f2p_analytics_records_total") == 4
    assert sample(m, "f2p_analytics_windows_total", final="true") == 1


def test_open_windows_flushed_on_stop_are_not_counted_as_results(codec) -> None:  # noqa: F811
    processor, _ = make_processor(codec, now=T0_S + 100)
    asyncio.run(processor._consume(FakeStream(events(codec, [result(T0_MS)]))))  # type: ignore[arg-type]
    asyncio.run(processor.flush_open())
    m = processor.metrics
    assert sample(m, "f2p_analytics_windows_total", final="false") == 1
    assert sample(m, "f2p_analytics_tenant_results_total", tenant="acme", status="OK") is None


def test_tenant_label_is_bounded_and_invalid_ids_are_folded() -> None:
    label = BoundedLabel(3, TENANT_PATTERN)
    assert [label(t) for t in ("a1", "b2", "c3")] == ["a1", "b2", "c3"]
    assert label("d4") == OTHER and label("e5") == OTHER
    assert label("a1") == "a1"  # known tenants keep their label
    assert label("../../etc") == INVALID
    assert label("x" * 500) == INVALID
    assert label.folded == 2


def test_many_tenants_make_a_bounded_number_of_series() -> None:
    metrics = AnalyticsMetrics(max_tenants=5)
    windows = []
    for n in range(200):
        aggregate = WindowAggregate(f"tenant-{n}", T0_MS, T0_MS + 10_000, max_samples=10)
        aggregate.by_status["OK"] += 1
        windows.append(aggregate)
    metrics.observe_windows(windows, final=True)
    tenants = {
        s.labels["tenant"]
        for family in metrics.registry.collect()
        for s in family.samples
        if "tenant" in s.labels
    }
    assert len(tenants) == 6  # five tenants and _other
    assert sample(metrics, "f2p_analytics_tenant_results_total", tenant=OTHER, status="OK") == 195
    assert sample(metrics, "f2p_analytics_tenants_folded") == 195


def test_metrics_are_served_over_http() -> None:
    metrics = AnalyticsMetrics()
    metrics.records.inc(3)
    server = serve_metrics(metrics, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"f2p_analytics_records_total 3.0" in body
    finally:
        server.shutdown()
        server.server_close()
