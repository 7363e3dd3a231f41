"""``f2p stack …`` and ``f2p topics …``."""

from __future__ import annotations

import json
import time

import click

from infra.stack.config import load_stack_config
from infra.stack.launcher import stack_down, stack_status, stack_up
from infra.topics import apply_topics, describe_configs, load_topic_specs


@click.group("stack")
def stack_group() -> None:
    """The embedded local stack: Kafka (KRaft), SeaweedFS S3, Apicurio Registry.

    State lives in $F2P_STACK_DIR (default: <repo>/.stack); ports are set by F2P_STACK_<NAME>_PORT
    (KAFKA, KAFKA_CONTROLLER, S3, REGISTRY, REGISTRY_MANAGEMENT, SEAWEED_*).
    """


@stack_group.command("up")
@click.option(
    "--monitoring",
    is_flag=True,
    help="Also start Prometheus (rules of infra/monitoring) and the consumer-lag exporter; "
    "processes are scraped once registered under <stack dir>/monitoring/targets.",
)
def stack_up_cmd(monitoring: bool) -> None:
    """Start whatever is not running yet and wait until every component is ready."""
    started = time.monotonic()
    report = stack_up(load_stack_config(), optional=("monitoring",) if monitoring else ())
    for name, action in report.actions.items():
        ready = report.ready_after_s.get(name)
        click.echo(f"{name:9} {action}" + (f" (ready after {ready:.1f} s)" if ready else ""))
    status = stack_status(load_stack_config(), probe=False)
    click.echo(f"bootstrap servers: {status['bootstrap_servers']}")
    click.echo(f"S3 endpoint:       {status['s3']['endpoint_url']}")
    click.echo(f"schema registry:   {status['registry_url']}")
    if "prometheus" in status["components"]:
        prom = status["components"]["prometheus"]
        click.echo(f"prometheus:        {prom['endpoint']} (targets: {prom['targets']})")
    click.echo(f"stack up in {time.monotonic() - started:.1f} s")


@stack_group.command("down")
@click.option("--purge", is_flag=True, help="Also delete Kafka logs and S3 data.")
def stack_down_cmd(purge: bool) -> None:
    """Stop exactly the processes `up` started."""
    stopped = stack_down(load_stack_config(), purge=purge)
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stack_status_cmd(as_json: bool) -> None:
    """Endpoints, credentials and health of each component (exit code 1 when unhealthy)."""
    status = stack_status(load_stack_config())
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        for name, comp in status["components"].items():
            health = "healthy" if comp["healthy"] else "NOT healthy"
            click.echo(f"{name:9} {comp['state']:20} {health:12} {comp.get('endpoint', '')}")
    raise SystemExit(0 if status["healthy"] else 1)


@click.group("topics")
def topics_group() -> None:
    """Topics as code (infra/topics.toml)."""


_profile = click.option("--profile", default=None, help="Spec profile, e.g. production.")
_suffix = click.option("--suffix", default="", help="Append to every topic name (test isolation).")


@topics_group.command("apply")
@_profile
@_suffix
@click.option("--raise-partitions", is_flag=True, help="Add partitions where the spec has more.")
@click.option("--alter-configs", is_flag=True, help="Set topic configs that drifted from the spec.")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
def topics_apply_cmd(
    profile: str | None, suffix: str, raise_partitions: bool, alter_configs: bool, dry_run: bool
) -> None:
    """Create missing topics, report drift; idempotent."""
    from connectors.kafka import make_admin
    from connectors.settings import load_settings

    admin = make_admin(load_settings())
    report = apply_topics(
        admin,
        load_topic_specs(profile=profile, suffix=suffix),
        raise_partitions=raise_partitions,
        alter_configs=alter_configs,
        dry_run=dry_run,
    )
    prefix = "would be " if dry_run else ""
    for name in report.created:
        click.echo(f"{prefix}created            {name}")
    for name in report.partitions_raised:
        click.echo(f"{prefix}partitions raised  {name}")
    for name in report.configs_altered:
        click.echo(f"{prefix}configs altered    {name}")
    for name in report.unchanged:
        click.echo(f"unchanged          {name}")
    for d in report.drift:
        click.echo(f"DRIFT {d.topic}: {d.setting} spec={d.spec} broker={d.actual}")
    if not report.changed:
        click.echo("nothing to change")


@topics_group.command("render")
@_profile
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["strimzi"]),
    required=True,
    help="strimzi: KafkaTopic resources for the Strimzi Topic Operator.",
)
@click.option("--cluster", default="f2p", show_default=True, help="Strimzi Kafka cluster name.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write here instead of standard output.",
)
def topics_render_cmd(profile: str | None, fmt: str, cluster: str, output: str | None) -> None:
    """Render infra/topics.toml as Kubernetes resources (committed under infra/k8s)."""
    from infra.strimzi import render_topics

    text = render_topics(profile, cluster=cluster)
    if output is None:
        click.echo(text, nl=False)
    else:
        with open(output, "w") as out:
            out.write(text)
        click.echo(f"wrote {output}")


@topics_group.command("list")
@_profile
@_suffix
def topics_list_cmd(profile: str | None, suffix: str) -> None:
    """Each spec'd topic: partitions and key configs in the spec vs on the broker."""
    from connectors.kafka import make_admin
    from connectors.settings import load_settings

    admin = make_admin(load_settings())
    specs = load_topic_specs(profile=profile, suffix=suffix)
    metadata = admin.list_topics(timeout=30)
    present = [s.name for s in specs if s.name in metadata.topics]
    configs = describe_configs(admin, present)
    click.echo(f"{'topic':32} {'partitions':>14}  cleanup.policy      retention.ms")
    for spec in specs:
        if spec.name not in metadata.topics:
            click.echo(f"{spec.name:32} {spec.partitions:>5} / absent")
            continue
        actual = configs[spec.name]
        parts = len(metadata.topics[spec.name].partitions)
        policy = f"{spec.config.get('cleanup.policy', 'delete')}/{actual.get('cleanup.policy')}"
        retention = f"{spec.config.get('retention.ms')}/{actual.get('retention.ms')}"
        click.echo(f"{spec.name:32} {spec.partitions:>5} / {parts:<6}  {policy:18}  {retention}")


@click.command("capacity")
@click.option("--qps", type=float, required=True, help="Target load, requests per second.")
@click.option(
    "--preset",
    type=click.Choice(["quality", "fast", "fastest"]),
    default="fast",
    show_default=True,
    help="quality: 50 steps + CFG; fast: Lightning 8 steps; fastest: Lightning 4 steps.",
)
@click.option("--size", default="1024x1024", show_default=True, help="Output WIDTHxHEIGHT.")
@click.option("--max-batch", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--max-load",
    type=click.FloatRange(0.05, 0.99),
    default=0.8,
    show_default=True,
    help="Highest load of the busiest GPU, as a share of its capacity at full batches.",
)
@click.option("--p99-slo", type=click.FloatRange(0.01, 86_400), help="End-to-end P99 target, s.")
@click.option(
    "--partitions", type=click.IntRange(1, 100_000), help="Partitions per lane (default: = GPUs)."
)
@click.option(
    "--seconds-per-step",
    type=click.FloatRange(0.001, 100),
    default=0.3,
    show_default=True,
    help="One transformer pass at 1024x1024 (the sim engine's calibration).",
)
@click.option("--overhead-ms", type=click.FloatRange(0, 60_000), default=25.0, show_default=True)
@click.option("--max-in-flight", type=click.IntRange(1, 100_000), help="Default: 2 batches.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def capacity_cmd(
    qps: float,
    preset: str,
    size: str,
    max_batch: int,
    max_load: float,
    p99_slo: float | None,
    partitions: int | None,
    seconds_per_step: float,
    overhead_ms: float,
    max_in_flight: int | None,
    as_json: bool,
) -> None:
    """GPUs, partitions, KEDA thresholds, queue wait and P99 for a target load (infra/capacity.py).

    Each GPU is one bulk-service queue (its partitions' traffic, batches of up to --max-batch)
    with the sim engine's latency model; see the module docstring for the why.
    """
    from infra.capacity import format_plan, parse_size, plan_capacity

    width, height = parse_size(size)
    plan = plan_capacity(
        qps,
        preset,
        width,
        height,
        max_batch=max_batch,
        seconds_per_step=seconds_per_step,
        max_load=max_load,
        p99_slo_s=p99_slo,
        partitions=partitions,
        overhead_s=overhead_ms / 1000,
        max_in_flight=max_in_flight,
    )
    click.echo(json.dumps(plan.as_dict(), indent=2) if as_json else format_plan(plan))


@click.group("monitoring")
def monitoring_group() -> None:
    """Prometheus rules and Grafana dashboards as code (infra/monitoring)."""


@monitoring_group.command("render")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a file is stale.")
def monitoring_render_cmd(check: bool) -> None:
    """Write the PrometheusRule and the dashboards' JSON under infra/k8s/base/monitoring."""
    from infra.monitoring.render import stale_files, write_generated

    if check:
        stale = stale_files()
        for path in stale:
            click.echo(f"stale: {path}")
        raise SystemExit(1 if stale else 0)
    written = write_generated()
    for path in written:
        click.echo(f"wrote {path}")
    if not written:
        click.echo("up to date")
