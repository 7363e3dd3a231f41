"""Fixtures of the schemas tests; sample records live in ``schema_samples``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas.testing import InMemoryRegistry


@pytest.fixture
def mock_registry() -> InMemoryRegistry:
    """An in-memory registry (no compatibility checks; ids count up from 1)."""
    return InMemoryRegistry()


@pytest.fixture
def registry(stack_settings) -> Iterator[SchemaRegistryClient]:
    """A client of the embedded stack's registry."""
    with SchemaRegistryClient({"url": stack_settings.registry_url}) as client:
        yield client


def delete_subjects(registry: SchemaRegistryClient, subjects: list[str]) -> None:
    """Delete subjects soft then permanently (Apicurio needs both); missing ones are fine."""
    for name in subjects:
        for permanent in (False, True):
            with contextlib.suppress(SchemaRegistryError):
                registry.delete_subject(name, permanent=permanent)


@pytest.fixture
def subject(registry, unique_name) -> Iterator[Callable[[str], str]]:
    """``subject("evo")`` → a fresh subject, deleted at teardown."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(unique_name(f"test.schemas.{prefix}") + "-value")
        return made[-1]

    yield make
    delete_subjects(registry, made)


@pytest.fixture
def topic_suffix(registry, unique_name) -> Iterator[str]:
    """A suffix for a private copy of every project topic's subject (``<topic><suffix>-value``);
    every subject whose name ends with it is deleted at teardown."""
    suffix = "." + unique_name("test")
    yield suffix
    delete_subjects(registry, [s for s in registry.get_subjects() if s.endswith(suffix + "-value")])
