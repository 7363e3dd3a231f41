"""The publisher SDK upstream systems use to submit generation requests.

::

    with Publisher(load_settings()) as publisher:
        future = publisher.submit(tenant_id="acme", prompt="studio photo, full body",
                                  face=open("face.png", "rb").read(), steps=8)
        report = future.result()          # DeliveryReport(request_id, topic, partition, offset)

A request goes through two phases:

1. :meth:`Publisher.prepare` (synchronous, no side effect): build the record, validate it
   (``schemas.validation``; the error names the field and the bound), decode the face image
   (``schemas.images.decode_face_image``), compute its claim-check reference and encode the Avro
   event. Anything wrong raises ``InvalidInput`` here, so a rejected request leaves no S3 object
   and no message behind.
2. :meth:`Publisher.send` (asynchronous): upload the face (claim check, once per content hash)
   on a small thread pool, then produce the event keyed by ``request_id`` with the idempotent
   producer. The returned future resolves from the delivery callback.

:meth:`Publisher.submit` is both in one call. A produce that fails after its upload leaves the
object in place on purpose: see ``connectors.claim_check``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from opentelemetry.trace import SpanKind

from connectors import tracing
from connectors.claim_check import ClaimCheckStore, face_ref, sha256_hex
from connectors.control import send_cancel
from connectors.kafka import located, make_producer
from connectors.registry import make_registry_client
from connectors.s3 import describe_s3_error, make_s3_client
from connectors.settings import Settings
from f2p_errors import F2PError, InvalidInput
from schemas.codec import AvroCodec
from schemas.control_records import ControlCommand
from schemas.images import ALLOWED_CONTENT_TYPES, decode_face_image, sniff_content_type
from schemas.records import FaceImageRef, GenerationRequest, InlineImage, Lane
from schemas.validation import RequestLimits, validate_request

logger = logging.getLogger(__name__)

DEFAULT_LIMITS = RequestLimits()


class PublishError(F2PError):
    """A validated request could not be published; ``code`` says why (machine-readable)."""

    def __init__(self, message: str, *, code: str, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable


class KafkaUnavailable(PublishError):
    """No broker answered a metadata request in time: nothing can be delivered."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="KAFKA_UNAVAILABLE", retriable=True)


class TopicMissing(PublishError):
    """A lane topic does not exist on the cluster (auto-creation is off)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="UNKNOWN_TOPIC")


class PublisherClosed(PublishError):
    """``send`` was called on a closed publisher."""

    def __init__(self) -> None:
        super().__init__("the publisher is closed", code="PUBLISHER_CLOSED")


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """Where a request landed; ``face_uploaded`` is True when this request stored a new object."""

    request_id: str
    topic: str
    partition: int
    offset: int
    face_uploaded: bool = False


@dataclasses.dataclass(frozen=True)
class PreparedRequest:
    """A validated, encoded request ready to send; ``face_bytes`` still to be uploaded or None."""

    request: GenerationRequest
    topic: str
    value: bytes
    face_bytes: bytes | None = dataclasses.field(default=None, repr=False)


def lane_topic(settings: Settings, lane: Lane) -> str:
    """The request topic of a lane."""
    if lane is Lane.INTERACTIVE:
        return settings.topics.requests_interactive
    return settings.topics.requests_batch


class RateLimiter:
    """Paces calls to at most ``rate`` per second (None: unlimited); not thread-safe."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._next = time.monotonic()

    def acquire(self) -> None:
        """Block until the next call is allowed."""
        if not self._interval:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + self._interval


class Publisher:
    """Validates, claim-checks and produces ``GenerationRequest`` events; a context manager.

    ``codec``, ``s3`` and ``producer`` default to clients built from ``settings``; the codec
    auto-registers schemas only on the embedded stack. ``inline_small_images`` sends images of
    at most ``limits.max_inline_image_bytes`` inside the event instead of uploading them.
    ``max_in_flight`` bounds requests sent but not yet delivered: ``send`` blocks beyond it.
    Thread-safe: ``submit`` may be called from several threads.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        codec: AvroCodec | None = None,
        limits: RequestLimits = DEFAULT_LIMITS,
        s3: Any = None,
        producer: Producer | None = None,
        inline_small_images: bool = False,
        upload_workers: int = 16,
        max_in_flight: int = 10_000,
    ) -> None:
        self._settings = settings
        self._limits = limits
        self._inline_small_images = inline_small_images
        self._codec = codec or AvroCodec(
            make_registry_client(settings), auto_register=settings.embedded
        )
        self._claims = ClaimCheckStore(
            s3 if s3 is not None else make_s3_client(settings, max_pool_connections=upload_workers)
        )
        self._producer = producer or make_producer(settings, client_id="f2p-publisher")
        self._uploads = ThreadPoolExecutor(upload_workers, thread_name_prefix="f2p-claim-check")
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._idle = threading.Condition()
        self._pending = 0
        self._closing = False
        self._stopped = threading.Event()
        self._decoded: OrderedDict[str, None] = OrderedDict()  # sha256 of faces that decoded
        self._decoded_lock = threading.Lock()
        self._poller = threading.Thread(target=self._poll_loop, name="f2p-publisher-poll")
        self._poller.daemon = True
        self._poller.start()

    def cancel(self, request_id: str, *, reason: str | None = None) -> ControlCommand:
        """Ask for ``request_id`` to be cancelled (``f2p.control.v1``): still queued, it ends
        CANCELLED without a GPU; running alone, it stops between denoising steps; already
        answered, its result stands. Blocks until the command is delivered."""
        return send_cancel(
            self._settings, self._codec, request_id, reason=reason, issued_by="publisher-sdk"
        )

    # -- phase 1: prepare (no side effects) -------------------------------------------------------

    def prepare(
        self,
        request: GenerationRequest | None = None,
        *,
        face: bytes | None = None,
        **fields: Any,
    ) -> PreparedRequest:
        """Build, validate and encode a request; raise ``InvalidInput`` naming the bad field.

        Pass either a complete ``request`` (its face an uploaded ``FaceImageRef`` or an
        ``InlineImage``; or None, with the image as ``face`` bytes), or no request and the
        arguments of ``GenerationRequest.new`` as keywords (``tenant_id``, ``prompt``, ``steps``,
        ``lane``, ...) with the image as ``face`` bytes.
        """
        # Step 1. The record, with a locally computed claim check for face bytes.
        if request is None:
            request = _new_request(fields)
        elif fields:
            raise TypeError(f"prepare() got a request and fields {sorted(fields)}")
        if face is not None:
            if request.face is not None:
                raise TypeError("prepare() got face bytes for a request that has a face")
            request = dataclasses.replace(request, face=self._face_for(request.tenant_id, face))

        # Step 2. Validate the record: ids, tenant, text, parameters, face reference, maps.
        validate_request(request, self._limits)

        # Step 3. Decode the image bytes we have (a FaceImageRef without bytes was uploaded by
        # the caller; the worker decodes it).
        data = face if face is not None else None
        if data is None and isinstance(request.face, InlineImage):
            data = bytes(request.face.data)
        if data is not None:
            self._check_decodes(data)

        # Step 4. Trace context: a "publish" span, child of the caller's current span (or of
        # the context the request already carries); its W3C fields go into the record.
        if tracing.enabled():
            parent = (
                tracing.extract(fields=request.trace_context) if request.trace_context else None
            )
            span = tracing.start(
                "publish", parent, kind=SpanKind.PRODUCER, request_id=request.request_id,
                tenant_id=request.tenant_id,
            )  # fmt: skip
            request = dataclasses.replace(
                request, trace_context={**request.trace_context, **tracing.inject(span)}
            )
            span.end()

        # Step 5. Encode (may register the schema on the embedded stack).
        topic = lane_topic(self._settings, request.lane)
        value = self._codec.encode(topic, request)
        upload = face if isinstance(request.face, FaceImageRef) else None
        return PreparedRequest(request=request, topic=topic, value=value, face_bytes=upload)

    def _face_for(self, tenant_id: str, data: bytes) -> FaceImageRef | InlineImage:
        if not data:
            raise InvalidInput("face", "image is empty", code="MISSING_IMAGE")
        content_type = sniff_content_type(data)
        if content_type not in ALLOWED_CONTENT_TYPES:
            decode_face_image(data)  # raises the precise NOT_AN_IMAGE / UNSUPPORTED_* error
        if self._inline_small_images and len(data) <= self._limits.max_inline_image_bytes:
            return InlineImage(content_type=content_type, data=data)
        return face_ref(self._settings.inputs_bucket, tenant_id, data, content_type)

    def _check_decodes(self, data: bytes) -> None:
        """Decode once per distinct image (remembered by hash; repeated faces are free)."""
        digest = sha256_hex(data)
        with self._decoded_lock:
            if digest in self._decoded:
                return
        decode_face_image(data, max_bytes=self._limits.max_face_image_bytes)
        with self._decoded_lock:
            self._decoded[digest] = None
            if len(self._decoded) > 10_000:
                self._decoded.popitem(last=False)

    # -- before sending ---------------------------------------------------------------------------

    def check_cluster(self, topics: Iterable[str], timeout_s: float = 10.0) -> None:
        """Fail fast, before anything is sent, when Kafka is unreachable or a topic is missing.

        One metadata request per topic, bounded by ``timeout_s``: without it an unreachable
        cluster shows only when the first delivery times out (``delivery.timeout.ms``, 2
        minutes). A separate quiet admin client does it, so the producer logs nothing.
        Raises KafkaUnavailable or TopicMissing naming the bootstrap servers.
        """
        from connectors.kafka import make_admin

        bootstrap = self._settings.bootstrap_servers
        admin = make_admin(self._settings, config={"log_level": 0})
        # The producer connects at creation and would log every refused connection meanwhile;
        # the outcome of this check is the one line worth reading. Restored once it passed.
        librdkafka = logging.getLogger("librdkafka")
        level = librdkafka.level
        librdkafka.setLevel(logging.CRITICAL)
        for topic in dict.fromkeys(topics):
            try:
                metadata = admin.list_topics(topic=topic, timeout=timeout_s)
            except KafkaException as exc:
                raise KafkaUnavailable(
                    f"Kafka at {bootstrap} did not answer a metadata request within "
                    f"{timeout_s:g} s ({exc.args[0].str()}); nothing was sent"
                ) from exc
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                reason = found.error.str() if found is not None and found.error else "absent"
                raise TopicMissing(
                    f"topic {topic} is not available on the cluster at {bootstrap} ({reason}); "
                    f"create it with `f2p topics apply`; nothing was sent"
                )
        librdkafka.setLevel(level)

    # -- phase 2: send (upload, produce, deliver) -------------------------------------------------

    def send(self, prepared: PreparedRequest) -> Future[DeliveryReport]:
        """Upload the face if needed, then produce; the future resolves on delivery."""
        if self._closing:
            raise PublisherClosed()
        self._slots.acquire()
        future: Future[DeliveryReport] = Future()
        future.set_running_or_notify_cancel()  # cannot be cancelled: it is already on its way
        with self._idle:
            self._pending += 1
        future.add_done_callback(self._finished)
        ref = prepared.request.face
        upload = prepared.face_bytes is not None and isinstance(ref, FaceImageRef)
        if upload and not self._claims.is_known(ref):  # type: ignore[arg-type]
            try:
                self._uploads.submit(self._upload_then_produce, prepared, future)
            except RuntimeError:  # the pool was shut down by a concurrent close()
                future.set_exception(PublisherClosed())
        else:
            self._produce(prepared, future, uploaded=False)
        return future

    def submit(
        self,
        request: GenerationRequest | None = None,
        *,
        face: bytes | None = None,
        **fields: Any,
    ) -> Future[DeliveryReport]:
        """``send(prepare(...))``: raises ``InvalidInput`` at once, delivery via the future."""
        return self.send(self.prepare(request, face=face, **fields))

    def _upload_then_produce(self, prepared: PreparedRequest, future: Future) -> None:
        ref = prepared.request.face
        assert isinstance(ref, FaceImageRef) and prepared.face_bytes is not None
        try:
            uploaded = self._claims.store(ref, prepared.face_bytes)
        except Exception as exc:
            endpoint = self._settings.s3_endpoint_url or "AWS S3"
            error = PublishError(
                f"request {prepared.request.request_id} was not sent: uploading its face to "
                f"s3://{ref.bucket}/{ref.key} at {endpoint} failed: {describe_s3_error(exc)}",
                code="UPLOAD_FAILED",
                retriable=True,
            )
            error.__cause__ = exc
            future.set_exception(error)
            return
        self._produce(prepared, future, uploaded=uploaded)

    def _produce(self, prepared: PreparedRequest, future: Future, *, uploaded: bool) -> None:
        request_id = prepared.request.request_id

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                future.set_exception(
                    PublishError(
                        f"request {request_id}: delivery to {prepared.topic} failed: {err.str()}",
                        code=err.name(),
                        retriable=err.retriable(),
                    )
                )
            else:
                future.set_result(DeliveryReport(request_id, *located(msg), uploaded))

        trace = prepared.request.trace_context
        headers: list[tuple[str, str | bytes | None]] = [
            *tracing.headers_of(
                {k: v for k, v in trace.items() if k in (tracing.TRACEPARENT, tracing.TRACESTATE)}
            )
        ]
        while True:
            try:
                self._producer.produce(
                    prepared.topic,
                    value=prepared.value,
                    key=request_id.encode(),
                    headers=headers or None,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve deliveries, then retry
            except KafkaException as exc:
                err = exc.args[0]
                future.set_exception(
                    PublishError(
                        f"request {request_id}: produce to {prepared.topic} failed: {err.str()}",
                        code=err.name(),
                        retriable=err.retriable(),
                    )
                )
                return

    def _finished(self, _future: Future) -> None:
        self._slots.release()
        with self._idle:
            self._pending -= 1
            if not self._pending:
                self._idle.notify_all()

    def _poll_loop(self) -> None:
        """Serve delivery callbacks until closed (the only job of this thread)."""
        while not self._stopped.is_set():
            self._producer.poll(0.1)

    # -- flush and close --------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests sent whose future is not resolved yet."""
        with self._idle:
            return self._pending

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every sent request is delivered or failed; return how many are still
        pending when ``timeout`` runs out (0 on success)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            with self._idle:
                if not self._pending or remaining <= 0:
                    return self._pending
            # Send what lingers at once; the poll thread serves the delivery callbacks. (A
            # blocking flush here would compete with the poll thread for the same events.)
            self._producer.flush(0)
            with self._idle:
                if self._pending:
                    self._idle.wait(min(remaining, 0.05))

    def close(self, timeout: float = 30.0) -> int:
        """Flush, then stop the upload pool and the poll thread; return requests left pending."""
        if self._closing:
            return 0
        self._closing = True
        left = self.flush(timeout)
        self._uploads.shutdown(wait=True)  # uploads still queued run, then produce
        if left:
            left = self.flush(min(timeout, 5.0))
        self._stopped.set()
        self._poller.join()
        if left:
            logger.warning("publisher closed with %d request(s) not delivered", left)
        return left

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _new_request(fields: dict[str, Any]) -> GenerationRequest:
    """``GenerationRequest.new`` from keywords; a missing required field is an InvalidInput."""
    fields = dict(fields)
    for name in ("tenant_id", "prompt"):
        if fields.get(name) is None:
            raise InvalidInput(name, "is required", code="MISSING_FIELD")
    tenant_id, prompt = fields.pop("tenant_id"), fields.pop("prompt")
    return GenerationRequest.new(tenant_id, prompt, None, **fields)
