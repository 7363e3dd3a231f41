"""`f2p stack up --brokers 3`: a real 3-node KRaft cluster on loopback, its status, and the
fault API the chaos tests use (kill, pause, start again, wait until settled)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectors.kafka import make_admin, make_consumer, make_producer, make_transactional_producer
from infra.stack.cluster import (
    busiest_broker,
    group_coordinator,
    kafka_uuid,
    partition_leaders,
    quiet_admin,
    transaction_coordinator,
    wait_settled,
)
from infra.stack.config import StackConfig, StackPorts, load_stack_config
from infra.stack.exceptions import StackError
from infra.stack.faults import (
    broker_alive,
    broker_pid,
    kill_broker,
    pause_broker,
    resume_broker,
    start_broker,
)
from infra.stack.launcher import stack_components, stack_down, stack_status, stack_up
from infra.stack.processes import process_start_ticks
from infra.topics import create_topic, delete_topics
from tests.conftest import CLUSTER_PORT_OFFSET

# A cluster of this module's own (up, up, down) beside the session's stack (+0), the second
# stack of test_stack_lifecycle (+200) and the session's cluster (conftest, +500).
OWN_CLUSTER_PORT_OFFSET = 700


def _live(test):
    return pytest.mark.integration(pytest.mark.slow(test))


def _f2p(args: list[str], state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "F2P_STACK_DIR": str(state_dir)}
    env.pop("F2P_BOOTSTRAP_SERVERS", None)
    return subprocess.run([sys.executable, "-m", "f2p_cli", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)  # fmt: skip


def _produce(settings, topic: str, n: int, tag: str) -> None:
    producer = make_producer(settings, delivery_timeout_ms=60_000)
    failures: list[str] = []
    for i in range(n):
        producer.produce(
            topic,
            key=f"{tag}-{i}".encode(),
            value=tag.encode(),
            on_delivery=lambda err, _m: err and failures.append(err.str()),
        )
    assert producer.flush(90) == 0
    assert failures == []


def _count(settings, topic: str, group: str) -> int:
    consumer = make_consumer(settings, group)
    consumer.subscribe([topic])
    seen, deadline = 0, time.monotonic() + 60
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - idle_since < 5:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen += 1
                idle_since = time.monotonic()
    finally:
        consumer.close()
    return seen


def _ports_of(offset: int, brokers: int) -> set[int]:
    config = StackConfig(
        state_dir=Path("/nonexistent"), ports=StackPorts().shifted(offset), brokers=brokers
    )
    return {port for c in stack_components(config) for port in c.ports().values()}


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def test_no_stack_listens_in_the_ephemeral_port_range() -> None:
    """A listening port inside the range the kernel hands to outgoing connections can be held
    by any client socket when the stack starts: the test stacks' ports (SeaweedFS's gRPC ports
    included) all stay below it."""
    start = _ephemeral_ports_start()
    offsets = (0, 200, CLUSTER_PORT_OFFSET, OWN_CLUSTER_PORT_OFFSET)
    ports = set().union(*(_ports_of(offset, 3) for offset in offsets))
    assert max(ports) < start, sorted(p for p in ports if p >= start)


def test_cluster_and_directory_ids_never_start_with_a_dash() -> None:
    """``kafka-storage format -t -TDr8…`` reads such an id as an option: 1 start in 64 failed."""
    draws = iter([bytes([0xF8]) + bytes(15), bytes([0xF8]) + bytes(15), bytes(16)])
    text = kafka_uuid(lambda: next(draws))
    assert text == "AAAAAAAAAAAAAAAAAAAAAA"  # the two draws that began with "-" were skipped
    assert all(not kafka_uuid().startswith("-") and len(kafka_uuid()) == 22 for _ in range(500))


@_live
def test_the_test_stacks_use_disjoint_ports(cluster_stack) -> None:
    cluster_offset = cluster_stack.config.ports.kafka - StackPorts().kafka
    stacks = [_ports_of(0, 1), _ports_of(200, 1), _ports_of(cluster_offset, 3),
              _ports_of(OWN_CLUSTER_PORT_OFFSET, 3)]  # fmt: skip
    for i, a in enumerate(stacks):
        for b in stacks[i + 1 :]:
            assert not a & b


@_live
def test_status_lists_every_broker_and_everything_is_replicated(cluster_stack, unique_name):
    config, settings = cluster_stack.config, cluster_stack.settings
    status = stack_status(config)
    assert status["healthy"] is True, status
    brokers = status["brokers"]
    assert [b["id"] for b in brokers] == [1, 2, 3]
    assert len({b["endpoint"] for b in brokers}) == 3
    for broker in brokers:
        assert broker["state"] == "running" and broker["healthy"] is True
        assert process_start_ticks(broker["pid"]) is not None
    assert status["bootstrap_servers"] == ",".join(b["endpoint"] for b in brokers)
    assert settings.bootstrap_servers == status["bootstrap_servers"]
    assert load_stack_config(config.state_dir).brokers == 3  # a plain `up` keeps 3 nodes

    # The CLI finds the cluster, its size and its ports from F2P_STACK_DIR alone.
    cli = _f2p(["stack", "status", "--json"], config.state_dir)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    listed = json.loads(cli.stdout)["brokers"]
    assert [(b["id"], b["endpoint"], b["pid"], b["healthy"]) for b in listed] == [
        (b["id"], b["endpoint"], b["pid"], True) for b in brokers
    ]

    # Internal topics come into being with their first user: a transaction and a group commit.
    admin = make_admin(settings)
    topic = create_topic(admin, unique_name("repl"), partitions=3)
    tid = unique_name("tx")
    producer = make_transactional_producer(settings, tid)
    producer.init_transactions(60)
    producer.begin_transaction()
    producer.produce(topic, b"v")
    producer.commit_transaction(60)
    assert _count(settings, topic, unique_name("g")) == 1

    metadata = admin.list_topics(timeout=10).topics
    for name in ("__consumer_offsets", "__transaction_state", topic):
        replicas = {len(p.replicas) for p in metadata[name].partitions.values()}
        assert replicas == {3}, name
    configs = {
        r.name: {k: e.value for k, e in f.result().items()}
        for r, f in admin.describe_configs(
            [_topic_resource(n) for n in ("__transaction_state", "__consumer_offsets", topic)]
        ).items()
    }
    assert {c["min.insync.replicas"] for c in configs.values()} == {"2"}

    # The coordinator lookups agree with Kafka's own tools and API.
    described = _f2p(["kafka", "transactions", "describe", "--transactional-id", tid],
                     config.state_dir)  # fmt: skip
    assert described.returncode == 0, described.stderr
    header, row = described.stdout.strip().splitlines()[:2]
    columns = {
        k.strip(): v.strip() for k, v in zip(header.split("\t"), row.split("\t"), strict=False)
    }
    assert int(columns["CoordinatorId"]) == transaction_coordinator(admin, tid)
    group = unique_name("g")
    assert _count(settings, topic, group) == 1
    [desc] = admin.describe_consumer_groups([group]).values()
    assert desc.result().coordinator.id == group_coordinator(admin, group)

    quorum = _f2p(["kafka", "metadata-quorum", "describe", "--status"], config.state_dir)
    assert quorum.returncode == 0, quorum.stderr
    voters = next(x for x in quorum.stdout.splitlines() if x.startswith("CurrentVoters"))
    assert [v["id"] for v in json.loads(voters.split(":", 1)[1])] == [1, 2, 3]
    producer.flush(10)
    delete_topics(admin, [topic])


def _topic_resource(name: str):
    from confluent_kafka.admin import ConfigResource, ResourceType

    return ConfigResource(ResourceType.TOPIC, name)


@_live
def test_a_killed_broker_loses_no_write_and_comes_back_settled(cluster_stack, unique_name):
    config, settings = cluster_stack.config, cluster_stack.settings
    admin = make_admin(settings)
    topic = create_topic(admin, unique_name("kill"), partitions=6)
    _produce(settings, topic, 20, "before")
    node = busiest_broker(admin, [topic])
    pid = broker_pid(config, node)

    kill_broker(config, node)
    status = stack_status(config, probe=False)
    assert status["components"]["kafka"]["state"] == "degraded (2 of 3 brokers running)"
    assert status["brokers"][node - 1]["state"] == "dead (stale state)"
    assert load_stack_config(config.state_dir).brokers == 3
    # Two replicas are in sync: acks=all writes go on once leadership has moved.
    _produce(settings, topic, 20, "during")

    took = start_broker(config, node)
    assert broker_alive(config, node) and broker_pid(config, node) != pid
    wait_settled(cluster_stack.bootstrap, 3, 120, balance_leaders=True)
    leaders = partition_leaders(quiet_admin(cluster_stack.bootstrap), [topic])
    assert node in leaders.values()  # leads its preferred partitions again
    assert _count(settings, topic, unique_name("g")) == 40
    print(f"node {node} killed; start_broker took {took:.1f} s")
    delete_topics(admin, [topic])


@_live
def test_a_paused_broker_is_reported_and_up_resumes_it(cluster_stack):
    config = cluster_stack.config
    pause_broker(config, 2)
    try:
        status = stack_status(config)
        assert status["brokers"][1]["state"] == "paused"
        assert status["brokers"][1]["healthy"] is False
        assert status["healthy"] is False
        report = stack_up(config)
        assert report.actions["kafka-2"] == "resumed (was paused)"
        assert report.actions["kafka-1"] == report.actions["kafka-3"] == "already running"
    finally:
        resume_broker(config, 2)
    assert stack_status(config)["healthy"] is True


@_live
def test_two_brokers_down_then_up_restarts_both(cluster_stack):
    config = cluster_stack.config
    pids = {n: broker_pid(config, n) for n in (2, 3)}
    kill_broker(config, 2)
    kill_broker(config, 3)
    assert stack_status(config, probe=False)["components"]["kafka"]["state"] == (
        "degraded (1 of 3 brokers running)"
    )
    report = stack_up(config)
    assert report.actions["kafka-2"] == report.actions["kafka-3"] == "restarted (stale state)"
    assert report.actions["kafka-1"] == "already running"
    assert all(broker_pid(config, n) != pids[n] for n in (2, 3))
    # `up` waited until settled: every node live, every ISR full.
    wait_settled(cluster_stack.bootstrap, 3, timeout_s=1)


@_live
def test_a_cluster_of_another_size_is_refused(cluster_stack):
    one = StackConfig(state_dir=cluster_stack.config.state_dir, ports=cluster_stack.config.ports)
    with pytest.raises(StackError, match="holds a 3-broker Kafka cluster"):
        stack_up(one)
    assert stack_status(cluster_stack.config, probe=False)["components"]["kafka"]["state"] == (
        "running"
    )


@_live
def test_up_twice_then_down_stops_every_node(stack_settings, tmp_path):
    main = load_stack_config()
    config = StackConfig(
        state_dir=tmp_path / "stack",
        ports=main.ports.shifted(OWN_CLUSTER_PORT_OFFSET),
        brokers=3,
        kafka_heap="512m",
        registry_heap="192m",
        shared_lib_dir=main.lib_dir,
    )
    try:
        started = time.monotonic()
        first = stack_up(config)
        cold = time.monotonic() - started
        assert set(first.actions.values()) == {"started"}
        assert sorted(first.actions) == ["kafka-1", "kafka-2", "kafka-3", "registry", "s3"]
        pids = {b["id"]: b["pid"] for b in stack_status(config, probe=False)["brokers"]}

        again = stack_up(config)
        assert set(again.actions.values()) == {"already running"}
        assert {b["id"]: b["pid"] for b in stack_status(config)["brokers"]} == pids

        started = time.monotonic()
        stopped = stack_down(config)
        down = time.monotonic() - started
        assert sorted(stopped) == ["kafka-1", "kafka-2", "kafka-3", "registry", "s3"]
        assert all(process_start_ticks(pid) is None for pid in pids.values())
        status = stack_status(config, probe=False)
        assert [b["state"] for b in status["brokers"]] == ["not started"] * 3
        print(f"3-broker stack: cold start {cold:.1f} s, down {down:.1f} s")
    finally:
        stack_down(config, purge=True)
