"""``f2p stack …`` and ``f2p topics …``."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from infra.stack.config import MAX_BROKERS, load_stack_config
from infra.stack.launcher import stack_down, stack_status, stack_up
from infra.topics import (
    TopicSpec,
    apply_topics,
    describe_configs,
    format_replication,
    load_topic_specs,
)

if TYPE_CHECKING:
    from connectors.settings import Settings


@click.group("stack")
def stack_group() -> None:
    """The embedded local stack: Kafka (KRaft), SeaweedFS S3, Apicurio Registry.

    State lives in $F2P_STACK_DIR (default: <repo>/.stack); ports are set by F2P_STACK_<NAME>_PORT
    (KAFKA, KAFKA_CONTROLLER, S3, REGISTRY, REGISTRY_MANAGEMENT, SEAWEED_*).
    """


@stack_group.command("up")
@click.option(
    "--brokers",
    type=click.IntRange(1, MAX_BROKERS),
    default=None,
    help="Kafka nodes (combined broker+controller). Default: $F2P_STACK_BROKERS, else what the "
    "state directory already holds, else 1. 3 gives replication 3 and min.insync 2.",
)
@click.option(
    "--monitoring",
    is_flag=True,
    help="Also start Prometheus (rules of infra/monitoring) and the consumer-lag exporter; "
    "processes are scraped once registered under <stack dir>/monitoring/targets.",
)
def stack_up_cmd(brokers: int | None, monitoring: bool) -> None:
    """Start whatever is not running yet and wait until every component is ready.

    Idempotent: running parts are left alone, dead ones (kill -9, reboot) restarted, a paused
    one resumed.
    """
    started = time.monotonic()
    config = load_stack_config(brokers=brokers)
    report = stack_up(config, optional=("monitoring",) if monitoring else ())
    for name, action in report.actions.items():
        ready = report.ready_after_s.get(name)
        click.echo(f"{name:12} {action}" + (f" (ready after {ready:.1f} s)" if ready else ""))
    if report.cluster_ready_after_s is not None:
        took = report.cluster_ready_after_s
        click.echo(f"cluster   {config.brokers} brokers serving {took:.1f} s after the nodes")
    status = stack_status(config, probe=False)
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
            pid = f"pid {comp['pid']}" if comp.get("pid") else ""
            click.echo(
                f"{name:12} {comp['state']:20} {health:12} {pid:10} {comp.get('endpoint') or ''}"
            )
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
@click.option(
    "--skip-schemas",
    is_flag=True,
    help="Do not register the topics' value schemas (run `f2p schemas register` later).",
)
def topics_apply_cmd(
    profile: str | None,
    suffix: str,
    raise_partitions: bool,
    alter_configs: bool,
    dry_run: bool,
    skip_schemas: bool,
) -> None:
    """Create missing topics, report drift, and register every topic's value schema
    (subject <topic>-value, FULL_TRANSITIVE); idempotent.

    Without --profile the spec's defaults apply (replication 1, for the 1-broker embedded
    stack); on a larger cluster that is warned about, not silently changed: pass
    --profile production for replication 3 and min.insync.replicas 2. Replication cannot be
    changed by apply; drift in it is reported, and --alter-configs refuses to set
    min.insync.replicas above a topic's replication.
    """
    from connectors.kafka import make_admin
    from connectors.settings import load_settings

    settings = load_settings()
    admin = make_admin(settings)
    specs = load_topic_specs(profile=profile, suffix=suffix)
    report = apply_topics(
        admin,
        specs,
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
        # Replication cannot be changed by altering configs: say how it is changed.
        fix = (
            " (apply cannot change it: f2p kafka reassign-partitions)"
            if (d.setting == "replication_factor")
            else ""
        )
        click.echo(f"DRIFT {d.topic}: {d.setting} spec={d.spec} broker={d.actual}{fix}")
    for warning in report.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    if not report.changed:
        click.echo("nothing to change")
    if not skip_schemas and not dry_run:
        _register_schemas(settings, specs)


def _register_schemas(settings: Settings, specs: list[TopicSpec]) -> None:
    """Register the value schema of every spec'd topic and print one line per subject."""
    from connectors.registry import make_registry_client, register_project_schemas

    with make_registry_client(settings) as registry:
        ids = register_project_schemas(registry, specs)
    for subject, schema_id in ids.items():
        click.echo(f"schema registered  {subject} (id {schema_id}, FULL_TRANSITIVE)")


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
    """Each spec'd topic: partitions, replication, min.insync and key configs, spec vs broker."""
    from connectors.kafka import make_admin
    from connectors.settings import load_settings

    admin = make_admin(load_settings())
    specs = load_topic_specs(profile=profile, suffix=suffix)
    metadata = admin.list_topics(timeout=30)
    present = [s.name for s in specs if s.name in metadata.topics]
    configs = describe_configs(admin, present)
    click.echo(f"cluster: {len(metadata.brokers)} live broker(s); columns are spec / broker")
    click.echo(
        f"{'topic':32} {'partitions':>10}  {'replication':>11}  {'min.insync':>10}  "
        f"{'cleanup.policy':16}  retention.ms"
    )
    for spec in specs:
        min_insync = spec.config.get("min.insync.replicas", "-")
        if spec.name not in metadata.topics:
            click.echo(
                f"{spec.name:32} {spec.partitions:>3} / absent  "
                f"{spec.replication_factor:>3} / -      {min_insync:>2} / -"
            )
            continue
        topic, actual = metadata.topics[spec.name], configs[spec.name]
        parts = f"{spec.partitions:>3} / {len(topic.partitions):<4}"
        replication = f"{spec.replication_factor:>3} / {format_replication(topic):<5}"
        insync = f"{min_insync:>2} / {actual.get('min.insync.replicas', '-'):<5}"
        policy = f"{spec.config.get('cleanup.policy', 'delete')}/{actual.get('cleanup.policy')}"
        retention = f"{spec.config.get('retention.ms')}/{actual.get('retention.ms')}"
        click.echo(
            f"{spec.name:32} {parts:>10}  {replication:>11}  {insync:>10}  {policy:16}  {retention}"
        )


@click.command(
    "kafka",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("tool", metavar="TOOL")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def kafka_cmd(tool: str, args: tuple[str, ...]) -> None:
    """Run one of Kafka's own tools against the stack: TOOL is the name of its kafka-TOOL.sh
    script (topics, console-consumer, consumer-groups, transactions, configs, get-offsets,
    metadata-quorum, ...; `f2p kafka list` shows all). --bootstrap-server is filled in from
    F2P_BOOTSTRAP_SERVERS or the running stack unless given; everything else goes to the tool.

    \b
      f2p kafka consumer-groups --describe --group f2p-workers
      f2p kafka transactions list
      f2p kafka console-consumer --topic f2p.dlq.v1 --from-beginning --max-messages 5
    """
    import os

    from infra.kafka_tools import TOOLS, tool_argv
    from infra.stack.artifacts import ensure_artifacts

    if tool == "list":
        for name, spec in TOOLS.items():
            click.echo(f"{name:22} {spec.help}")
        return
    config = load_stack_config()
    bootstrap = (
        os.environ.get("F2P_BOOTSTRAP_SERVERS")
        or stack_status(config, probe=False)["bootstrap_servers"]
    )
    artifacts = ensure_artifacts(config)
    argv = tool_argv(
        tool, list(args), java=artifacts.java17,
        classpath=artifacts.kafka_classpath, bootstrap=bootstrap,
        log_config=config.lib_dir / "tools-log4j2.xml",
    )  # fmt: skip
    # Replace this process: the tool owns the terminal, its signals and its exit code.
    os.execv(argv[0], argv)


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
@click.option(
    "--max-in-flight", type=click.IntRange(1, 100_000), help="Default: 2 batches per lane."
)
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
