"""Claim check: face images go to the object store by content hash, events carry a reference.

Keys are ``tenants/<tenant_id>/inputs/<sha256>.<ext>``: deterministic, under the tenant's prefix
(the worker refuses keys outside it), and the same bytes of one tenant always land on the same
key, so an image submitted twice is stored once. Writes use ``If-None-Match: *``
(:func:`connectors.s3.put_if_absent`), so concurrent publishers of the same image race harmlessly.

Objects are never deleted by the publisher, not even when producing the event fails after the
upload: the object is content-addressed and may already be referenced by another request (a
retry, a duplicate submission, another request with the same face). Unreferenced inputs are left
to a bucket lifecycle rule on ``tenants/*/inputs/`` whose expiry must exceed the request topics'
retention (replays read month-old requests and need their faces).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any

from botocore.exceptions import ClientError

from connectors.s3 import put_if_absent
from schemas.records import FaceImageRef

logger = logging.getLogger(__name__)

#: File extension of each accepted face content type.
EXTENSIONS: dict[str, str] = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def face_key(tenant_id: str, sha256: str, content_type: str) -> str:
    """``tenants/<tenant_id>/inputs/<sha256>.<ext>``; ``bin`` for a type we do not accept."""
    return f"tenants/{tenant_id}/inputs/{sha256}.{EXTENSIONS.get(content_type, 'bin')}"


def face_ref(bucket: str, tenant_id: str, data: bytes, content_type: str) -> FaceImageRef:
    """The reference the event will carry for ``data``; computed locally, nothing uploaded."""
    digest = sha256_hex(data)
    return FaceImageRef(
        bucket=bucket,
        key=face_key(tenant_id, digest, content_type),
        sha256=digest,
        content_type=content_type,
        size_bytes=len(data),
    )


@dataclasses.dataclass
class _Upload:
    """One upload in progress; later callers for the same key wait for it."""

    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    failed: bool = False


class ClaimCheckStore:
    """Stores face images under their reference, at most once per key per process.

    Keys known to exist are remembered (up to ``max_known``, least recently used dropped), so a
    repeated image costs no request at all; concurrent uploads of one key are collapsed into one.
    Images of ``head_first_bytes`` or more are looked up with HEAD before the conditional PUT, so
    a large image that is already stored is not sent again. Thread-safe.
    """

    def __init__(
        self, s3: Any, *, max_known: int = 100_000, head_first_bytes: int = 1024 * 1024
    ) -> None:
        self._s3 = s3
        self._max_known = max_known
        self._head_first_bytes = head_first_bytes
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._in_flight: dict[tuple[str, str], _Upload] = {}
        self._lock = threading.Lock()

    def is_known(self, ref: FaceImageRef) -> bool:
        """True when this store has seen ``ref`` stored (no request made)."""
        with self._lock:
            return (ref.bucket, ref.key) in self._known

    def store(self, ref: FaceImageRef, data: bytes) -> bool:
        """Make sure ``data`` is stored under ``ref``; True when this call wrote the object.

        Raises the S3 client's error when the object could not be written (after the client's
        own retries); a later call tries again.
        """
        slot = (ref.bucket, ref.key)
        while True:
            with self._lock:
                if slot in self._known:
                    self._known.move_to_end(slot)
                    return False
                upload = self._in_flight.get(slot)
                owner = upload is None
                if owner:
                    upload = self._in_flight[slot] = _Upload()
            assert upload is not None
            if not owner:
                upload.done.wait()
                continue  # stored now (known), or failed: then this caller tries itself
            try:
                created = self._write(ref, data)
            except BaseException:
                upload.failed = True
                raise
            else:
                self._remember(slot)
                return created
            finally:
                with self._lock:
                    del self._in_flight[slot]
                upload.done.set()

    def _write(self, ref: FaceImageRef, data: bytes) -> bool:
        if len(data) >= self._head_first_bytes and self._exists(ref):
            return False
        created = put_if_absent(
            self._s3, ref.bucket, ref.key, data,
            content_type=ref.content_type, Metadata={"sha256": ref.sha256},
        )  # fmt: skip
        logger.debug("face %s %s", "stored" if created else "already stored", ref.key)
        return created

    def _exists(self, ref: FaceImageRef) -> bool:
        try:
            self._s3.head_object(Bucket=ref.bucket, Key=ref.key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    def _remember(self, slot: tuple[str, str]) -> None:
        with self._lock:
            self._known[slot] = None
            self._known.move_to_end(slot)
            while len(self._known) > self._max_known:
                self._known.popitem(last=False)
