"""Hostile producers cannot stop, wedge or fool the line (issue 7, items 1-3 and 6).

The corpus of ``hostile_support.py`` is produced raw to an internal lane (the worker alone) plus
the retry topic, and to an ingress topic (admission in front of the worker), with canaries before
and after on every partition. Every canary gets its OK result, every poison exactly one outcome
with its code (a FAILED result or a bounded dead letter), the processes stay alive and healthy,
and nothing else is written.

On the code before issue 7 these cases wedged the worker (a dead letter the DLQ refused, retried
for ever), killed it (``int("²")`` on the poll thread), lost requests (``f2p-attempt: ²``), parked
a lane message for a century, and made a valid request a silent duplicate of garbage with its key.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from connectors.s3 import make_s3_client
from connectors.topic_reader import read_to_end
from inference_consumer.config import RetryPolicy
from tests.inference_consumer.conftest import (
    CountingSimEngine,
    metric,
    read_results,
    running_worker,
    sample_request,
    wait_for_results,
    wait_until,
)
from tests.inference_consumer.hostile_support import (
    Case,
    Corpus,
    check_outcomes,
    hostile_corpus,
    produce_corpus,
    read_letters,
    request_case,
    valid,
)
from tests.inference_consumer.test_worker import free_port, http_get
from tests.streams.admission_support import running_admission

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 8


def retry_topic_cases(codec, topic: str, lane_topic: str) -> list[Case]:
    """Retry headers are parsed with bounds on the retry topic: a malformed one is a dead letter,
    a not-before is honoured but capped (the worker runs with a 2 s longest back-off)."""
    origin = ("f2p-origin", lane_topic.encode())

    def case(name: str, expect: str, headers, partition: int) -> Case:
        made = request_case(
            codec, topic, name, partition, sample_request(), expect, headers=headers
        )
        made.attempt = 2 if expect == "OK" else 1
        made.first = name.startswith("retry canary-before")
        return made

    cases = [
        case(f"retry canary-before-{p}", "OK", [("f2p-attempt", b"2"), origin], p) for p in (0, 1)
    ]
    cases += [
        case("retry: attempt ²", "DL:INVALID_HEADER", [("f2p-attempt", "²".encode())], 0),
        case("retry: not-before ²", "DL:INVALID_HEADER", [("f2p-not-before-ms", "²".encode())], 1),
        case("retry: not-before 5000 digits", "DL:INVALID_HEADER",
             [("f2p-not-before-ms", b"9" * 5000)], 0),
        case("retry: origin not a lane", "DL:INVALID_HEADER",
             [("f2p-attempt", b"2"), ("f2p-origin", b"f2p.results.v1")], 1),
        case("retry: not-before year 2100 (capped)", "OK",
             [("f2p-attempt", b"2"), ("f2p-not-before-ms", b"4102444800000"), origin], 0),
    ]  # fmt: skip
    cases += [
        case(f"retry canary-after-{p}", "OK", [("f2p-attempt", b"2"), origin], p) for p in (0, 1)
    ]
    for c in cases:
        c.topic = topic
    return cases


def produce_in_two_phases(pipeline, codec, corpus: Corpus) -> None:
    """The canaries before, until they are answered; then the poison and the canaries after."""
    produce_corpus(pipeline, corpus.first)
    wait_for_results(pipeline, codec, {c.request_id for c in corpus.first if c.request_id})
    produce_corpus(pipeline, corpus.rest)


def wait_for_corpus(pipeline, codec, corpus: Corpus, timeout_s: float = 60):
    expected = corpus.result_ids

    def done():
        results = read_results(pipeline, codec)
        letters = read_letters(pipeline, codec)
        ok = expected <= {r.request_id for r in results} and len(letters.letters) >= len(
            corpus.dead
        )
        return (results, letters) if ok else None

    return wait_until(done, timeout_s, "an outcome for every case", step_s=0.25)


def test_hostile_messages_on_a_lane_and_the_retry_topic(pipeline, codec, capsys) -> None:
    lane = pipeline.topics.lanes_batch
    corpus = hostile_corpus(codec, lane, PARTITIONS)
    corpus.cases += retry_topic_cases(codec, pipeline.topics.retry, lane)
    engine = CountingSimEngine()
    port = free_port()
    retry = RetryPolicy(max_retry_backoff_s=2.0)
    with running_worker(pipeline, engine, metrics_port=port, retry=retry) as worker:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, 30, "/readyz", step_s=0.1)
        produce_in_two_phases(pipeline, codec, corpus)
        results, letters = wait_for_corpus(pipeline, codec, corpus)
        assert http_get(base + "/healthz") == (200, "ok\n")
        assert worker.healthy()
        # No rewind, no producer replaced: the poison never broke a transaction.
        assert metric(worker, "f2p_worker_transactions_total", outcome="fatal") == 0
        assert metric(worker, "f2p_worker_producers_created_total") == 1
    lines = check_outcomes(corpus, results, letters, make_s3_client(pipeline))
    # Nothing but the valid requests reached the engine, each once; nothing was retried.
    assert sorted(engine.seen) == sorted(corpus.result_ids - {_face_case(corpus)})
    retried = [c for c in corpus.cases if c.topic == pipeline.topics.retry]
    assert len(list(read_to_end(pipeline, pipeline.topics.retry, timeout_s=30))) == len(retried)
    with capsys.disabled():
        print(f"\nlane + retry topic: {len(corpus.cases)} messages, all answered once")
        print("  " + "\n  ".join(lines))


def test_hostile_messages_on_an_ingress_topic(pipeline, codec, capsys) -> None:
    ingress = pipeline.topics.requests_batch
    corpus = hostile_corpus(codec, ingress, PARTITIONS)
    engine = CountingSimEngine()
    worker_port, admission_port = free_port(), free_port()
    with (
        running_admission(pipeline, metrics_port=admission_port) as admission,
        running_worker(pipeline, engine, metrics_port=worker_port) as worker,
    ):
        for port in (worker_port, admission_port):
            url = f"http://127.0.0.1:{port}/readyz"
            wait_until(lambda url=url: http_get(url)[0] == 200, 30, url, step_s=0.1)
        produce_in_two_phases(pipeline, codec, corpus)
        results, letters = wait_for_corpus(pipeline, codec, corpus)
        for port in (worker_port, admission_port):
            assert http_get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert worker.healthy() and admission.healthy()
        assert metric(worker, "f2p_worker_transactions_total", outcome="fatal") == 0
    lines = check_outcomes(corpus, results, letters, make_s3_client(pipeline))
    assert sorted(engine.seen) == sorted(corpus.result_ids - {_face_case(corpus)})
    assert list(read_to_end(pipeline, pipeline.topics.retry, timeout_s=30)) == []
    with capsys.disabled():
        print(f"\ningress (admission + worker): {len(corpus.cases)} messages, all answered once")
        print("  " + "\n  ".join(lines))


def _face_case(corpus: Corpus) -> str | None:
    """The request refused for its face before the engine."""
    return next(c.request_id for c in corpus.cases if c.code == "FACE_TOO_SMALL")


def test_a_dead_letter_the_broker_refuses_is_replaced_not_retried(pipeline, codec, admin) -> None:
    """Whatever the bounds, a broker may still refuse a letter (a DLQ with a smaller limit):
    the loop writes the message's minimal fallback letter instead, once, and moves on — no abort
    and rewind loop, no fatal error, the canaries behind it answered (issue 7, item 1). The
    refused record left a gap in the producer's idempotent sequence: one new producer (a new
    epoch) writes the fallback."""
    dlq = pipeline.topics.dlq
    set_topic_config(admin, dlq, "max.message.bytes", str(64 * 1024))
    lane, ingress = pipeline.topics.lanes_batch, pipeline.topics.requests_batch
    noise = os.urandom(200 * 1024)  # incompressible: the 200 KiB letter exceeds 64 KiB on the wire
    corpus = Corpus()
    for topic in (lane, ingress):
        before = valid(codec, topic, f"canary-before {topic}", 3)
        before.first = True
        poison = Case(f"200 KiB garbage on {topic}", b"k", b"\x7f" + noise, "DL:BAD_MAGIC_BYTE")
        poison.partition = 3
        after = valid(codec, topic, f"canary-after {topic}", 3)
        for case in (before, poison, after):
            case.topic = topic
            corpus.add(case)
    engine = CountingSimEngine()
    with running_admission(pipeline) as admission, running_worker(pipeline, engine) as worker:
        wait_until(lambda: worker.ready() and admission.ready(), 30, "worker and admission")
        produce_in_two_phases(pipeline, codec, corpus)
        results, letters = wait_for_corpus(pipeline, codec, corpus)
        assert worker.healthy() and admission.healthy()
        assert metric(worker, "f2p_worker_transactions_total", outcome="refused") == 1
        assert metric(worker, "f2p_worker_transactions_total", outcome="fatal") == 0
        assert metric(worker, "f2p_worker_producers_created_total") == 2
    assert {r.request_id: str(r.status) for r in results} == dict.fromkeys(corpus.result_ids, "OK")
    assert len(letters.letters) == 2
    for letter, case in zip(
        sorted(letters.letters, key=lambda d: d.source_topic),
        sorted(corpus.dead, key=lambda c: c.topic),
        strict=True,
    ):
        assert (letter.source_topic, letter.source_offset) == (case.topic, case.offset)
        # The minimal fallback: why the message is dead, coordinates, sizes, digests; no bytes.
        assert letter.error_code == "BAD_MAGIC_BYTE", letter
        assert "refused" in letter.error_message
        assert letter.key is None and letter.value is None and letter.truncated
        assert letter.value_size == len(case.value)
        assert letter.value_sha256 == hashlib.sha256(case.value).hexdigest()


def set_topic_config(admin, topic: str, name: str, value: str) -> None:
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)

    def applied() -> bool:
        described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
        [entries] = [f.result(30) for f in described.values()]
        return entries[name].value == value

    wait_until(applied, 30, f"{topic} {name}={value}")
