"""``f2p schemas``: register, check and list the event schemas in the schema registry.

The group is mounted into the ``f2p`` CLI by the entry point; it also runs on its own with
``python -m schemas.cli``. The registry URL comes from ``--registry-url`` or ``F2P_REGISTRY_URL``
(the full Confluent-compatible base URL, e.g. ``http://127.0.0.1:18081/apis/ccompat/v7``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas import catalog
from schemas.codec import DEFAULT_COMPATIBILITY, register_all
from schemas.exceptions import SchemaIncompatible
from schemas.topics import DEFAULT_SUBJECTS, subject_for, topics_by_record

COMPATIBILITY_LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)

registry_url_option = click.option(
    "--registry-url",
    envvar="F2P_REGISTRY_URL",
    required=True,
    show_envvar=True,
    help="Schema registry base URL (Confluent-compatible API).",
)


def _client(registry_url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry_url})


def _registry_error(exc: SchemaRegistryError) -> click.ClickException:
    return click.ClickException(f"schema registry: {exc.error_message} ({exc.http_status_code})")


@click.group(name="schemas")
def schemas() -> None:
    """Register, check and list the Avro event schemas in the schema registry."""


@schemas.command("register")
@registry_url_option
@click.option(
    "--compatibility",
    type=click.Choice(COMPATIBILITY_LEVELS, case_sensitive=False),
    default=DEFAULT_COMPATIBILITY,
    show_default=True,
    help="Compatibility level set on every subject before registering.",
)
def register_cmd(registry_url: str, compatibility: str) -> None:
    """Register the current schemas under the value subjects of the default topics."""
    with _client(registry_url) as registry:
        try:
            ids = register_all(registry, topics_by_record(DEFAULT_SUBJECTS), compatibility.upper())
        except SchemaIncompatible as exc:
            raise click.ClickException(str(exc)) from exc
        except SchemaRegistryError as exc:
            raise _registry_error(exc) from exc
    width = max(len(s) for s in ids)
    for subject, schema_id in ids.items():
        record = DEFAULT_SUBJECTS[subject.removesuffix("-value")]
        click.echo(f"{subject:<{width}}  id={schema_id:<6} {record:<17}  {compatibility.upper()}")


def _record_of(path: Path) -> tuple[str, str]:
    """(record full name, schema text) of an ``.avsc`` file; ClickException if it is not ours."""
    try:
        text = path.read_text(encoding="utf-8")
        full = catalog.schema_full_name(json.loads(text))
    except (OSError, ValueError, AttributeError) as exc:
        raise click.ClickException(f"{path}: not a readable Avro schema ({exc})") from exc
    if catalog.short_name(full) not in catalog.RECORD_NAMES or catalog.full_name(full) != full:
        raise click.ClickException(f"{path}: {full or '?'} is not one of the f2p records")
    return full, text


@schemas.command("check")
@registry_url_option
@click.argument("avsc", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="Check against this topic's subject instead of the default topics of the record.",
)
def check_cmd(registry_url: str, avsc: tuple[Path, ...], topics: tuple[str, ...]) -> None:
    """Check schemas against what is registered, as registering them would.

    AVSC are .avsc files (default: the current schemas of this package). Each one is tested with
    the registry's compatibility endpoint against every subject that carries its record: the
    latest version under BACKWARD/FORWARD/FULL, every version under the *_TRANSITIVE levels.
    A subject with nothing registered yet passes. Exits 1 if any pair is incompatible.
    """
    paths = list(avsc) or [catalog.schema_path(name) for name in catalog.RECORD_NAMES]
    by_record = topics_by_record(DEFAULT_SUBJECTS)
    incompatible = 0
    with _client(registry_url) as registry:
        for path in paths:
            full, text = _record_of(path)
            for topic in topics or by_record.get(catalog.short_name(full), []):
                subject = subject_for(topic)
                try:
                    ok = registry.test_compatibility_all_versions(subject, Schema(text, "AVRO"))
                except SchemaRegistryError as exc:
                    if exc.http_status_code != 404:
                        raise _registry_error(exc) from exc
                    ok = True  # nothing registered yet: any first version is compatible
                incompatible += not ok
                verdict = "compatible" if ok else "INCOMPATIBLE"
                click.echo(f"{verdict:<12}  {subject}  {path}")
    if incompatible:
        raise click.ClickException(f"{incompatible} incompatible schema/subject pair(s)")


@schemas.command("list")
@registry_url_option
@click.option("--all", "show_all", is_flag=True, help="List every subject, not only f2p topics.")
def list_cmd(registry_url: str, show_all: bool) -> None:
    """List subjects with their latest version, schema id, record and compatibility level."""
    with _client(registry_url) as registry:
        try:
            subjects = sorted(registry.get_subjects())
            for subject in subjects:
                if not show_all and not subject.startswith("f2p."):
                    continue
                latest = registry.get_latest_version(subject)
                try:
                    level = registry.get_compatibility(subject)
                except SchemaRegistryError:
                    level = "-"
                record = "?"
                if latest.schema is not None and latest.schema.schema_str:
                    record = catalog.schema_full_name(json.loads(latest.schema.schema_str))
                click.echo(
                    f"{subject}  v{latest.version}  id={latest.schema_id}  {record}  {level}"
                )
        except SchemaRegistryError as exc:
            raise _registry_error(exc) from exc


if __name__ == "__main__":
    schemas()
