"""The embedded Kafka cluster as a whole: its identity on disk and what "settled" means.

A cluster is formatted once: ``data/kafka-cluster.json`` keeps the cluster id, the node count and
each node's metadata directory id (the voter set every node is formatted with). A later ``up``
with another node count is refused instead of starting nodes that can never form a quorum.

``wait_settled`` is the readiness the chaos tests need after a fault: every broker registered,
every partition with a leader and a full ISR, every partition answering ListOffsets. The
coordinator lookups name the broker a test must kill to hit a transaction or group coordinator.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from infra.stack.config import StackConfig, recorded_brokers
from infra.stack.exceptions import StackError

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"
TRANSACTIONS_TOPIC = "__transaction_state"


@dataclass(frozen=True)
class ClusterLayout:
    """What every node is formatted with; fixed for the life of the state directory."""

    cluster_id: str
    brokers: int
    directory_ids: dict[int, str]


def kafka_uuid(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A random Kafka Uuid in its text form (22 characters of URL-safe base64).

    Never one starting with "-", as Kafka's own ``Uuid.randomUuid()``: ``kafka-storage format
    -t -TDr8…`` reads such an id as an option and fails (1 cluster start in 64 did, in CI-like
    runs of the chaos suite)."""
    while True:
        text = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def ensure_layout(config: StackConfig) -> ClusterLayout:
    """The recorded layout, created on first use; StackError when the state directory already
    holds a cluster of another size."""
    recorded = recorded_brokers(config.state_dir)
    if recorded is not None and recorded != config.brokers:
        raise StackError(
            f"{config.state_dir} holds a {recorded}-broker Kafka cluster, asked for "
            f"{config.brokers}: run `f2p stack down --purge` first, or use another F2P_STACK_DIR"
        )
    if config.cluster_file.exists():
        return read_layout(config)
    layout = ClusterLayout(
        cluster_id=_formatted_cluster_id(config) or kafka_uuid(),
        brokers=config.brokers,
        directory_ids={n: kafka_uuid() for n in range(1, config.brokers + 1)},
    )
    config.cluster_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.cluster_file.with_suffix(".tmp")
    payload = {"cluster_id": layout.cluster_id, "brokers": layout.brokers,
               "directory_ids": {str(n): d for n, d in layout.directory_ids.items()}}  # fmt: skip
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, config.cluster_file)
    return layout


def _formatted_cluster_id(config: StackConfig) -> str | None:
    """The cluster id of a single node formatted before layouts were recorded."""
    meta = config.data_dir / "kafka" / "log" / "meta.properties"
    if not meta.exists():
        return None
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return None


def read_layout(config: StackConfig) -> ClusterLayout:
    """The layout written by :func:`ensure_layout`."""
    raw = json.loads(config.cluster_file.read_text())
    return ClusterLayout(
        cluster_id=raw["cluster_id"],
        brokers=int(raw["brokers"]),
        directory_ids={int(n): d for n, d in raw["directory_ids"].items()},
    )


def bootstrap_servers(config: StackConfig) -> str:
    """Every node's client endpoint, comma-separated: clients survive any one node's loss."""
    return ",".join(
        f"127.0.0.1:{config.ports.kafka_node(n)[0]}" for n in range(1, config.brokers + 1)
    )


def quiet_admin(bootstrap: str) -> AdminClient:
    """An admin client for probes: short socket timeout, no log lines for refused connections
    (a broker still booting or just killed is expected here)."""
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})


def check_list_offsets(admin: AdminClient, topics: dict, timeout_s: float = 10.0) -> None:
    """Raise RuntimeError unless every non-internal partition in ``topics`` (list_topics
    metadata) answers a ListOffsets request."""
    partitions = [
        TopicPartition(name, p)
        for name, meta in topics.items()
        for p in meta.partitions
        if not name.startswith("__")
    ]
    if not partitions:
        return
    futures = admin.list_offsets(
        {tp: OffsetSpec.latest() for tp in partitions}, request_timeout=min(timeout_s, 5)
    )
    for tp, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            raise RuntimeError(f"{tp.topic}[{tp.partition}] not serving yet: {exc}") from exc


def settle_problems(admin: AdminClient, expected_brokers: int) -> list[str]:
    """Why the cluster is not settled yet (empty when it is): missing brokers, partitions
    without a leader or with a shrunk ISR. Does not check ListOffsets (see wait_settled)."""
    metadata = admin.list_topics(timeout=5)
    problems = []
    live = sorted(metadata.brokers)
    if len(live) < expected_brokers:
        problems.append(f"{len(live)} of {expected_brokers} brokers live ({live})")
    for name, topic in sorted(metadata.topics.items()):
        if topic.error is not None:
            problems.append(f"{name}: {topic.error}")
            continue
        for p, part in sorted(topic.partitions.items()):
            if part.leader < 0:
                problems.append(f"{name}[{p}] has no leader")
            elif set(part.isrs) != set(part.replicas):
                problems.append(f"{name}[{p}] ISR {sorted(part.isrs)} of {sorted(part.replicas)}")
    return problems


def wait_settled(
    bootstrap: str,
    expected_brokers: int,
    timeout_s: float = 120.0,
    *,
    balance_leaders: bool = False,
) -> float:
    """Block until the cluster is fully settled; return the seconds it took.

    Settled: ``expected_brokers`` brokers are live, every partition (internal ones included) has
    a leader and an ISR equal to its replica set, and every non-internal partition answers
    ListOffsets. ``balance_leaders`` also moves each leadership back to its preferred replica
    (a restarted broker leads nothing until then), so that consecutive faults start from the
    same placement. Raises StackError naming what is still unsettled at the deadline.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    admin = quiet_admin(bootstrap)
    problems: list[str] = ["not checked yet"]
    while time.monotonic() < deadline:
        try:
            problems = settle_problems(admin, expected_brokers)
            if not problems:
                topics = admin.list_topics(timeout=5).topics
                check_list_offsets(admin, topics, timeout_s=max(1.0, deadline - time.monotonic()))
                if balance_leaders:
                    problems = _elect_preferred_leaders(admin, topics)
            if not problems:
                return time.monotonic() - started
        except (KafkaException, RuntimeError, TimeoutError) as exc:
            problems = [str(exc) or type(exc).__name__]
        time.sleep(0.2)
    shown = "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
    raise StackError(f"Kafka cluster at {bootstrap} not settled after {timeout_s:.0f} s: {shown}")


def _elect_preferred_leaders(admin: AdminClient, topics: dict) -> list[str]:
    """Ask for a preferred-leader election where the leader is not the first replica; return
    the partitions still led by another broker (empty once balanced)."""
    from confluent_kafka import ElectionType

    off = [
        TopicPartition(name, p)
        for name, meta in topics.items()
        for p, part in meta.partitions.items()
        if part.replicas and part.leader != part.replicas[0]
    ]
    if not off:
        return []
    try:
        # No request_timeout: confluent-kafka 2.16 raises SystemError when one is passed.
        admin.elect_leaders(ElectionType.PREFERRED, off).result(timeout=10)
    except (KafkaException, TimeoutError) as exc:  # ELECTION_NOT_NEEDED...: look again next round
        log.debug("preferred leader election: %s", exc)
    return [f"{tp.topic}[{tp.partition}] not led by its preferred replica" for tp in off]


# -- who leads what --------------------------------------------------------------------------


def partition_leaders(admin: AdminClient, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """The current leader (node id, -1 for none) of every partition of ``topics``."""
    metadata = admin.list_topics(timeout=10).topics
    leaders = {}
    for name in topics:
        if name not in metadata:
            raise StackError(f"topic {name} does not exist")
        for p, part in metadata[name].partitions.items():
            leaders[TopicPartition(name, p)] = part.leader
    return leaders


def busiest_broker(admin: AdminClient, topics: Iterable[str]) -> int:
    """The node that leads the most partitions of ``topics`` (lowest id on a tie)."""
    counts = Counter(leader for leader in partition_leaders(admin, topics).values() if leader >= 0)
    if not counts:
        raise StackError("no partition of these topics has a leader")
    return min(counts, key=lambda node: (-counts[node], node))


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode()`` (over UTF-16 code units, 32-bit signed overflow)."""
    h = 0
    units = text.encode("utf-16-be")
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i : i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator_partition(key: str, partitions: int) -> int:
    """The internal-topic partition Kafka maps a group or transactional id to
    (``Utils.abs(key.hashCode()) % partitions``; abs of MIN_VALUE is 0 there)."""
    h = java_string_hash(key)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def transaction_coordinator(admin: AdminClient, transactional_id: str) -> int:
    """The node coordinating ``transactional_id``: leader of its ``__transaction_state``
    partition. StackError until the first transactional producer created that topic."""
    return _coordinator(admin, TRANSACTIONS_TOPIC, transactional_id)


def group_coordinator(admin: AdminClient, group_id: str) -> int:
    """The node coordinating consumer group ``group_id``: leader of its
    ``__consumer_offsets`` partition."""
    return _coordinator(admin, OFFSETS_TOPIC, group_id)


def _coordinator(admin: AdminClient, topic: str, key: str) -> int:
    metadata = admin.list_topics(topic=topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise StackError(f"{topic} does not exist yet (no client has used it)")
    leader = metadata.partitions[coordinator_partition(key, len(metadata.partitions))].leader
    if leader < 0:
        raise StackError(f"the {topic} partition of {key!r} has no leader")
    return leader
