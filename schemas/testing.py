"""An in-memory schema registry for unit tests (as Dramatiq ships its ``StubBroker``).

confluent-kafka's ``MockSchemaRegistryClient`` keeps subjects and ids in memory but sends
compatibility-level calls over HTTP; the codec sets the level of every subject it
auto-registers, so unit tests need those calls in memory too. No compatibility is enforced.
"""

from __future__ import annotations

from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)

#: Apicurio's global default, which the project's subject-level settings override.
GLOBAL_LEVEL = "NONE"


class InMemoryRegistry(MockSchemaRegistryClient):
    """``MockSchemaRegistryClient`` that also stores compatibility levels per subject."""

    def __init__(self) -> None:
        super().__init__({"url": "mock://registry"})
        self.levels: dict[str | None, str] = {}

    def set_compatibility(self, subject_name: str | None = None, level: str | None = None) -> str:
        if level is None:
            raise ValueError("level must be set")
        self.levels[subject_name] = level.upper()
        return self.levels[subject_name]

    def get_compatibility(self, subject_name: str | None = None) -> str:
        return self.levels.get(subject_name, self.levels.get(None, GLOBAL_LEVEL))
