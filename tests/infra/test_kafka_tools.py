"""`f2p kafka <tool>`: Kafka's own CLI tools, bundled, against the embedded stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.kafka import make_consumer, make_transactional_producer
from f2p_errors import ConfigError
from infra.kafka_tools import TOOLS, tool_argv


def _argv(name: str, args: list[str], bootstrap: str | None = "h:1") -> list[str]:
    argv = tool_argv(name, args, java=Path("/j/java"), classpath="cp/*", bootstrap=bootstrap,
                     log_config=_LOG_CONFIG)  # fmt: skip
    return argv[argv.index(TOOLS[name].main_class) + 1 :]


_LOG_CONFIG = Path("/tmp") / f"f2p-test-tools-log4j2-{os.getpid()}.xml"


def test_bootstrap_is_filled_in_only_when_missing() -> None:
    assert _argv("transactions", ["list"]) == ["--bootstrap-server", "h:1", "list"]
    assert _argv("consumer-groups", ["--list"]) == ["--bootstrap-server", "h:1", "--list"]
    # kafka-cluster's sub-commands own the option.
    assert _argv("cluster", ["cluster-id"]) == ["cluster-id", "--bootstrap-server", "h:1"]
    for given in (["--bootstrap-server", "x:2", "--list"], ["--bootstrap-server=x:2", "--list"]):
        assert _argv("consumer-groups", given) == given
    assert _argv("topics", ["--help"]) == ["--help"]
    assert _argv("dump-log", ["--files", "a.log"]) == ["--files", "a.log"]
    with pytest.raises(ConfigError, match="no embedded stack"):
        _argv("topics", ["--list"], bootstrap=None)
    with pytest.raises(ConfigError, match="unknown Kafka tool 'nope'; known: acls"):
        _argv("nope", [])


def _f2p_kafka(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "F2P_BOOTSTRAP_SERVERS"}
    return subprocess.run([sys.executable, "-m", "f2p_cli", "kafka", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)  # fmt: skip


@pytest.mark.integration
def test_consumer_groups_and_transactions_list_what_the_stack_holds(
    stack_settings, make_topic, unique_name
) -> None:
    topic = make_topic("tools")
    tid, group = unique_name("tools-tx"), unique_name("tools-group")
    producer = make_transactional_producer(stack_settings, tid)
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"v")
    producer.commit_transaction(30)
    consumer = make_consumer(stack_settings, group)
    try:
        consumer.subscribe([topic])
        msg = None
        for _ in range(100):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        consumer.commit(message=msg, asynchronous=False)

        groups = _f2p_kafka(["consumer-groups", "--list"])
        assert groups.returncode == 0, groups.stderr
        assert group in groups.stdout.split()

        described = _f2p_kafka(["consumer-groups", "--describe", "--group", group])
        assert described.returncode == 0, described.stderr
        assert topic in described.stdout
    finally:
        consumer.close()

    transactions = _f2p_kafka(["transactions", "list"])
    assert transactions.returncode == 0, transactions.stderr
    assert tid in {line.split("\t")[0].strip() for line in transactions.stdout.splitlines()}


@pytest.mark.integration
def test_an_unknown_tool_is_refused_with_the_list(stack_settings) -> None:
    done = _f2p_kafka(["consumer-lag"])
    assert done.returncode == 1
    assert "unknown Kafka tool 'consumer-lag'" in done.stderr
    assert "consumer-groups" in done.stderr
    assert "Traceback" not in done.stderr
