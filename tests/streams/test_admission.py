"""Admission against the real stack: exactly one outcome per request_id whoever sends it.

Requests are published the way outside teams do — any partitioner, a key that is not the
request_id or no key, either ingress topic — and read back with independent read_committed
scans of the results, status and dead-letter topics.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from admission_support import publish_as, running_admission

from connectors.control import send_cancel
from connectors.kafka import make_producer
from connectors.topic_reader import read_to_end
from schemas.control_records import RequestState
from schemas.records import ResultStatus
from streams.admission.dedupe import decode_entry
from streams.admission.quotas import QuotaPolicy, TenantQuota
from tests.inference_consumer.conftest import (
    CountingSimEngine,
    read_dead_letters,
    read_results,
    read_statuses,
    running_worker,
    sample_request,
    wait_for_results,
    wait_until,
)

pytestmark = pytest.mark.integration


def records(settings, topic: str) -> list:
    return list(read_to_end(settings, topic, timeout_s=60))


def test_one_outcome_per_request_id_whoever_sends_it(pipeline, codec) -> None:
    originals = [sample_request() for _ in range(30)]
    engine = CountingSimEngine()
    with running_admission(pipeline), running_worker(pipeline, engine):
        publish_as(pipeline, codec, originals)
        # The same request_ids again: another key and librdkafka's default partitioner (CRC32
        # on other partitions), no key at all, and the other ingress topic.
        publish_as(pipeline, codec, originals[:10], key="other", partitioner="consistent_random")
        publish_as(pipeline, codec, originals[10:20], key="none", partitioner="random")
        publish_as(pipeline, codec, originals[20:], topic=pipeline.topics.requests_interactive)
        ids = {r.request_id for r in originals}
        wait_for_results(pipeline, codec, ids)
        statuses = wait_until(
            lambda: (
                (s := read_statuses(pipeline, codec))
                and sum(x.status is RequestState.DUPLICATE for x in s) >= 30
                and s
            ),
            60,
            "30 duplicate status events",
            step_s=0.2,
        )
    counts = Counter(r.request_id for r in read_results(pipeline, codec))
    assert counts == Counter(dict.fromkeys(ids, 1))
    assert Counter(engine.seen) == Counter(dict.fromkeys(ids, 1))  # no duplicate reached a GPU
    by_state = Counter(s.status for s in statuses)
    assert by_state[RequestState.ACCEPTED] == 30
    assert by_state[RequestState.DUPLICATE] == 30
    # Admitted once to the internal lane, nothing else there.
    lane = [m.key().decode() for m in records(pipeline, pipeline.topics.lanes_batch)]
    assert Counter(lane) == Counter(dict.fromkeys(ids, 1))


def test_a_key_cannot_suppress_another_request(pipeline, codec) -> None:
    """Garbage keyed with a request's id, a valid request keyed with another's id: identity comes
    from the decoded record alone, and every garbage message gets its own dead letter."""
    victim, other = sample_request(), sample_request()
    producer = make_producer(pipeline)
    topic = pipeline.topics.requests_batch
    key = victim.request_id.encode()
    producer.produce(topic, key=key, value=b"\x00\x00\x0f\x42\x3fgarbage-one")  # id 999999
    producer.produce(topic, key=key, value=b"\x7fgarbage-two")
    producer.produce(topic, key=key, value=codec.encode(topic, other))  # someone else's key
    producer.produce(topic, key=key, value=codec.encode(topic, victim))
    assert producer.flush(30) == 0
    with running_admission(pipeline), running_worker(pipeline, CountingSimEngine()):
        results = wait_for_results(pipeline, codec, {victim.request_id, other.request_id})
        letters = wait_until(
            lambda: len(d := read_dead_letters(pipeline, codec)) >= 2 and d,
            30,
            "two dead letters",
            step_s=0.2,
        )
    assert {r.request_id: r.status for r in results} == {
        victim.request_id: ResultStatus.OK,
        other.request_id: ResultStatus.OK,
    }
    assert sorted(letter.error_code for letter in letters) == [
        "BAD_MAGIC_BYTE",
        "UNKNOWN_SCHEMA_ID",
    ]
    assert all(letter.request_id is None for letter in letters)


def test_admission_answers_invalid_expired_and_cancelled_requests_itself(pipeline, codec) -> None:
    invalid = sample_request(steps=0)
    expired = sample_request(
        submitted_at=datetime.now(UTC) - timedelta(minutes=5),
        deadline=datetime.now(UTC) - timedelta(minutes=1),
    )
    cancelled = sample_request()
    fine = sample_request()
    send_cancel(pipeline, codec, cancelled.request_id, reason="changed my mind")
    with running_admission(pipeline) as admission, running_worker(pipeline, CountingSimEngine()):
        wait_until(lambda: admission.ready(), 30, "admission")
        time.sleep(0.5)  # the control watch reads the cancel in well under this
        publish_as(pipeline, codec, [invalid, expired, cancelled, fine])
        ids = {r.request_id for r in (invalid, expired, cancelled, fine)}
        results = {r.request_id: r for r in wait_for_results(pipeline, codec, ids)}
        statuses = read_statuses(pipeline, codec)
    assert results[invalid.request_id].status is ResultStatus.REJECTED
    assert results[invalid.request_id].error.code == "PARAM_OUT_OF_RANGE"
    assert results[expired.request_id].status is ResultStatus.EXPIRED
    assert results[cancelled.request_id].status is ResultStatus.CANCELLED
    assert results[fine.request_id].status is ResultStatus.OK
    answered = {invalid.request_id, expired.request_id, cancelled.request_id}
    assert {r.worker_id for rid, r in results.items() if rid in answered} == {
        f"admission/{admission.config.instance_id}"
    }
    lane = {m.key().decode() for m in records(pipeline, pipeline.topics.lanes_batch)}
    assert lane == {fine.request_id}  # nothing answered by admission reached a lane
    reasons = {s.request_id: s.reason for s in statuses if s.request_id in answered}
    assert reasons == {
        invalid.request_id: "PARAM_OUT_OF_RANGE",
        expired.request_id: "DEADLINE_EXCEEDED",
        cancelled.request_id: "CANCELLED",
    }


def test_over_quota_requests_go_to_the_over_quota_lane_or_are_rejected(pipeline, codec) -> None:
    starved = TenantQuota(rate=1e-6, burst=1e-6, over_quota="overquota")
    policy = QuotaPolicy(
        default=TenantQuota(rate=1000.0, burst=1000.0, over_quota="overquota"),
        tenants={"flood": starved, "strict": TenantQuota(1e-6, 1e-6, over_quota="reject")},
    )
    flood = [sample_request(tenant="flood") for _ in range(40)]
    strict = [sample_request(tenant="strict") for _ in range(40)]
    normal = [sample_request(tenant="acme") for _ in range(10)]
    everyone = flood + strict + normal
    with running_admission(pipeline, policy=policy), running_worker(pipeline, CountingSimEngine()):
        publish_as(pipeline, codec, everyone)
        results = {
            r.request_id: r
            for r in wait_for_results(pipeline, codec, {r.request_id for r in everyone})
        }
    overquota = {m.key().decode() for m in records(pipeline, pipeline.topics.lanes_overquota)}
    flood_ids = {r.request_id for r in flood}
    # One request per repartition partition finds the bucket in credit; the rest are over.
    assert overquota <= flood_ids and len(overquota) >= len(flood) - 8
    assert all(results[rid].status is ResultStatus.OK for rid in flood_ids)  # served anyway
    rejected = [r for r in strict if results[r.request_id].status is ResultStatus.REJECTED]
    assert len(rejected) >= len(strict) - 8
    assert {results[r.request_id].error.code for r in rejected} == {"QUOTA_EXCEEDED"}
    assert all(results[r.request_id].status is ResultStatus.OK for r in normal)
    assert Counter(r.request_id for r in read_results(pipeline, codec)) == Counter(
        dict.fromkeys(results, 1)
    )


def test_the_dedupe_state_survives_a_restart_and_is_tombstoned_past_its_horizon(
    pipeline, codec
) -> None:
    first = [sample_request() for _ in range(12)]
    group = "adm-restart-" + pipeline.topics.results
    with running_worker(pipeline, CountingSimEngine()):
        with running_admission(pipeline, instance_id="adm-a", group_id=group):
            publish_as(pipeline, codec, first)
            wait_for_results(pipeline, codec, {r.request_id for r in first})
        # A new instance restores the state from the changelog: resubmissions are duplicates.
        with running_admission(pipeline, instance_id="adm-b", group_id=group) as second:
            publish_as(pipeline, codec, first, key="none")
            wait_until(
                lambda: second.metrics.requests.labels(outcome="duplicate")._value.get() >= 12,
                60,
                "12 duplicates after the restart",
            )
    counts = Counter(r.request_id for r in read_results(pipeline, codec))
    assert counts == Counter(dict.fromkeys((r.request_id for r in first), 1))

    # The same group with a short horizon: the restored entries expire and are tombstoned.
    with running_admission(
        pipeline, instance_id="adm-c", group_id=group, dedupe_horizon_s=2.0
    ) as third:
        wait_until(
            lambda: any(
                m.value() is None for m in records(pipeline, pipeline.topics.admission_dedupe)
            ),
            30,
            "tombstones",
            step_s=0.5,
        )
        wait_until(lambda: third.metrics.dedupe_entries._value.get() == 0, 10, "the state to empty")
    changelog = records(pipeline, pipeline.topics.admission_dedupe)
    last = {m.key(): m.value() for m in changelog}  # what compaction will keep per key
    assert len(last) == len(first)
    assert all(value is None for value in last.values())  # every entry ends in a tombstone
    assert all(decode_entry(m.value())[0] > 0 for m in changelog if m.value() is not None)


def test_cancel_and_status_from_the_command_line(pipeline, codec, monkeypatch) -> None:
    from click.testing import CliRunner

    from connectors.lifecycle_cli import cancel_cmd, status_cmd

    monkeypatch.setenv("F2P_TOPIC_SUFFIX", pipeline.topics.results.removeprefix("f2p.results.v1"))
    runner = CliRunner()
    done = sample_request()
    with running_admission(pipeline), running_worker(pipeline, CountingSimEngine()):
        publish_as(pipeline, codec, [done])
        wait_for_results(pipeline, codec, {done.request_id})
        publish_as(pipeline, codec, [done], key="none")  # a duplicate
        out = wait_until(
            lambda: (
                (r := runner.invoke(status_cmd, [done.request_id])).exit_code == 0
                and "DUPLICATE" in r.output
                and r.output
            ),
            30,
            "the status with the duplicate",
            step_s=0.5,
        )
    lines = out.splitlines()
    states = [line.split()[1] for line in lines if not line.startswith("result:")]
    assert states[:3] == ["ACCEPTED", "RUNNING", "OK"], out
    assert "DUPLICATE" in states
    assert lines[-1].startswith("result: OK by worker") or "result: OK" in out
    refused = runner.invoke(cancel_cmd, ["not-a-uuid"])
    assert refused.exit_code != 0 and "request_id" in str(refused.exception or refused.output)
    sent = runner.invoke(cancel_cmd, [sample_request().request_id, "--reason", "test"])
    assert sent.exit_code == 0, sent.output


class WedgeOnce:
    """Wraps admission's producers; the first one's ``send_offsets_to_transaction`` wedges once,
    on its ``nth`` call that carries a commit point of ``topic``: it does its work on the broker
    and then does not return for ``hold_s`` (what librdkafka's did in the cluster chaos runs when
    a broker died under the group coordinator). Later producers pass through untouched."""

    def __init__(self, topic: str, *, nth: int, hold_s: float) -> None:
        self.topic, self.nth, self.hold_s = topic, nth, hold_s
        self.producers = 0
        self.calls = 0
        self.wedged = threading.Event()

    def wrap(self, producer: Any) -> Any:
        self.producers += 1
        return _Wedging(producer, self) if self.producers == 1 else producer


class _Wedging:
    def __init__(self, real: Any, wedge: WedgeOnce) -> None:
        self._real, self._wedge = real, wedge

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def send_offsets_to_transaction(self, offsets: list, *args: Any) -> None:
        wedge = self._wedge
        self._real.send_offsets_to_transaction(offsets, *args)
        if not wedge.wedged.is_set() and any(tp.topic == wedge.topic for tp in offsets):
            wedge.calls += 1
            if wedge.calls == wedge.nth:
                wedge.wedged.set()
                time.sleep(wedge.hold_s)


def test_a_wedged_producer_is_given_up_without_losing_or_doubling_an_admission(
    pipeline, codec
) -> None:
    """A transaction's send_offsets_to_transaction that does not return (seen in the cluster
    chaos runs) costs admission its producer: the next producer's epoch aborts the open
    transaction (dedupe entries, lane records, commit points), every partition rewinds and its
    dedupe state is restored from the changelog. Each request_id still reaches a lane exactly
    once: an entry of the aborted transaction kept in memory would answer its request DUPLICATE
    when it is read again (lost), one restored too early would admit it twice."""
    wedge = WedgeOnce(pipeline.topics.admission_repartition, nth=3, hold_s=12.0)  # > 5 + 3 s
    originals = [sample_request() for _ in range(300)]
    ids = {r.request_id for r in originals}

    def lanes() -> Counter[str]:
        return Counter(
            m.key().decode()
            for topic in pipeline.topics.worker_lanes.values()
            for m in records(pipeline, topic)
        )

    with running_admission(pipeline, wrap_producer=wedge.wrap):
        for start in range(0, len(originals), 10):
            chunk = originals[start : start + 10]
            publish_as(pipeline, codec, chunk)  # the one-hop path (request_id key, murmur2)
            # Duplicates through the repartition topic (no key, another partitioner).
            publish_as(pipeline, codec, chunk[:2], key="none", partitioner="random")
        assert wedge.wedged.wait(60), "no transaction carried a repartition commit point"
        deadline = time.monotonic() + 120
        while not set(admitted := lanes()) >= ids and time.monotonic() < deadline:
            time.sleep(1.0)
    assert wedge.producers >= 2  # the wedged one was given up
    missing = ids - set(admitted)
    assert not missing, f"{len(missing)} of {len(ids)} never admitted, e.g. {sorted(missing)[:3]}"
    assert admitted == Counter(dict.fromkeys(ids, 1)), "admitted twice"
