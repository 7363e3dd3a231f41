"""Analytics without Kafka: window arithmetic, watermark, records, and the processor's acks."""

from __future__ import annotations

import asyncio
import random
import statistics
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.settings import Settings, TopicNames
from schemas.analytics_records import AnalyticsWindow, LatencySummary
from schemas.codec import AvroCodec
from schemas.records import GenerationResult, ModelRef, ResultError, ResultStatus, StageTimings
from schemas.testing import InMemoryRegistry
from streams.analytics import AnalyticsConfig, AnalyticsProcessor
from streams.exceptions import StreamsConfigError
from streams.windows import (
    LatencySample,
    TumblingWindows,
    WindowAggregate,
    WindowPolicy,
    percentile,
    window_start,
)

T0_MS = 1_790_000_000_000  # a window boundary for 10 s windows
T0_S = T0_MS / 1000
TOPIC = "f2p.results.v1-unit"


def result(
    completed_ms: int,
    *,
    tenant: str = "acme",
    status: ResultStatus = ResultStatus.OK,
    total_ms: int = 1000,
    engine_ms: int = 500,
    code: str | None = None,
) -> GenerationResult:
    completed = datetime.fromtimestamp(completed_ms / 1000, UTC)
    error = ResultError(code=code, message="x") if code else None
    return GenerationResult(
        request_id=str(uuid.uuid4()),
        tenant_id=tenant,
        status=status,
        error=error,
        timings=StageTimings(engine_ms=engine_ms, total_ms=total_ms),
        worker_id="w0",
        model=ModelRef(name="sim", revision="r"),
        submitted_at=completed,
        completed_at=completed,
    )


def policy(**overrides: Any) -> WindowPolicy:
    return WindowPolicy(**{"window_s": 10.0, "grace_s": 2.0, "idle_s": 5.0, **overrides})


# -- pure arithmetic ------------------------------------------------------------------------------


def test_percentile_matches_statistics_inclusive_quantiles() -> None:
    rng = random.Random(7)
    for size in (2, 3, 10, 57, 400):
        values = sorted(rng.randint(0, 10_000) for _ in range(size))
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        for q in (50, 90, 99):
            assert percentile(values, q / 100) == pytest.approx(cuts[q - 1])
    assert percentile([42], 0.99) == 42


def test_percentile_refuses_empty_input_and_bad_quantile() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1, 2], 1.5)


def test_window_start_aligns_to_the_epoch() -> None:
    assert window_start(T0_MS, 10_000) == T0_MS
    assert window_start(T0_MS + 9_999, 10_000) == T0_MS
    assert window_start(T0_MS + 10_000, 10_000) == T0_MS + 10_000
    assert window_start(-1, 10_000) == -10_000


@pytest.mark.parametrize(
    "overrides",
    [{"window_s": 0}, {"window_s": 0.0005}, {"grace_s": -1}, {"idle_s": 0}, {"max_samples": 0}],
)
def test_window_policy_refuses_nonsense(overrides: dict[str, float]) -> None:
    with pytest.raises(StreamsConfigError):
        policy(**overrides)


def test_aggregate_record_counts_statuses_errors_latency_and_gpu_seconds() -> None:
    agg = WindowAggregate("acme", T0_MS, T0_MS + 10_000, max_samples=100)
    for total in (1000, 2000, 3000, 4000):
        agg.add(result(T0_MS, total_ms=total, engine_ms=1500))
    agg.add(result(T0_MS, status=ResultStatus.FAILED, total_ms=60_000, code="ENGINE_ERROR"))
    agg.add(result(T0_MS, status=ResultStatus.EXPIRED, total_ms=0, engine_ms=0, code="EXPIRED"))

    record = agg.to_record(final=True, emitted_at_ms=T0_MS + 12_000)

    assert record.tenant_id == "acme"
    assert record.window_start == datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC)
    assert record.window_start_ms == T0_MS
    assert record.window_end - record.window_start == timedelta(seconds=10)
    assert record.final is True
    assert record.count == 6
    assert record.by_status == {"OK": 4, "FAILED": 1, "EXPIRED": 1, "REJECTED": 0, "CANCELLED": 0}
    assert record.throughput_per_s == pytest.approx(0.6)
    assert record.error_rate == pytest.approx(2 / 6, abs=1e-6)
    assert record.errors_by_code == {"ENGINE_ERROR": 1, "EXPIRED": 1}
    # Latency of OK results only: the FAILED one's 60 s is not in it.
    latency = record.latency_ms
    assert latency.count == latency.sampled == 4
    assert latency.p50 == 2500.0
    assert latency.p90 == pytest.approx(3700.0)
    assert latency.max == 4000
    assert latency.mean == 2500.0
    assert record.gpu_seconds == pytest.approx((4 * 1500 + 500) / 1000)
    assert record.emitted_at == datetime(2026, 9, 21, 14, 13, 32, tzinfo=UTC)
    # What goes on the wire: the registered AnalyticsWindow schema, and back unchanged.
    assert AnalyticsWindow.from_avro(record.to_avro()) == record


def test_aggregate_without_ok_results_has_empty_latency() -> None:
    agg = WindowAggregate("acme", T0_MS, T0_MS + 10_000, max_samples=100)
    agg.add(result(T0_MS, status=ResultStatus.REJECTED, code="PARAM_OUT_OF_RANGE"))
    latency = agg.to_record(final=False, emitted_at_ms=T0_MS).latency_ms
    assert latency == LatencySummary(
        count=0, sampled=0, p50=None, p90=None, p99=None, mean=None, max=None
    )


def test_latency_sample_is_bounded_with_exact_count_mean_and_max() -> None:
    sample = LatencySample(capacity=2_000, seed=1)
    values = list(range(100_000))
    random.Random(3).shuffle(values)
    for v in values:
        sample.add(v)
    summary = sample.summary()
    assert summary.count == 100_000
    assert summary.sampled == 2_000
    assert summary.max == 99_999
    assert summary.mean == pytest.approx(49_999.5)
    assert summary.p50 == pytest.approx(50_000, rel=0.05)
    assert summary.p99 == pytest.approx(99_000, rel=0.02)


# -- windows and watermark ------------------------------------------------------------------------


def add(windows: TumblingWindows[str], t_ms: int, partition: int = 0, now: float | None = None):
    """Add a result at ``t_ms`` with a token naming it; ``now`` defaults to its event time."""
    token = f"p{partition}@{t_ms}"
    now = t_ms / 1000 if now is None else now
    return windows.add(result(t_ms), partition=partition, token=token, now=now)


def test_window_closes_once_the_watermark_passes_its_end_plus_grace() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy())
    add(windows, T0_MS + 1_000)
    add(windows, T0_MS + 9_000)
    add(windows, T0_MS + 11_000)
    assert windows.close_due(T0_S + 11) == []  # 11 s < end 10 s + grace 2 s

    add(windows, T0_MS + 12_000)
    closed = windows.close_due(T0_S + 12)

    assert [(c.aggregate.start_ms, c.aggregate.count) for c in closed] == [(T0_MS, 2)]
    assert closed[0].tokens == [f"p0@{T0_MS + 1_000}", f"p0@{T0_MS + 9_000}"]
    assert len(windows) == 1


def test_tenants_have_their_own_windows() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy())
    for tenant in ("acme", "globex", "acme"):
        windows.add(result(T0_MS, tenant=tenant), partition=0, token=tenant, now=T0_S)
    add(windows, T0_MS + 20_000)
    closed = windows.close_due(T0_S + 20)
    assert sorted((c.aggregate.tenant_id, c.aggregate.count) for c in closed) == [
        ("acme", 2),
        ("globex", 1),
    ]


def test_a_lagging_partition_holds_windows_open() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy())
    add(windows, T0_MS + 5_000, partition=1, now=T0_S + 30)
    add(windows, T0_MS + 30_000, partition=0, now=T0_S + 30)
    assert windows.close_due(T0_S + 30) == []  # partition 1 is still at 5 s

    add(windows, T0_MS + 13_000, partition=1, now=T0_S + 31)
    assert [c.aggregate.start_ms for c in windows.close_due(T0_S + 31)] == [T0_MS]


def test_a_silent_partition_stops_holding_the_watermark_after_idle_s() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy(idle_s=5))
    add(windows, T0_MS + 5_000, partition=1, now=T0_S + 20)
    add(windows, T0_MS + 20_000, partition=0, now=T0_S + 24)
    assert windows.close_due(T0_S + 24) == []
    add(windows, T0_MS + 20_500, partition=0, now=T0_S + 25)
    assert [c.aggregate.start_ms for c in windows.close_due(T0_S + 25)] == [T0_MS]


def test_when_every_partition_is_silent_the_watermark_follows_the_wall_clock() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy(idle_s=1))
    add(windows, T0_MS + 5_000, now=T0_S + 100)
    assert windows.close_due(T0_S + 100.5) == []
    assert len(windows.close_due(T0_S + 101)) == 1
    assert windows.watermark.value_ms == T0_MS + 101_000


def test_a_newly_assigned_partition_holds_the_watermark_until_it_delivers() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy(idle_s=5))
    windows.reset({0, 1}, now=T0_S + 30)
    add(windows, T0_MS + 5_000, partition=0, now=T0_S + 30)
    add(windows, T0_MS + 30_000, partition=0, now=T0_S + 31)
    assert windows.close_due(T0_S + 31) == []  # partition 1 has said nothing yet
    add(windows, T0_MS + 29_000, partition=1, now=T0_S + 32)
    assert len(windows.close_due(T0_S + 32)) == 1


def test_a_late_result_is_dropped_and_its_token_handed_back() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy())
    add(windows, T0_MS + 1_000)
    add(windows, T0_MS + 12_000)
    assert len(windows.close_due(T0_S + 12)) == 1

    assert add(windows, T0_MS + 9_999) == f"p0@{T0_MS + 9_999}"
    assert windows.late_records == 1
    assert add(windows, T0_MS + 10_000) is None  # the next window is still open


def test_an_event_time_in_the_future_cannot_push_the_watermark_past_now_plus_grace() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy())
    add(windows, T0_MS + 1_000)
    add(windows, T0_MS + 3_600_000, now=T0_S + 5)  # a worker clock an hour ahead
    windows.close_due(T0_S + 5)
    assert windows.watermark.value_ms == T0_MS + 7_000
    assert add(windows, T0_MS + 6_000, now=T0_S + 6) is None


def test_reset_drops_open_windows_and_keeps_the_watermark() -> None:
    windows: TumblingWindows[str] = TumblingWindows(policy())
    add(windows, T0_MS + 1_000)
    add(windows, T0_MS + 12_000)
    assert len(windows.close_due(T0_S + 12)) == 1

    assert windows.reset({0}, now=T0_S + 12) == 1
    assert len(windows) == 0
    # faust replays from the committed offset: the emitted window's result comes back late,
    # the open window's result is counted again from scratch.
    assert add(windows, T0_MS + 1_000) is not None
    assert add(windows, T0_MS + 12_000) is None
    assert [a.count for a in windows.open_windows()] == [1]


# -- processor (faust replaced by fakes) ----------------------------------------------------------


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass
class FakeEvent:
    message: FakeMessage
    acked: bool = False

    def ack(self) -> bool:
        self.acked = True
        return True


@dataclass
class FakeStream:
    items: list[FakeEvent]

    def noack(self) -> FakeStream:
        return self

    async def events(self):
        for event in self.items:
            yield event


@dataclass
class FakeTopic:
    """The analytics topic: decodes what is sent with the codec, as a reader would."""

    codec: AvroCodec
    name: str
    sent: list[tuple[bytes, AnalyticsWindow]] = field(default_factory=list)

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        record = self.codec.decode(self.name, value, expect=AnalyticsWindow)
        assert isinstance(record, AnalyticsWindow)
        self.sent.append((key, record))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec(InMemoryRegistry(), auto_register=True)


def make_processor(codec: AvroCodec, now: float) -> tuple[AnalyticsProcessor, FakeTopic]:
    config = AnalyticsConfig(
        results_topic=TOPIC,
        analytics_topic="f2p.analytics.v1-unit",
        app_id="unit",
        policy=policy(idle_s=60),
        datadir=Path("/nonexistent"),
    )
    processor = AnalyticsProcessor(config, codec, results_partitions=1, clock=lambda: now)
    processor.out = FakeTopic(codec, config.analytics_topic)
    return processor, processor.out


def events(codec: AvroCodec, results: list[GenerationResult | bytes]) -> list[FakeEvent]:
    out = []
    for offset, r in enumerate(results):
        value = r if isinstance(r, bytes) else codec.encode(TOPIC, r)
        out.append(FakeEvent(FakeMessage(TOPIC, 0, offset, value)))
    return out


def test_processor_acks_a_result_only_once_its_window_is_emitted(codec: AvroCodec) -> None:
    processor, out = make_processor(codec, now=T0_S + 100)
    batch = events(
        codec,
        [
            result(T0_MS + 1_000, total_ms=100),
            b"\x00\x00\x00\x00\x63garbage",  # unknown schema id: poison, skipped
            result(T0_MS + 2_000, total_ms=300, status=ResultStatus.FAILED, code="OOM"),
            result(T0_MS + 12_500),  # moves the watermark past the first window
        ],
    )

    asyncio.run(processor._consume(FakeStream(batch)))  # type: ignore[arg-type]

    assert [e.acked for e in batch] == [True, True, True, False]
    [(key, record)] = out.sent
    assert key == b"acme"
    assert record.final is True
    assert record.window_start_ms == T0_MS
    assert record.by_status["OK"] == record.by_status["FAILED"] == 1
    assert record.errors_by_code == {"OOM": 1}
    assert processor.stats.consumed == 4
    assert processor.stats.undecodable == 1
    assert processor.stats.windows_final == 1


def test_processor_flushes_open_windows_as_non_final_without_acking(codec: AvroCodec) -> None:
    processor, out = make_processor(codec, now=T0_S + 100)
    batch = events(codec, [result(T0_MS + 1_000)])
    asyncio.run(processor._consume(FakeStream(batch)))  # type: ignore[arg-type]

    asyncio.run(processor.flush_open())

    assert [r.final for _, r in out.sent] == [False]
    assert not batch[0].acked
    assert processor.stats.windows_partial == 1


def test_processor_starts_over_on_assignment(codec: AvroCodec) -> None:
    from faust.types import TP

    processor, _ = make_processor(codec, now=T0_S + 100)
    asyncio.run(processor._consume(FakeStream(events(codec, [result(T0_MS)]))))  # type: ignore[arg-type]

    asyncio.run(processor._on_assigned(None, {TP(TOPIC, 0), TP("other", 0)}))

    assert len(processor.windows) == 0
    assert processor.stats.rebalance_resets == 1


def test_config_from_settings_derives_app_id_and_topics_from_the_suffix() -> None:
    settings = Settings(
        bootstrap_servers="127.0.0.1:19092",
        registry_url="http://registry",
        s3_endpoint_url=None,
        s3_access_key=None,
        s3_secret_key=None,
        topics=TopicNames().with_suffix("-t1"),
        embedded=True,
    )
    config = AnalyticsConfig.from_settings(settings, policy=policy(), datadir=Path("/tmp/x"))
    assert config.results_topic == "f2p.results.v1-t1"
    assert config.analytics_topic == "f2p.analytics.v1-t1"
    assert config.app_id == "f2p-analytics-t1"
    assert config.replication_factor == 1
    with pytest.raises(StreamsConfigError):
        AnalyticsConfig.from_settings(settings, policy=policy(), datadir=Path("/x"), duration_s=0)


def test_processor_crashes_the_app_when_a_window_cannot_be_emitted(codec: AvroCodec) -> None:
    processor, _ = make_processor(codec, now=T0_S + 100)
    crashes: list[BaseException] = []

    class BrokenTopic:
        async def send(self, *, key: bytes, value: bytes) -> None:
            raise RuntimeError("broker gone")

    async def crash(exc: BaseException) -> None:
        crashes.append(exc)

    processor.out = BrokenTopic()
    processor.crash = crash
    batch = events(codec, [result(T0_MS + 1_000), result(T0_MS + 12_500)])

    with pytest.raises(RuntimeError):
        asyncio.run(processor._consume(FakeStream(batch)))  # type: ignore[arg-type]

    assert [str(e) for e in crashes] == ["broker gone"]
    assert not any(e.acked for e in batch)
