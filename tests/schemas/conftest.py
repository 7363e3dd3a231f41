"""Fixtures of the schemas tests; sample records live in ``schema_samples``."""

from __future__ import annotations

import pytest
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)


@pytest.fixture
def mock_registry() -> MockSchemaRegistryClient:
    """An in-memory registry (no compatibility checks; ids count up from 1)."""
    return MockSchemaRegistryClient({"url": "mock://registry"})
