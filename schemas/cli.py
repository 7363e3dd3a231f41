"""``f2p schemas``: register, check and list the event schemas in the schema registry.

The group is mounted into the ``f2p`` CLI by the entry point; it also runs on its own with
``python -m schemas.cli``. The registry is found like every other client finds its cluster:
``--registry-url`` > ``F2P_REGISTRY_URL`` > the running embedded stack's ``state.json``
(the full Confluent-compatible base URL, e.g. ``http://127.0.0.1:18081/apis/ccompat/v7``).

The subjects are those of ``infra/topics.toml``: ``<topic>-value`` for each topic with a
``value_schema`` (``--suffix`` appends to every topic name, as ``f2p topics apply --suffix``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from f2p_errors import ConfigError
from schemas import catalog
from schemas.codec import DEFAULT_COMPATIBILITY
from schemas.exceptions import SchemaIncompatible
from schemas.review import review_against
from schemas.topics import subject_for

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
    show_envvar=True,
    help="Schema registry base URL (Confluent-compatible API); default: the embedded stack's.",
)
suffix_option = click.option(
    "--suffix", default="", help="Append to every topic name (as `f2p topics apply --suffix`)."
)


def _client(registry_url: str | None) -> SchemaRegistryClient:
    """A client for ``registry_url``, or for the running embedded stack's registry."""
    from connectors.registry import registry_client
    from connectors.settings import load_settings

    auth = os.environ.get("F2P_REGISTRY_BASIC_AUTH") or None
    if registry_url:
        return registry_client(registry_url, auth)
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(
            "no schema registry: pass --registry-url, set F2P_REGISTRY_URL, or start the "
            f"embedded stack with `f2p stack up` ({exc})"
        ) from exc
    return registry_client(settings.registry_url, settings.registry_basic_auth)


def _subjects(suffix: str) -> dict[str, str]:
    """``{topic: record}`` of every project topic (``infra/topics.toml``)."""
    from connectors.registry import project_subjects
    from infra.topics import load_topic_specs

    return project_subjects(load_topic_specs(suffix=suffix))


def _registry_error(exc: SchemaRegistryError) -> click.ClickException:
    return click.ClickException(f"schema registry: {exc.error_message} ({exc.http_status_code})")


@click.group(name="schemas")
def schemas() -> None:
    """Register, check and list the Avro event schemas in the schema registry."""


@schemas.command("register")
@registry_url_option
@suffix_option
@click.option(
    "--compatibility",
    type=click.Choice(COMPATIBILITY_LEVELS, case_sensitive=False),
    default=DEFAULT_COMPATIBILITY,
    show_default=True,
    help="Compatibility level set on every subject before registering.",
)
def register_cmd(registry_url: str | None, suffix: str, compatibility: str) -> None:
    """Register the current schemas under the value subject of every topic in topics.toml."""
    from connectors.registry import register_project_schemas
    from infra.topics import load_topic_specs

    subjects = _subjects(suffix)
    with _client(registry_url) as registry:
        try:
            ids = register_project_schemas(
                registry, load_topic_specs(suffix=suffix), compatibility=compatibility.upper()
            )
        except SchemaIncompatible as exc:
            raise click.ClickException(str(exc)) from exc
        except SchemaRegistryError as exc:
            raise _registry_error(exc) from exc
    width = max(len(s) for s in ids)
    for subject, schema_id in ids.items():
        record = subjects[subject.removesuffix("-value")]
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


def _registered_versions(registry: SchemaRegistryClient, subject: str) -> list[dict[str, Any]]:
    """Every schema registered under ``subject``, oldest first; [] when it does not exist."""
    try:
        versions = registry.get_versions(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            return []
        raise
    out = []
    for version in versions:
        registered = registry.get_version(subject, version)
        if registered.schema is not None and registered.schema.schema_str:
            out.append(json.loads(registered.schema.schema_str))
    return out


@schemas.command("check")
@registry_url_option
@suffix_option
@click.argument("avsc", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="Check against this topic's subject instead of the topics of the record in topics.toml.",
)
def check_cmd(
    registry_url: str | None, suffix: str, avsc: tuple[Path, ...], topics: tuple[str, ...]
) -> None:
    """Check schemas against what is registered, as registering them would, and more.

    AVSC are .avsc files (default: the current schemas of this package). For every subject that
    carries the record: (1) the registry's compatibility verdict against every registered
    version (a subject with nothing registered passes); (2) the subject's level, which must be
    FULL_TRANSITIVE; (3) the review rules the registry does not enforce (changed defaults,
    removed or reordered enum symbols, changed logical types, missing docs), against every
    registered version and every version in schemas/avro/history. Exits 1 on any problem.
    """
    paths = list(avsc) or [catalog.schema_path(name) for name in catalog.RECORD_NAMES]
    by_record: dict[str, list[str]] = {}
    for topic, record in _subjects(suffix).items():
        by_record.setdefault(record, []).append(topic)
    problems = 0
    with _client(registry_url) as registry:
        try:
            for path in paths:
                problems += _check_one(registry, path, topics or by_record.get(_short(path), []))
        except SchemaRegistryError as exc:
            raise _registry_error(exc) from exc
    if problems:
        raise click.ClickException(f"{problems} problem(s): see the lines above")


def _short(path: Path) -> str:
    return catalog.short_name(_record_of(path)[0])


def _check_one(registry: SchemaRegistryClient, path: Path, topics: list[str] | tuple) -> int:
    """Check one .avsc against the subjects of ``topics``; print and count the problems."""
    full, text = _record_of(path)
    candidate = json.loads(text)
    history = [catalog.load_history(full, version) for version, _ in catalog.history_versions(full)]
    problems = 0
    for topic in topics:
        subject = subject_for(topic)
        registered = _registered_versions(registry, subject)
        ok = True
        if registered:
            ok = registry.test_compatibility_all_versions(subject, Schema(text, "AVRO"))
            level = registry.get_compatibility(subject)
            if level != DEFAULT_COMPATIBILITY:
                problems += 1
                click.echo(f"LEVEL         {subject}  is {level}, must be {DEFAULT_COMPATIBILITY}")
        problems += not ok
        click.echo(f"{'compatible' if ok else 'INCOMPATIBLE':<12}  {subject}  {path}")
        for violation in review_against(candidate, [*registered, *history]):
            problems += 1
            click.echo(f"REVIEW        {subject}  {violation}")
    if not topics:  # a record no topic carries: the review rules against history still apply
        for violation in review_against(candidate, history):
            problems += 1
            click.echo(f"REVIEW        {full}  {violation}")
    return problems


@schemas.command("list")
@registry_url_option
@click.option("--all", "show_all", is_flag=True, help="List every subject, not only f2p topics.")
def list_cmd(registry_url: str | None, show_all: bool) -> None:
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
