"""Grafana dashboards as code (grafana-foundation-sdk): the fleet overview and the per-tenant view.

Every query reads series that exist on both the embedded stack (``f2p stack up --monitoring``)
and Kubernetes (ServiceMonitor + Strimzi's Kafka Exporter): jobs ``f2p-worker``,
``f2p-admission``, ``f2p-analytics``; ``kafka_consumergroup_lag``. Latency panels group
``by (lane)``, so they show one line until the worker labels its histograms by lane and one per
lane after, with no change here. ``tests/infra/test_dashboards.py`` runs every query against a
real Prometheus after a demo-like run and fails on one that returns nothing.

Variables: ``datasource`` (Prometheus), ``group`` (the workers' consumer group, default
``f2p-workers``), ``tenant`` (multi-select over the analytics tenants).
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
QUANTILES = (("P50", 0.5), ("P90", 0.9), ("P99", 0.99))


def _query(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)


def _series(title: str, unit: str, queries: list[tuple[str, str]], description: str = ""):
    """A time-series panel of (expr, legend) queries."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(12)
    )
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _stat(title: str, unit: str, expr: str, description: str = ""):
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(4)
        .span(6)
        .with_target(_query(expr, "", "A"))
    )


def _quantiles(metric: str, by: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[{RATE}])))",
            f"{name} {{{{{by}}}}}",
        )
        for name, q in QUANTILES
    ]


def _datasource_variable():
    return dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def fleet_dashboard() -> dashboard.Dashboard:
    """Throughput, latency per lane, lag, engine duty, batches, errors, transactions, worker
    internals (held bytes, redeliveries, producers, recompiles), admission."""
    group = 'consumergroup=~"$group"'
    return (
        dashboard.Dashboard("f2p-stream: fleet")
        .uid("f2p-fleet")
        .tags(["f2p-stream"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(_datasource_variable())
        .with_variable(
            dashboard.QueryVariable("group")
            .label("Worker group")
            .datasource(DATASOURCE)
            .query("label_values(kafka_consumergroup_lag, consumergroup)")
            .current(VariableOption(selected=True, text="f2p-workers", value="f2p-workers"))
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        .with_row(dashboard.Row("Overview"))
        .with_panel(_stat("Workers up", "none", 'count(up{job="f2p-worker"} == 1)'))
        .with_panel(
            _stat(
                "Results/s",
                "reqps",
                f"sum(rate(f2p_worker_results_total[{RATE}]))",
                "Committed outcomes per second, all statuses.",
            )
        )
        .with_panel(
            _stat(
                "Engine duty (fleet)",
                "percentunit",
                f"avg(sum by (instance) (rate(f2p_worker_engine_seconds_sum[{RATE}])))",
                "Engine seconds per wall second, averaged over workers (target >= 99.5 % "
                "under load).",
            )
        )
        .with_panel(
            _stat(
                "Backlog",
                "none",
                f"sum(kafka_consumergroup_lag{{{group}}})",
                "Lag of the worker group over every lane (KEDA scales on it).",
            )
        )
        .with_row(dashboard.Row("Throughput and outcomes"))
        .with_panel(
            _series(
                "Results by status",
                "reqps",
                [(f"sum by (status) (rate(f2p_worker_results_total[{RATE}]))", "{{status}}")],
            )
        )
        .with_panel(
            _series(
                "Errors by reason",
                "reqps",
                [(f"sum by (reason) (rate(f2p_worker_errors_total[{RATE}]))", "{{reason}}")],
                "FAILED results and transient failures by machine-readable reason.",
            )
        )
        .with_panel(
            _series(
                "Dead letters",
                "reqps",
                [
                    (
                        # One query, a line per stage that dead-lettered anything: with
                        # admission in front, poison is caught there and a worker's line
                        # appears only for what fails later (retries exhausted, say).
                        f'label_replace(sum(rate(f2p_admission_requests_total{{outcome="dead_letter"}}'
                        f'[{RATE}])), "stage", "admission", "", "") or label_replace(sum(rate('
                        f'f2p_worker_results_total{{status="DEAD_LETTER"}}[{RATE}])), "stage", '
                        f'"workers", "", "")',
                        "{{stage}}",
                    )
                ],
                "Records sent to f2p.dlq.v1, by the stage that sent them.",
            )
        )
        .with_panel(
            _series(
                "Transactions by outcome",
                "ops",
                [
                    (
                        f"sum by (outcome) (rate(f2p_worker_transactions_total[{RATE}]))",
                        "{{outcome}}",
                    )
                ],
                "One transaction carries results, retries, DLQ records and input offsets. "
                "Outcomes: committed, aborted (written again), refused (records refused for "
                "good, replaced), fatal (producer replaced, partitions rewound).",
            )
        )
        .with_row(dashboard.Row("Latency per lane"))
        .with_panel(
            _series(
                "End-to-end (submit → committed result)",
                "s",
                _quantiles("f2p_worker_end_to_end_seconds", "lane"),
            )
        )
        .with_panel(
            _series(
                "Queue wait (arrival at the worker → engine start)",
                "s",
                _quantiles("f2p_worker_queue_wait_seconds", "lane"),
            )
        )
        .with_panel(
            _series("Engine time per batch", "s", _quantiles("f2p_worker_engine_seconds", "job"))
        )
        .with_panel(
            _series(
                "Batch size",
                "none",
                [
                    (
                        f"sum(rate(f2p_worker_batch_size_sum[{RATE}])) "
                        f"/ sum(rate(f2p_worker_batch_size_count[{RATE}]))",
                        "mean",
                    ),
                    (
                        f"histogram_quantile(0.9, sum by (le) "
                        f"(rate(f2p_worker_batch_size_bucket[{RATE}])))",
                        "P90",
                    ),
                ],
            )
        )
        .with_row(dashboard.Row("Lag and workers"))
        .with_panel(
            _series(
                "Consumer lag per lane",
                "none",
                [(f"sum by (topic) (kafka_consumergroup_lag{{{group}}})", "{{topic}}")],
                "Log-end minus committed offset (0 when idle: the workers commit past "
                "trailing transaction markers).",
            )
        )
        .with_panel(
            _series(
                "Engine duty per worker",
                "percentunit",
                [
                    (
                        f"sum by (instance) (rate(f2p_worker_engine_seconds_sum[{RATE}]))",
                        "{{instance}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                "In flight and assigned partitions per worker",
                "none",
                [
                    ("sum by (instance) (f2p_worker_in_flight)", "in flight {{instance}}"),
                    (
                        "sum by (instance) (f2p_worker_assigned_partitions)",
                        "partitions {{instance}}",
                    ),
                ],
            )
        )
        .with_panel(
            _series(
                "Partitions paused by backpressure",
                "none",
                [("sum by (instance) (f2p_worker_paused_partitions)", "{{instance}}")],
            )
        )
        .with_row(dashboard.Row("Worker internals"))
        .with_panel(
            _series(
                "Bytes held between stages",
                "bytes",
                [("sum by (instance) (f2p_worker_held_bytes)", "{{instance}}")],
                "Faces and images of in-flight work; over its bound the worker pauses intake.",
            )
        )
        .with_panel(
            _series(
                "Worker CPU by stage",
                "percentunit",
                [
                    (
                        f"sum by (stage) (rate(f2p_worker_thread_cpu_seconds_total[{RATE}]))",
                        "{{stage}}",
                    )
                ],
                "Cores busy in each stage's threads, all workers (loop: consume and commit; "
                "prefetch: request and face decode; engine: the engine thread's host side; "
                "output: image encode, S3 put, records). Sizes the CPUs a GPU needs.",
            )
        )
        .with_panel(
            _series(
                "Redelivered requests already done",
                "reqps",
                [
                    (
                        f"sum by (instance) (rate(f2p_worker_redelivered_done_total[{RATE}]))",
                        "{{instance}}",
                    )
                ],
                "Skipped because their outcome was committed before (after a rebalance or "
                "a crash); steady non-zero means repeated redelivery.",
            )
        )
        .with_panel(
            _series(
                "Producers created",
                "none",
                [
                    (
                        "sum by (instance) "
                        "(increase(f2p_worker_producers_created_total[$__range]))",
                        "{{instance}}",
                    )
                ],
                "Transactional producers per worker over the range: more than one means a "
                "fatal error replaced it.",
            )
        )
        .with_panel(
            _series(
                "Engine recompiles after warm-up",
                "none",
                [("max by (instance) (f2p_worker_engine_recompiles)", "{{instance}}")],
                "torch.compile graphs built after warm-up (0 when not compiled); a rising line "
                "costs GPU time on every new shape.",
            )
        )
        .with_row(dashboard.Row("Admission"))
        .with_panel(
            _series(
                "Admission outcomes",
                "reqps",
                [
                    (
                        f"sum by (outcome) (rate(f2p_admission_requests_total[{RATE}]))",
                        "{{outcome}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                "Admission hop",
                "s",
                _quantiles("f2p_admission_hop_seconds", "job"),
                "Ingress record → admitted to its lane (DESIGN: P99 <= 10 ms added).",
            )
        )
        .with_panel(
            _series(
                "Admission dead letters by reason",
                "reqps",
                [(f"sum by (reason) (rate(f2p_admission_errors_total[{RATE}]))", "{{reason}}")],
                "Ingress records admission could not key by a request_id (undecodable, bad "
                "identity, oversized): to f2p.dlq.v1.",
            )
        )
        .with_panel(
            _series(
                "Admission backlog and dedupe state",
                "none",
                [
                    ("sum by (instance) (f2p_admission_consumer_lag)", "lag {{instance}}"),
                    ("sum by (instance) (f2p_admission_dedupe_entries)", "dedupe {{instance}}"),
                ],
                "Ingress and repartition records not yet admitted; request_ids held for "
                "duplicate detection (bounded by the dedupe horizon).",
            )
        )
    )


def tenants_dashboard() -> dashboard.Dashboard:
    """Per tenant, from the analytics processor (windows of the results topic)."""
    tenant = 'tenant=~"$tenant"'
    return (
        dashboard.Dashboard("f2p-stream: tenants")
        .uid("f2p-tenants")
        .tags(["f2p-stream"])
        .refresh("1m")
        .time("now-6h", "now")
        .with_variable(_datasource_variable())
        .with_variable(
            dashboard.QueryVariable("tenant")
            .label("Tenant")
            .datasource(DATASOURCE)
            .query("label_values(f2p_analytics_tenant_results_total, tenant)")
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        .with_row(dashboard.Row("Per tenant (closed analytics windows)"))
        .with_panel(
            _series(
                "Results/s",
                "reqps",
                [
                    (
                        f"sum by (tenant) (rate(f2p_analytics_tenant_results_total{{{tenant}}}"
                        f"[{RATE}]))",
                        "{{tenant}}",
                    )
                ],
                "Counted when a tenant's window closes; tenants beyond the label bound are _other.",
            )
        )
        .with_panel(
            _series(
                "Error rate",
                "percentunit",
                [
                    (
                        f"sum by (tenant) (rate(f2p_analytics_tenant_results_total"
                        f'{{{tenant}, status!="OK"}}[{RATE}])) / sum by (tenant) '
                        f"(rate(f2p_analytics_tenant_results_total{{{tenant}}}[{RATE}]))",
                        "{{tenant}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                "Errors by code",
                "reqps",
                [
                    (
                        f"sum by (tenant, code) (rate(f2p_analytics_tenant_errors_total"
                        f"{{{tenant}}}[{RATE}]))",
                        "{{tenant}} {{code}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                "End-to-end latency of OK results (last closed window)",
                "s",
                [
                    (
                        f"max by (tenant) (f2p_analytics_tenant_latency_seconds{{{tenant}, "
                        f'quantile="{q}"}})',
                        f"{name} {{{{tenant}}}}",
                    )
                    for name, q in QUANTILES
                ],
            )
        )
        .with_panel(
            _series(
                "GPU-seconds per second",
                "none",
                [
                    (
                        f"sum by (tenant) (rate(f2p_analytics_tenant_gpu_seconds_total"
                        f"{{{tenant}}}[{RATE}]))",
                        "{{tenant}}",
                    )
                ],
                "Engine time per tenant (a batch's time per request: an upper bound at batch "
                "size > 1). GPUs this tenant keeps busy.",
            )
        )
        .with_panel(
            _series(
                "Top tenants by results",
                "none",
                [
                    (
                        "topk(10, sum by (tenant) "
                        "(increase(f2p_analytics_tenant_results_total[$__range])))",
                        "{{tenant}}",
                    )
                ],
            )
        )
        .with_panel(
            _stat(
                "Tenants folded into _other",
                "none",
                "max(f2p_analytics_tenants_folded)",
                "Windows of tenants beyond the label bound (--max-tenants).",
            )
        )
    )


DASHBOARDS = {"f2p-fleet": fleet_dashboard, "f2p-tenants": tenants_dashboard}


def dashboard_json(name: str) -> str:
    """The dashboard ``name`` as the JSON Grafana imports (stable: sorted keys, panel ids)."""
    built = DASHBOARDS[name]().build()
    data: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
    for number, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = number
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def panel_queries(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of a dashboard's JSON."""
    return [
        (panel["title"], target["expr"])
        for panel in data.get("panels", [])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
