"""Shared fixtures: the real embedded stack, once per test session, and unique names per test.

The stack is started with ``f2p stack up`` semantics: when one is already running from the same
state directory (``F2P_STACK_DIR``) it is reused and left running; when this session started it,
this session stops it at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from connectors.settings import Settings, load_settings
from infra.stack.config import load_stack_config
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
