"""Stage 2, on the engine thread: batches from the RequestBatcher through the engine."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from inference_consumer.batcher import RequestBatcher
from inference_consumer.engines.base import EngineOutput, EngineRequest, GenerationParams
from inference_consumer.engines.exceptions import EngineInputError, EngineInterrupted
from inference_consumer.prefetch import expired, release_face
from inference_consumer.stages import (
    StageContext,
    cancelled_outcome,
    emit_safely,
    expired_outcome,
    failed_outcome,
    retry_outcome,
)
from inference_consumer.threads import name_this_thread, stage_pool
from inference_consumer.upload import finish
from inference_consumer.work import WorkItem
from schemas.records import GenerationRequest

log = logging.getLogger(__name__)


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


class OutputSubmitter(Protocol):
    def submit(self, fn: Callable[..., Any], /, *args: Any) -> object: ...


class OutputPool:
    """The output threads (encode, upload, outcome) and how many outputs they hold.

    While any are held (or a batch runs, ``EngineLoop.generating``) the next event is a
    completion, and the loop waits for it instead of for messages (``Handler.finishing``)."""

    def __init__(self, threads: int) -> None:
        # Every thread started now: one started inside ``submit`` made the engine thread wait
        # 20-67 ms at its first full batch (``stage_pool``).
        self._pool = stage_pool("output", threads)
        self._lock = threading.Lock()
        self._in_flight = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        with self._lock:
            self._in_flight += 1
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:  # shut down: nothing was queued
            self._done()
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object = None) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def run_engine_batch(ctx: StageContext, batch: list[WorkItem], outputs: OutputSubmitter) -> None:
    """Run one batch through the engine (on the engine thread) and queue its outputs."""
    live = []
    for item in batch:
        if not ctx.is_current(item):
            release_face(ctx, item)
            continue  # its partition was revoked or the transaction aborted meanwhile
        assert item.request is not None
        if expired(item.request):
            ctx.emit(expired_outcome(ctx, item))
            continue
        if ctx.cancelled(item.request_id):
            ctx.emit(cancelled_outcome(ctx, item, "while queued"))
            continue
        waited_s = time.monotonic() - item.received_mono - item.timings.get("fetch", 0) / 1000
        item.timings["queued"] = max(0.0, waited_s * 1000)
        ctx.metrics.queue_wait_seconds.observe(max(0.0, waited_s))
        live.append(item)
    if not live:
        return
    for item in live:
        ctx.running(item)
    for item, output in _generate(ctx, live):
        outputs.submit(finish, ctx, item, output)


def _generate(ctx: StageContext, items: list[WorkItem]) -> list[tuple[WorkItem, EngineOutput]]:
    requests = [
        EngineRequest(
            request_id=i.request.request_id,
            face=i.face,
            prompt=i.request.prompt,
            negative_prompt=i.request.negative_prompt,
            params=engine_params(i.request),
            cancelled=functools.partial(ctx.cancelled, i.request_id),
        )
        for i in items
        if i.request is not None and i.face is not None
    ]
    started = time.perf_counter()
    started_ns = time.time_ns()
    try:
        results = ctx.engine.generate(requests)
    except EngineInterrupted as exc:  # a lone request cancelled between denoising steps
        items[0].steps_executed = exc.steps_executed
        ctx.emit(cancelled_outcome(ctx, items[0], f"after {exc.steps_executed} step(s)"))
        return []
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
    ended_ns = time.time_ns()
    for item, output in zip(items, results, strict=True):
        item.marks["engine_start"], item.marks["engine_end"] = started_ns, ended_ns
        item.timings["engine"] = elapsed * 1000
        item.batch_size = len(items)
        item.transformer_evaluations = output.transformer_evaluations
        item.steps_executed = output.steps_executed
        item.preset = output.preset
        release_face(ctx, item)  # the images are made: the face is not needed any more
    return list(zip(items, results, strict=True))


class EngineLoop:
    """The engine thread: takes batches from the batcher until stopped."""

    def __init__(self, ctx: StageContext, batcher: RequestBatcher) -> None:
        self.ctx = ctx
        self.batcher = batcher
        self.outputs = OutputPool(ctx.config.upload_threads)
        self._stopping = False
        # Monotonic time a batch last started or ended: the worker's health looks at it.
        self.last_progress = time.monotonic()
        # True while a batch runs; its outputs are in ``outputs`` before it turns False.
        self.generating = False

    def run(self) -> None:
        name_this_thread("engine")
        while not self._stopping:
            batch = self.batcher.next_batch(timeout_s=0.2)
            if batch:
                self.last_progress = time.monotonic()
                self.generating = True
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
                            functools.partial(retry_outcome, self.ctx, item, "engine loop error"),
                        )
                finally:
                    self.generating = False
                self.last_progress = time.monotonic()

    def stop(self) -> None:
        self._stopping = True
        self.batcher.close()
        self.outputs.shutdown()
