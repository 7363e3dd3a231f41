"""Kafka's own command-line tools (``kafka-consumer-groups.sh`` and friends) without a Kafka
distribution: the same main classes, run from the jars the stack fetched (``kafka-tools``).

``f2p kafka consumer-groups --describe --group f2p-workers`` runs what
``kafka-consumer-groups.sh --bootstrap-server <stack> --describe --group f2p-workers`` would:
``--bootstrap-server`` is filled in from ``F2P_BOOTSTRAP_SERVERS`` or the running stack's
``state.json`` unless given. ``F2P_KAFKA_CONFIG_*`` security settings are not passed on: give the
tool its own ``--command-config`` file against a secured cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from f2p_errors import ConfigError


@dataclass(frozen=True)
class KafkaTool:
    """One tool: its main class and where ``--bootstrap-server`` goes."""

    main_class: str
    help: str
    # argparse4j tools with sub-commands take global options before the sub-command, except
    # kafka-cluster whose sub-commands own the option: there it follows the sub-command.
    bootstrap_after_subcommand: bool = False
    needs_bootstrap: bool = True


_T = "org.apache.kafka.tools."

#: ``f2p kafka <name>``: the part of ``kafka-<name>.sh`` after ``kafka-``.
TOOLS: dict[str, KafkaTool] = {
    "topics": KafkaTool(_T + "TopicCommand", "create, describe, alter topics"),
    "console-consumer": KafkaTool(_T + "consumer.ConsoleConsumer", "print records of a topic"),
    "console-producer": KafkaTool(_T + "ConsoleProducer", "produce lines from stdin"),
    "consumer-groups": KafkaTool(_T + "consumer.group.ConsumerGroupCommand",
                                 "list/describe groups, lag, reset offsets"),
    "share-groups": KafkaTool(_T + "consumer.group.ShareGroupCommand", "share groups"),
    "streams-groups": KafkaTool(_T + "streams.StreamsGroupCommand", "streams groups"),
    "groups": KafkaTool(_T + "GroupsCommand", "every group of every type"),
    "transactions": KafkaTool(_T + "TransactionsCommand",
                              "list/describe transactions, abort hanging ones"),
    "configs": KafkaTool("kafka.admin.ConfigCommand", "describe/alter configs"),
    "get-offsets": KafkaTool(_T + "GetOffsetShell", "earliest/latest offsets"),
    "delete-records": KafkaTool(_T + "DeleteRecordsCommand", "truncate partitions"),
    "leader-election": KafkaTool(_T + "LeaderElectionCommand", "preferred/unclean elections"),
    "reassign-partitions": KafkaTool(_T + "reassign.ReassignPartitionsCommand",
                                     "move replicas, change replication factor"),
    "log-dirs": KafkaTool(_T + "LogDirsCommand", "replica sizes per log dir"),
    "metadata-quorum": KafkaTool(_T + "MetadataQuorumCommand", "KRaft quorum status"),
    "features": KafkaTool(_T + "FeatureCommand", "feature levels"),
    "cluster": KafkaTool(_T + "ClusterTool", "cluster id, unregister a broker",
                         bootstrap_after_subcommand=True),
    "broker-api-versions": KafkaTool(_T + "BrokerApiVersionsCommand", "API versions per broker"),
    "acls": KafkaTool(_T + "AclCommand", "access control lists"),
    "producer-perf-test": KafkaTool(_T + "ProducerPerformance", "producer load test",
                                    needs_bootstrap=False),
    "consumer-perf-test": KafkaTool(_T + "ConsumerPerformance", "consumer load test"),
    "dump-log": KafkaTool("kafka.tools.DumpLogSegments", "decode log segment files",
                          needs_bootstrap=False),
}  # fmt: skip

_NO_BOOTSTRAP_FLAGS = ("--bootstrap-server", "--bootstrap-controller", "--broker-list")
_HELP_FLAGS = ("-h", "--help", "--version")

# The tools log through log4j2 (warnings to stderr) and need little memory; C1 only and one
# GC thread start them in ~1 s on 2 cores instead of ~2.
_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="stderr" target="SYSTEM_ERR">
    <PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="stderr"/></Root></Loggers>
</Configuration>
"""


def tool_argv(
    name: str, args: list[str], *, java: Path, classpath: str, bootstrap: str | None,
    log_config: Path,
) -> list[str]:  # fmt: skip
    """The java command line of ``kafka-<name>.sh args``, with ``--bootstrap-server`` added
    when the tool needs one and ``args`` give none (nor ask for help)."""
    tool = TOOLS.get(name)
    if tool is None:
        known = ", ".join(sorted(TOOLS))
        raise ConfigError(f"unknown Kafka tool {name!r}; known: {known}")
    args = list(args)
    wants_help = any(a in _HELP_FLAGS for a in args)
    given = any(a.split("=", 1)[0] in _NO_BOOTSTRAP_FLAGS for a in args)
    if tool.needs_bootstrap and not given and not wants_help:
        if not bootstrap:
            raise ConfigError(
                "no --bootstrap-server given, F2P_BOOTSTRAP_SERVERS is not set and no embedded "
                "stack is running (start one with `f2p stack up`)"
            )
        at = 1 if tool.bootstrap_after_subcommand and args and not args[0].startswith("-") else 0
        args[at:at] = ["--bootstrap-server", bootstrap]
    log_config.parent.mkdir(parents=True, exist_ok=True)
    if not log_config.exists():
        log_config.write_text(_LOG4J2_XML)
    return [
        str(java), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
        "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log_config}",
        "-cp", classpath, tool.main_class, *args,
    ]  # fmt: skip
