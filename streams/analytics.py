"""Stream analytics: per-tenant windowed metrics of the results topic, as Avro records.

Input: ``GenerationResult`` records (Confluent-framed Avro) from ``f2p.results.v1``, read with
``isolation.level=read_committed``, so results of aborted worker transactions never count.

Output: one ``AnalyticsWindow`` record (``schemas/avro/AnalyticsWindow.avsc``, Confluent-framed
Avro through the registry like every other topic) per (tenant, window) on ``f2p.analytics.v1``,
keyed by ``tenant_id`` (UTF-8) — count by status, throughput, P50/P90/P99/mean/max of
``timings.total_ms`` over OK results, error rate (share of non-OK results), counts by
``error.code``, GPU-seconds.

Windows (pure logic in :mod:`streams.windows`)
    Tumbling, in event time (``completed_at``), closed by a watermark over the source partitions
    plus ``grace_s`` allowed lateness; a record for an already closed window is dropped and
    counted as late. A partition silent for ``idle_s`` stops holding the watermark back; when
    all are silent it follows the wall clock, so the last windows of a quiet stream close too.
    ``idle_s`` must exceed the longest stall of one partition while others deliver (under a
    50,000-record backlog on 8 partitions, 5 s left no record late).

Emission
    Once per window, when it closes, with ``final`` true. When the processor stops (signal,
    ``--duration-s``) it also emits a snapshot of each still-open window with ``final`` false;
    the next run recomputes those windows and emits them final. Readers keep the newest record
    per (``tenant_id``, ``window_start``); ``final`` tells whether it is complete.

Guarantees
    faust's ``exactly_once`` mode works against Kafka 4.1 through aiokafka 0.14: the consumer
    reads committed data only, and faust commits source offsets in per-partition transactions.
    The analytics records, however, go through faust's plain idempotent producer: faust only
    makes sends to *co-partitioned consumed* topics (table changelogs) transactional, and
    silently sends anything else outside the transaction (faust-streaming issue #177). So the
    end-to-end guarantee is at-least-once, and emission is made idempotent instead:

    - a source record is acknowledged only after the window that counted it was emitted and
      the broker acknowledged that record, so committed offsets never run ahead of emitted
      windows: a crash or rebalance replays exactly the records of the open windows;
    - on rebalance faust rewinds every partition to its committed offset; the open windows are
      dropped and rebuilt from the replay, while the watermark is kept, so the replayed records
      of windows already emitted arrive as late and are not counted twice;
    - a record of a window is a full snapshot, never a delta: duplicates are harmless;
    - faust 0.15.3 commits past only one transaction marker per commit; the consumer in
      :mod:`streams.app` fixes that, or committed offsets would trail far behind.

    Known gap: after a *process* restart the watermark starts over, so a result stored after
    the committed offset that belongs to a window emitted before the crash (it arrived out of
    order, within ``grace_s``) re-opens that window, and the newer, partial record supersedes
    the complete one. Only windows closed shortly before the crash (within about one window
    length plus ``grace_s``) are exposed.

Scaling
    Aggregates are per tenant over all partitions this worker owns: run ONE worker per app id
    (results arrive at GPU speed, hundreds per second at most; one worker handles thousands).
    A second worker sharing the app id would split the partitions and both would emit partial
    windows for the same keys — the worker logs an error when it owns only part of the topic.
    Scaling out needs a repartition by tenant, and faust's exactly_once mode does not support
    that across workers as far as its code shows (not tested here): its TransactionManager
    sends through the producer of the destination partition, which only that partition's
    owner has.

GPU-seconds
    ``timings.engine_ms`` is the engine time of the whole batch a request ran in, stamped on
    every request of the batch, so the reported ``gpu_seconds = sum(engine_ms) / 1000`` counts
    a batch once per request: exact at batch size 1, an upper bound of B times the GPU time at
    batch size B (divide by the mean of the worker metric ``f2p_worker_batch_size`` for an
    estimate). It is also per GPU: a request on a multi-GPU engine uses that many times more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faust
import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from connectors.kafka import make_admin
from connectors.registry import make_registry_client
from connectors.settings import Settings, TopicNames
from schemas.codec import AvroCodec
from schemas.exceptions import UndecodableMessage
from schemas.records import GenerationResult
from streams.analytics_metrics import AnalyticsMetrics, serve_metrics
from streams.app import BoundedWorker, make_app, quiet_faust_logging
from streams.exceptions import StreamsConfigError, StreamsError
from streams.windows import ClosedWindow, TumblingWindows, WindowAggregate, WindowPolicy

logger = logging.getLogger(__name__)

# Transient registry failures: retry the same record, never skip it.
_TRANSIENT = (SchemaRegistryError, httpx.HTTPError, OSError)


@dataclass(frozen=True, kw_only=True)
class AnalyticsConfig:
    """What the analytics processor reads, writes and how it windows; see :func:`from_settings`."""

    results_topic: str
    analytics_topic: str
    app_id: str
    policy: WindowPolicy
    datadir: Path
    replication_factor: int = 1
    duration_s: float | None = None
    # How often windows are checked for closing when no record arrives.
    tick_s: float = 0.5
    # Per-tenant Prometheus metrics on /metrics (streams/analytics_metrics.py); 0: none.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policy: WindowPolicy,
        datadir: Path,
        app_id: str | None = None,
        replication_factor: int | None = None,
        duration_s: float | None = None,
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
    ) -> AnalyticsConfig:
        """Topics from ``settings`` (suffix included); the app id defaults to
        ``f2p-analytics<suffix>``, internal topics' replication to 1 on the embedded stack and
        3 elsewhere."""
        suffix = settings.topics.results.removeprefix(TopicNames().results)
        if duration_s is not None and duration_s <= 0:
            raise StreamsConfigError(f"duration_s must be positive, got {duration_s}")
        return cls(
            results_topic=settings.topics.results,
            analytics_topic=settings.topics.analytics,
            app_id=app_id or f"f2p-analytics{suffix}",
            policy=policy,
            datadir=datadir,
            replication_factor=replication_factor or (1 if settings.embedded else 3),
            duration_s=duration_s,
            tick_s=min(0.5, policy.window_s / 4),
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )


@dataclass
class AnalyticsStats:
    """Counters of one run, printed as JSON when it ends."""

    consumed: int = 0
    undecodable: int = 0
    late: int = 0
    windows_final: int = 0
    windows_partial: int = 0
    rebalance_resets: int = 0
    first_record_at: float | None = None
    last_record_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        span = (self.last_record_at or 0) - (self.first_record_at or 0)
        out["records_per_s"] = round(self.consumed / span, 1) if span > 0 else None
        return out


def check_topics(settings: Settings, config: AnalyticsConfig) -> int:
    """Fail fast when a topic is missing (the broker does not auto-create topics); return the
    partition count of the results topic."""
    topics = make_admin(settings).list_topics(timeout=15).topics
    missing = [t for t in (config.results_topic, config.analytics_topic) if t not in topics]
    if missing:
        raise StreamsConfigError(
            f"topic(s) {', '.join(missing)} do not exist; create them with `f2p topics apply`"
        )
    return len(topics[config.results_topic].partitions)


class AnalyticsProcessor:
    """The agent, timer and rebalance hook of the analytics app, around :class:`TumblingWindows`.

    Everything runs on the app's event loop: window state needs no locks.
    """

    def __init__(
        self,
        config: AnalyticsConfig,
        codec: AvroCodec,
        results_partitions: int,
        *,
        clock: Callable[[], float] = time.time,
        metrics: AnalyticsMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or AnalyticsMetrics()
        self.codec = codec
        self.results_partitions = results_partitions
        self.clock = clock
        self.windows: TumblingWindows[faust.EventT] = TumblingWindows(config.policy)
        self.stats = AnalyticsStats()
        # The analytics topic and the app's crash(); set by install() (fakes in tests).
        self.out: Any = None
        self.crash: Callable[[BaseException], Awaitable[None]] | None = None

    def install(self, app: faust.App) -> None:
        """Register the agent, the closing timer and the rebalance hook on ``app``."""
        source = app.topic(self.config.results_topic, key_type=bytes, value_type=bytes)
        self.out = app.topic(self.config.analytics_topic, key_type=bytes, value_type=bytes)
        app.agent(source, name="analytics")(self._consume)
        app.timer(self.config.tick_s, name="analytics-close")(self._tick)
        app.on_partitions_assigned.connect(self._on_assigned)
        self.crash = app.crash

    # -- agent -----------------------------------------------------------------------------------

    async def _consume(self, stream: faust.StreamT) -> None:
        async for event in stream.noack().events():
            now = self.clock()
            self.stats.first_record_at = self.stats.first_record_at or now
            self.stats.last_record_at = now
            self.stats.consumed += 1
            self.metrics.records.inc()
            result = await self._decode(event.message)
            if result is None:
                event.ack()
                continue
            late = self.windows.add(result, partition=event.message.partition, token=event, now=now)
            if late is not None:
                self.stats.late += 1
                self.metrics.late.inc()
                logger.debug("late result dropped", extra={"request_id": result.request_id})
                late.ack()
            await self._close_due(now)

    async def _decode(self, message: faust.types.tuples.Message) -> GenerationResult | None:
        """The record, or None for poison (logged, skipped); retries registry outages."""
        delay = 0.2
        while True:
            try:
                record = self.codec.decode(
                    message.topic,
                    message.value,
                    partition=message.partition,
                    offset=message.offset,
                    expect=GenerationResult,
                )
                assert isinstance(record, GenerationResult)
                return record
            except UndecodableMessage as exc:
                self.stats.undecodable += 1
                logger.warning("skipping undecodable result: %s", exc, extra={"code": exc.code})
                return None
            except _TRANSIENT as exc:
                logger.warning("schema registry unavailable, retrying in %.1f s: %r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- closing and emission --------------------------------------------------------------------

    async def _tick(self) -> None:
        await self._close_due(self.clock())

    async def _close_due(self, now: float) -> None:
        """Emit the windows the watermark has passed, then release their source records."""
        closed: list[ClosedWindow[faust.EventT]] = self.windows.close_due(now)
        if not closed:
            return
        try:
            await self._emit([c.aggregate for c in closed], final=True)
        except Exception as exc:
            # The windows are out of memory and their records unacknowledged: only a restart,
            # replaying from the committed offsets, emits them again. Stop the worker.
            logger.error("emitting %d window(s) failed: %r", len(closed), exc)
            if self.crash is not None:
                await self.crash(exc)
            raise
        for window in closed:
            for event in window.tokens:
                event.ack()
        self.stats.windows_final += len(closed)
        self.metrics.observe_windows([c.aggregate for c in closed], final=True)
        self.metrics.watermark.set(self.windows.watermark.value_ms / 1000)
        logger.info(
            "emitted %d final window(s), watermark %d, %d open",
            len(closed),
            self.windows.watermark.value_ms,
            len(self.windows),
        )

    async def _emit(self, aggregates: list[WindowAggregate], *, final: bool) -> None:
        """Send one AnalyticsWindow per window and wait until the broker has them all."""
        assert self.out is not None, "install() the processor first"
        emitted_at_ms = int(self.clock() * 1000)
        pending = []
        for aggregate in aggregates:
            record = aggregate.to_record(final=final, emitted_at_ms=emitted_at_ms)
            value = self.codec.encode(self.config.analytics_topic, record)
            pending.append(await self.out.send(key=record.key, value=value))
        await asyncio.gather(*pending)

    async def flush_open(self) -> None:
        """Emit a non-final snapshot of every open window (on stop); acknowledge nothing."""
        open_windows = self.windows.open_windows()
        if open_windows:
            await self._emit(open_windows, final=False)
            self.stats.windows_partial += len(open_windows)
            self.metrics.observe_windows(open_windows, final=False)
            logger.info("emitted %d open window(s) as non-final snapshots", len(open_windows))

    # -- rebalance -------------------------------------------------------------------------------

    async def _on_assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        """faust rewinds every assigned partition to its committed offset: start over."""
        mine = {tp.partition for tp in assigned if tp.topic == self.config.results_topic}
        dropped = self.windows.reset(mine, self.clock())
        if dropped:
            self.stats.rebalance_resets += 1
            logger.info("rebalance: %d open window(s) dropped, rebuilt from replay", dropped)
        if mine and len(mine) < self.results_partitions:
            logger.error(
                "this worker owns %d of %d partitions of %s: another worker shares app id %s "
                "and both emit partial per-tenant windows; run one analytics worker per app id",
                len(mine),
                self.results_partitions,
                self.config.results_topic,
                self.config.app_id,
            )


def build_processor(settings: Settings, config: AnalyticsConfig) -> AnalyticsProcessor:
    """Check the topics and build the processor with its codec (decodes results, encodes
    windows; registers the AnalyticsWindow schema itself on the embedded stack only)."""
    partitions = check_topics(settings, config)
    codec = AvroCodec(make_registry_client(settings), auto_register=settings.embedded)
    return AnalyticsProcessor(config, codec, partitions)


def run_analytics(settings: Settings, config: AnalyticsConfig) -> AnalyticsStats:
    """Run the analytics worker in this process until a signal or ``config.duration_s``.

    Raises ``StreamsError`` when the worker crashed (the app's crash reason is chained).
    """
    started = time.monotonic()
    processor = build_processor(settings, config)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = make_app(
        settings,
        app_id=config.app_id,
        datadir=config.datadir,
        replication_factor=config.replication_factor,
    )
    processor.install(app)
    quiet_faust_logging()
    remaining = None
    if config.duration_s is not None:
        remaining = config.duration_s - (time.monotonic() - started)
    worker = BoundedWorker(app, loop=loop, duration_s=remaining, before_stop=processor.flush_open)
    server = None
    if config.metrics_port:
        server = serve_metrics(processor.metrics, config.metrics_host, config.metrics_port)
    logger.info(
        "analytics: %s -> %s, %.3g s windows, app id %s",
        config.results_topic,
        config.analytics_topic,
        config.policy.window_s,
        config.app_id,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            reason = app.crash_reason or worker.crash_reason
            raise StreamsError(f"analytics worker crashed: {reason!r}") from reason
    finally:
        asyncio.set_event_loop(None)
        if server is not None:
            server.shutdown()
            server.server_close()
    return processor.stats
