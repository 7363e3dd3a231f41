"""Apache Kafka 4.x as a single KRaft node (broker and controller in one JVM).

Sized for a 2-core machine: few network and I/O threads, a small heap, and every internal topic
(offsets, transaction state, share-group state) at replication factor 1.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from infra.stack.component import Component
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


class KafkaBroker(Component):
    """The Kafka component: writes server.properties, formats storage once, runs kafka.Kafka."""

    name = "kafka"

    def ports(self) -> dict[str, int]:
        return {"client": self.config.ports.kafka, "controller": self.config.ports.kafka_controller}

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.config.ports.kafka}"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    def server_properties(self) -> dict[str, str | int]:
        """The broker configuration; the comments say why a value differs from Kafka's."""
        ports = self.config.ports
        return {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{ports.kafka_controller}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{ports.kafka},CONTROLLER://127.0.0.1:{ports.kafka_controller}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{ports.kafka}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            # Topics are created from infra/topics.toml, never by a typo in a client.
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            # One node: every internal topic can only have one replica.
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
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
            # 2 cores: the defaults (3 network, 8 I/O threads) only add context switches.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 4,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
            # Compacted dedupe topics are small; clean them often enough to see it locally.
            "log.cleaner.backoff.ms": 5000,
            "delete.topic.enable": "true",
        }

    def prepare(self) -> None:
        """Write the config files and format the storage directory the first time only."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = "\n".join(f"{k}={v}" for k, v in self.server_properties().items())
        self.properties_file.write_text(props + "\n")
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2_XML)
        if (self.data_dir / "log" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self._run_java(
            "kafka.tools.StorageTool",
            ["format", "-t", cluster_id, "-c", str(self.properties_file), "--standalone"],
        )

    def _java_argv(self, main_class: str, args: list[str]) -> list[str]:
        assert self.artifacts is not None
        heap = self.config.kafka_heap
        return [
            str(self.artifacts.java17),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
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
        admin = AdminClient(
            # log_level 0: a broker still booting is expected here, not worth a log line.
            {"bootstrap.servers": self.endpoint(), "socket.timeout.ms": 2000, "log_level": 0}
        )
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
            raise RuntimeError(
                f"{len(leaderless)} partitions without a leader, e.g. {leaderless[0]}"
            )
        # A leader named in the metadata may still answer NOT_LEADER_FOR_PARTITION until it has
        # loaded the partition's log: ready means every partition serves a ListOffsets request.
        partitions = [
            TopicPartition(name, p)
            for name, meta in topics.items()
            for p in meta.partitions
            if not name.startswith("__")
        ]
        if partitions:
            futures = admin.list_offsets(
                {tp: OffsetSpec.latest() for tp in partitions}, request_timeout=5
            )
            for tp, future in futures.items():
                try:
                    future.result(timeout=10)
                except KafkaException as exc:
                    raise RuntimeError(
                        f"{tp.topic}[{tp.partition}] not serving yet: {exc}"
                    ) from exc
