"""``f2p publish``, ``f2p results`` and ``f2p replay``: the command line of upstream systems.

Mounted into ``f2p`` by the entry point; also runs on its own: ``python -m connectors.cli``.
Connection settings come from ``F2P_*`` variables or the running embedded stack
(``connectors.settings``); ``F2P_TOPIC_SUFFIX`` selects a suffixed set of topics.

Exit codes: 0 success; 1 invalid request (the message names the field and the bound), failed
deliveries or any other project error; 2 bad command-line usage. Progress bars go to stderr;
``--json`` prints machine-readable output alone on stdout.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from f2p_errors import InvalidInput

# A replay run id seeds new request ids and names checkpoints: plain and bounded.
RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LANES = click.Choice(["interactive", "batch"], case_sensitive=False)
_STATUSES = click.Choice(["OK", "FAILED", "EXPIRED", "REJECTED"], case_sensitive=False)


class IsoTime(click.ParamType):
    """An ISO 8601 timestamp; without an offset it is taken as UTC."""

    name = "ISO8601"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            parsed = value
        else:
            try:
                parsed = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"{value!r} is not an ISO 8601 timestamp", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and infinities (which pass its comparisons)."""

    name = "float"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def _stderr() -> Console:
    return Console(stderr=True)


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Progress]:
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=_stderr(), transient=False) as progress:
        progress.add_task(description, total=total, info="")
        yield progress


def _settings():
    from connectors.settings import load_settings

    return load_settings()


def _invalid(exc: InvalidInput) -> click.ClickException:
    return click.ClickException(f"invalid request: {exc} [{exc.code}]; nothing was sent")


# -- f2p publish ---------------------------------------------------------------------------------


def _attrs(_ctx: Any, _param: Any, values: tuple[str, ...]) -> dict[str, str] | None:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out or None


@click.command("publish")
@click.option(
    "--face",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Face image (PNG, JPEG, WebP) of one request.",
)
@click.option(
    "--from-jsonl",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Many requests, one JSON object per line (same fields as the flags).",
)
@click.option(
    "--count",
    type=click.IntRange(1, 10_000_000),
    help="Generate N requests with the bundled sample face (load tests).",
)
@click.option("--prompt", help="Text prompt (default for --count: a studio photo prompt).")
@click.option("--negative-prompt")
@click.option("--tenant", envvar="F2P_TENANT", show_envvar=True, help="Tenant id.")
@click.option("--lane", type=_LANES, help="Priority lane (default batch).")
@click.option("--request-id", help="Idempotency key (a UUID); default: a fresh uuid4.")
@click.option("--seed", type=int)
@click.option("--steps", type=int)
@click.option("--cfg", type=float, help="True CFG scale.")
@click.option("--width", type=int)
@click.option("--height", type=int)
@click.option("--num-images", type=int)
@click.option("--lora-scale", type=float)
@click.option(
    "--format", "format_", type=click.Choice(["webp", "png", "jpeg"], case_sensitive=False)
)
@click.option("--quality", type=int)
# Request fields stay plain types: validation refuses them with a field name and a code.
@click.option("--deadline-s", type=float, help="Deadline, seconds from now (max 7 days).")
@click.option(
    "--attr",
    "attributes",
    multiple=True,
    callback=_attrs,
    metavar="KEY=VALUE",
    help="Free-form attribute (repeatable), e.g. --attr sku=123.",
)
@click.option(
    "--distinct-faces",
    type=click.IntRange(1, 10_000),
    default=1,
    show_default=True,
    help="With --count: how many different sample faces to rotate.",
)
@click.option(
    "--duplicate-fraction",
    type=FiniteFloat(0, 1),
    default=0.0,
    help="Resend this fraction of the requests unchanged (same request_id).",
)
@click.option("--rate", type=FiniteFloat(0.001, 1_000_000), help="Max requests/s.")
@click.option(
    "--inline-small-images",
    is_flag=True,
    help="Send small images inside the event instead of uploading them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary with request_ids.")
def publish_cmd(
    face: Path | None,
    from_jsonl: Path | None,
    count: int | None,
    distinct_faces: int,
    duplicate_fraction: float,
    rate: float | None,
    inline_small_images: bool,
    as_json: bool,
    format_: str | None,
    **values: Any,
) -> None:
    """Publish generation requests: one (--face), a file (--from-jsonl) or N samples (--count).

    Every request is validated (and its image decoded) before anything is sent; with
    --from-jsonl the whole file is, so one bad line sends nothing.
    """
    from connectors.publish_batch import (
        FaceFiles,
        prepare_jsonl,
        prepare_one,
        publish_all,
        sample_requests,
    )
    from connectors.publisher import Publisher

    modes = [name for name, v in (("--face", face), ("--from-jsonl", from_jsonl),
                                  ("--count", count)) if v is not None]  # fmt: skip
    if len(modes) != 1:
        raise click.UsageError("give exactly one of --face, --from-jsonl or --count")
    defaults = {**values, "format": format_}
    defaults = {k: v for k, v in defaults.items() if v is not None}
    with Publisher(_settings(), inline_small_images=inline_small_images) as publisher:
        try:
            if face is not None:
                requests: Any = [prepare_one(publisher, {**defaults, "face": face}, FaceFiles())]
            elif from_jsonl is not None:
                requests = prepare_jsonl(publisher, from_jsonl, defaults)
            else:
                assert count is not None
                samples = sample_requests(publisher, count, defaults, distinct_faces)
                # The first sample validates the flags before anything is sent.
                first = next(samples)
                requests = itertools.chain([first], samples)
        except InvalidInput as exc:
            raise _invalid(exc) from exc
        # Unreachable Kafka or a missing topic: one clear error in seconds, nothing sent.
        topics = [first.topic] if count is not None else [r.topic for r in requests]
        publisher.check_cluster(topics)
        expected = count if count is not None else len(requests)
        with _progress("publishing", expected + round(expected * duplicate_fraction)) as progress:
            task = progress.task_ids[0]

            def delivered() -> None:
                progress.advance(task)

            summary = publish_all(
                publisher, requests, rate=rate, duplicate_fraction=duplicate_fraction,
                expected=expected, on_delivered=delivered,
            )  # fmt: skip
    _print_publish_summary(summary, as_json)
    if summary.failed or summary.not_sent:
        raise SystemExit(1)


def _print_publish_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        payload = {
            "sent": summary.sent, "delivered": summary.delivered,
            "duplicates": summary.duplicates, "failed": dict(summary.failed),
            "errors": summary.errors, "not_sent": summary.not_sent,
            "failed_request_ids": summary.failed_request_ids,
            "uploaded_faces": summary.uploaded_faces, "elapsed_s": round(summary.elapsed_s, 3),
            "requests_per_s": round(summary.rate, 1), "request_ids": summary.request_ids,
        }  # fmt: skip
        click.echo(json.dumps(payload))
        return
    if len(summary.request_ids) == 1:
        failed = " (failed: not delivered)" if summary.failed_request_ids else ""
        click.echo(f"request_id: {summary.request_ids[0]}{failed}")
    click.echo(
        f"sent {summary.sent} ({summary.duplicates} duplicates), delivered {summary.delivered}, "
        f"new face uploads {summary.uploaded_faces}, {summary.rate:.0f} req/s "
        f"in {summary.elapsed_s:.2f} s"
    )
    for reason, n in summary.failed.most_common():
        click.echo(f"failed: {n} {reason}: {summary.errors.get(reason, '')}".rstrip(": "))
    if summary.not_sent:
        click.echo(f"not sent: {summary.not_sent} request(s), because the first one failed")


# -- f2p results ---------------------------------------------------------------------------------


@click.command("results")
@click.option("--follow", "-f", is_flag=True, help="Keep reading new results.")
@click.option("--tenant", help="Only this tenant's results.")
@click.option(
    "--request-id",
    "request_ids",
    multiple=True,
    help="Only these requests (repeatable); stops once each one is seen.",
)
@click.option("--status", "statuses", type=_STATUSES, multiple=True, help="Only these statuses.")
@click.option("--since", type=IsoTime(), help="Start at results written at or after this time.")
@click.option(
    "--download",
    type=click.Path(file_okay=False, path_type=Path),
    help="Fetch the images of OK results into DIR/<request_id>/.",
)
@click.option(
    "--idle-timeout",
    type=FiniteFloat(0, 86_400),
    help="With --follow: stop after this many idle s.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result.")
def results_cmd(
    follow: bool,
    tenant: str | None,
    request_ids: tuple[str, ...],
    statuses: tuple[str, ...],
    since: datetime | None,
    download: Path | None,
    idle_timeout: float | None,
    as_json: bool,
) -> None:
    """Read committed results (read_committed), optionally following and downloading images."""
    from connectors.results import download_images, iter_results
    from connectors.s3 import make_s3_client

    if download is not None:
        try:  # fail before reading anything rather than at the first image
            download.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.BadParameter(f"cannot create {download}: {exc.strerror}") from exc
    settings = _settings()
    s3 = make_s3_client(settings) if download else None
    found = 0
    for result in iter_results(
        settings, follow=follow, tenant=tenant, request_ids=request_ids, statuses=statuses,
        since=since, idle_timeout_s=idle_timeout,
    ):  # fmt: skip
        found += 1
        files = download_images(s3, result, download) if download and result.images else []
        if as_json:
            payload = _result_json(result)
            if download:
                payload["files"] = [str(f) for f in files]
            click.echo(json.dumps(payload))
        else:
            click.echo(_result_line(result) + "".join(f"\n  -> {f}" for f in files))
    if not as_json:
        click.echo(f"{found} result(s)", err=True)


def _result_json(result: Any) -> dict[str, Any]:
    data = result.to_avro()
    for key in ("submitted_at", "completed_at"):
        data[key] = getattr(result, key).isoformat()
    return data


def _result_line(result: Any) -> str:
    line = f"{result.completed_at:%Y-%m-%dT%H:%M:%S}Z {result.request_id} {result.tenant_id} "
    line += f"{result.status.value:8}"
    if result.images:
        first = result.images[0]
        line += f" {len(result.images)} image(s) {first.width}x{first.height} {first.format}"
    if result.error is not None:
        line += f" {result.error.code}: {result.error.message}"
    return line + f" total={result.timings.total_ms}ms worker={result.worker_id}"


# -- f2p replay ----------------------------------------------------------------------------------


@click.command("replay")
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Source topic or lane name (repeatable; default: both request lanes).",
)
@click.option("--from", "since", type=IsoTime(), help="Requests at or after this time.")
@click.option("--to", "until", type=IsoTime(), help="Requests before this time.")
@click.option("--start-offsets", help="P:O[,P:O...] or TOPIC:P:O (inclusive).")
@click.option("--end-offsets", help="P:O[,P:O...] or TOPIC:P:O (exclusive).")
@click.option("--tenant", help="Only this tenant's requests.")
@click.option(
    "--result-status",
    "result_statuses",
    type=_STATUSES,
    multiple=True,
    help="Only requests whose result has this status (repeatable).",
)
@click.option("--target-lane", type=_LANES, default="batch", show_default=True)
@click.option("--rate", type=FiniteFloat(0.001, 1_000_000), help="Max requests/s.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; publish nothing.")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint file (default: ~/.cache/f2p/replay/<selection hash>.json).",
)
@click.option("--restart", is_flag=True, help="Ignore an existing checkpoint: a new run.")
@click.option(
    "--run-id", help="Id of a new run (default: a fresh UUID); seeds the new request ids."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def replay_cmd(
    sources: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    start_offsets: str | None,
    end_offsets: str | None,
    tenant: str | None,
    result_statuses: tuple[str, ...],
    target_lane: str,
    rate: float | None,
    dry_run: bool,
    checkpoint: Path | None,
    restart: bool,
    run_id: str | None,
    as_json: bool,
) -> None:
    """Re-publish past requests as new ones (replay_of = original) into a target lane.

    An interrupted replay resumes from its checkpoint when run again with the same selection,
    without publishing anything twice.
    """
    from connectors.publisher import lane_topic
    from connectors.replay import ReplaySelection, parse_offsets, run_replay
    from schemas.records import Lane, ResultStatus

    if since and until and since >= until:
        raise click.UsageError("--from must be before --to")
    from connectors.replay_selection import TOPIC_NAME

    for source in sources:  # a topic name reaches librdkafka, which only takes legal ones
        if not TOPIC_NAME.fullmatch(source):
            shown = source if len(source) <= 80 else f"{source[:80]}..."
            raise click.BadParameter(f"{shown!r} is not a Kafka topic name", param_hint="--source")
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise click.BadParameter(
            "must be 1 to 128 letters, digits, '.', '_', ':' or '-'", param_hint="--run-id"
        )
    settings = _settings()
    lanes = {lane.value.lower(): lane_topic(settings, lane) for lane in Lane}
    selection = ReplaySelection(
        sources=tuple(lanes.get(s.lower(), s) for s in sources) or settings.topics.request_lanes,
        target_lane=Lane(target_lane.upper()),
        since=since,
        until=until,
        start_offsets=parse_offsets(start_offsets or ""),
        end_offsets=parse_offsets(end_offsets or ""),
        tenant=tenant,
        result_statuses=frozenset(ResultStatus(s.upper()) for s in result_statuses),
    )
    with _progress("dry run" if dry_run else "replaying", None) as progress:
        task = progress.task_ids[0]

        def show(report: Any) -> None:
            info = f"matched {report.matched} replayed {report.replayed}"
            progress.update(task, total=report.planned, completed=report.scanned, info=info)

        report = run_replay(
            settings, selection, checkpoint_path=checkpoint, run_id=run_id, restart=restart,
            rate=rate, dry_run=dry_run, on_progress=show,
        )  # fmt: skip
    _print_replay_report(report, as_json)


def _print_replay_report(report: Any, as_json: bool) -> None:
    if as_json:
        payload = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
        payload["skipped"], payload["failed"] = dict(report.skipped), dict(report.failed)
        payload["checkpoint"] = str(report.checkpoint) if report.checkpoint else None
        payload["elapsed_s"] = round(report.elapsed_s, 3)
        click.echo(json.dumps(payload))
    elif report.dry_run:
        click.echo(f"dry run: {report.matched} request(s) would be replayed "
                   f"({report.scanned} scanned); nothing published")  # fmt: skip
    elif report.was_complete:
        click.echo(f"run {report.run_id} was already complete ({report.replayed} replayed; "
                   f"checkpoint {report.checkpoint}); pass --restart for a new run")  # fmt: skip
    else:
        resumed = " (resumed)" if report.resumed else ""
        click.echo(
            f"run {report.run_id}{resumed}: replayed {report.replayed} request(s), "
            f"{report.already_replayed} already delivered before an interruption, "
            f"{report.scanned} of {report.planned} scanned in {report.elapsed_s:.2f} s; "
            f"checkpoint {report.checkpoint}"
        )
        for reason, n in report.failed.most_common():
            click.echo(f"not replayable: {n} {reason}")


# -- standalone ----------------------------------------------------------------------------------


@click.group()
def _standalone() -> None:
    """f2p publish / results / replay (standalone; normally run as `f2p ...`)."""
    from infra.logs import configure_logging

    configure_logging("WARNING")


for _command in (publish_cmd, results_cmd, replay_cmd):
    _standalone.add_command(_command)


def main() -> None:
    """Run the three commands without the rest of ``f2p`` (exit codes as documented)."""
    from f2p_cli import run

    run(_standalone)


if __name__ == "__main__":
    main()
