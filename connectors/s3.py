"""The S3 object store: client factory and the conditional put used for idempotent writes."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from connectors.settings import Settings


def make_s3_client(settings: Settings, *, max_pool_connections: int = 32, **config: Any):
    """A boto3 S3 client.

    Path-style addressing for custom endpoints (SeaweedFS, MinIO: no bucket subdomains on
    loopback); standard retry mode with 3 attempts (the worker adds its own backoff above
    that); short connect timeout so an outage is noticed quickly; a connection pool large
    enough for the prefetch and upload threads.
    """
    botocore_config = Config(
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=2,
        read_timeout=10,
        max_pool_connections=max_pool_connections,
        **config,
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
        config=botocore_config,
    )


def put_if_absent(
    s3: Any, bucket: str, key: str, body: bytes, *, content_type: str, **extra: Any
) -> bool:
    """Write ``body`` unless ``key`` exists (``If-None-Match: *``); True when this call wrote it.

    Deterministic keys plus this conditional put make uploads idempotent: a retry or a second
    worker redoing the same request finds the object and moves on.
    """
    try:
        s3.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*", **extra
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return False
        raise
    return True


def describe_s3_error(exc: BaseException) -> str:
    """One line saying why an S3 call failed: the service's error code and message
    (``SignatureDoesNotMatch: The request signature we calculated ...``) or the connection
    error (``EndpointConnectionError: Could not connect to the endpoint URL ...``)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or f"HTTP {status}"
        return f"{code}: {error.get('Message') or exc}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}".rstrip(": ")
