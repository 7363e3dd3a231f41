"""``f2p streams``: the stream processors (faust-streaming workers), run in this process.

Mounted by ``f2p_cli`` as ``("streams.cli", "streams_cmd")``; also runnable on its own as
``python -m streams.cli analytics ...``. Topic names come from the settings
(``F2P_TOPIC_SUFFIX`` appends a suffix to every name).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click


@click.group("streams")
def streams_cmd() -> None:
    """Stream processors: admission of ingress requests; analytics over the results topic."""


@streams_cmd.command("admission")
@click.option("--instance-id", help="Stable id: transactional.id and static member id.")
@click.option("--group", "group_id", help="Consumer group (default f2p-admission).")
@click.option(
    "--dedupe-horizon-s",
    type=click.FloatRange(60, 365 * 86400),
    help="A duplicate this long after the first sighting is no longer recognised (default 7 d).",
)
@click.option("--quotas-file", type=click.Path(dir_okay=False, exists=True), help="Tenant quotas.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="0: no HTTP endpoint.")
@click.option("--metrics-host", help="Address of the HTTP endpoint (default 127.0.0.1).")
def admission_cmd(**options: object) -> None:
    """Admit ingress requests: identity, dedupe across lanes/partitions, quotas, lanes (until
    SIGTERM/SIGINT)."""
    import signal

    from connectors.settings import load_settings
    from streams.admission.config import AdmissionConfig
    from streams.admission.service import Admission

    config = AdmissionConfig.from_env(**options)
    admission = Admission(load_settings(), config)

    def on_signal(_signum: int, _frame: object) -> None:
        admission.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    admission.run()


@streams_cmd.command("analytics")
@click.option(
    "--window-s", type=float, default=10.0, show_default=True, help="Tumbling window length."
)
@click.option(
    "--grace-s",
    type=float,
    default=2.0,
    show_default=True,
    help="Allowed lateness: a window closes this long after the watermark passed its end.",
)
@click.option(
    "--idle-s",
    type=float,
    default=5.0,
    show_default=True,
    help="A partition silent this long no longer holds the watermark back.",
)
@click.option(
    "--duration-s",
    type=float,
    default=None,
    help="Stop after this many seconds, startup included (tests, demos). Default: run until "
    "SIGTERM/SIGINT.",
)
@click.option(
    "--app-id", default=None, help="faust app id = consumer group. [default: f2p-analytics<suffix>]"
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="faust's local directory. [default: a temporary directory; the processor keeps no "
    "local state]",
)
@click.option(
    "--replication-factor",
    type=int,
    default=None,
    help="Replication of faust's internal topics. [default: 1 on the embedded stack, else 3]",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Serve per-tenant Prometheus metrics on /metrics here (0: none).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="0.0.0.0 in a pod.")
def analytics_cmd(
    window_s: float,
    grace_s: float,
    idle_s: float,
    duration_s: float | None,
    app_id: str | None,
    data_dir: Path | None,
    replication_factor: int | None,
    metrics_port: int,
    metrics_host: str,
) -> None:
    """Per-tenant windowed throughput, latency percentiles, error rates and GPU-seconds.

    Reads the results topic (committed records only) and writes one JSON record per tenant and
    window to the analytics topic. Prints the run's counters as JSON when it stops.
    """
    from connectors.settings import load_settings
    from streams.analytics import AnalyticsConfig, run_analytics
    from streams.windows import WindowPolicy

    settings = load_settings()
    policy = WindowPolicy(window_s=window_s, grace_s=grace_s, idle_s=idle_s)
    with tempfile.TemporaryDirectory(prefix="f2p-streams-") as tmp:
        config = AnalyticsConfig.from_settings(
            settings,
            policy=policy,
            datadir=data_dir or Path(tmp),
            app_id=app_id,
            replication_factor=replication_factor,
            duration_s=duration_s,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        stats = run_analytics(settings, config)
    click.echo(json.dumps(stats.as_dict()))


def main() -> None:
    """``python -m streams.cli``: the same command outside ``f2p``."""
    from f2p_cli import run
    from infra.logs import configure_logging

    configure_logging(os.environ.get("F2P_LOG_LEVEL", "INFO").upper())
    run(streams_cmd)


if __name__ == "__main__":
    main()
