"""The worker's object store against the real SeaweedFS: both implementations, same answers."""

from __future__ import annotations

import dataclasses
import hashlib
import socket

import pytest

from connectors.object_store import (
    OBJECT_STORES,
    ObjectAccessDenied,
    ObjectNotFound,
    ObjectStoreError,
    ObjectTooLarge,
    make_object_store,
)
from connectors.s3 import make_s3_client
from f2p_errors import ConfigError

pytestmark = pytest.mark.integration

PREFIX = "tests/object-store/"


@pytest.fixture(params=OBJECT_STORES)
def store(request, stack_settings):
    yield make_object_store(stack_settings, request.param)
    s3 = make_s3_client(stack_settings)
    for bucket in (stack_settings.results_bucket, stack_settings.inputs_bucket):
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX).get("Contents", [])
        for obj in listed:
            s3.delete_object(Bucket=bucket, Key=obj["Key"])


def test_put_if_absent_writes_once_and_keeps_the_metadata(store, stack_settings, unique_name):
    bucket, key = stack_settings.results_bucket, f"{PREFIX}{unique_name('once')}/0.webp"
    first, second = b"first" * 100, b"second" * 100
    digest = hashlib.sha256(first).hexdigest()
    assert store.put_if_absent(
        bucket, key, first, content_type="image/webp", metadata={"sha256": digest}
    )
    assert not store.put_if_absent(
        bucket, key, second, content_type="image/webp", metadata={"sha256": "other"}
    )
    info = store.head(bucket, key)
    assert info.size == len(first)
    assert info.metadata.get("sha256") == digest
    assert store.get(bucket, key, max_bytes=len(first)) == first
    # What boto3 (the SDK, the tools) sees of it is the same object.
    boto = make_s3_client(stack_settings).head_object(Bucket=bucket, Key=key)
    assert boto["Metadata"] == {"sha256": digest}
    assert boto["ContentType"] == "image/webp"


def test_get_refuses_an_object_above_the_bound_and_a_missing_one(
    store, stack_settings, unique_name
):
    bucket, key = stack_settings.inputs_bucket, f"{PREFIX}{unique_name('big')}.png"
    store.put(bucket, key, b"x" * 1000, content_type="image/png")
    with pytest.raises(ObjectTooLarge) as raised:
        store.get(bucket, key, max_bytes=999)
    assert (raised.value.size, raised.value.limit) == (1000, 999)
    with pytest.raises(ObjectNotFound):
        store.get(bucket, key + ".missing", max_bytes=10)
    with pytest.raises(ObjectNotFound):
        store.head(bucket, key + ".missing")


def test_wrong_credentials_are_denied_and_an_outage_is_transient(store, stack_settings):
    kind = "boto3" if type(store).__name__.startswith("Boto") else "obstore"
    wrong = dataclasses.replace(stack_settings, s3_secret_key="not-the-secret")
    with pytest.raises(ObjectAccessDenied):
        make_object_store(wrong, kind).put(stack_settings.results_bucket, PREFIX + "denied", b"x")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = dataclasses.replace(stack_settings, s3_endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ObjectStoreError) as raised:
        make_object_store(down, kind).put(stack_settings.results_bucket, PREFIX + "down", b"x")
    assert not isinstance(raised.value, ObjectNotFound | ObjectAccessDenied)


def test_an_unknown_store_is_a_config_error(stack_settings):
    with pytest.raises(ConfigError, match="object store must be one of"):
        make_object_store(stack_settings, "gcs")
