"""Where every client finds the cluster: one frozen settings object for all connectors.

Resolution order, per value: an explicit override (CLI flag) > an ``F2P_*`` environment variable
> the embedded stack's ``state.json`` (what ``f2p stack status --json`` prints). Against a real
cluster set the variables; locally nothing needs setting after ``f2p stack up``.

Kafka security settings pass through untouched: ``F2P_KAFKA_CONFIG_SASL_MECHANISM=SCRAM-SHA-512``
becomes ``sasl.mechanism`` (the part after ``F2P_KAFKA_CONFIG_``, lower-cased, ``_`` → ``.``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from f2p_errors import ConfigError

KAFKA_PASSTHROUGH_PREFIX = "F2P_KAFKA_CONFIG_"


@dataclass(frozen=True)
class TopicNames:
    """The pipeline's topic names (see ``infra/topics.toml``)."""

    requests_interactive: str = "f2p.requests.interactive"
    requests_batch: str = "f2p.requests.batch"
    results: str = "f2p.results.v1"
    retry: str = "f2p.retry.v1"
    dlq: str = "f2p.dlq.v1"
    dedupe: str = "f2p.dedupe.v1"
    analytics: str = "f2p.analytics.v1"

    def with_suffix(self, suffix: str) -> TopicNames:
        """Every name with ``suffix`` appended, as ``f2p topics apply --suffix`` creates them."""
        return TopicNames(**{k: v + suffix for k, v in self.__dict__.items()})

    @property
    def request_lanes(self) -> tuple[str, str]:
        """Request topics in priority order: interactive first."""
        return (self.requests_interactive, self.requests_batch)


@dataclass(frozen=True)
class Settings:
    """Connection settings shared by every component; build with :func:`load_settings`."""

    bootstrap_servers: str
    registry_url: str
    s3_endpoint_url: str | None
    s3_access_key: str | None
    s3_secret_key: str | None = field(repr=False)
    s3_region: str = "us-east-1"
    inputs_bucket: str = "f2p-inputs"
    results_bucket: str = "f2p-results"
    registry_basic_auth: str | None = field(default=None, repr=False)
    kafka_extra: dict[str, str] = field(default_factory=dict, repr=False)
    topics: TopicNames = field(default_factory=TopicNames)
    # True when the values come from the embedded stack: schemas may then be auto-registered.
    embedded: bool = False

    def with_topics(self, topics: TopicNames) -> Settings:
        return replace(self, topics=topics)


def load_settings(stack_dir: Path | None = None, **overrides: Any) -> Settings:
    """Resolve settings from overrides, ``F2P_*`` variables and the embedded stack's state.

    Raises ConfigError naming what is missing when neither the environment nor a running
    embedded stack provides the Kafka bootstrap servers.
    """
    env = os.environ
    stack = _embedded_stack(stack_dir)
    s3 = stack.get("s3", {})

    def pick(key: str, env_name: str, stack_value: Any = None) -> Any:
        if overrides.get(key) is not None:
            return overrides[key]
        if env.get(env_name):
            return env[env_name]
        return stack_value

    bootstrap = pick("bootstrap_servers", "F2P_BOOTSTRAP_SERVERS", stack.get("bootstrap_servers"))
    if not bootstrap:
        raise ConfigError(
            "F2P_BOOTSTRAP_SERVERS is not set and no embedded stack is running "
            "(start one with `f2p stack up`)"
        )
    registry_url = pick("registry_url", "F2P_REGISTRY_URL", stack.get("registry_url"))
    if not registry_url:
        raise ConfigError("F2P_REGISTRY_URL is not set and the embedded stack has no registry")
    suffix = pick("topic_suffix", "F2P_TOPIC_SUFFIX", "")
    embedded = bootstrap == stack.get("bootstrap_servers")
    return Settings(
        bootstrap_servers=bootstrap,
        registry_url=registry_url,
        s3_endpoint_url=pick("s3_endpoint_url", "F2P_S3_ENDPOINT_URL", s3.get("endpoint_url")),
        s3_access_key=pick("s3_access_key", "F2P_S3_ACCESS_KEY", s3.get("access_key")),
        s3_secret_key=pick("s3_secret_key", "F2P_S3_SECRET_KEY", s3.get("secret_key")),
        s3_region=pick("s3_region", "F2P_S3_REGION", s3.get("region") or "us-east-1"),
        inputs_bucket=pick("inputs_bucket", "F2P_INPUTS_BUCKET", "f2p-inputs"),
        results_bucket=pick("results_bucket", "F2P_RESULTS_BUCKET", "f2p-results"),
        registry_basic_auth=pick("registry_basic_auth", "F2P_REGISTRY_BASIC_AUTH"),
        kafka_extra=_kafka_passthrough(env),
        topics=TopicNames().with_suffix(suffix) if suffix else TopicNames(),
        embedded=embedded,
    )


def _embedded_stack(stack_dir: Path | None) -> dict[str, Any]:
    """The running embedded stack's endpoints, or {} when there is none."""
    from infra.stack.config import load_stack_config
    from infra.stack.launcher import stack_status

    status = stack_status(load_stack_config(stack_dir), probe=False)
    # A cluster with a node down ("degraded") still serves: clients bootstrap from the others.
    state = status["components"]["kafka"].get("state", "")
    if state != "running" and not state.startswith("degraded"):
        return {}
    return status


def _kafka_passthrough(env: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    return {
        name[len(KAFKA_PASSTHROUGH_PREFIX) :].lower().replace("_", "."): value
        for name, value in env.items()
        if name.startswith(KAFKA_PASSTHROUGH_PREFIX)
    }
