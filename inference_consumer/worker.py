"""``f2p worker``: one consumer-group member per GPU, exactly-once output.

The worker is the exactly-once loop (``connectors.eos``) plus the inference stages. Threads and
their one job each (after Dramatiq's worker):

* **poll thread** (``Worker.run``, the caller's thread): the ``EosLoop`` — consumer and
  transactional producer, offsets, rebalances, commits, backpressure;
* **prefetch pool**: decode, validate, fetch and decode the face (``stages.prefetch``);
* **engine thread**: batches from the ``RequestBatcher`` through the engine;
* **output pool**: encode and upload images, encode the outcome's records.

Stages hand completions back through the loop's queue. Shutdown order: stop intake → drain
in-flight work within a bound → commit → close the consumer (hands partitions over) → close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from connectors.control import CancellationWatch
from connectors.eos.loop import EosLoop, LoopConfig
from connectors.eos.producer import TransactionalProducer
from connectors.health import HealthServer
from connectors.kafka import (
    configure_group,
    make_admin,
    make_consumer,
    make_transactional_producer,
)
from connectors.kafka_retry import retry_kafka
from connectors.object_store import ObjectStore, make_object_store
from connectors.registry import make_registry_client
from connectors.settings import Settings
from f2p_errors import ConfigError
from inference_consumer.batcher import RequestBatcher
from inference_consumer.config import KafkaTimeouts, WorkerConfig
from inference_consumer.engines.base import Engine
from inference_consumer.generation import EngineLoop, engine_params
from inference_consumer.handler import WorkerHandler
from inference_consumer.memory import DecodeBudget, HeldBytes
from inference_consumer.metrics import WorkerMetrics
from inference_consumer.outcomes import OutcomeWriter
from inference_consumer.prefetch import release_face
from inference_consumer.stages import StageContext
from inference_consumer.threads import name_this_thread, stage_pool
from inference_consumer.work import Outcome, WorkItem
from schemas.codec import AvroCodec
from schemas.control_records import RequestState
from schemas.validation import RequestLimits

log = logging.getLogger(__name__)


class Worker:
    """One inference worker: construct, then ``run()`` until ``stop()`` (or a signal).

    ``create_consumer`` / ``create_producer`` replace the real Kafka clients (unit tests use the
    stub cluster of ``tests/connectors/eos_stub.py``); by default they are built from
    ``settings`` with timeouts that follow the cluster's size.
    """

    def __init__(
        self,
        settings: Settings,
        config: WorkerConfig,
        engine: Engine,
        *,
        limits: RequestLimits | None = None,
        codec: AvroCodec | None = None,
        s3: ObjectStore | None = None,
        create_consumer: Callable[[KafkaTimeouts, dict[str, Any]], Any] | None = None,
        create_producer: Callable[[KafkaTimeouts], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.engine = engine
        self.metrics = WorkerMetrics(config.worker_id)
        topics = settings.topics
        # Lane name -> the internal lane topic (admission writes them; retries name them).
        self.lane_topics = topics.worker_lanes
        # Topic -> lane name, also for the ingress topics (a worker can serve them directly:
        # the naive-baseline benchmarks, a deployment without admission).
        self.lane_of_topic = {topic: lane for lane, topic in self.lane_topics.items()}
        self.lane_of_topic[topics.requests_interactive] = "interactive"
        self.lane_of_topic[topics.requests_batch] = "batch"
        served = config.lanes or tuple(self.lane_topics.values())
        self.topics = [*served, topics.retry] if config.serve_retry_topic else list(served)
        self.codec = codec or AvroCodec(
            make_registry_client(settings), auto_register=settings.embedded
        )
        self._create_consumer = create_consumer or self._real_consumer
        self._create_producer = create_producer or self._real_producer
        self._stop = threading.Event()
        weights = dict(config.lane_weights)
        self.batcher = RequestBatcher(
            {lane: weights.get(lane, 1.0) for lane in self.lane_topics},
            self._batch_key,
            max_batch_size=engine.max_batch_size,
            max_wait_s=config.max_batch_wait_ms / 1000,
        )
        self.writer = OutcomeWriter(
            topics,
            self.codec,
            lane_topics=self.lane_topics,
            source=f"worker/{config.worker_id}",
            status_events=config.status_events,
        )
        # Started in run(): admission and every worker follow the control topic.
        self.cancellations: CancellationWatch | None = None
        self.loop: EosLoop | None = None
        self.ctx = StageContext(
            config=config,
            codec=self.codec,
            s3=s3
            or make_object_store(
                settings,
                config.object_store,
                max_pool_connections=config.prefetch_threads * 2 + 8,  # boto3 only
            ),
            results_bucket=settings.results_bucket,
            engine=engine,
            limits=limits or RequestLimits(),
            metrics=self.metrics,
            emit=self._emit,
            is_current=lambda item: self.loop is not None and self.loop.is_current(item.ref),
            decode_budget=DecodeBudget(config.decode_budget_bytes),
            held=HeldBytes(config.held_bytes_limit),
            face_area=getattr(engine, "condition_area", None) or 1024 * 1024,
            cancelled=self._cancelled,
            running=self._running,
        )

    # -- life cycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (safe from signal handlers and other threads)."""
        self._stop.set()

    def healthy(self) -> bool:
        return self.loop is not None and self.loop.healthy()

    def ready(self) -> bool:
        return self.loop is not None and self.loop.ready() and not self._stop.is_set()

    def run(self) -> None:
        """Serve until stopped; raises ``connectors.eos.exceptions.ProcessorFatal`` when the
        worker must not continue (its id is in use by another process, say)."""
        timeouts = self.config.kafka_timeouts(brokers=self._check_cluster())
        log.info(
            "kafka timeouts: session %d ms, heartbeat %d ms, transaction %d ms",
            timeouts.session_timeout_ms,
            timeouts.heartbeat_interval_ms,
            timeouts.transaction_timeout_ms,
        )
        if threading.current_thread() is threading.main_thread():
            self.metrics.stage_cpu.main_thread_stage = "loop"
        else:
            name_this_thread("loop")
        prefetch_pool = stage_pool("prefetch", self.config.prefetch_threads)
        engine_loop = EngineLoop(self.ctx, self.batcher)
        handler = WorkerHandler(
            self.ctx,
            batcher=self.batcher,
            engine_loop=engine_loop,
            prefetch_pool=prefetch_pool,
            writer=self.writer,
            lane_of_topic=self.lane_of_topic,
            retry_topic=self.settings.topics.retry,
        )
        producer = TransactionalProducer(
            lambda: self._create_producer(timeouts),
            transactional_id=f"f2p-worker-{self.config.worker_id}",
        )
        self.loop = EosLoop(
            topics=self.topics,
            create_consumer=lambda loop_config: self._create_consumer(timeouts, loop_config),
            producer=producer,
            handler=handler,
            config=self._loop_config(),
            metrics=self.metrics,
        )
        self.cancellations = CancellationWatch(self.settings, self.codec).start()
        engine_thread = threading.Thread(target=engine_loop.run, name="engine", daemon=True)
        engine_thread.start()
        health = self._start_health()
        log.info(
            "worker started", extra={"worker_id": self.config.worker_id, "topics": self.topics}
        )
        try:
            self.loop.run(self._stop, drain_timeout_s=self.config.shutdown_timeout_s)
        finally:
            engine_loop.stop()
            engine_thread.join(timeout=10)
            prefetch_pool.shutdown(wait=False, cancel_futures=True)
            self.cancellations.stop()
            if health is not None:
                health.stop()
            log.info("worker stopped", extra={"worker_id": self.config.worker_id})

    def _loop_config(self) -> LoopConfig:
        c = self.config
        weights = dict(c.lane_weights)
        served = {topic: lane for topic, lane in self.lane_of_topic.items() if topic in self.topics}
        # A lane may hold a share of the in-flight slots in proportion to its weight (the
        # heaviest lane this worker serves all of them), so a low lane's backlog always leaves
        # room for the lanes above it *that this worker serves* (a worker of the batch lane
        # alone keeps every slot: capped at 16 of 64 it ran a third fewer requests per second
        # at zero service time, for no lane's benefit); but never less than two full batches
        # (one in the engine, one filling), or a lone low lane runs the GPU on small batches
        # (64 slots: batch lane 16, overquota 4 < a batch of 4+).
        heaviest = max((weights.get(lane, 1.0) for lane in served.values()), default=1.0)
        floor = 2 * self.engine.max_batch_size
        caps = {
            topic: min(
                c.max_in_flight,
                max(floor, round(c.max_in_flight * weights.get(lane, 1.0) / heaviest)),
            )
            for topic, lane in served.items()
        }
        return LoopConfig(
            max_in_flight=c.max_in_flight,
            topic_in_flight=caps,
            max_window=c.max_window,
            commit_interval_ms=c.commit_interval_ms,
            max_commit_interval_ms=c.max_commit_interval_ms,
            side_record_delay_ms=c.running_event_delay_ms,
            busy_poll_s=c.busy_poll_ms / 1000,
            stall_timeout_s=c.stall_timeout_s,
        )

    def _start_health(self) -> HealthServer | None:
        if not self.config.metrics_port:
            return None
        health = HealthServer(
            self.config.metrics_port,
            self.metrics.registry,
            self.healthy,
            self.ready,
            host=self.config.metrics_host,
            on_scrape=self.metrics.sample_gpu,
        )
        health.start()
        return health

    def _check_cluster(self) -> int:
        """Every topic the worker reads or writes exists; returns the number of brokers."""
        admin = make_admin(self.settings)
        metadata = retry_kafka("cluster metadata", lambda: admin.list_topics(timeout=10))
        t = self.settings.topics
        needed = [*self.topics, t.results, t.dlq, t.status, t.control]
        missing = [t for t in needed if t not in metadata.topics]
        if missing:
            raise ConfigError(f"topics {missing} do not exist; run `f2p topics apply`")
        brokers = len(metadata.brokers)
        if self.config.group_protocol == "consumer":
            timeouts = self.config.kafka_timeouts(brokers=brokers)
            refused = configure_group(
                admin,
                self.config.group_id,
                session_timeout_ms=timeouts.session_timeout_ms,
                heartbeat_interval_ms=timeouts.heartbeat_interval_ms,
            )
            if refused:
                log.warning(
                    "could not set group %s's session timeout to %d ms (it keeps what it has; "
                    "a broker may need a lower group.consumer.min.session.timeout.ms): %s",
                    self.config.group_id,
                    timeouts.session_timeout_ms,
                    refused,
                )
        return brokers

    # -- clients --------------------------------------------------------------------------------

    def _batch_key(self, item: WorkItem) -> Hashable:
        """Requests the engine can run in one call share a key (decoded requests only)."""
        request = item.request
        assert request is not None, "only decoded requests reach the batcher"
        return self.engine.batch_key(engine_params(request), request.prompt)

    def _real_consumer(self, timeouts: KafkaTimeouts, loop_config: dict[str, Any]) -> Any:
        c = self.config
        extra: dict[str, Any] = {
            **loop_config,
            "session.timeout.ms": timeouts.session_timeout_ms,
            "heartbeat.interval.ms": timeouts.heartbeat_interval_ms,
            # The poll thread never waits on inference: this only catches a wedged process.
            "max.poll.interval.ms": 300_000,
        }
        if c.static_membership:
            extra["group.instance.id"] = c.worker_id
        return make_consumer(
            self.settings,
            c.group_id,
            client_id=c.worker_id,
            group_protocol=c.group_protocol,
            config=extra,
        )

    def _real_producer(self, timeouts: KafkaTimeouts) -> Any:
        self.metrics.producers_created.inc()
        return make_transactional_producer(
            self.settings,
            f"f2p-worker-{self.config.worker_id}",
            client_id=self.config.worker_id,
            transaction_timeout_ms=timeouts.transaction_timeout_ms,
            delivery_timeout_ms=timeouts.transaction_timeout_ms,
        )

    # -- outcomes -------------------------------------------------------------------------------

    def _cancelled(self, request_id: str | None) -> bool:
        return self.cancellations is not None and self.cancellations.is_cancelled(request_id)

    def _running(self, item: WorkItem) -> None:
        """A RUNNING status event as the engine starts the item (next transaction)."""
        if not self.config.status_events or self.loop is None:
            return
        try:
            self.loop.side(self.writer.status(item, RequestState.RUNNING))
        except Exception as exc:  # informational: never stop the line for it
            log.debug("no RUNNING event: %s", exc)

    def _emit(self, outcome: Outcome) -> None:
        """Stages' outcomes: free the face, encode, hand to the loop (any thread)."""
        release_face(self.ctx, outcome.item)
        outcome.item.marks["completed"] = time.time_ns()
        completion = self.writer.completion(outcome)
        if self.loop is not None:
            self.loop.complete(completion)
