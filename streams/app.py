"""The faust App and Worker every stream processor runs in.

faust-streaming drives Kafka through aiokafka, not librdkafka: the tuned configs of
``connectors.kafka`` do not apply here, and neither do ``F2P_KAFKA_CONFIG_*`` security settings
(refused rather than silently ignored).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import faust
from aiokafka import codec as aiokafka_codec
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from connectors.settings import Settings
from streams.exceptions import StreamsConfigError

logger = logging.getLogger(__name__)

# faust, mode and aiokafka log every rebalance step as tables at INFO.
_CHATTY_LOGGERS = ("faust", "mode", "aiokafka")


class _GapSafeConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka Consumer with offset gaps that hold only the missing offsets.

    Transactional input has a gap at every commit marker. faust 0.15.3 records the gap *with*
    the offset of the message after it, which is also acknowledged; the duplicate ends the run
    of consecutive acked offsets in ``_new_offset``, so every commit advances past one marker
    only: committed offsets fall ever further behind (faust-streaming issue #606). Measured
    here: 125 offsets/s per partition committed while 5,000 records/s were processed.
    """

    # mode names a service's logger after its module (and replaces loggers it already
    # named): a logger of our own under faust.* keeps these lines at faust's level.
    logger = logging.getLogger("faust.f2p.consumer")

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # faust passes offset_to = the delivered message's offset; the gap ends before it.
        await super()._add_gap(tp, offset_from, offset_to - 1)


class _Transport(faust_aiokafka.Transport):
    Consumer = _GapSafeConsumer


class _App(faust.App):
    """A faust App whose consumer commits past transaction markers (see _GapSafeConsumer)."""

    logger = logging.getLogger("faust.f2p.app")

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)


def make_app(
    settings: Settings,
    *,
    app_id: str,
    datadir: Path,
    replication_factor: int,
    commit_interval_s: float = 1.0,
) -> faust.App:
    """A faust App reading committed data only, with transactional offset commits.

    ``app_id`` is the consumer group and the prefix of faust's internal topics
    (``<app_id>-__assignor-__leader``), which faust creates through the admin API with
    ``replication_factor``. Keys and values stay raw bytes: processors decode with our codecs.
    """
    if settings.kafka_extra:
        raise StreamsConfigError(
            "stream processors use aiokafka and do not support the F2P_KAFKA_CONFIG_* "
            f"passthrough (set: {', '.join(sorted(settings.kafka_extra))})"
        )
    if not aiokafka_codec.has_lz4():
        # Our producers write lz4 batches (connectors/kafka.py); aiokafka decodes them with
        # cramjam, an optional dependency, and would crash on the first fetched batch.
        raise StreamsConfigError(
            "aiokafka cannot decompress lz4: install cramjam (pip install 'aiokafka[lz4]')"
        )
    brokers = [f"kafka://{host.strip()}" for host in settings.bootstrap_servers.split(",")]
    return _App(
        app_id,
        broker=brokers,
        broker_client_id=app_id,
        # Consumer isolation.level=read_committed, offsets committed in transactions. Output to
        # non-consumed topics is NOT part of those transactions (see streams/analytics.py).
        processing_guarantee="exactly_once",
        topic_replication_factor=replication_factor,
        topic_allow_declare=True,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=commit_interval_s,
        # Processors acknowledge records themselves, possibly much later than delivery; on
        # rebalance and shutdown commit what is acknowledged instead of waiting for the rest.
        stream_wait_empty=False,
        producer_acks=-1,
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        worker_redirect_stdouts=False,
    )


def quiet_faust_logging() -> None:
    """Keep faust, mode and aiokafka at WARNING unless the root logger asks for DEBUG."""
    level = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        level = logging.DEBUG
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)


class BoundedWorker(faust.Worker):
    """A faust Worker that uses our logging, runs at most ``duration_s`` and runs a hook
    (``before_stop``) while the app can still produce, whatever stopped it (signal, deadline).
    """

    logger = logging.getLogger("faust.f2p.worker")

    def __init__(
        self,
        app: faust.App,
        *,
        loop: asyncio.AbstractEventLoop,
        duration_s: float | None = None,
        before_stop: Callable[[], Awaitable[None]] | None = None,
        before_stop_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(app, loop=loop, quiet=True, override_logging=False, daemon=True)
        self.spinner = None  # it writes terminal escapes to stdout, where our JSON goes
        self._duration_s = duration_s
        self._before_stop = before_stop
        self._before_stop_timeout_s = before_stop_timeout_s

    async def on_execute(self) -> None:
        await super().on_execute()
        if self._duration_s is not None:
            self.loop.call_later(max(0.0, self._duration_s), self.stop_soon)

    def stop_soon(self) -> None:
        """Stop as on SIGTERM: graceful, idempotent."""
        logger.info("run duration reached, stopping")
        self._schedule_shutdown(signal.SIGTERM)

    async def on_stop(self) -> None:
        if self._before_stop is not None and self.app.producer.started:
            try:
                await asyncio.wait_for(self._before_stop(), self._before_stop_timeout_s)
            except Exception:
                logger.exception("pre-stop hook failed")
        await super().on_stop()
