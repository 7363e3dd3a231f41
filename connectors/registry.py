"""The schema registry client (Confluent API; Apicurio's ccompat endpoint on the embedded stack),
and the registration of every project subject.

Which subjects exist is declared once, in ``infra/topics.toml``: each topic with a
``value_schema`` gets the subject ``<topic>-value`` (TopicNameStrategy) carrying that record.
:func:`register_project_schemas` registers them all with ``FULL_TRANSITIVE`` set *before* the
first version, because Apicurio's global default is ``NONE`` (docs/SCHEMA_EVOLUTION.md). It runs
on ``f2p stack up`` (embedded stack), ``f2p topics apply`` (any cluster) and
``f2p schemas register``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.settings import Settings
from infra.topics import TopicSpec, load_topic_specs
from schemas.codec import DEFAULT_COMPATIBILITY, register_all

logger = logging.getLogger(__name__)


def registry_client(url: str, basic_auth: str | None = None) -> SchemaRegistryClient:
    """A caching registry client for ``url``; schemas are fetched once per id and process."""
    config = {"url": url}
    if basic_auth:
        config["basic.auth.user.info"] = basic_auth
    return SchemaRegistryClient(config)


def make_registry_client(settings: Settings) -> SchemaRegistryClient:
    """The registry client of ``settings``."""
    return registry_client(settings.registry_url, settings.registry_basic_auth)


def project_subjects(specs: Iterable[TopicSpec] | None = None) -> dict[str, str]:
    """``{topic: record name}`` for every topic of ``specs`` (default: ``infra/topics.toml``)
    that carries Avro values."""
    specs = load_topic_specs() if specs is None else specs
    return {s.name: s.value_schema for s in specs if s.value_schema is not None}


def register_project_schemas(
    registry: SchemaRegistryClient,
    specs: Iterable[TopicSpec] | None = None,
    *,
    compatibility: str = DEFAULT_COMPATIBILITY,
) -> dict[str, int]:
    """Register the current schema of every project subject; return ``{subject: schema id}``.

    Idempotent: an unchanged schema keeps its id and version. Raises ``SchemaIncompatible``
    when the registry refuses a schema, and the client's error when the registry is down.
    """
    by_record: dict[str, list[str]] = {}
    for topic, record in project_subjects(specs).items():
        by_record.setdefault(record, []).append(topic)
    ids = register_all(registry, by_record, compatibility)
    logger.info("registered %d subject(s) under %s", len(ids), compatibility)
    return ids


def register_stack_schemas(registry_url: str) -> dict[str, int]:
    """:func:`register_project_schemas` at ``registry_url``: what ``f2p stack up`` runs once the
    registry is ready (its storage is in memory, so every start needs it)."""
    with registry_client(registry_url) as registry:
        return register_project_schemas(registry)
