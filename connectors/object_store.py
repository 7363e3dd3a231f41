"""The worker's object store: put-if-absent, put, head and bounded get, on obstore or boto3.

The worker writes every result image once (``If-None-Match: *``) and reads claim-checked faces:
one or two S3 calls per request, on its hot path. boto3 spends most of a control-plane worker's
CPU there — its per-call machinery (event hooks, endpoint rules, SigV4 in Python) holding the
GIL. Measured on the embedded stack (client CPU per put, 300 puts, one thread, ``benchmarks
s3`` reproduces it): 4 KB objects 1.9-2.3 ms with boto3, 0.2 ms with obstore; 200 KB 2.6-2.8 ms
vs 0.45-0.5 ms. boto3 tuned (checksums off, no parameter validation) was no cheaper, and even a
hand-rolled botocore signer over urllib3 cost ~1 ms. obstore (Rust ``object_store`` + tokio)
signs and sends with the GIL released, so the stage threads do not contend with the poll
thread. boto3 stays where it serves (SDK, admin, tools, tests) and behind ``BotoObjectStore``
as the fallback and the benchmark's comparison (``WorkerConfig.object_store``).

Errors are sorted at this boundary: ``ObjectNotFound`` / ``ObjectAccessDenied`` are answers that
retrying cannot change, any other ``ObjectStoreError`` (connection refused, timeout, 5xx) may
pass. Both stores retry transient failures 3 times in all with backoff before raising.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from connectors.settings import Settings
from f2p_errors import ConfigError, F2PError

if TYPE_CHECKING:  # typing only: obstore is imported when a store is opened
    from obstore.store import ClientConfig, RetryConfig, S3Config

OBJECT_STORES = ("obstore", "boto3")
# Buckets with a live obstore client; a request may name any bucket for its face, so the cache
# is bounded (the least recently used client is dropped).
MAX_BUCKET_CLIENTS = 32


class ObjectStoreError(F2PError):
    """An object store call failed in a way a later attempt may not (outage, timeout, 5xx)."""


class ObjectNotFound(ObjectStoreError):
    """The object (or its bucket) does not exist."""


class ObjectAccessDenied(ObjectStoreError):
    """The credentials may not do this (401/403)."""


class ObjectTooLarge(ObjectStoreError):
    """``get`` found an object larger than the caller's bound; nothing was read."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, limit is {limit}")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head`` tells of a stored object."""

    size: int
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    """The object store calls the worker makes (thread-safe)."""

    def put_if_absent(
        self,
        bucket: str,
        key: str,
        body: bytes,
        *,
        content_type: str,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """Write ``body`` unless ``key`` exists (``If-None-Match: *``); True when this call
        wrote it."""

    def put(self, bucket: str, key: str, body: bytes, *, content_type: str | None = None) -> None:
        """Write ``body`` (overwriting)."""

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """Size and user metadata of ``key``."""

    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """The object's bytes; ObjectTooLarge (without downloading it) above ``max_bytes``."""


def make_object_store(settings: Settings, kind: str = "obstore", **options: Any) -> ObjectStore:
    """The object store named ``kind`` (one of ``OBJECT_STORES``) for ``settings``' S3;
    ``options`` go to the boto3 client's ``Config`` (obstore's are fixed here)."""
    if kind == "obstore":
        return ObstoreObjectStore(settings)
    if kind == "boto3":
        from connectors.s3 import make_s3_client

        return BotoObjectStore(make_s3_client(settings, **options))
    raise ConfigError(f"object store must be one of {', '.join(OBJECT_STORES)}, got {kind!r}")


# -- obstore ---------------------------------------------------------------------------------------


class ObstoreObjectStore:
    """On ``obstore``: one client per bucket (they share no state), created on first use."""

    def __init__(self, settings: Settings) -> None:
        import obstore
        from obstore import exceptions

        self._obstore = obstore
        self._errors = exceptions
        self._settings = settings
        self._stores: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _store(self, bucket: str) -> Any:
        with self._lock:
            store = self._stores.get(bucket)
            if store is not None:
                self._stores.move_to_end(bucket)
                return store
        store = self._new_store(bucket)
        with self._lock:
            store = self._stores.setdefault(bucket, store)
            while len(self._stores) > MAX_BUCKET_CLIENTS:
                self._stores.popitem(last=False)
        return store

    def _new_store(self, bucket: str) -> Any:
        from obstore.store import S3Store

        s = self._settings
        config: S3Config = {"region": s.s3_region}
        if s.s3_access_key and s.s3_secret_key:
            config["access_key_id"] = s.s3_access_key
            config["secret_access_key"] = s.s3_secret_key
        endpoint = s.s3_endpoint_url
        if endpoint:
            # Path-style for custom endpoints (SeaweedFS, MinIO: no bucket subdomains).
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
        # Like connectors.s3.make_s3_client: a short connect timeout so an outage is noticed
        # quickly, 3 attempts in all (the worker adds its own backoff above that), and a whole
        # call bounded (obstore's default is 10 retries over up to 3 minutes).
        client_options: ClientConfig = {"connect_timeout": "2s", "timeout": "30s"}
        if endpoint and endpoint.startswith("http://"):
            client_options["allow_http"] = True
        retry: RetryConfig = {
            "max_retries": 2,
            "retry_timeout": timedelta(seconds=15),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=1),
                "base": 2,
            },
        }
        try:
            return S3Store(bucket, config=config, client_options=client_options, retry_config=retry)
        except Exception as exc:  # a malformed bucket name or setting
            raise ObjectStoreError(f"cannot open bucket {bucket!r}: {exc}") from exc

    def put_if_absent(
        self,
        bucket: str,
        key: str,
        body: bytes,
        *,
        content_type: str,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        # Any attribute other than the standard headers is sent as x-amz-meta-<name>.
        attributes = {**(metadata or {}), "Content-Type": content_type}
        try:
            self._obstore.put(self._store(bucket), key, body, mode="create", attributes=attributes)
        except self._errors.AlreadyExistsError:  # 412 (or 409 while another write is running)
            return False
        except Exception as exc:
            raise self._sorted(exc, bucket, key) from exc
        return True

    def put(self, bucket: str, key: str, body: bytes, *, content_type: str | None = None) -> None:
        attributes = {"Content-Type": content_type} if content_type else None
        try:
            self._obstore.put(self._store(bucket), key, body, attributes=attributes)
        except Exception as exc:
            raise self._sorted(exc, bucket, key) from exc

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            # A GET with "head" is a HEAD request whose answer carries the user metadata
            # (obstore.head returns only size, etag and date).
            result = self._obstore.get(self._store(bucket), key, options={"head": True})
            return ObjectInfo(size=result.meta["size"], metadata=_user_metadata(result.attributes))
        except Exception as exc:
            raise self._sorted(exc, bucket, key) from exc

    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        try:
            result = self._obstore.get(self._store(bucket), key)
            size = result.meta["size"]
            if size > max_bytes:  # the body is streamed: dropping the result reads none of it
                raise ObjectTooLarge(f"s3://{bucket}/{key}", size, max_bytes)
            return bytes(result.bytes())
        except ObjectStoreError:
            raise
        except Exception as exc:
            raise self._sorted(exc, bucket, key) from exc

    def _sorted(self, exc: Exception, bucket: str, key: str) -> ObjectStoreError:
        where = f"s3://{bucket}/{key}"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFound(f"{where}: object does not exist")
        if isinstance(exc, self._errors.PermissionDeniedError | self._errors.UnauthenticatedError):
            return ObjectAccessDenied(f"{where}: access denied ({first})")
        return ObjectStoreError(f"{where}: {type(exc).__name__}: {first}")


def _user_metadata(attributes: dict[str, str]) -> dict[str, str]:
    standard = {
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Type",
        "Cache-Control",
        "Storage-Class",
    }
    return {k: v for k, v in attributes.items() if k not in standard}


# -- boto3 -----------------------------------------------------------------------------------------


class BotoObjectStore:
    """On a boto3 S3 client (``connectors.s3.make_s3_client``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def put_if_absent(
        self,
        bucket: str,
        key: str,
        body: bytes,
        *,
        content_type: str,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        from connectors.s3 import put_if_absent

        extra = {"Metadata": metadata} if metadata else {}
        return self._call(
            bucket,
            key,
            lambda: put_if_absent(
                self.client, bucket, key, body, content_type=content_type, **extra
            ),
        )

    def put(self, bucket: str, key: str, body: bytes, *, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self._call(
            bucket, key, lambda: self.client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        )

    def head(self, bucket: str, key: str) -> ObjectInfo:
        head = self._call(bucket, key, lambda: self.client.head_object(Bucket=bucket, Key=key))
        return ObjectInfo(
            size=int(head["ContentLength"]), metadata=dict(head.get("Metadata") or {})
        )

    def get(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(Bucket=bucket, Key=key)
            size = response.get("ContentLength") or 0
            if size > max_bytes:  # whatever the caller expected: do not download it at all
                response["Body"].close()
                raise ObjectTooLarge(f"s3://{bucket}/{key}", size, max_bytes)
            return response["Body"].read(max_bytes + 1)

        return self._call(bucket, key, read)

    def _call(self, bucket: str, key: str, call: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        from connectors.s3 import describe_s3_error

        try:
            return call()
        except ClientError as exc:
            where = f"s3://{bucket}/{key}"
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
                raise ObjectNotFound(f"{where}: object does not exist") from exc
            if status in (401, 403):
                raise ObjectAccessDenied(f"{where}: access denied ({code})") from exc
            raise ObjectStoreError(f"{where}: {describe_s3_error(exc)}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"s3://{bucket}/{key}: {describe_s3_error(exc)}") from exc
