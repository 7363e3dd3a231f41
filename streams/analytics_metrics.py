"""Per-tenant analytics as Prometheus metrics, with a bounded tenant label.

The analytics processor emits one record per (tenant, window) to ``f2p.analytics.v1``; this
module turns each *final* window into counters and gauges labelled by tenant, for the per-tenant
dashboard and for alerting, served on ``f2p streams analytics --metrics-port``.

Tenant ids are untrusted: a FAILED result of an ``INVALID_TENANT`` request carries whatever the
publisher sent, and any number of tenants may appear. Each distinct label value is a new series
in Prometheus, so the label is bounded: ids that are not valid tenant ids (the request
validator's pattern) become ``_invalid``, and once ``max_tenants`` ids have been seen, new ones
become ``_other`` (first come, first labelled; counted in ``f2p_analytics_tenants_folded``).
Error codes are bounded the same way (they come from our workers, but a bound costs nothing).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import MetricsHandler

from streams.windows import PERCENTILES, WindowAggregate

log = logging.getLogger(__name__)

INVALID = "_invalid"
OTHER = "_other"
# schemas/validation.py RequestLimits.tenant_pattern
_TENANT = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
_CODE = re.compile(r"[A-Z0-9_]{1,64}")


class BoundedLabel:
    """Maps untrusted values to at most ``limit`` distinct label values (plus two fallbacks)."""

    def __init__(self, limit: int, pattern: re.Pattern[str]) -> None:
        self.limit = limit
        self.pattern = pattern
        self.known: set[str] = set()
        self.folded = 0

    def __call__(self, value: str) -> str:
        if value in self.known:
            return value
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            return INVALID
        if len(self.known) >= self.limit:
            self.folded += 1
            return OTHER
        self.known.add(value)
        return value


class AnalyticsMetrics:
    """The analytics processor's instruments (names prefixed ``f2p_analytics_``)."""

    def __init__(self, *, max_tenants: int = 100, max_codes: int = 50) -> None:
        self.registry = r = CollectorRegistry()
        self.tenant = BoundedLabel(max_tenants, _TENANT)
        self.code = BoundedLabel(max_codes, _CODE)
        self.results = Counter(
            "f2p_analytics_tenant_results",
            "Results per tenant and status, counted when their window closes",
            ["tenant", "status"],
            registry=r,
        )
        self.errors = Counter(
            "f2p_analytics_tenant_errors",
            "Non-OK results per tenant and error code",
            ["tenant", "code"],
            registry=r,
        )
        self.gpu_seconds = Counter(
            "f2p_analytics_tenant_gpu_seconds",
            "Engine seconds per tenant (batch time per request: an upper bound at batch > 1)",
            ["tenant"],
            registry=r,
        )
        self.latency = Gauge(
            "f2p_analytics_tenant_latency_seconds",
            "End-to-end latency of OK results in the tenant's last closed window",
            ["tenant", "quantile"],
            registry=r,
        )
        self.windows = Counter(
            "f2p_analytics_windows", "Windows emitted, by finality", ["final"], registry=r
        )
        self.records = Counter("f2p_analytics_records", "Results consumed", registry=r)
        self.late = Counter("f2p_analytics_late", "Results dropped as late", registry=r)
        self.folded = Gauge(
            "f2p_analytics_tenants_folded",
            "Windows of tenants beyond the label bound, counted under _other",
            registry=r,
        )
        self.watermark = Gauge(
            "f2p_analytics_watermark_seconds", "Event-time watermark (Unix time)", registry=r
        )

    def observe_windows(self, aggregates: Iterable[WindowAggregate], *, final: bool) -> None:
        """Count closed windows (``final``); a non-final snapshot only counts as emitted."""
        for aggregate in aggregates:
            self.windows.labels(final=str(final).lower()).inc()
            if not final:
                continue
            tenant = self.tenant(aggregate.tenant_id)
            for status, count in aggregate.by_status.items():
                if count:
                    self.results.labels(tenant=tenant, status=status).inc(count)
            for code, count in aggregate.errors_by_code.items():
                self.errors.labels(tenant=tenant, code=self.code(code)).inc(count)
            self.gpu_seconds.labels(tenant=tenant).inc(aggregate.engine_ms_sum / 1000)
            summary = aggregate.latency.summary()  # a LatencySummary; None when no OK result
            for name, q in PERCENTILES:
                value = getattr(summary, name)
                if value is not None:
                    self.latency.labels(tenant=tenant, quantile=str(q)).set(value / 1000)
        self.folded.set(self.tenant.folded)


def serve_metrics(metrics: AnalyticsMetrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``metrics`` on http://host:port/metrics from a daemon thread; shut it down after."""
    server = ThreadingHTTPServer((host, port), MetricsHandler.factory(metrics.registry))
    threading.Thread(target=server.serve_forever, name="analytics-metrics", daemon=True).start()
    log.info("analytics metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
