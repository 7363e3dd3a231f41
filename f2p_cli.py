"""The ``f2p`` command: one entry point, one subcommand group per package.

Only this entry point turns exceptions into exit codes: a project error (``F2PError``) prints its
message and exits 1 with no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import faulthandler
import os
import sys

import click

from f2p_errors import F2PError
from infra.cli import kafka_cmd, stack_group, topics_group


@click.group()
@click.option(
    "--log-level",
    default=lambda: os.environ.get("F2P_LOG_LEVEL", "INFO"),
    show_default="INFO or $F2P_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """f2p-stream: Kafka-native exactly-once inference for Qwen-Image-Edit-F2P."""
    from infra.logs import configure_logging

    configure_logging(log_level.upper())
    if ctx.invoked_subcommand in _TRACED:
        # Spans go out over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (else: no-ops).
        from connectors.tracing import configure_tracing

        configure_tracing(f"f2p-{ctx.invoked_subcommand}")


cli.add_command(stack_group)
cli.add_command(topics_group)
cli.add_command(kafka_cmd)


# Subcommands that take part in a request's trace.
_TRACED = ("publish", "worker", "streams", "demo")

# (module, attribute) of every subcommand outside infra; imported lazily so `f2p stack` does not
# pay for torch and diffusers.
_COMMANDS = (
    ("schemas.cli", "schemas"),
    ("connectors.cli", "publish_cmd"),
    ("connectors.cli", "results_cmd"),
    ("connectors.cli", "replay_cmd"),
    ("connectors.lifecycle_cli", "cancel_cmd"),
    ("connectors.lifecycle_cli", "status_cmd"),
    ("inference_consumer.cli", "worker_cmd"),
    ("inference_consumer.cli", "demo_cmd"),
    ("benchmarks.cli", "bench_cmd"),
    ("streams.cli", "streams_cmd"),
    ("infra.cli", "capacity_cmd"),
    ("infra.cli", "monitoring_group"),
)


def _add_commands() -> None:
    import importlib

    for module_name, attribute in _COMMANDS:
        cli.add_command(getattr(importlib.import_module(module_name), attribute))


def run(command: click.Command) -> None:
    """Invoke ``command`` with the project's exit-code policy: a project error (``F2PError``)
    prints its message and exits 1 with no traceback, usage errors exit 2, Ctrl-C 130; anything
    else is a bug and keeps its traceback. Also used by ``python -m connectors.cli`` and
    ``python -m streams.cli``."""
    try:
        command(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except F2PError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def main() -> None:
    """Console entry point."""
    # A crash below Python (librdkafka, torch) then leaves every thread's stack on stderr, the
    # log of a worker or admission process, instead of a silent exit code.
    faulthandler.enable()
    _add_commands()
    run(cli)


if __name__ == "__main__":
    main()
