"""The schema registry client (Confluent API; Apicurio's ccompat endpoint on the embedded stack),
and the registration of every project subject.

Which subjects exist is declared once, in ``infra/topics.toml``: each topic with a
``value_schema`` gets the subject ``<topic>-value`` (TopicNameStrategy) carrying that record.
:func:`register_project_schemas` registers them all with ``FULL_TRANSITIVE`` set *before* the
first version, because Apicurio's global default is ``NONE`` (docs/SCHEMA_EVOLUTION.md). It runs
on ``f2p stack up`` (embedded stack), ``f2p topics apply`` (any cluster) and
``f2p schemas register``.

An unreachable registry (connection refused, timeouts, 5xx after the client's own retries)
surfaces as :class:`RegistryUnavailable`, one line naming the registry URL, instead of the HTTP
library's exception and its 55-line traceback. It is a ``ConnectionError`` too, so handlers
that retry ``OSError`` as transient keep doing so.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from connectors.settings import Settings
from f2p_errors import F2PError
from infra.topics import TopicSpec, load_topic_specs
from schemas.codec import DEFAULT_COMPATIBILITY, register_all

try:  # the HTTP library confluent-kafka uses (httpx2 when installed, else httpx)
    from confluent_kafka.schema_registry.common._httpx_compat import httpx as _httpx
except ImportError:  # pragma: no cover - older confluent-kafka
    import httpx as _httpx  # type: ignore[no-redef]

logger = logging.getLogger(__name__)


class RegistryUnavailable(F2PError, ConnectionError):
    """The schema registry could not be reached or failed (transient; nothing was decided)."""

    code = "REGISTRY_UNAVAILABLE"

    def __init__(self, url: str, cause: BaseException) -> None:
        detail = str(cause).splitlines()[0] if str(cause) else ""
        super().__init__(
            f"schema registry at {url} is unavailable: {type(cause).__name__}: {detail}".rstrip()
        )
        self.url = url


def redacted(url: str) -> str:
    """``url`` without user info (basic-auth credentials), for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _httpx.TransportError | OSError):
        return True
    status = getattr(exc, "http_status_code", None)
    return isinstance(exc, SchemaRegistryError) and isinstance(status, int) and status >= 500


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: GuardedRegistryClient, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if isinstance(exc, F2PError) or not _unavailable(exc):
                raise
            raise RegistryUnavailable(self.display_url, exc) from exc

    return call


class GuardedRegistryClient(SchemaRegistryClient):
    """``SchemaRegistryClient`` whose transport failures raise :class:`RegistryUnavailable`."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.display_url = redacted(str(config.get("url", "?")))


# Every public instance method (each one may call the registry); static ones stay as they are.
for _name, _method in list(vars(SchemaRegistryClient).items()):
    if inspect.isfunction(_method) and not _name.startswith("_") and _name != "close":
        setattr(GuardedRegistryClient, _name, _guarded(_method))


def registry_client(url: str, basic_auth: str | None = None) -> SchemaRegistryClient:
    """A caching registry client for ``url``; schemas are fetched once per id and process."""
    config = {"url": url}
    if basic_auth:
        config["basic.auth.user.info"] = basic_auth
    return GuardedRegistryClient(config)


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
