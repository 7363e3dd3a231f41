"""The schema registry client (Confluent API; Apicurio's ccompat endpoint on the embedded stack)."""

from __future__ import annotations

from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.settings import Settings


def make_registry_client(settings: Settings) -> SchemaRegistryClient:
    """A caching registry client; schemas are fetched once per id and process."""
    config = {"url": settings.registry_url}
    if settings.registry_basic_auth:
        config["basic.auth.user.info"] = settings.registry_basic_auth
    return SchemaRegistryClient(config)
