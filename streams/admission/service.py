"""``f2p streams admission``: one admission instance; N of them form the group ``f2p-admission``.

The exactly-once loop (``connectors.eos``) with the admission handler, a cancellation watch on
the control topic, /metrics /healthz /readyz, and a refresh of the lanes' partition counts (a
lane may grow while admission runs; the repartition topic may not: it routes request_ids to
their dedupe state).

Why not faust (which ``streams/`` uses for analytics): faust's exactly-once covers its own
changelog and offset commits, not the records an agent sends to other topics (faust-streaming
#177), and admission's every output — repartitioned requests, lane records, results, status
events, dedupe entries — must commit atomically with the input offsets. So admission runs on the
same transactional loop as the workers (confluent-kafka / librdkafka transactions, KIP-447).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from connectors.control import CancellationWatch
from connectors.eos.loop import EosLoop, LoopConfig
from connectors.eos.producer import TransactionalProducer
from connectors.health import HealthServer
from connectors.kafka import (
    KafkaTimeouts,
    configure_group,
    make_admin,
    make_consumer,
    make_transactional_producer,
)
from connectors.kafka_retry import retry_kafka
from connectors.registry import make_registry_client
from connectors.s3 import make_s3_client
from connectors.settings import Settings
from f2p_errors import ConfigError
from schemas.codec import AvroCodec
from streams.admission.config import AdmissionConfig
from streams.admission.handler import AdmissionHandler
from streams.admission.metrics import AdmissionMetrics
from streams.admission.quotas import QUOTAS_FILE, QuotaPolicy, load_quotas

log = logging.getLogger(__name__)

_PARTITION_REFRESH_S = 30.0


class Admission:
    """One admission instance: construct, then ``run()`` until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        config: AdmissionConfig,
        *,
        policy: QuotaPolicy | None = None,
        codec: AvroCodec | None = None,
        create_consumer: Callable[[KafkaTimeouts, dict[str, Any]], Any] | None = None,
        create_producer: Callable[[KafkaTimeouts], Any] | None = None,
    ) -> None:
        from pathlib import Path

        self.settings = settings
        self.config = config
        self.topics = settings.topics
        self.policy = policy or load_quotas(
            Path(config.quotas_file) if config.quotas_file else QUOTAS_FILE
        )
        self.codec = codec or AvroCodec(
            make_registry_client(settings), auto_register=settings.embedded
        )
        self.metrics = AdmissionMetrics(config.instance_id)
        self.ingress = list(self.topics.request_lanes)
        self._create_consumer = create_consumer or self._real_consumer
        self._create_producer = create_producer or self._real_producer
        self._stop = threading.Event()
        self.loop: EosLoop | None = None
        self.handler: AdmissionHandler | None = None

    def stop(self) -> None:
        self._stop.set()

    def healthy(self) -> bool:
        return self.loop is not None and self.loop.healthy()

    def ready(self) -> bool:
        return self.loop is not None and self.loop.ready() and not self._stop.is_set()

    def run(self) -> None:
        admin = make_admin(self.settings)
        partitions, brokers = self._check_cluster(admin)
        timeouts = KafkaTimeouts.for_cluster(brokers)
        timeouts = KafkaTimeouts(
            session_timeout_ms=self.config.session_timeout_ms or timeouts.session_timeout_ms,
            heartbeat_interval_ms=self.config.heartbeat_interval_ms
            or timeouts.heartbeat_interval_ms,
            transaction_timeout_ms=self.config.transaction_timeout_ms
            or timeouts.transaction_timeout_ms,
        )
        if self.config.group_protocol == "consumer":
            refused = configure_group(
                admin,
                self.config.group_id,
                session_timeout_ms=timeouts.session_timeout_ms,
                heartbeat_interval_ms=timeouts.heartbeat_interval_ms,
            )
            if refused:
                log.warning(
                    "group %s keeps the broker's timeouts: %s", self.config.group_id, refused
                )
        cancellations = CancellationWatch(self.settings, self.codec).start()
        s3 = make_s3_client(self.settings)

        def claim_check(key: str, body: bytes) -> str:
            s3.put_object(Bucket=self.settings.results_bucket, Key=key, Body=body)
            return f"s3://{self.settings.results_bucket}/{key}"

        self.handler = AdmissionHandler(
            settings=self.settings,
            config=self.config,
            codec=self.codec,
            policy=self.policy,
            cancellations=cancellations,
            metrics=self.metrics,
            partitions=partitions,
            claim_check=claim_check,
        )
        producer = TransactionalProducer(
            lambda: self._create_producer(timeouts),
            transactional_id=f"f2p-admission-{self.config.instance_id}",
        )
        self.loop = EosLoop(
            topics=[*self.ingress, self.topics.admission_repartition],
            create_consumer=lambda loop_config: self._create_consumer(timeouts, loop_config),
            producer=producer,
            handler=self.handler,
            config=LoopConfig(
                max_in_flight=self.config.max_in_flight,
                commit_interval_ms=self.config.commit_interval_ms,
                max_window=4096,
            ),
            metrics=self.metrics,
        )
        self.handler.loop = self.loop
        refresher = threading.Thread(
            target=self._refresh_partitions, args=(admin,), name="partitions", daemon=True
        )
        refresher.start()
        health = self._start_health()
        log.info("admission started", extra={"instance_id": self.config.instance_id})
        try:
            self.loop.run(self._stop, drain_timeout_s=self.config.shutdown_timeout_s)
        finally:
            self._stop.set()
            cancellations.stop()
            if health is not None:
                health.stop()
            log.info("admission stopped", extra={"instance_id": self.config.instance_id})

    def _check_cluster(self, admin: Any) -> tuple[dict[str, int], int]:
        """Every topic exists and the dedupe changelog is aligned with the repartition topic;
        the partition count of each topic admission writes by partition, and the brokers."""
        metadata = retry_kafka("cluster metadata", lambda: admin.list_topics(timeout=10))
        t = self.topics
        needed = [
            *self.ingress,
            t.admission_repartition,
            t.admission_dedupe,
            *t.worker_lanes.values(),
            t.results,
            t.status,
            t.dlq,
            t.control,
        ]
        missing = [name for name in needed if name not in metadata.topics]
        if missing:
            raise ConfigError(f"topics {missing} do not exist; run `f2p topics apply`")
        counts = {name: len(metadata.topics[name].partitions) for name in needed}
        if counts[t.admission_dedupe] != counts[t.admission_repartition]:
            raise ConfigError(
                f"{t.admission_dedupe} has {counts[t.admission_dedupe]} partitions and "
                f"{t.admission_repartition} {counts[t.admission_repartition]}: they must be equal "
                "(each repartition partition's dedupe state lives in the same changelog partition)"
            )
        return counts, len(metadata.brokers)

    def _refresh_partitions(self, admin: Any) -> None:
        """Follow lane partition raises: new lane partitions get traffic within a refresh."""
        lanes = list(self.topics.worker_lanes.values())
        while not self._stop.wait(_PARTITION_REFRESH_S):
            try:
                metadata = admin.list_topics(timeout=10)
                counts = {name: len(metadata.topics[name].partitions) for name in lanes}
            except Exception as exc:  # the next refresh tries again
                log.debug("partition refresh failed: %s", exc)
                continue
            if self.handler is not None:
                self.handler.set_partitions(counts)

    def _start_health(self) -> HealthServer | None:
        if not self.config.metrics_port:
            return None
        health = HealthServer(
            self.config.metrics_port,
            self.metrics.registry,
            self.healthy,
            self.ready,
            host=self.config.metrics_host,
        )
        health.start()
        return health

    def _real_consumer(self, timeouts: KafkaTimeouts, loop_config: dict[str, Any]) -> Any:
        c = self.config
        extra: dict[str, Any] = {
            **loop_config,
            "session.timeout.ms": timeouts.session_timeout_ms,
            "heartbeat.interval.ms": timeouts.heartbeat_interval_ms,
            "max.poll.interval.ms": 300_000,
        }
        if c.static_membership:
            extra["group.instance.id"] = c.instance_id
        return make_consumer(
            self.settings,
            c.group_id,
            client_id=c.instance_id,
            group_protocol=c.group_protocol,
            config=extra,
        )

    def _real_producer(self, timeouts: KafkaTimeouts) -> Any:
        return make_transactional_producer(
            self.settings,
            f"f2p-admission-{self.config.instance_id}",
            client_id=self.config.instance_id,
            transaction_timeout_ms=timeouts.transaction_timeout_ms,
            delivery_timeout_ms=timeouts.transaction_timeout_ms,
        )
