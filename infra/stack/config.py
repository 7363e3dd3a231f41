"""Configuration of the embedded stack: ports, directories, heap sizes, Java runtimes.

Every value has a default that works on a developer machine and an ``F2P_STACK_*`` variable to
change it. The stack listens on loopback only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from f2p_errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
POM_FILE = REPO_ROOT / "infra" / "maven" / "pom.xml"

# Buckets the pipeline uses: face images uploaded by publishers (claim check) and generated
# images written by workers.
DEFAULT_BUCKETS = ("f2p-inputs", "f2p-results")


@dataclass(frozen=True)
class StackPorts:
    """Loopback ports of the stack. SeaweedFS needs several internal ones besides S3."""

    kafka: int = 19092
    kafka_controller: int = 19093
    s3: int = 18333
    registry: int = 18081
    registry_management: int = 18082
    seaweed_master: int = 19333
    seaweed_volume: int = 18380
    seaweed_filer: int = 18888
    seaweed_webdav: int = 17333
    seaweed_admin: int = 23646
    seaweed_iceberg: int = 18181
    seaweed_lance: int = 18101
    seaweed_metrics: int = 19327
    # Optional monitoring (`f2p stack up --monitoring`, infra/stack/prometheus.py).
    prometheus: int = 19090
    lag_exporter: int = 19308

    def seaweed_internal(self) -> dict[str, int]:
        """SeaweedFS ports besides S3; gRPC ports are these + 10000 and are checked too."""
        return {
            "master": self.seaweed_master,
            "volume": self.seaweed_volume,
            "filer": self.seaweed_filer,
            "webdav": self.seaweed_webdav,
            "admin": self.seaweed_admin,
            "iceberg": self.seaweed_iceberg,
            "lance": self.seaweed_lance,
            "metrics": self.seaweed_metrics,
        }


@dataclass(frozen=True)
class StackConfig:
    """Everything the launcher needs; build it with :func:`load_stack_config`."""

    state_dir: Path
    ports: StackPorts = field(default_factory=StackPorts)
    kafka_heap: str = "768m"
    registry_heap: str = "256m"
    java17_home: Path | None = None
    java21_home: Path | None = None
    buckets: tuple[str, ...] = DEFAULT_BUCKETS
    ready_timeout_s: float = 120.0
    # Fetched jars; shared between state directories when set (tests run a second stack).
    shared_lib_dir: Path | None = None

    @property
    def lib_dir(self) -> Path:
        return self.shared_lib_dir or self.state_dir / "lib"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"


def default_state_dir() -> Path:
    """``$F2P_STACK_DIR`` or ``<repo>/.stack``."""
    value = os.environ.get("F2P_STACK_DIR")
    return Path(value).expanduser().resolve() if value else REPO_ROOT / ".stack"


def load_stack_config(state_dir: Path | None = None) -> StackConfig:
    """Build the stack configuration from ``F2P_STACK_*`` variables and defaults."""
    ports = StackPorts(
        **{
            name: _env_port(f"F2P_STACK_{name.upper()}_PORT", default)
            for name, default in StackPorts().__dict__.items()
        }
    )
    return StackConfig(
        state_dir=state_dir or default_state_dir(),
        ports=ports,
        kafka_heap=_env_heap("F2P_STACK_KAFKA_HEAP", "768m"),
        registry_heap=_env_heap("F2P_STACK_REGISTRY_HEAP", "256m"),
        java17_home=_env_path("F2P_STACK_JAVA_HOME"),
        java21_home=_env_path("F2P_STACK_REGISTRY_JAVA_HOME"),
        ready_timeout_s=_env_float("F2P_STACK_READY_TIMEOUT_S", 120.0),
        shared_lib_dir=_env_dir("F2P_STACK_LIB_DIR"),
    )


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1024 <= int(raw) <= 65535:
        raise ConfigError(f"{name}: must be a port number between 1024 and 65535, got {raw!r}")
    return int(raw)


def _env_heap(name: str, default: str) -> str:
    raw = os.environ.get(name, default)
    if not re.fullmatch(r"\d+[mg]", raw):
        raise ConfigError(f"{name}: must look like 512m or 1g, got {raw!r}")
    return raw


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name}: must be positive, got {raw!r}")
    return value


def _env_dir(name: str) -> Path | None:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else None


def _env_path(name: str) -> Path | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    path = Path(raw)
    if not (path / "bin" / "java").exists():
        raise ConfigError(f"{name}: {raw} has no bin/java")
    return path
