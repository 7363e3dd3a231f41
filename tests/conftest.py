"""Shared fixtures: the real embedded stack, once per test session, and unique names per test.

The stack is started with ``f2p stack up`` semantics: when one is already running from the same
state directory (``F2P_STACK_DIR``) it is reused and left running; when this session started it,
this session stops it at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from connectors.settings import Settings, load_settings
from infra.stack.config import StackConfig, load_stack_config
from infra.stack.launcher import stack_down, stack_up


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    """Settings pointing at the running embedded stack (Kafka, S3, registry), all healthy."""
    config = load_stack_config()
    report = stack_up(config)
    # Stop it at the end only if this session started all of it: a stack that another session
    # (or a developer) runs stays up, even when this session restarted a crashed component.
    started_here = all(a == "started" for a in report.actions.values())
    try:
        yield load_settings(config.state_dir)
    finally:
        if started_here:
            stack_down(config)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("requests")`` → ``requests-3f9c0a1b2d``: a fresh topic/group/key per call."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def admin(stack_settings: Settings):
    """An admin client on the embedded stack."""
    from connectors.kafka import make_admin

    return make_admin(stack_settings)


@pytest.fixture
def make_topic(admin, unique_name) -> Iterator[Callable[..., str]]:
    """Create a uniquely named topic on the real broker: ``make_topic("req", partitions=4)``."""
    from infra.topics import create_topic, delete_topics

    created: list[str] = []

    def make(prefix: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        created.append(create_topic(admin, unique_name(prefix), partitions, config))
        return created[-1]

    yield make
    delete_topics(admin, created)


# -- a 3-broker cluster beside the session's stack -----------------------------------------------

# Every port of the session's stack + 500 (its nodes take base, +10, +20): clear of the session's
# stack, test_stack_lifecycle's second stack (+200) and test_cluster's own cluster (+700);
# tests/infra/test_cluster.py checks that these port sets are disjoint.
CLUSTER_PORT_OFFSET = 500


@dataclass(frozen=True)
class ClusterStack:
    """A running 3-broker stack: its config (for ``infra.stack.faults`` and
    ``infra.stack.cluster``) and client settings reaching it."""

    config: StackConfig
    settings: Settings

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers


@pytest.fixture(scope="session")
def cluster_stack(stack_settings: Settings, tmp_path_factory) -> Iterator[ClusterStack]:
    """A 3-broker KRaft cluster (replication 3, min.insync 2) with its own S3 and registry,
    started once per session for the tests that lose brokers, stopped at the end. Tests must
    leave it with every node running (``infra.stack.faults.start_broker``)."""
    main = load_stack_config()
    config = StackConfig(
        state_dir=tmp_path_factory.mktemp("cluster") / "stack",
        ports=main.ports.shifted(CLUSTER_PORT_OFFSET),
        brokers=3,
        kafka_heap="512m",
        registry_heap="192m",
        shared_lib_dir=main.lib_dir,
    )
    try:
        stack_up(config)
        yield ClusterStack(config, load_settings(config.state_dir))
    finally:
        stack_down(config, purge=True)
