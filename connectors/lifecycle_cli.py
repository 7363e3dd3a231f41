"""``f2p cancel`` and ``f2p status``: act on, and follow, one request by its request_id."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from connectors.settings import Settings, load_settings

if TYPE_CHECKING:  # the codec pulls in fastavro and the registry client: only when a command runs
    from schemas.codec import AvroCodec


def _codec() -> tuple[Settings, AvroCodec]:
    from connectors.registry import make_registry_client
    from schemas.codec import AvroCodec

    settings = load_settings()
    return settings, AvroCodec(make_registry_client(settings), auto_register=settings.embedded)


@click.command("cancel")
@click.argument("request_id")
@click.option("--reason", help="Why (kept in the command and the CANCELLED result's message).")
def cancel_cmd(request_id: str, reason: str | None) -> None:
    """Cancel REQUEST_ID: queued, it ends CANCELLED without a GPU; running alone, it stops
    between denoising steps; already answered, its result stands."""
    from connectors.control import send_cancel
    from connectors.status import check_request_id

    settings, codec = _codec()
    send_cancel(settings, codec, check_request_id(request_id), reason=reason, issued_by="f2p-cli")
    click.echo(f"cancel of {request_id} sent to {settings.topics.control}")


@click.command("status")
@click.argument("request_id")
@click.option("--follow", is_flag=True, help="Keep printing until the request is answered.")
@click.option(
    "--timeout-s",
    type=click.FloatRange(1, 86_400),
    default=300.0,
    show_default=True,
    help="How long --follow waits.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def status_cmd(request_id: str, follow: bool, timeout_s: float, as_json: bool) -> None:
    """The life of REQUEST_ID: ACCEPTED / REJECTED / DUPLICATE (admission), RUNNING and its
    final status (worker), and its result."""
    from connectors.status import check_request_id, follow_history, read_history

    settings, codec = _codec()
    check_request_id(request_id)
    histories = (
        follow_history(settings, codec, request_id, timeout_s=timeout_s)
        if follow
        else iter([read_history(settings, codec, request_id)])
    )
    printed = 0
    last = None
    for history in histories:
        last = history
        for event in history.events[printed:]:
            if as_json:
                click.echo(json.dumps({"at": event.at.isoformat(), "status": event.status.value,
                    "source": event.source, "lane": event.lane, "reason": event.reason,
                    "duplicates": event.duplicates}))  # fmt: skip
            else:
                extra = " ".join(
                    f"{k}={v}" for k, v in (("lane", event.lane), ("reason", event.reason)) if v
                )
                dup = f" (duplicates so far: {event.duplicates})" if event.duplicates else ""
                click.echo(f"{event.at.isoformat()}  {event.status.value:9} {event.source} "
                           f"{extra}{dup}".rstrip())  # fmt: skip
        printed = len(history.events)
    if last is None or (not last.events and not last.results):
        raise click.ClickException(f"nothing known about {request_id} (yet)")
    for result in last.results:
        images = ", ".join(i.uri for i in result.images) or "-"
        line = f"result: {result.status.value} by {result.worker_id}; images: {images}"
        click.echo(
            json.dumps({"result": result.status.value, "images": images}) if as_json else line
        )
