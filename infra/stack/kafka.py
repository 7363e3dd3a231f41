"""Apache Kafka 4.x KRaft nodes, each a broker and a controller in one JVM.

One node by default, sized for a 2-core machine: few network and I/O threads, a small heap, and
every internal topic (offsets, transaction state, share-group state) at replication factor 1.
With ``brokers=3`` (``f2p stack up --brokers 3``): three nodes forming one controller quorum,
internal topics at replication 3 with min.insync 2, so that a broker can be lost.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from infra.stack.artifacts import StackArtifacts
from infra.stack.cluster import check_list_offsets, quiet_admin, read_layout
from infra.stack.component import Component
from infra.stack.config import StackConfig
from infra.stack.exceptions import StackError

_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Quiet broker log: warnings, plus the line that says the server started. -->
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="stdout"/></Root>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Logger name="kafka.server.BrokerServer" level="INFO"/>
  </Loggers>
</Configuration>
"""


# One node: every internal topic can only have one replica.
_SINGLE_NODE: dict[str, str | int] = {
    "offsets.topic.replication.factor": 1,
    "transaction.state.log.replication.factor": 1,
    "transaction.state.log.min.isr": 1,
    "share.coordinator.state.topic.replication.factor": 1,
    "share.coordinator.state.topic.min.isr": 1,
    # 2 cores: the defaults (3 network, 8 I/O threads) only add context switches.
    "num.network.threads": 2,
    "num.io.threads": 4,
    "background.threads": 4,
}


class KafkaBroker(Component):
    """One Kafka node (broker and controller in one JVM): writes server.properties, formats
    storage once, runs kafka.Kafka.

    A 1-broker stack has one node named ``kafka``; a cluster has ``kafka-1`` … ``kafka-N`` with
    node ids 1 … N, each with its own ports (``StackPorts.kafka_node``), data directory and log.
    """

    name = "kafka"

    def __init__(
        self, config: StackConfig, artifacts: StackArtifacts | None, node_id: int = 1
    ) -> None:
        super().__init__(config, artifacts)
        self.node_id = node_id
        self.name = node_name(config, node_id)

    @property
    def client_port(self) -> int:
        return self.config.ports.kafka_node(self.node_id)[0]

    @property
    def controller_port(self) -> int:
        return self.config.ports.kafka_node(self.node_id)[1]

    def ports(self) -> dict[str, int]:
        return {"client": self.client_port, "controller": self.controller_port}

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def controller_endpoint(self) -> str:
        return f"127.0.0.1:{self.controller_port}"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    def server_properties(self) -> dict[str, str | int]:
        """The broker configuration; the comments say why a value differs from Kafka's."""
        if self.config.brokers > 1:
            return {**self._common_properties(), **self._cluster_properties()}
        return {**self._common_properties(), **_SINGLE_NODE}

    def _common_properties(self) -> dict[str, str | int]:
        controllers = ",".join(
            f"127.0.0.1:{self.config.ports.kafka_node(n)[1]}"
            for n in range(1, self.config.brokers + 1)
        )
        return {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.bootstrap.servers": controllers,
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.client_port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.client_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            # Topics are created from infra/topics.toml, never by a typo in a client.
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            # Fewer internal partitions: faster first start and coordinator loading on 2 cores.
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.num.partitions": 8,
            # Tests and failover: a new group member is assigned at once, not after 3 s.
            "group.initial.rebalance.delay.ms": 0,
            # Lets workers use short session timeouts so a kill -9 is detected in seconds.
            "group.min.session.timeout.ms": 1000,
            "group.consumer.min.session.timeout.ms": 1000,
            "group.consumer.min.heartbeat.interval.ms": 500,
            # Abort transactions of dead producers within a second of their timeout.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": 1000,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
            # Compacted dedupe topics are small; clean them often enough to see it locally.
            "log.cleaner.backoff.ms": 5000,
            "delete.topic.enable": "true",
        }

    def _cluster_properties(self) -> dict[str, str | int]:
        replicas = min(3, self.config.brokers)
        min_isr = max(1, replicas - 1)
        return {
            # Internal topics like a production cluster: one broker may be lost without losing
            # a committed offset or transaction marker, and acks=all still succeeds meanwhile.
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # Topics created without an explicit factor (tests, tools) are replicated too.
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            # N JVMs on 2 cores: one network thread, two request handlers, one replica fetcher
            # each. Failure detection (broker session 9 s, heartbeats 2 s, replica lag 30 s)
            # keeps Kafka's defaults: the cluster fails over like a real one.
            "num.network.threads": 1,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.replica.fetchers": 1,
        }

    def prepare(self) -> None:
        """Write the config files and format the storage directory the first time only."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = "\n".join(f"{k}={v}" for k, v in self.server_properties().items())
        self.properties_file.write_text(props + "\n")
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2_XML)
        if (self.data_dir / "log" / "meta.properties").exists():
            return
        layout = read_layout(self.config)
        args = ["format", "-t", layout.cluster_id, "-c", str(self.properties_file)]
        if self.config.brokers == 1:
            args.append("--standalone")
        else:
            # Every node is formatted with the same voter set (KIP-853 dynamic quorum): node id,
            # controller endpoint and the directory id this node's metadata log will carry.
            voters = ",".join(
                f"{n}@127.0.0.1:{self.config.ports.kafka_node(n)[1]}:{layout.directory_ids[n]}"
                for n in range(1, self.config.brokers + 1)
            )
            args += ["--initial-controllers", voters]
        self._run_java("kafka.tools.StorageTool", args)

    def _java_argv(self, main_class: str, args: list[str]) -> list[str]:
        assert self.artifacts is not None
        heap = self.config.kafka_heap
        # Several JVMs on 2 cores: one GC worker thread each instead of one per core.
        threads = (
            ["-XX:ParallelGCThreads=1", "-XX:ConcGCThreads=1"] if self.config.brokers > 1 else []
        )
        return [
            str(self.artifacts.java17),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            *threads,
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            "-cp",
            self.artifacts.kafka_classpath,
            main_class,
            *args,
        ]

    def _run_java(self, main_class: str, args: list[str]) -> None:
        argv = self._java_argv(main_class, args)
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"kafka storage format failed: {result.stdout}{result.stderr}")

    def command(self) -> list[str]:
        return self._java_argv("kafka.Kafka", [str(self.properties_file)])

    def probe(self) -> None:
        """Ready: on one node, the whole cluster serves (see ``probe_cluster``); in a cluster,
        this node answers and is a live (unfenced) broker. ``stack_up`` then waits for the
        cluster as a whole."""
        if self.config.brokers == 1:
            probe_cluster(self.endpoint())
            return
        # One metadata request to this node: our cluster (not another stack's broker on a port
        # from a stale environment) and this node among the live (unfenced) brokers.
        metadata = quiet_admin(self.endpoint()).list_topics(timeout=5)
        expected = read_layout(self.config).cluster_id
        if metadata.cluster_id != expected:
            raise RuntimeError(
                f"{self.endpoint()} belongs to cluster {metadata.cluster_id}, not {expected}"
            )
        if self.node_id not in metadata.brokers:
            live = sorted(metadata.brokers)
            raise RuntimeError(f"node {self.node_id} is not a live broker yet (live: {live})")


def node_name(config: StackConfig, node_id: int) -> str:
    """``kafka`` on a 1-broker stack, ``kafka-<id>`` in a cluster."""
    return "kafka" if config.brokers == 1 else f"kafka-{node_id}"


def kafka_nodes(config: StackConfig, artifacts: StackArtifacts | None = None) -> list[KafkaBroker]:
    """Every Kafka node of the configured stack, node 1 first."""
    return [KafkaBroker(config, artifacts, n) for n in range(1, config.brokers + 1)]


def probe_cluster(bootstrap: str) -> None:
    """Raise unless the cluster serves: a live broker, a leader for every partition, and every
    non-internal partition answering ListOffsets."""
    admin = quiet_admin(bootstrap)
    cluster = admin.describe_cluster(request_timeout=2).result(timeout=3)
    if not cluster.nodes:
        raise RuntimeError("cluster has no live broker yet")
    # After a restart the broker answers before it has loaded every partition's log.
    topics = admin.list_topics(timeout=5).topics
    leaderless = [
        f"{name}[{p}]"
        for name, meta in topics.items()
        for p, part in meta.partitions.items()
        if part.leader < 0
    ]
    if leaderless:
        raise RuntimeError(f"{len(leaderless)} partitions without a leader, e.g. {leaderless[0]}")
    # A leader named in the metadata may still answer NOT_LEADER_FOR_PARTITION until it has
    # loaded the partition's log: ready means every partition serves a ListOffsets request.
    check_list_offsets(admin, topics)
