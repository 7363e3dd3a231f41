"""The ``f2p`` command: one entry point, one subcommand group per package.

Only this entry point turns exceptions into exit codes: a project error (``F2PError``) prints its
message and exits 1 with no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from f2p_errors import F2PError
from infra.cli import stack_group, topics_group


@click.group()
@click.option(
    "--log-level",
    default=lambda: os.environ.get("F2P_LOG_LEVEL", "INFO"),
    show_default="INFO or $F2P_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def cli(log_level: str) -> None:
    """f2p-stream: Kafka-native exactly-once inference for Qwen-Image-Edit-F2P."""
    from infra.logs import configure_logging

    configure_logging(log_level.upper())


cli.add_command(stack_group)
cli.add_command(topics_group)


def _add_optional_groups() -> None:
    """Subcommands of packages with heavier imports, loaded here so `f2p stack` stays fast."""
    from benchmarks.cli import bench_cmd
    from connectors.cli import publish_cmd, replay_cmd, results_cmd
    from inference_consumer.cli import demo_cmd, worker_cmd

    from schemas.cli import schemas as schemas_group

    for command in (schemas_group, publish_cmd, results_cmd, replay_cmd, worker_cmd, demo_cmd):
        cli.add_command(command)
    cli.add_command(bench_cmd)


def main() -> None:
    """Console entry point."""
    try:
        _add_optional_groups()
    except ImportError as exc:  # a package still under construction must not break `f2p stack`
        if os.environ.get("F2P_STRICT_IMPORTS"):
            raise
        logging.getLogger(__name__).debug("optional commands unavailable: %s", exc)
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except F2PError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except SystemExit:
        raise


if __name__ == "__main__":
    main()
