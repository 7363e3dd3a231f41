"""Functional tests of the worker against the real stack: one worker in a thread per test.

Each test gets a private copy of every pipeline topic (``pipeline``) and its own group, so the
tests are independent of each other and of whatever else runs on the shared stack.
"""

from __future__ import annotations

import hashlib
import io
import statistics
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from connectors.claim_check import face_ref
from connectors.headers import first
from connectors.s3 import make_s3_client
from connectors.topic_reader import read_to_end
from inference_consumer.config import RetryPolicy
from inference_consumer.engines.config import EngineConfig
from inference_consumer.engines.factory import create_engine
from inference_consumer.headers import ATTEMPT_HEADER, NOT_BEFORE_HEADER
from schemas.images import make_sample_face
from schemas.records import GenerationRequest, ImageFormat, Lane, ResultStatus
from tests.inference_consumer.conftest import (
    CountingSimEngine,
    metric,
    publish,
    read_dead_letters,
    read_results,
    running_worker,
    sample_request,
    wait_for_results,
    wait_until,
)

pytestmark = pytest.mark.integration


def by_id(results) -> dict[str, object]:
    counts = Counter(r.request_id for r in results)
    assert max(counts.values(), default=1) == 1, f"duplicate results: {counts.most_common(3)}"
    return {r.request_id: r for r in results}


# -- 1. the tiny engine end to end ----------------------------------------------------------------


def test_tiny_engine_happy_path(pipeline, codec) -> None:
    """Faces from S3 (claim check) and inline → OK results whose WebP objects decode to size."""
    s3 = make_s3_client(pipeline)
    face = make_sample_face(128, seed=3)
    ref = face_ref(pipeline.inputs_bucket, "acme", face, "image/png")
    assert ref.key.startswith("tenants/acme/inputs/")
    s3.put_object(Bucket=pipeline.inputs_bucket, Key=ref.key, Body=face, ContentType="image/png")
    requests = [
        GenerationRequest.new(
            "acme", "studio portrait", ref, width=64, height=64, steps=2, true_cfg_scale=1.0
        ),
        GenerationRequest.new(
            "acme",
            "full body, red coat",
            ref,
            width=128,
            height=64,
            steps=2,
            true_cfg_scale=1.0,
            num_images=2,
        ),
        sample_request(size=64),
        sample_request(size=128, lane=Lane.INTERACTIVE),
        sample_request(size=64, output_quality=50),
    ]
    engine = create_engine(EngineConfig(name="tiny", max_batch_size=4))
    publish(pipeline, codec, requests)
    with running_worker(pipeline, engine, worker_id="tiny-happy") as worker:
        results = by_id(wait_for_results(pipeline, codec, {r.request_id for r in requests}, 180))
        assert metric(worker, "f2p_worker_results_total", status="OK") == len(requests)
    for request in requests:
        result = results[request.request_id]
        assert result.status is ResultStatus.OK, result.error
        assert result.error is None
        assert result.tenant_id == "acme"
        assert result.worker_id == "tiny-happy"
        assert result.model.name == engine.model_info.name
        assert result.model.revision == engine.model_info.revision
        assert result.attempt == 1
        assert result.submitted_at == request.submitted_at
        assert request.submitted_at <= result.completed_at <= datetime.now(UTC)
        t = result.timings
        assert t.engine_ms > 0
        assert t.total_ms >= t.engine_ms
        assert min(t.queued_ms, t.fetch_ms, t.encode_ms, t.upload_ms) >= 0
        assert len(result.images) == request.params.num_images
        for index, image in enumerate(result.images):
            key = f"tenants/acme/results/{request.request_id}/{index}.webp"
            assert image.uri == f"s3://{pipeline.results_bucket}/{key}"
            body = s3.get_object(Bucket=pipeline.results_bucket, Key=key)["Body"].read()
            assert image.size_bytes == len(body)
            assert image.sha256 == hashlib.sha256(body).hexdigest()
            decoded = Image.open(io.BytesIO(body))
            decoded.load()
            assert decoded.format == "WEBP"
            assert decoded.size == (request.params.width, request.params.height)
            assert (image.width, image.height) == decoded.size
            assert image.format is ImageFormat.WEBP


# -- 3. deadlines ---------------------------------------------------------------------------------


def test_expired_requests_never_reach_the_engine(pipeline, codec) -> None:
    """Expired on arrival, and expired while queued behind a busy engine: EXPIRED, no generate."""
    now = datetime.now(UTC)
    late = sample_request(
        submitted_at=now - timedelta(seconds=10), deadline=now - timedelta(seconds=5)
    )
    blocker = sample_request(size=128)
    blocker = GenerationRequest.new(
        "acme", "hold the engine", blocker.face, width=128, height=128, steps=2, true_cfg_scale=1.0
    )
    fine = sample_request()
    engine = CountingSimEngine(gated_prompt="hold the engine")
    engine.gate.clear()
    with running_worker(pipeline, engine) as worker:
        publish(pipeline, codec, [late, blocker, fine])
        assert engine.entered_gate.wait(30), "the blocking batch never reached the engine"
        # The engine is busy: a request due in 1.5 s waits in the batcher and expires there.
        soon = datetime.now(UTC)
        queued = sample_request(submitted_at=soon, deadline=soon + timedelta(seconds=1.5))
        publish(pipeline, codec, [queued])
        wait_until(lambda: len(worker.batcher) >= 1, 10, "the request to wait in the batcher")
        wait_until(lambda: datetime.now(UTC) > queued.deadline, 5, "the deadline to pass")
        engine.gate.set()
        ids = {r.request_id for r in (late, blocker, fine, queued)}
        results = by_id(wait_for_results(pipeline, codec, ids))
        assert metric(worker, "f2p_worker_errors_total", reason="DEADLINE_EXCEEDED") == 2
    for request in (late, queued):
        result = results[request.request_id]
        assert result.status is ResultStatus.EXPIRED
        assert result.error is not None and result.error.code == "DEADLINE_EXCEEDED"
        assert result.images == ()
        assert request.request_id not in engine.seen
    assert results[fine.request_id].status is ResultStatus.OK
    assert results[blocker.request_id].status is ResultStatus.OK
    assert sorted(engine.seen) == sorted([blocker.request_id, fine.request_id])


# -- 4. redeliveries after a restart ----------------------------------------------------------


class GatedS3:
    """An S3 client whose uploads for one request_id wait for ``gate`` (others go through)."""

    def __init__(self, s3, request_id: str) -> None:
        self._s3 = s3
        self.request_id = request_id
        self.gate = threading.Event()
        self.entered = threading.Event()

    def put_if_absent(self, bucket, key, body, **kwargs):
        if self.request_id in key:
            self.entered.set()
            self.gate.wait(60)
        return self._s3.put_if_absent(bucket, key, body, **kwargs)

    def __getattr__(self, name):
        return getattr(self._s3, name)


def test_work_done_above_the_commit_point_is_not_redone_by_the_next_owner(pipeline, codec) -> None:
    """One request's upload hangs while later requests of its partitions finish: the commit
    point stays at the held request and the finished ones travel in the commit metadata. A new
    member redoes only the held request; every request has exactly one result."""
    held = sample_request()
    others = [sample_request() for _ in range(40)]
    group = "g-meta-" + pipeline.topics.results
    engine = CountingSimEngine()
    with running_worker(
        pipeline, engine, worker_id="meta-a", group_id=group, shutdown_timeout_s=0.2
    ) as worker:
        gated = GatedS3(worker.ctx.s3, held.request_id)
        object.__setattr__(worker.ctx, "s3", gated)
        publish(pipeline, codec, [held, *others])
        assert gated.entered.wait(30)
        wait_for_results(pipeline, codec, {r.request_id for r in others})
        worker.stop()
        threading.Timer(1.0, gated.gate.set).start()  # comes back after the drain bound
    assert held.request_id not in {r.request_id for r in read_results(pipeline, codec)}
    engine_b = CountingSimEngine()
    with running_worker(pipeline, engine_b, worker_id="meta-b", group_id=group) as worker_b:
        [result] = [
            r
            for r in wait_for_results(pipeline, codec, {held.request_id})
            if r.request_id == held.request_id
        ]
        assert metric(worker_b, "f2p_worker_redelivered_done_total") > 0
    assert engine_b.seen == [held.request_id]
    assert result.worker_id == "meta-b"
    counts = Counter(r.request_id for r in read_results(pipeline, codec))
    assert set(counts.values()) == {1}
    assert len(counts) == len(others) + 1


# -- 5. retries -----------------------------------------------------------------------------------


FAST_RETRY = RetryPolicy(
    in_place_attempts=1,
    in_place_backoff_s=0,
    max_attempts=3,
    retry_backoff_s=0.1,
    max_retry_backoff_s=0.2,
)


def read_retry_topic(settings) -> list[tuple[str, int, int]]:
    """(request_id, attempt header, not-before ms) of every committed retry record."""
    return [
        (
            m.key().decode(),
            int(first(m.headers(), ATTEMPT_HEADER)),
            int(first(m.headers(), NOT_BEFORE_HEADER)),
        )
        for m in read_to_end(settings, settings.topics.retry, timeout_s=30)
    ]


def test_transient_failures_go_through_the_retry_topic_to_the_dlq(pipeline, codec) -> None:
    doomed = GenerationRequest.new(
        "acme",
        "always fails",
        sample_request().face,
        width=64,
        height=64,
        steps=3,
        true_cfg_scale=1.0,
    )
    flaky = GenerationRequest.new(
        "acme",
        "fails once",
        sample_request().face,
        width=64,
        height=64,
        steps=4,
        true_cfg_scale=1.0,
    )
    healthy = sample_request()
    engine = CountingSimEngine(fail_prompts={"always fails": -1, "fails once": 1})
    with running_worker(pipeline, engine, retry=FAST_RETRY) as worker:
        publish(pipeline, codec, [doomed, flaky, healthy])
        results = by_id(wait_for_results(pipeline, codec, {flaky.request_id, healthy.request_id}))
        letters = wait_until(
            lambda: read_dead_letters(pipeline, codec), 30, "the dead letter", step_s=0.2
        )
        assert metric(worker, "f2p_worker_results_total", status="DEAD_LETTER") == 1
    assert results[healthy.request_id].status is ResultStatus.OK
    assert results[healthy.request_id].attempt == 1
    assert results[flaky.request_id].status is ResultStatus.OK
    assert results[flaky.request_id].attempt == 2
    assert doomed.request_id not in results
    assert engine.seen.count(doomed.request_id) == FAST_RETRY.max_attempts
    assert engine.seen.count(flaky.request_id) == 2

    [letter] = letters
    assert letter.error_code == "RETRIES_EXHAUSTED"
    assert letter.attempts == FAST_RETRY.max_attempts
    assert letter.request_id == doomed.request_id
    assert letter.source_topic == pipeline.topics.retry
    assert codec.decode(pipeline.topics.lanes_batch, letter.value) == doomed
    assert "simulated transient failure" in letter.error_message

    retries = read_retry_topic(pipeline)
    assert sorted((rid, attempt) for rid, attempt, _ in retries) == sorted(
        [(doomed.request_id, 2), (doomed.request_id, 3), (flaky.request_id, 2)]
    )
    assert all(not_before > 0 for _, _, not_before in retries)
    # Nothing else was written twice.
    assert Counter(r.request_id for r in read_results(pipeline, codec)) == Counter(
        {flaky.request_id: 1, healthy.request_id: 1}
    )


# -- 6. priority lanes ----------------------------------------------------------------------------


def test_interactive_requests_overtake_a_batch_backlog(pipeline, codec) -> None:
    backlog = [sample_request() for _ in range(40)]
    # ~0.2 s per batch of 4 at 64x64, 2 steps, no CFG: 10 batches ≈ 2 s of backlog.
    engine = CountingSimEngine(time_scale=0.2 / (0.6 * 2 * (64 * 64 / 1024**2) * 4**0.85))
    publish(pipeline, codec, backlog)
    with running_worker(pipeline, engine, max_in_flight=64):
        wait_until(lambda: engine.calls >= 1, 30, "the backlog to start")
        urgent = [sample_request(lane=Lane.INTERACTIVE) for _ in range(8)]
        publish(pipeline, codec, urgent)
        ids = {r.request_id for r in backlog + urgent}
        results = by_id(wait_for_results(pipeline, codec, ids, timeout_s=60))
    batch_done = sorted(results[r.request_id].completed_at for r in backlog)
    urgent_done = sorted(results[r.request_id].completed_at for r in urgent)
    # Every interactive request finished while more than half of the backlog was still waiting.
    later = sum(1 for t in batch_done if t > urgent_done[-1])
    assert later >= len(backlog) // 2, (later, len(backlog))
    # And they did not wait for the backlog: each took a fraction of the backlog's run time.
    backlog_span = (batch_done[-1] - batch_done[0]).total_seconds()
    waits = [
        (results[r.request_id].completed_at - results[r.request_id].submitted_at).total_seconds()
        for r in urgent
    ]
    assert statistics.median(waits) < backlog_span, (waits, backlog_span)


# -- 7. backpressure ------------------------------------------------------------------------------


def test_backpressure_pauses_partitions_and_bounds_in_flight_work(pipeline, codec) -> None:
    max_in_flight = 4
    backlog = [sample_request() for _ in range(30)]
    # ~0.3 s per batch of 2: the backlog takes about 4.5 s, several of the loop's lag updates
    # (one a second). At 0.1 s a batch (1.5 s) the backlog could fall between two of them and
    # the lag was never seen (a CI run).
    engine = CountingSimEngine(
        max_batch_size=2, time_scale=0.3 / (0.6 * 2 * (64 * 64 / 1024**2) * 2**0.85)
    )
    publish(pipeline, codec, backlog)
    seen_paused, seen_in_flight, seen_lag = [], [], []
    with running_worker(pipeline, engine, max_in_flight=max_in_flight) as worker:
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                seen_paused.append(metric(worker, "f2p_worker_paused_partitions"))
                seen_in_flight.append(metric(worker, "f2p_worker_in_flight"))
                seen_lag.append(metric(worker, "f2p_worker_consumer_lag"))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            results = wait_for_results(pipeline, codec, {r.request_id for r in backlog}, 90)
        finally:
            stop.set()
            sampler.join()
        wait_until(
            lambda: metric(worker, "f2p_worker_paused_partitions") == 0, 10, "partitions resumed"
        )
    by_id(results)
    assert max(seen_paused) > 0, "no partition was ever paused"
    assert max(seen_lag) > 0, "the paused backlog never showed as consumer lag"
    # A full worker polls at most one message more before it pauses.
    assert max(seen_in_flight) <= max_in_flight + 1, max(seen_in_flight)
    assert max(seen_in_flight) >= max_in_flight - 1


# -- 9. metrics and health endpoints --------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:  # not listening (yet)
        return 0, ""


def test_metrics_and_health_endpoints(pipeline, codec) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    request = sample_request()
    with running_worker(pipeline, CountingSimEngine(), metrics_port=port):
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, 30, "/readyz", step_s=0.1)
        publish(pipeline, codec, [request])
        wait_for_results(pipeline, codec, {request.request_id})
        assert http_get(base + "/healthz") == (200, "ok\n")
        _, body = wait_until(
            lambda: (
                (r := http_get(base + "/metrics"))[0] == 200
                and 'f2p_worker_results_total{status="OK"} 1.0' in r[1]
                and r
            ),
            10,
            "the OK result in /metrics",
        )
        for name in (
            "f2p_worker_end_to_end_seconds_bucket",
            "f2p_worker_engine_seconds_count",
            "f2p_worker_batch_size_count",
            "f2p_worker_queue_wait_seconds_count 1.0",
            "f2p_worker_in_flight",
            "f2p_worker_paused_partitions",
            'f2p_worker_transactions_total{outcome="committed"}',
        ):
            assert name in body, name
        # The three lanes and the retry topic, 8 partitions each.
        assert "f2p_worker_assigned_partitions 32.0" in body
        assert http_get(base + "/nope")[0] == 404


# -- transactions that fail: abort and rewind, or recreate the producer and rewind ----------------


@pytest.mark.parametrize(
    ("failure", "failures", "rewinds"),
    [("abortable", 1, False), ("abortable", 3, True), ("fatal", 1, True)],
)
def test_a_failed_transaction_is_retried_or_redone_after_a_rewind(
    pipeline, codec, failure, failures, rewinds
) -> None:
    """Transactions with outcomes are sent, then fail at the commit (really aborted on the
    broker). An abort keeps the outcomes and commits them in a new transaction (of a new
    producer, as after any failure); three aborts in a row, or a fatal error, rewind to the
    committed offsets and redo the work. Nothing of a failed transaction is visible; every
    request has one result."""
    from connectors.eos.exceptions import ProducerFenced, TransactionAborted

    requests = [sample_request() for _ in range(12)]
    engine = CountingSimEngine()
    with running_worker(pipeline, engine) as worker:
        wait_until(lambda: worker.loop is not None and worker.ready(), 30, "the worker")
        producer = worker.loop.producer
        real_finish = producer.finish
        failed: list[int] = []

        def failing_finish(budget_s: float) -> bool:
            if len(failed) >= failures or not pending():
                return real_finish(budget_s)
            failed.append(1)
            producer.producer.flush(10)  # delivered, then aborted: as a real abort would
            producer.producer.abort_transaction(10)
            if failure == "abortable":
                # What TransactionalProducer does with an abortable error: the producer is
                # replaced before the next transaction (never reused: producer.py).
                producer.state = type(producer.state).FAILED
                raise TransactionAborted("injected: transaction must be aborted")
            producer.state = type(producer.state).BROKEN
            raise ProducerFenced("injected: producer fenced")

        def pending() -> bool:
            committing = worker.loop._committing
            return committing is not None and bool(committing.completions)

        original_producer = producer.producer
        producer.finish = failing_finish  # type: ignore[method-assign]
        publish(pipeline, codec, requests)
        results = by_id(wait_for_results(pipeline, codec, {r.request_id for r in requests}))
        outcome = "aborted" if failure == "abortable" else "fatal"
        assert metric(worker, "f2p_worker_transactions_total", outcome=outcome) == failures
        # Either failure replaced the producer (same transactional.id, new epoch).
        assert producer.producer is not original_producer
    assert len(failed) == failures
    assert all(r.status is ResultStatus.OK for r in results.values())
    # Redone requests reached the engine twice; retried outcomes did not; the results topic
    # shows each request once either way.
    most_seen = Counter(engine.seen).most_common(1)[0][1]
    assert (most_seen >= 2) == rewinds
    assert len(read_results(pipeline, codec)) == len(requests)


# -- shutdown: the drain bound hands unfinished work back ----------------------------------------


def test_work_unfinished_at_the_drain_bound_is_handed_back_not_retried(pipeline, codec) -> None:
    """A batch still in the engine when the drain bound expires is not committed (nor sent to the
    retry topic): the next owner reads it again from its lane, as attempt 1."""
    slow = GenerationRequest.new(
        "acme",
        "hold the engine",
        sample_request().face,
        width=64,
        height=64,
        steps=2,
        true_cfg_scale=1.0,
    )
    group = "g-handback-" + pipeline.topics.results
    engine = CountingSimEngine(gated_prompt="hold the engine")
    engine.gate.clear()
    with running_worker(
        pipeline, engine, worker_id="handback-a", group_id=group, shutdown_timeout_s=0.2
    ) as worker:
        publish(pipeline, codec, [slow])
        assert engine.entered_gate.wait(30)
        # The engine is stuck in the batch; it comes back after the drain bound has expired.
        threading.Timer(1.5, engine.gate.set).start()
        worker.stop()
    assert read_results(pipeline, codec) == []
    with running_worker(pipeline, CountingSimEngine(), worker_id="handback-b", group_id=group):
        [result] = wait_for_results(pipeline, codec, {slow.request_id})
    assert result.status is ResultStatus.OK
    assert result.attempt == 1
    assert result.worker_id == "handback-b"
    assert read_retry_topic(pipeline) == []


# -- rebalancing: a member joins and another leaves mid-run ---------------------------------------


def test_members_joining_and_leaving_mid_run_lose_and_duplicate_nothing(pipeline, codec) -> None:
    """Worker b joins while a works through a backlog (cooperative rebalance: a hands some
    partitions over after committing what it finished), then b leaves (its partitions move back
    to a, which restores their dedupe state). Every request ends with exactly one result."""
    backlog = [sample_request() for _ in range(80)]
    ids = {r.request_id for r in backlog}
    group = "g-rebalance-" + pipeline.topics.results
    # ~0.3 s per batch of 4: the backlog would take a alone about 6 s, so b surely gets some.
    scale = 0.3 / (0.6 * 2 * (64 * 64 / 1024**2) * 4**0.85)
    publish(pipeline, codec, backlog)
    engine_a, engine_b = CountingSimEngine(time_scale=scale), CountingSimEngine(time_scale=scale)
    with running_worker(pipeline, engine_a, worker_id="reb-a", group_id=group, max_in_flight=8):
        wait_until(lambda: len(engine_a.seen) >= 4, 30, "worker a to get going")
        # b is a dynamic member: leaving sends LeaveGroup, so a gets b's partitions at once.
        with running_worker(
            pipeline,
            engine_b,
            worker_id="reb-b",
            group_id=group,
            max_in_flight=8,
            static_membership=False,
        ) as worker_b:
            wait_until(lambda: len(engine_b.seen) >= 4, 60, "worker b to get partitions")
            assert 0 < metric(worker_b, "f2p_worker_assigned_partitions") < 32
        results = wait_for_results(pipeline, codec, ids, timeout_s=90)
    counts = Counter(r.request_id for r in results)
    assert set(counts) == ids
    assert set(counts.values()) == {1}, counts.most_common(3)
    assert {r.worker_id for r in results} == {"reb-a", "reb-b"}


def test_a_request_that_breaks_its_batch_does_not_take_its_batch_mates_down(
    pipeline, codec
) -> None:
    """The engine fails a whole batch because of one request: the others still get their
    images at once (attempt 1); only the culprit goes the retry way to the DLQ."""
    face = sample_request().face
    doomed = GenerationRequest.new(
        "acme", "always fails", face, width=64, height=64, steps=2, true_cfg_scale=1.0
    )
    mates = [sample_request() for _ in range(3)]  # same size, steps and CFG: one batch key
    engine = CountingSimEngine(fail_prompts={"always fails": -1}, max_batch_size=4)
    with running_worker(pipeline, engine, retry=FAST_RETRY, max_batch_wait_ms=500):
        publish(pipeline, codec, [*mates, doomed])
        results = by_id(wait_for_results(pipeline, codec, {r.request_id for r in mates}))
        [letter] = wait_until(
            lambda: read_dead_letters(pipeline, codec), 30, "the dead letter", step_s=0.2
        )
    assert any(doomed.request_id in b and len(b) > 1 for b in engine.batches), engine.batches
    for mate in mates:
        assert results[mate.request_id].status is ResultStatus.OK
        assert results[mate.request_id].attempt == 1
    assert letter.request_id == doomed.request_id
    assert letter.error_code == "RETRIES_EXHAUSTED"
    assert {rid for rid, _, _ in read_retry_topic(pipeline)} == {doomed.request_id}


def test_a_result_that_cannot_be_encoded_goes_the_retry_way_and_is_answered_once(
    pipeline, codec
) -> None:
    """Encoding a result fails (the registry is needed the first time): the request is handed
    to the retry topic as raw bytes (no registry needed) and answered on its next attempt; the
    worker carries on."""
    requests = [sample_request() for _ in range(4)]
    with running_worker(pipeline, CountingSimEngine(), retry=FAST_RETRY) as worker:
        real_encode = worker.writer.codec.encode
        failures: list[str] = []

        def flaky_encode(topic, record):
            if topic == pipeline.topics.results and not failures:
                failures.append(topic)
                raise ConnectionError("injected: schema registry unreachable")
            return real_encode(topic, record)

        worker.writer.codec = type("Codec", (), {"encode": staticmethod(flaky_encode)})()
        worker.writer.retry_delay_on_encode_failure_s = 0.1
        publish(pipeline, codec, requests)
        results = by_id(wait_for_results(pipeline, codec, {r.request_id for r in requests}))
        assert worker.healthy()
    assert failures
    assert all(r.status is ResultStatus.OK for r in results.values())
    assert len(read_retry_topic(pipeline)) == 1
