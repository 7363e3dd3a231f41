"""Admission's configuration: one frozen object built at the entry point.

Flags > ``F2P_ADMISSION_<FIELD>`` variables > defaults.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Any

from connectors.env_config import env_values
from f2p_errors import ConfigError

_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")


@dataclass(frozen=True)
class AdmissionConfig:
    """Settings of one admission instance (N instances form one consumer group)."""

    instance_id: str = field(default_factory=lambda: f"admission-{socket.gethostname()}")
    group_id: str = "f2p-admission"
    # A duplicate within this long of the first sighting gets no second outcome; entries older
    # than this are tombstoned. At least the ingress retention (7 days).
    dedupe_horizon_s: float = 7 * 24 * 3600.0
    # Admission is quick per message: a larger in-flight bound only adds memory.
    max_in_flight: int = 2000
    commit_interval_ms: int = 5
    max_message_bytes: int = 2 * 1024 * 1024
    # Tombstones of expired dedupe entries written per second at most.
    expiry_per_second: int = 2000
    # Kafka timeouts: None = the cluster's defaults (inference_consumer.config.KafkaTimeouts).
    session_timeout_ms: int | None = None
    heartbeat_interval_ms: int | None = None
    transaction_timeout_ms: int | None = None
    group_protocol: str = "consumer"
    static_membership: bool = False
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    shutdown_timeout_s: float = 10.0
    quotas_file: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> AdmissionConfig:
        values = env_values(cls, "F2P_ADMISSION_")
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if not _ID.fullmatch(self.instance_id):
            raise ConfigError(
                f"admission instance_id must be 1..200 of A-Z a-z 0-9 . _ -, got "
                f"{self.instance_id[:80]!r}"
            )
        if not _ID.fullmatch(self.group_id):
            raise ConfigError(f"admission group_id {self.group_id[:80]!r} is not a valid group id")
        for name in ("max_in_flight", "commit_interval_ms", "max_message_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"admission {name} must be positive")
        if not 60 <= self.dedupe_horizon_s <= 365 * 86400:
            raise ConfigError("admission dedupe_horizon_s must be between 60 s and a year")
        if self.group_protocol not in ("consumer", "classic"):
            raise ConfigError("admission group_protocol must be 'consumer' or 'classic'")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("admission metrics_port must be a TCP port (0: none)")
