"""The schema registry client (Confluent API; Apicurio's ccompat endpoint on the embedded stack).

An unreachable registry (connection refused, timeouts, 5xx after the client's own retries)
surfaces as :class:`RegistryUnavailable`, one line naming the registry URL, instead of the HTTP
library's exception and its 55-line traceback. It is a ``ConnectionError`` too, so handlers
that retry ``OSError`` as transient keep doing so.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from connectors.settings import Settings
from f2p_errors import F2PError

try:  # the HTTP library confluent-kafka uses (httpx2 when installed, else httpx)
    from confluent_kafka.schema_registry.common._httpx_compat import httpx as _httpx
except ImportError:  # pragma: no cover - older confluent-kafka
    import httpx as _httpx


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


def make_registry_client(settings: Settings) -> SchemaRegistryClient:
    """A caching registry client; schemas are fetched once per id and process."""
    config = {"url": settings.registry_url}
    if settings.registry_basic_auth:
        config["basic.auth.user.info"] = settings.registry_basic_auth
    return GuardedRegistryClient(config)
