"""Kafka client factories with tuned, commented defaults.

Every factory takes the one :class:`~connectors.settings.Settings` object plus keyword overrides
(librdkafka property names with ``_`` for ``.``, or a ``config`` dict) that win over defaults.
Security settings from ``F2P_KAFKA_CONFIG_*`` are applied to every client.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from connectors.settings import Settings

_librdkafka_log = logging.getLogger("librdkafka")


def located(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed or delivered message.

    confluent-kafka types them optional (a message not yet delivered has none); a message that
    poll() returned without an error, or a delivery report without one, has all three.
    """
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError(f"message has no position: {topic}[{partition}]@{offset}")
    return topic, partition, offset


def common_config(settings: Settings, client_id: str) -> dict[str, Any]:
    """Settings every client shares: where the cluster is, who we are, how the socket behaves."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"{client_id}@{socket.gethostname()}",
        # Small request/response messages dominate (commits, txn markers): no Nagle delay.
        "socket.nagle.disable": True,
        "socket.keepalive.enable": True,
        # librdkafka's defaults (60 s request timeout, 30 s connection setup, reconnect back-off
        # growing to 10 s) kept a SIGSTOPped broker's clients waiting for its whole pause and
        # resumed results 20-25 s after a lost quorum came back (issue 7). A hung broker is
        # given up after 10 s; a restarted one is reconnected to within a second. (A
        # transactional producer needs socket.timeout.ms <= transaction.timeout.ms.)
        "socket.timeout.ms": 10_000,
        "socket.connection.setup.timeout.ms": 5_000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 1_000,
        # Route librdkafka's own log lines into Python logging instead of stderr.
        "logger": _librdkafka_log,
        **settings.kafka_extra,
    }


def producer_config(settings: Settings, client_id: str = "f2p-producer") -> dict[str, Any]:
    """Idempotent, ``acks=all`` producer config: no duplicates or reordering on retry."""
    return {
        **common_config(settings, client_id),
        "enable.idempotence": True,
        "acks": "all",
        # The Java client's partitioner: a key lands on the same partition whichever client
        # (Java, faust/aiokafka, librdkafka) produced it.
        "partitioner": "murmur2_random",
        # Wait up to 5 ms to fill batches: ~free latency, far fewer requests at 1k msg/s.
        "linger.ms": 5,
        "batch.size": 256 * 1024,
        # lz4: cheapest CPU per byte saved; Avro requests compress well, images do not anyway.
        "compression.type": "lz4",
        # A message that cannot be delivered in 2 minutes fails its future instead of hanging.
        "delivery.timeout.ms": 120_000,
        "message.max.bytes": 2 * 1024 * 1024,
        "socket.send.buffer.bytes": 1024 * 1024,
    }


def make_producer(settings: Settings, *, client_id: str = "f2p-producer", **overrides: Any):
    """An idempotent producer (for publishers and tools)."""
    return Producer({**producer_config(settings, client_id), **_overrides(overrides)})


def make_transactional_producer(
    settings: Settings,
    transactional_id: str,
    *,
    client_id: str | None = None,
    **overrides: Any,
) -> Producer:
    """A transactional producer; call ``init_transactions()`` before the first transaction.

    ``transactional_id`` must be stable across restarts of the same logical worker so that the
    new instance fences the old one and aborts its open transaction (KIP-98/KIP-447).
    """
    config = {
        **producer_config(settings, client_id or transactional_id),
        "transactional.id": transactional_id,
        # The worker keeps a transaction open for well under a second; a dead producer's open
        # transaction is aborted by the coordinator after this long at most.
        "transaction.timeout.ms": 30_000,
        # librdkafka requires message.timeout.ms <= transaction.timeout.ms.
        "delivery.timeout.ms": 30_000,
        # Transactions commit every few ms: do not linger on top of that.
        "linger.ms": 2,
        # A transaction begun right after a commit gets CONCURRENT_TRANSACTIONS from the
        # coordinator until the previous one's markers are written; librdkafka retries after
        # retry.backoff.ms (default 100 ms). Measured here: back-to-back transactions took
        # ~100 ms each with the default and ~4 ms with 10 ms. Backoff stays exponential up to
        # retry.backoff.max.ms (1 s) for errors that persist.
        "retry.backoff.ms": 10,
    }
    config = {**config, **_overrides(overrides)}
    # librdkafka refuses socket.timeout.ms > transaction.timeout.ms + 100.
    config["socket.timeout.ms"] = min(config["socket.timeout.ms"], config["transaction.timeout.ms"])
    return Producer(config)


def consumer_config(settings: Settings, group_id: str, client_id: str) -> dict[str, Any]:
    """A ``read_committed`` consumer that never commits by itself."""
    return {
        **common_config(settings, client_id),
        "group.id": group_id,
        # Only see committed transactional output (results written by workers).
        "isolation.level": "read_committed",
        # Offsets are committed by the owner of the processing: in a transaction, or explicitly.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Incremental rebalancing: a member joining or leaving does not stop the others.
        "partition.assignment.strategy": "cooperative-sticky",
        # Low latency: answer a fetch as soon as one byte is there, wait at most 50 ms otherwise.
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 50,
        # Bound prefetch memory per consumer (default 64 MiB); requests are small.
        "queued.max.messages.kbytes": 16 * 1024,
        # Bound one fetch response (default 50 MiB / 100 MB): lanes hold messages of at most
        # 1 MiB, and a hostile batch decompresses into at most this much.
        "fetch.max.bytes": 8 * 1024 * 1024,
        "receive.message.max.bytes": 16 * 1024 * 1024,
        "socket.receive.buffer.bytes": 1024 * 1024,
    }


# Settings of the classic group protocol that KIP-848 moves to the broker (group configs).
_CLASSIC_ONLY = ("partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms")


def make_consumer(
    settings: Settings,
    group_id: str,
    *,
    client_id: str | None = None,
    group_protocol: str = "classic",
    **overrides: Any,
) -> Consumer:
    """A consumer in ``group_id`` reading committed data only, committing nothing by itself.

    ``group_protocol="consumer"`` joins with KIP-848 and the broker's ``range`` assignor: every
    topic's partitions are spread evenly over the members (the classic cooperative-sticky
    assignor balances the *total* count, so one worker could get all of one lane and another
    none), rebalances stay incremental and sticky, and co-partitioned topics give the same
    partition numbers to the same member. Session and heartbeat times are then group configs
    (``configure_group``).
    """
    config = {**consumer_config(settings, group_id, client_id or group_id), **_overrides(overrides)}
    if group_protocol == "consumer":
        for key in _CLASSIC_ONLY:
            config.pop(key, None)
        config["group.protocol"] = "consumer"
        config["group.remote.assignor"] = "range"
    return Consumer(config)


def configure_group(
    admin: AdminClient, group_id: str, *, session_timeout_ms: int, heartbeat_interval_ms: int
) -> str | None:
    """Set a KIP-848 group's session and heartbeat times (idempotent); the reason when the broker
    refused (e.g. below its group.consumer.min.session.timeout.ms, 45 s by default): the group
    then keeps the broker's defaults."""
    resource = ConfigResource(
        ResourceType.GROUP,
        group_id,
        incremental_configs=[
            ConfigEntry(
                "consumer.session.timeout.ms",
                str(session_timeout_ms),
                incremental_operation=AlterConfigOpType.SET,
            ),
            ConfigEntry(
                "consumer.heartbeat.interval.ms",
                str(heartbeat_interval_ms),
                incremental_operation=AlterConfigOpType.SET,
            ),
        ],
    )
    try:
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=30)
    except Exception as exc:  # the group still works, with the broker's timings
        return str(exc)
    return None


def make_admin(settings: Settings, **overrides: Any) -> AdminClient:
    """An admin client for topics, configs and cluster description."""
    return AdminClient({**common_config(settings, "f2p-admin"), **_overrides(overrides)})


def _overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``linger_ms=0`` → ``{"linger.ms": 0}``; a ``config`` dict is merged as is."""
    config = dict(overrides.pop("config", None) or {})
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return config


@dataclass(frozen=True)
class KafkaTimeouts:
    """Failure-detection timeouts of one worker.

    A single-node cluster cannot fail over, so its members can detect each other's death fast
    (4 s session, 6 s transactions: a kill -9 is over in seconds). A real cluster's brokers
    detect a dead broker after broker.session.timeout.ms (9 s) and then move leadership and
    group coordinators; a client session shorter than that expired every worker at once when the
    coordinator's broker died (issue 7: all sessions lost, every open transaction aborted). So
    clusters get a 20 s session (about twice the broker's detection) and 20 s transactions (a
    transaction open longer than a broker failover is aborted by the coordinator — work redone,
    nothing lost — while a dead worker's open transaction delays its partitions' new owner by at
    most that long).
    """

    session_timeout_ms: int
    heartbeat_interval_ms: int
    transaction_timeout_ms: int

    @classmethod
    def for_cluster(cls, brokers: int) -> KafkaTimeouts:
        if brokers <= 1:
            return cls(
                session_timeout_ms=4000, heartbeat_interval_ms=500, transaction_timeout_ms=6000
            )
        return cls(
            session_timeout_ms=20_000, heartbeat_interval_ms=3000, transaction_timeout_ms=20_000
        )
