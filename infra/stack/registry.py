"""Apicurio Registry 3.x (Quarkus app) with in-memory storage and the Confluent-compatible API.

Clients use the ccompat base URL ``/apis/ccompat/v7`` with ``confluent_kafka.schema_registry``.
Schemas live in memory: the embedded stack registers them again on every start
(``auto_register`` is on for the embedded stack only).
"""

from __future__ import annotations

import urllib.request

from infra.stack.component import Component

CCOMPAT_PATH = "/apis/ccompat/v7"


class ApicurioRegistry(Component):
    """The schema registry component."""

    name = "registry"

    def ports(self) -> dict[str, int]:
        return {
            "http": self.config.ports.registry,
            "management": self.config.ports.registry_management,
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.registry}"

    def endpoint(self) -> str:
        return self.base_url + CCOMPAT_PATH

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        assert self.artifacts is not None
        heap = self.config.registry_heap
        return [
            str(self.artifacts.java21),
            f"-Xmx{heap}",
            # Start-up is dominated by JIT work; C1 only and one GC thread suit 2 cores.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            f"-Dquarkus.http.port={self.config.ports.registry}",
            "-Dquarkus.http.host=127.0.0.1",
            # Health lives on the management interface, which would otherwise bind *:9000.
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={self.config.ports.registry_management}",
            "-Dapicurio.storage.kind=sql",
            "-Dapicurio.storage.sql.kind=h2",
            "-Dquarkus.log.level=WARN",
            '-Dquarkus.log.category."io.quarkus".level=INFO',
            "-jar",
            str(self.artifacts.registry_jar),
        ]

    def probe(self) -> None:
        health = f"http://127.0.0.1:{self.config.ports.registry_management}/health/ready"
        with urllib.request.urlopen(health, timeout=2) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/health/ready returned {resp.status}")
        with urllib.request.urlopen(self.endpoint() + "/subjects", timeout=2) as resp:
            if resp.status != 200:
                raise RuntimeError(f"ccompat /subjects returned {resp.status}")

    def extra(self) -> dict[str, str]:
        return {"base_url": self.base_url, "ccompat_url": self.endpoint()}
