"""The worker's pipeline stages: what they share and how they end a message.

    prefetch pool:  decode Avro → validate → deadline → fetch face from S3 → decode image
                    (``prefetch.py``: bounded decode budget, scaled to the condition area)
    engine thread:  RequestBatcher → deadline, cancel → engine.generate(batch)
                    (``generation.py``)
    output pool:    encode (WebP by default) → write-once upload → OK result (``upload.py``)

None of them touches the Kafka clients. Every stage ends an item either by passing it on or by
emitting its ``Outcome`` (``emit`` encodes it and hands it to the loop), built here. Poison input
becomes a FAILED result or a dead letter at once; transient failures are retried in place with
backoff, then handed to the retry topic; an unexpected exception anywhere becomes a retry, never
a lost message or a dead thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from connectors.dead_letters import ClaimCheck, build_dead_letter
from f2p_errors import F2PError
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.base import Engine
from inference_consumer.memory import DecodeBudget, HeldBytes
from inference_consumer.metrics import WorkerMetrics
from inference_consumer.work import Outcome, OutcomeKind, WorkItem
from schemas.codec import AvroCodec
from schemas.records import (
    GenerationResult,
    ModelRef,
    ResultError,
    ResultImage,
    ResultStatus,
    StageTimings,
)
from schemas.validation import RequestLimits

log = logging.getLogger(__name__)

Emit = Callable[[Outcome], None]


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
    # Whether a request_id was cancelled (the control topic), and the RUNNING status hook.
    cancelled: Callable[[str | None], bool] = lambda _request_id: False
    running: Callable[[WorkItem], None] = lambda _item: None

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


def cancelled_outcome(ctx: StageContext, item: WorkItem, where: str) -> Outcome:
    """CANCELLED: a cancel command for the request arrived before its result was written."""
    ctx.metrics.errors.labels(reason="CANCELLED").inc()
    log.info("request cancelled %s", where, extra=item.where())
    error = ResultError(code="CANCELLED", message=f"cancelled {where}")
    return result_outcome(ctx, item, ResultStatus.CANCELLED, error=error)


def expired_outcome(ctx: StageContext, item: WorkItem) -> Outcome:
    ctx.metrics.errors.labels(reason="DEADLINE_EXCEEDED").inc()
    error = ResultError(code="DEADLINE_EXCEEDED", message="the deadline passed before generation")
    return result_outcome(ctx, item, ResultStatus.EXPIRED, error=error)
