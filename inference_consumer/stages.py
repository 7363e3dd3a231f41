"""The worker's pipeline stages, each on its own threads, none touching the Kafka clients.

    prefetch pool:  decode Avro → validate → deadline → fetch face from S3 → decode image
                    (bounded: decode budget in bytes, scaled down to the condition area)
    engine thread:  RequestBatcher → deadline again → engine.generate(batch)
    output pool:    encode (WebP by default) → upload to a deterministic S3 key → OK result

Every stage ends an item either by passing it on or by emitting its ``Outcome`` (``emit``
encodes it and hands it to the loop). Poison input becomes a FAILED result or a dead letter at
once; transient failures are retried in place with backoff, then handed to the retry topic; an
unexpected exception anywhere becomes a retry, never a lost message or a dead thread.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from f2p_errors import F2PError, InvalidInput
from inference_consumer.batcher import RequestBatcher
from inference_consumer.config import WorkerConfig
from inference_consumer.dead_letters import ClaimCheck, build_dead_letter
from inference_consumer.engines.base import Engine, EngineOutput, EngineRequest, GenerationParams
from inference_consumer.engines.exceptions import EngineInputError
from inference_consumer.memory import DecodeBudget, HeldBytes, image_bytes
from inference_consumer.metrics import WorkerMetrics
from inference_consumer.work import Outcome, OutcomeKind, WorkItem
from schemas.codec import AvroCodec, UndecodableMessage
from schemas.images import decode_face_image
from schemas.records import (
    FaceImageRef,
    GenerationRequest,
    GenerationResult,
    ImageFormat,
    InlineImage,
    ModelRef,
    ResultError,
    ResultImage,
    ResultStatus,
    StageTimings,
)
from schemas.validation import (
    RequestLimits,
    check_face_key_in_tenant_prefix,
    validate_identity,
    validate_request,
)

log = logging.getLogger(__name__)

Emit = Callable[[Outcome], None]

_PIL_FORMATS = {ImageFormat.WEBP: "WEBP", ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG"}
_CONTENT_TYPES = {
    ImageFormat.WEBP: "image/webp",
    ImageFormat.PNG: "image/png",
    ImageFormat.JPEG: "image/jpeg",
}


class TransientFailure(F2PError):
    """Retrying later may help (S3 or registry unreachable, throttled, 5xx)."""


class PermanentFailure(F2PError):
    """This request can never succeed; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def classify_s3_error(exc: Exception, what: str) -> Exception:
    """Map a botocore error to TransientFailure or PermanentFailure."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return PermanentFailure("FACE_NOT_FOUND", f"{what}: object does not exist")
        if status in (401, 403):
            return PermanentFailure("FACE_ACCESS_DENIED", f"{what}: access denied ({code})")
        return TransientFailure(f"{what}: S3 error {code or status}")
    return TransientFailure(f"{what}: {type(exc).__name__}: {exc}")


def with_retries(config: WorkerConfig, what: str, call: Callable[[], Any]) -> Any:
    """Run ``call``, retrying TransientFailure in place with exponential backoff."""
    policy = config.retry
    for attempt in range(1, policy.in_place_attempts + 1):
        try:
            return call()
        except TransientFailure as exc:
            if attempt == policy.in_place_attempts:
                raise
            delay = policy.in_place_backoff_s * 2 ** (attempt - 1)
            log.warning("%s failed (%s); retrying in %.2f s", what, str(exc)[:300], delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class StageContext:
    """What every stage needs; built once by the worker."""

    config: WorkerConfig
    codec: AvroCodec
    s3: Any
    results_bucket: str
    engine: Engine
    limits: RequestLimits
    metrics: WorkerMetrics
    emit: Emit
    is_current: Callable[[WorkItem], bool]
    decode_budget: DecodeBudget
    held: HeldBytes
    # Faces are kept at most this many pixels (the engine's condition area): the model never
    # sees more, and a legal 4096² face would otherwise be held at 64 MiB.
    face_area: int = 1024 * 1024

    def claim_check(self, key: str, body: bytes) -> str:
        """Store an oversize dead-lettered original; its URI (for ``build_dead_letter``)."""
        self.s3.put_object(Bucket=self.results_bucket, Key=key, Body=body)
        return f"s3://{self.results_bucket}/{key}"


# -- outcomes -------------------------------------------------------------------------------------


def result_outcome(
    ctx: StageContext,
    item: WorkItem,
    status: ResultStatus,
    *,
    images: tuple[ResultImage, ...] = (),
    error: ResultError | None = None,
) -> Outcome:
    """A GenerationResult for ``item``, stamped with timings, worker and model."""
    request = item.request
    assert request is not None
    now = datetime.now(UTC)
    t = item.timings
    total_ms = max(0, int((now - request.submitted_at).total_seconds() * 1000))
    info = ctx.engine.model_info
    result = GenerationResult(
        request_id=request.request_id,
        tenant_id=request.tenant_id,
        status=status,
        images=images,
        error=error,
        timings=StageTimings(
            queued_ms=int(t.get("queued", 0)),
            fetch_ms=int(t.get("fetch", 0)),
            engine_ms=int(t.get("engine", 0)),
            encode_ms=int(t.get("encode", 0)),
            upload_ms=int(t.get("upload", 0)),
            total_ms=total_ms,
            # Per image from the engine; the schema counts this request's images.
            transformer_evaluations=item.transformer_evaluations * len(images),
            steps_executed=item.steps_executed,
        ),
        worker_id=ctx.config.worker_id,
        model=ModelRef(
            name=info.name, revision=info.revision, lora=info.lora or None, preset=item.preset
        ),
        attempt=item.attempt,
        submitted_at=request.submitted_at,
        completed_at=now,
        attributes=request.attributes,
    )
    return Outcome(item=item, kind=OutcomeKind.RESULT, result=result)


def failed_outcome(
    ctx: StageContext, item: WorkItem, code: str, message: str, *, dead_letter: bool = False
) -> Outcome:
    """FAILED result when the request is known; a dead letter when it is not even decodable
    (or ``dead_letter``: its identity is invalid, so no result can be keyed by it)."""
    ctx.metrics.errors.labels(reason=code).inc()
    log.warning("request failed: %s: %s", code, message[:500], extra={**item.where(), "code": code})
    if dead_letter or item.request_id is None:
        return dead_letter_outcome(item, code, message, claim_check=ctx.claim_check)
    return result_outcome(
        ctx, item, ResultStatus.FAILED, error=ResultError(code=code, message=message[:1000])
    )


def dead_letter_outcome(
    item: WorkItem, code: str, message: str, *, claim_check: ClaimCheck | None = None
) -> Outcome:
    letter = build_dead_letter(item, code, message, claim_check=claim_check)
    return Outcome(item=item, kind=OutcomeKind.DEAD_LETTER, dead_letter=letter, reason=code)


def retry_outcome(ctx: StageContext, item: WorkItem, reason: str) -> Outcome:
    """Send to the retry topic, or to the DLQ when the attempts are used up."""
    ctx.metrics.errors.labels(reason="TRANSIENT").inc()
    if item.attempt >= ctx.config.retry.max_attempts:
        message = f"gave up after {item.attempt} attempts; last error: {reason}"
        return dead_letter_outcome(item, "RETRIES_EXHAUSTED", message, claim_check=ctx.claim_check)
    log.warning("transient failure, handing to retry topic: %s", reason[:300], extra=item.where())
    delay = ctx.config.retry.retry_delay_s(item.attempt)
    return Outcome(
        item=item,
        kind=OutcomeKind.RETRY,
        retry_delay_s=delay,
        next_attempt=item.attempt + 1,
        reason=reason,
    )


def emit_safely(ctx: StageContext, item: WorkItem, make: Callable[[], Outcome]) -> None:
    """Emit ``make()`` on an error path, where a second failure must not kill the thread.

    If even that fails (a bug), the message stays in flight: the worker's health check then
    reports no progress and its replacement redoes the message — never a silent loss.
    """
    try:
        ctx.emit(make())
    except Exception:
        log.exception("cannot end the message; it stays in flight", extra=item.where())


# -- stage 1: prefetch ----------------------------------------------------------------------------


def prefetch(ctx: StageContext, item: WorkItem) -> WorkItem | None:
    """Decode, validate and fetch the face of ``item``; None when an outcome was emitted."""
    try:
        return _prefetch(ctx, item)
    except UndecodableMessage as exc:
        ctx.emit(failed_outcome(ctx, item, exc.code, str(exc)))
    except InvalidInput as exc:
        # A request whose identity is invalid cannot get a result keyed by it: dead letter.
        ctx.emit(failed_outcome(ctx, item, exc.code, str(exc)))
    except PermanentFailure as exc:
        ctx.emit(failed_outcome(ctx, item, exc.code, str(exc)))
    except TransientFailure as exc:
        ctx.emit(retry_outcome(ctx, item, str(exc)))
    except Exception as exc:  # a bug or an unknown failure: retry, never kill the worker
        log.exception("unexpected prefetch failure", extra=item.where())
        why = f"{type(exc).__name__}: {exc}"
        emit_safely(ctx, item, lambda: retry_outcome(ctx, item, why))
    return None


def _prefetch(ctx: StageContext, item: WorkItem) -> WorkItem | None:
    started = time.perf_counter()
    try:
        record = ctx.codec.decode(
            item.topic,
            item.value,
            partition=item.partition,
            offset=item.offset,
            expect=GenerationRequest,
        )
    except UndecodableMessage:
        raise
    except Exception as exc:  # registry unreachable: the message may be fine
        raise TransientFailure(f"decoding failed: {exc}") from exc
    assert isinstance(record, GenerationRequest)
    item.request = record
    validate_identity(record, ctx.limits)
    item.request_id = record.request_id  # from here on the request can be answered by id
    validate_request(record, ctx.limits)
    if _expired(record):
        ctx.emit(expired_outcome(ctx, item))
        return None
    face_bytes = _face_bytes(ctx, record)
    face = decode_face_image(
        face_bytes,
        max_bytes=ctx.limits.max_face_image_bytes,
        min_side=ctx.limits.min_face_side,
        max_area=ctx.face_area,
        reserve=ctx.decode_budget.reserve,
    )
    item.face = face
    item.reserved_bytes = image_bytes(face)
    ctx.held.add(item.reserved_bytes)
    item.timings["fetch"] = (time.perf_counter() - started) * 1000
    return item


def release_face(ctx: StageContext, item: WorkItem) -> None:
    """Drop the decoded face and give its bytes back to the held budget."""
    item.face = None
    if item.reserved_bytes:
        ctx.held.release(item.reserved_bytes)
        item.reserved_bytes = 0


def _face_bytes(ctx: StageContext, request: GenerationRequest) -> bytes:
    face = request.face
    if isinstance(face, InlineImage):
        return face.data
    if not isinstance(face, FaceImageRef):
        raise InvalidInput("face", "no face image in the request", code="MISSING_IMAGE")
    check_face_key_in_tenant_prefix(face, request.tenant_id)

    limit = ctx.limits.max_face_image_bytes

    def get() -> bytes:
        try:
            response = ctx.s3.get_object(Bucket=face.bucket, Key=face.key)
            size = response.get("ContentLength") or 0
            if size > limit:  # whatever size_bytes claimed: do not download it at all
                response["Body"].close()
                raise PermanentFailure(
                    "IMAGE_TOO_LARGE", f"face object is {size} bytes, limit is {limit}"
                )
            return response["Body"].read(limit + 1)
        except (ClientError, BotoCoreError) as exc:
            raise classify_s3_error(exc, f"s3://{face.bucket}/{face.key}") from exc

    data = with_retries(ctx.config, "face fetch", get)
    if face.sha256 and hashlib.sha256(data).hexdigest() != face.sha256:
        raise PermanentFailure("FACE_CHECKSUM_MISMATCH", "face object does not match its sha256")
    return data


def _expired(request: GenerationRequest) -> bool:
    return request.deadline is not None and request.deadline <= datetime.now(UTC)


def expired_outcome(ctx: StageContext, item: WorkItem) -> Outcome:
    ctx.metrics.errors.labels(reason="DEADLINE_EXCEEDED").inc()
    error = ResultError(code="DEADLINE_EXCEEDED", message="the deadline passed before generation")
    return result_outcome(ctx, item, ResultStatus.EXPIRED, error=error)


# -- stage 2: engine ------------------------------------------------------------------------------


def engine_params(request: GenerationRequest) -> GenerationParams:
    p = request.params
    return GenerationParams(
        seed=p.seed,
        steps=p.steps,
        true_cfg_scale=p.true_cfg_scale,
        width=p.width,
        height=p.height,
        num_images=p.num_images,
        lora_scale=p.lora_scale,
        preset=p.preset,
    )


def run_engine_batch(ctx: StageContext, batch: list[WorkItem], outputs: ThreadPoolExecutor) -> None:
    """Run one batch through the engine (on the engine thread) and queue its outputs."""
    live = []
    for item in batch:
        if not ctx.is_current(item):
            release_face(ctx, item)
            continue  # its partition was revoked or the transaction aborted meanwhile
        assert item.request is not None
        if _expired(item.request):
            ctx.emit(expired_outcome(ctx, item))
            continue
        waited_s = time.monotonic() - item.received_mono - item.timings.get("fetch", 0) / 1000
        item.timings["queued"] = max(0.0, waited_s * 1000)
        ctx.metrics.queue_wait_seconds.observe(max(0.0, waited_s))
        live.append(item)
    if not live:
        return
    for item, output in _generate(ctx, live):
        outputs.submit(_finish, ctx, item, output)


def _generate(ctx: StageContext, items: list[WorkItem]) -> list[tuple[WorkItem, EngineOutput]]:
    requests = [
        EngineRequest(
            request_id=i.request.request_id,
            face=i.face,
            prompt=i.request.prompt,
            negative_prompt=i.request.negative_prompt,
            params=engine_params(i.request),
        )
        for i in items
        if i.request is not None and i.face is not None
    ]
    started = time.perf_counter()
    try:
        results = ctx.engine.generate(requests)
    except EngineInputError as exc:
        if len(items) > 1:  # find the culprit: the others deserve their images
            return [pair for item in items for pair in _generate(ctx, [item])]
        ctx.emit(failed_outcome(ctx, items[0], exc.code, str(exc)))
        return []
    except Exception as exc:  # transient engine errors and engine bugs alike: retry later
        if len(items) > 1:
            # One request may have broken the batch (or made it too big for the device): each
            # gets its own call, so the others are not retried, or dead-lettered, with it.
            log.warning(
                "engine failed on a batch of %d (%s); one by one", len(items), str(exc)[:300]
            )
            return [pair for item in items for pair in _generate(ctx, [item])]
        log.exception("engine failed", extra=items[0].where())
        ctx.emit(retry_outcome(ctx, items[0], f"engine: {type(exc).__name__}: {exc}"))
        return []
    elapsed = time.perf_counter() - started
    ctx.metrics.engine_seconds.observe(elapsed)
    ctx.metrics.batch_size.observe(len(items))
    for item, output in zip(items, results, strict=True):
        item.timings["engine"] = elapsed * 1000
        item.batch_size = len(items)
        item.transformer_evaluations = output.transformer_evaluations
        item.steps_executed = output.steps_executed
        item.preset = output.preset
        release_face(ctx, item)  # the images are made: the face is not needed any more
    return list(zip(items, results, strict=True))


# -- stage 3: output ------------------------------------------------------------------------------


def result_key(request: GenerationRequest, index: int, fmt: ImageFormat) -> str:
    """Deterministic: a redo of the same request overwrites the same objects."""
    return f"tenants/{request.tenant_id}/results/{request.request_id}/{index}.{fmt.value.lower()}"


def _finish(ctx: StageContext, item: WorkItem, output: EngineOutput) -> None:
    try:
        ctx.emit(encode_and_upload(ctx, item, output))
    except Exception as exc:
        if not isinstance(exc, TransientFailure):
            log.exception("unexpected output failure", extra=item.where())
        why = str(exc) if isinstance(exc, TransientFailure) else f"{type(exc).__name__}: {exc}"
        emit_safely(ctx, item, lambda: retry_outcome(ctx, item, why))


def encode_and_upload(ctx: StageContext, item: WorkItem, output: EngineOutput) -> Outcome:
    """Encode every image of ``output``, upload them, and return the OK result outcome."""
    request = item.request
    assert request is not None
    fmt = request.params.output_format
    images = []
    encode_s = upload_s = 0.0
    for index, image in enumerate(output.images):
        started = time.perf_counter()
        buffer = io.BytesIO()
        image.save(buffer, format=_PIL_FORMATS[fmt], quality=request.params.output_quality)
        body = buffer.getvalue()
        encode_s += time.perf_counter() - started
        key = result_key(request, index, fmt)
        started = time.perf_counter()

        def put(key: str = key, body: bytes = body) -> None:
            try:
                ctx.s3.put_object(
                    Bucket=ctx.results_bucket, Key=key, Body=body, ContentType=_CONTENT_TYPES[fmt]
                )
            except (ClientError, BotoCoreError) as exc:
                raise TransientFailure(f"upload of {key}: {exc}") from exc

        with_retries(ctx.config, "result upload", put)
        upload_s += time.perf_counter() - started
        images.append(
            ResultImage(
                uri=f"s3://{ctx.results_bucket}/{key}",
                width=image.width,
                height=image.height,
                format=fmt,
                size_bytes=len(body),
                sha256=hashlib.sha256(body).hexdigest(),
            )
        )
    item.timings["encode"] = encode_s * 1000
    item.timings["upload"] = upload_s * 1000
    return result_outcome(ctx, item, ResultStatus.OK, images=tuple(images))


class EngineLoop:
    """The engine thread: takes batches from the batcher until stopped."""

    def __init__(self, ctx: StageContext, batcher: RequestBatcher) -> None:
        self.ctx = ctx
        self.batcher = batcher
        self.outputs = ThreadPoolExecutor(ctx.config.upload_threads, thread_name_prefix="output")
        self._stopping = False
        # Monotonic time a batch last started or ended: the worker's health looks at it.
        self.last_progress = time.monotonic()

    def run(self) -> None:
        while not self._stopping:
            batch = self.batcher.next_batch(timeout_s=0.2)
            if batch:
                self.last_progress = time.monotonic()
                try:
                    run_engine_batch(self.ctx, batch, self.outputs)
                except Exception:  # never let the engine thread die
                    if self._stopping:
                        # The drain bound expired (the output pool is shut down): hand the batch
                        # back uncommitted for the next owner rather than to the retry topic.
                        log.warning("batch of %d unfinished at shutdown: handed back", len(batch))
                        return
                    log.exception("engine loop error")
                    for item in batch:
                        emit_safely(
                            self.ctx,
                            item,
                            lambda item=item: retry_outcome(self.ctx, item, "engine loop error"),
                        )
                self.last_progress = time.monotonic()

    def stop(self) -> None:
        self._stopping = True
        self.batcher.close()
        self.outputs.shutdown(wait=True, cancel_futures=False)
