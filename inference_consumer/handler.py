"""The worker's side of the exactly-once loop: from a polled message to the stages and back.

``handle`` runs on the poll thread and does only cheap, bounded checks there (size, headers,
retry timing); everything that may block — decoding, S3, dead-letter claim checks — runs on the
prefetch pool. Each message ends as exactly one Outcome, emitted from whichever thread decided
it; an exception anywhere becomes a retry or a dead letter, never a lost message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from connectors import tracing
from connectors.eos.records import TP, Completion, MessageRef
from connectors.headers import BadHeader, check_headers
from inference_consumer.batcher import RequestBatcher
from inference_consumer.generation import EngineLoop
from inference_consumer.headers import parse_retry_headers
from inference_consumer.outcomes import OutcomeWriter
from inference_consumer.prefetch import prefetch, release_face
from inference_consumer.stages import StageContext, dead_letter_outcome, emit_safely, retry_outcome
from inference_consumer.work import Outcome, OutcomeKind, WorkItem

log = logging.getLogger(__name__)


class WorkerHandler:
    """Implements ``connectors.eos.loop.Handler`` for the inference worker."""

    def __init__(
        self,
        ctx: StageContext,
        *,
        batcher: RequestBatcher,
        engine_loop: EngineLoop,
        prefetch_pool: ThreadPoolExecutor,
        writer: OutcomeWriter,
        lane_of_topic: dict[str, str],
        retry_topic: str,
    ) -> None:
        self.ctx = ctx
        self.batcher = batcher
        self.engine_loop = engine_loop
        self.pool = prefetch_pool
        self.writer = writer
        self.lane_of_topic = lane_of_topic
        self.retry_topic = retry_topic
        self._tracing = tracing.enabled()  # decided once: configure tracing before the worker
        # Retries whose not-before time has not come: (not_before_ms, seq, item).
        self.delayed: list[tuple[int, int, WorkItem]] = []
        self._seq = itertools.count()

    # -- Handler -------------------------------------------------------------------------------

    def handle(self, message: Any, ref: MessageRef) -> None:
        item = WorkItem(
            ref=ref,
            key=message.key(),
            value=message.value(),
            headers=list(message.headers() or ()),
            lane=self.lane_of_topic.get(ref.topic, "batch"),
        )
        if self._tracing:
            item.trace_parent = tracing.extract(item.headers)
        problem = self._check(item)
        if problem is not None:
            code, why = problem
            self.pool.submit(self._dead_letter, item, code, why)
            return
        if item.not_before_ms > time.time() * 1000:
            heapq.heappush(self.delayed, (item.not_before_ms, next(self._seq), item))
            return
        self.pool.submit(self._prefetch_then_batch, item)

    def failed(self, message: Any, ref: MessageRef, error: BaseException) -> Completion:
        item = WorkItem(ref=ref, key=message.key(), value=message.value(), headers=[])
        outcome = dead_letter_outcome(item, "WORKER_ERROR", f"{type(error).__name__}: {error}")
        return self.writer.completion(outcome)

    def forget(self, tps: list[TP]) -> None:
        gone = set(tps)
        self.delayed = [d for d in self.delayed if d[2].ref.tp not in gone]
        heapq.heapify(self.delayed)
        for item in self.batcher.drop(lambda item: item.ref.tp not in gone):
            release_face(self.ctx, item)

    def committed(self, completions: list[Completion]) -> None:
        metrics = self.ctx.metrics
        now = time.time()
        if self._tracing:
            committed_ns = time.time_ns()
            for completion in completions:
                if isinstance(completion.context, Outcome):
                    trace_stages(completion.context, committed_ns)
        for completion in completions:
            outcome = completion.context
            if not isinstance(outcome, Outcome):
                continue
            status = outcome.status
            if outcome.kind is OutcomeKind.RESULT and outcome.result is not None:
                submitted = outcome.result.submitted_at.timestamp()
                metrics.end_to_end_seconds.labels(status=status).observe(max(0.0, now - submitted))
            metrics.results.labels(status=status).inc()

    def tick(self) -> None:
        """Hand retries whose time has come to the prefetch pool."""
        now_ms = time.time() * 1000
        while self.delayed and self.delayed[0][0] <= now_ms:
            _, _, item = heapq.heappop(self.delayed)
            self.pool.submit(self._prefetch_then_batch, item)
        self.ctx.metrics.held_bytes.set(self.ctx.held.held)
        self.ctx.metrics.engine_recompiles.set(getattr(self.ctx.engine, "recompiles", 0) or 0)

    def saturated(self) -> bool:
        return self.ctx.held.over()

    def parked(self) -> int:
        return len(self.delayed)

    def last_progress(self) -> float:
        return self.engine_loop.last_progress

    def finishing(self) -> bool:
        # A batch in the engine or outputs being written: the next event is a completion.
        return self.engine_loop.generating or self.engine_loop.outputs.in_flight > 0

    def ready(self, tp: TP) -> bool:
        return True  # no state of its own: the commit metadata is all a partition needs

    # -- on the prefetch pool ---------------------------------------------------------------

    def _check(self, item: WorkItem) -> tuple[str, str] | None:
        """Cheap bounds on the raw message; (code, reason) when it cannot be processed."""
        limit = self.ctx.config.max_message_bytes
        if not item.value:
            return "EMPTY_MESSAGE", "the message has no value"
        if len(item.value) > limit:
            return "MESSAGE_TOO_LARGE", f"the value is {len(item.value)} bytes, limit {limit}"
        try:
            check_headers(item.headers)
            if item.ref.topic == self.retry_topic:
                retry = parse_retry_headers(
                    item.headers,
                    now_ms=int(time.time() * 1000),
                    max_delay_ms=int(self.ctx.config.retry.max_retry_backoff_s * 1000),
                    known_origins=list(self.lane_of_topic),
                )
                item.attempt = retry.attempt
                item.not_before_ms = retry.not_before_ms
                if retry.origin is not None:
                    item.lane = self.lane_of_topic[retry.origin]
        except BadHeader as exc:
            return exc.code, str(exc)
        return None

    def _dead_letter(self, item: WorkItem, code: str, why: str) -> None:
        self.ctx.metrics.errors.labels(reason=code).inc()
        log.warning("dead letter: %s: %s", code, why, extra=item.where())
        emit_safely(
            self.ctx,
            item,
            lambda: dead_letter_outcome(item, code, why, claim_check=self.ctx.claim_check),
        )

    def _prefetch_then_batch(self, item: WorkItem) -> None:
        try:
            if not self.ctx.is_current(item):
                return
            ready = prefetch(self.ctx, item)
            if ready is None:
                return
            if not self.ctx.is_current(ready):
                release_face(self.ctx, ready)
                return
            self.batcher.put(ready, ready.lane)
        except Exception as exc:  # a bug must not lose the message: retry it later
            log.exception("prefetch task failed", extra=item.where())
            release_face(self.ctx, item)
            why = f"{type(exc).__name__}: {exc}"
            emit_safely(self.ctx, item, lambda: retry_outcome(self.ctx, item, why))


def trace_stages(outcome: Outcome, committed_ns: int) -> None:
    """The spans of one request's visit to the worker, from the times its stages noted: a
    "worker" span (received → committed) with queue wait, prefetch, engine, upload and commit
    inside, in the trace the message came with (its headers, else the record's context)."""
    item = outcome.item
    parent = item.trace_parent
    if (parent is None or not tracing.has_span(parent)) and item.request is not None:
        parent = tracing.extract(fields=item.request.trace_context)
    marks = item.marks
    status = outcome.status
    worker = tracing.start_at(
        "worker", parent, marks["received"], request_id=item.request_id, status=status,
        topic=item.topic, partition=item.partition, offset=item.offset, lane=item.lane,
    )  # fmt: skip
    stages = (
        ("prefetch", "received", "prefetched"),
        ("queue wait", "prefetched", "engine_start"),
        ("engine", "engine_start", "engine_end"),
        ("upload", "upload_start", "upload_end"),
        ("commit", "completed", None),
    )
    for name, start, end in stages:
        if start in marks:
            end_ns = committed_ns if end is None else marks.get(end)
            if end_ns is not None:
                tracing.record(
                    name, worker, marks[start], end_ns, batch_size=item.batch_size or None
                )
    worker.end(end_time=committed_ns)
