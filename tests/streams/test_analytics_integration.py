"""The analytics processor against the real stack: a faust worker in a subprocess reads results
written in transactions (one of them aborted) and emits per-tenant windows that match."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.kafka import make_consumer, make_transactional_producer
from connectors.registry import make_registry_client
from connectors.settings import Settings, TopicNames
from infra.topics import apply_topics, load_topic_specs
from schemas.analytics_records import AnalyticsWindow
from schemas.codec import AvroCodec
from schemas.records import GenerationResult, ModelRef, ResultError, ResultStatus, StageTimings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TENANTS = ("acme", "globex", "initech")
WINDOW_S = 2
DURATION_S = 14
STATUS_WEIGHTS = {
    ResultStatus.OK: 70,
    ResultStatus.FAILED: 15,
    ResultStatus.EXPIRED: 10,
    ResultStatus.REJECTED: 5,
}
ERROR_CODES = {
    ResultStatus.FAILED: ("ENGINE_ERROR", "NOT_AN_IMAGE"),
    ResultStatus.EXPIRED: ("DEADLINE_EXCEEDED",),
    ResultStatus.REJECTED: ("PARAM_OUT_OF_RANGE",),
}
WindowKey = tuple[str, int]


def synthetic_results(rng: random.Random, n: int, base: datetime) -> list[GenerationResult]:
    """``n`` results of TENANTS completed over three windows from ``base``, in time order (as
    workers write them)."""
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    out = []
    for _ in range(n):
        status = rng.choices(statuses, weights)[0]
        code = rng.choice(ERROR_CODES[status]) if status in ERROR_CODES else None
        completed = base + timedelta(milliseconds=rng.randrange(3 * WINDOW_S * 1000))
        out.append(
            GenerationResult(
                request_id=str(uuid.uuid4()),
                tenant_id=rng.choice(TENANTS),
                status=status,
                error=ResultError(code=code, message="synthetic") if code else None,
                timings=StageTimings(
                    engine_ms=rng.randint(800, 4000), total_ms=rng.randint(1000, 20_000)
                ),
                worker_id="worker-0",
                model=ModelRef(name="sim", revision="test"),
                submitted_at=completed - timedelta(seconds=20),
                completed_at=completed,
            )
        )
    return sorted(out, key=lambda r: r.completed_at)


def expected_windows(results: list[GenerationResult]) -> dict[WindowKey, dict[str, Any]]:
    """The analytics of ``results`` computed directly, per (tenant, window start ms)."""
    groups: dict[WindowKey, list[GenerationResult]] = defaultdict(list)
    for r in results:
        t_ms = int(r.completed_at.timestamp() * 1000)
        groups[(r.tenant_id, t_ms - t_ms % (WINDOW_S * 1000))].append(r)
    expected = {}
    for key, rs in groups.items():
        ok = [r.timings.total_ms for r in rs if r.status is ResultStatus.OK]
        cuts = statistics.quantiles(ok, n=100, method="inclusive")
        expected[key] = {
            "count": len(rs),
            "by_status": {s.value: sum(r.status is s for r in rs) for s in ResultStatus},
            "errors_by_code": dict(Counter(r.error.code for r in rs if r.error)),
            "p50": cuts[49],
            "p90": cuts[89],
            "p99": cuts[98],
            "gpu_seconds": sum(r.timings.engine_ms for r in rs) / 1000,
        }
    return expected


def publish(
    settings: Settings,
    codec: AvroCodec,
    committed: list[GenerationResult],
    aborted: list[GenerationResult],
) -> None:
    """Committed results in transactions of 5 (plus one poison message), and one aborted
    transaction in the middle."""
    topic = settings.topics.results
    producer = make_transactional_producer(settings, f"analytics-test-{uuid.uuid4().hex[:8]}")
    producer.init_transactions(30)

    def transaction(records: list[GenerationResult], *, commit: bool, poison: bool = False):
        producer.begin_transaction()
        for r in records:
            producer.produce(topic, key=r.request_id.encode(), value=codec.encode(topic, r))
        if poison:
            producer.produce(topic, key=b"poison", value=b"not avro at all")
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)

    half = len(committed) // 2
    for start in range(0, half, 5):
        transaction(committed[start : min(start + 5, half)], commit=True, poison=start == 0)
    transaction(aborted, commit=False)
    for start in range(half, len(committed), 5):
        transaction(committed[start : start + 5], commit=True)


def read_analytics(
    settings: Settings, wanted: set[WindowKey], deadline: float
) -> dict[WindowKey, AnalyticsWindow]:
    """The newest record per (tenant, window) until every wanted window is final, decoded by an
    independent codec through the registry (the processor registered AnalyticsWindow)."""
    codec = AvroCodec(make_registry_client(settings), auto_register=False)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"analytics-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(settings.topics.analytics, p, 0) for p in range(2)])
    latest: dict[WindowKey, AnalyticsWindow] = {}
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            record = codec.decode(
                message.topic(), message.value(), offset=message.offset(), expect=AnalyticsWindow
            )
            assert isinstance(record, AnalyticsWindow)
            assert message.key().decode() == record.tenant_id
            latest[(record.tenant_id, record.window_start_ms)] = record
            if all(k in latest and latest[k].final for k in wanted):
                break
    finally:
        consumer.close()
    return latest


def committed_offsets(settings: Settings, group: str, partitions: int) -> list[int]:
    consumer = make_consumer(settings, group)
    try:
        tps = [TopicPartition(settings.topics.results, p) for p in range(partitions)]
        return [tp.offset for tp in consumer.committed(tps, timeout=10)]
    finally:
        consumer.close()


def end_offsets(settings: Settings, partitions: int) -> list[int]:
    consumer = make_consumer(settings, f"offsets-{uuid.uuid4().hex[:8]}")
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(settings.topics.results, p))[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def test_analytics_counts_committed_results_per_tenant_and_window(
    stack_settings: Settings, admin, unique_name, tmp_path: Path
) -> None:
    # Step 1. Private topics and synthetic results three windows in the past.
    suffix = "-" + unique_name("analytics")
    settings = stack_settings.with_topics(TopicNames().with_suffix(suffix))
    names = {settings.topics.results, settings.topics.analytics}
    apply_topics(admin, [s for s in load_topic_specs(suffix=suffix) if s.name in names])
    partitions = len(admin.list_topics(timeout=10).topics[settings.topics.results].partitions)

    rng = random.Random(20_240_601)
    now = time.time()
    base = datetime.fromtimestamp(now - now % WINDOW_S - 60, UTC)
    committed = synthetic_results(rng, 200, base)
    # Aborted results would shift every statistic: OK with a huge latency, and a fourth tenant.
    aborted = [
        dataclasses.replace(
            r,
            tenant_id=tenant,
            status=ResultStatus.OK,
            error=None,
            timings=StageTimings(engine_ms=99_000, total_ms=999_000),
        )
        for r, tenant in zip(
            synthetic_results(rng, 30, base), (*TENANTS * 9, *("umbrella",) * 3), strict=True
        )
    ]
    codec = AvroCodec(make_registry_client(settings), auto_register=True)
    publish(settings, codec, committed, aborted)
    expected = expected_windows(committed)

    # Step 2. The processor, bounded in time, in its own process.
    app_id = unique_name("analytics-app")
    env = {
        **os.environ,
        "F2P_TOPIC_SUFFIX": suffix,
        "F2P_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "F2P_REGISTRY_URL": settings.registry_url,
    }
    command = [
        sys.executable,
        "-m",
        "streams.cli",
        "analytics",
        f"--window-s={WINDOW_S}",
        "--grace-s=0.5",
        "--idle-s=1",
        f"--duration-s={DURATION_S}",
        f"--app-id={app_id}",
        f"--data-dir={tmp_path / 'faust'}",
        "--replication-factor=1",
    ]
    log = (tmp_path / "analytics.log").open("w+")
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log)
    try:
        # Step 3. Every (tenant, window) final on the analytics topic, before the bound.
        latest = read_analytics(settings, set(expected), started + DURATION_S)
        stdout, _ = process.communicate(timeout=DURATION_S + 20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    elapsed = time.monotonic() - started
    log.seek(0)
    logs = log.read()

    assert process.returncode == 0, logs
    assert elapsed < DURATION_S + 10, f"bounded run took {elapsed:.1f} s"

    # Step 4. What was committed, and only that.
    assert set(latest) == set(expected), logs
    for key, want in expected.items():
        got = latest[key]
        assert got.final is True, key
        assert got.count == want["count"], key
        assert got.by_status == want["by_status"], key
        assert got.errors_by_code == want["errors_by_code"], key
        assert got.throughput_per_s == pytest.approx(want["count"] / WINDOW_S), key
        for name in ("p50", "p90", "p99"):
            assert getattr(got.latency_ms, name) == pytest.approx(want[name], abs=0.01), (key, name)
        assert got.gpu_seconds == pytest.approx(want["gpu_seconds"]), key
    assert sum(r.count for r in latest.values()) == len(committed)

    stats = json.loads(stdout.decode().strip().splitlines()[-1])
    assert stats["consumed"] == len(committed) + 1  # the poison message is consumed, skipped
    assert stats["undecodable"] == 1
    assert stats["late"] == 0
    assert stats["windows_final"] == len(expected)

    # Step 5. Every window was emitted, so every source offset is committed (the last offset of
    # each partition is the final transaction's commit marker).
    ends = end_offsets(settings, partitions)
    assert committed_offsets(settings, app_id, partitions) == [
        end - 1 if end else -1001 for end in ends
    ]


def test_analytics_refuses_to_start_without_its_topics(stack_settings: Settings, unique_name):
    env = {
        **os.environ,
        "F2P_TOPIC_SUFFIX": "-" + unique_name("missing"),
        "F2P_BOOTSTRAP_SERVERS": stack_settings.bootstrap_servers,
        "F2P_REGISTRY_URL": stack_settings.registry_url,
    }
    command = [sys.executable, "-m", "streams.cli", "analytics", "--duration-s=5"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=30)
    assert done.returncode == 1
    assert b"do not exist; create them with `f2p topics apply`" in done.stderr
