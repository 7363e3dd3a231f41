"""``f2p bench``: the DESIGN.md benchmarks, our worker and the naive baseline side by side.

``f2p bench`` runs the standard suite (about 10 minutes on 2 cores) and prints one table;
``f2p bench --quick`` is the CI smoke version (under 2 minutes); ``-s control -s failover``
picks scenarios; ``f2p bench publish`` is the publisher benchmark on its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from benchmarks.suite import ADMISSION_SCENARIOS, IMPLS, SCENARIOS, Report


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return (
            f"{value:.0f}"
            if abs(value) >= 100
            else f"{value:.1f}"
            if abs(value) >= 10
            else f"{value:.2f}"
        )
    return str(value)


def render_table(report: Report) -> Table:
    """The figures as a rich table: scenario, metric, unit, ours, naive, target."""
    m = report.machine
    title = (
        f"f2p bench — {m['cpus']} CPUs, load average {m['loadavg_before'][0]:.1f} → "
        f"{m.get('loadavg_after', (float('nan'),))[0]:.1f}, {report.seconds:.0f} s"
    )
    table = Table(title=title)
    for column in ("scenario", "metric", "unit", "ours", "naive", "target"):
        table.add_column(column, justify="right" if column in ("ours", "naive") else "left")
    for row in report.rows:
        table.add_row(
            row.scenario, row.metric, row.unit, _format(row.ours), _format(row.naive), row.target
        )
    return table


def render_markdown(report: Report) -> str:
    """The same table in Markdown, for docs/BENCHMARKS.md."""
    lines = [
        "| scenario | metric | unit | ours | naive | target |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for row in report.rows:
        cells = (
            row.scenario,
            row.metric,
            row.unit,
            _format(row.ours),
            _format(row.naive),
            row.target,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.group("bench", invoke_without_command=True)
@click.option("--quick", is_flag=True, help="Tiny sizes (under 2 minutes): the CI smoke run.")
@click.option(
    "--scenario",
    "-s",
    "selected",
    multiple=True,
    type=click.Choice(SCENARIOS + ADMISSION_SCENARIOS),
    help="Run only these scenarios (repeatable). Default: all but the admission ones.",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every figure and raw number as JSON here.",
)
@click.option("--markdown", is_flag=True, help="Also print the table as Markdown.")
@click.option(
    "--impl",
    "impls",
    multiple=True,
    type=click.Choice(IMPLS),
    help="Run only this implementation (repeatable; development). Default: both.",
)
@click.option(
    "--worker-option",
    "-o",
    "worker_options",
    multiple=True,
    metavar="FIELD=VALUE",
    help="WorkerConfig override for our worker, e.g. -o max_batch_wait_ms=0 (repeatable).",
)
@click.pass_context
def bench_cmd(
    ctx: click.Context,
    quick: bool,
    selected: tuple[str, ...],
    json_out: Path | None,
    markdown: bool,
    worker_options: tuple[str, ...],
    impls: tuple[str, ...],
) -> None:
    """Benchmarks against the running stack: our worker vs the naive baseline, side by side.

    Scenarios: control (control-plane throughput at zero service time), overhead (added
    latency at 50 % load), duty (engine duty cycle, 1024² WebP outputs), scaling (1, 2, 4, 8
    workers), failover (kill -9 of one of four workers), publish (publisher SDK), engine
    (transformer evaluations and CPU time per image per preset, tiny engine on CPU).
    Selected only with -s: fairness (a tenant floods 20x its quota; with vs without admission),
    admission (the admission hop's latency at 50 % load), restore (dedupe restore, 1 M entries).
    """
    if ctx.invoked_subcommand is not None:
        return
    from benchmarks.scenarios import QUICK, STANDARD
    from benchmarks.suite import run_suite
    from connectors.settings import load_settings

    sizes = QUICK if quick else STANDARD
    options = _parse_options(worker_options)
    report = run_suite(
        load_settings(), sizes, selected or SCENARIOS, ours_options=options, impls=impls or IMPLS
    )
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # logs and CI: do not wrap the table at 80 columns
    console.print(render_table(report))
    if markdown:
        click.echo(render_markdown(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_json(), indent=2, default=str))
    if report.errors:
        raise click.ClickException(
            "some benchmarks failed: " + "; ".join(f"{k}: {v}" for k, v in report.errors.items())
        )


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("max_batch_wait_ms=0",)`` → ``{"max_batch_wait_ms": 0}``, typed like WorkerConfig."""
    import dataclasses

    from inference_consumer.config import WorkerConfig

    known = {f.name for f in dataclasses.fields(WorkerConfig)}
    defaults = WorkerConfig()
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in known:
            raise click.BadParameter(f"{pair!r}: expected FIELD=VALUE with a WorkerConfig field")
        default = getattr(defaults, name)
        try:
            if isinstance(default, bool):
                options[name] = raw.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int | float):
                options[name] = type(default)(raw)
            else:
                options[name] = raw
        except ValueError:
            raise click.BadParameter(
                f"{pair!r}: {raw!r} is not a {type(default).__name__}"
            ) from None
    return options


def _mount_publish() -> None:
    try:
        from benchmarks.publish import publish_bench_cmd
    except ImportError:
        return
    bench_cmd.add_command(publish_bench_cmd, "publish")


_mount_publish()
