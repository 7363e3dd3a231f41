"""Configuration of the embedded stack: ports, directories, heap sizes, Java runtimes.

Every value has a default that works on a developer machine and an ``F2P_STACK_*`` variable to
change it. The stack listens on loopback only.

With ``brokers`` > 1 the Kafka nodes take the configured Kafka ports for node 1 and the same
ports + 10 per further node (node 2: 19102/19103, node 3: 19112/19113 by default).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from f2p_errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
POM_FILE = REPO_ROOT / "infra" / "maven" / "pom.xml"

# Node n of a multi-broker cluster listens on the base Kafka ports + NODE_PORT_STEP * (n - 1).
NODE_PORT_STEP = 10
MAX_BROKERS = 5

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
    # Not weed's own 23646: its gRPC port (+10000) would sit in Linux's ephemeral range
    # (32768-60999), where any outgoing connection may hold it when the stack starts (seen in
    # CI: "s3 (admin-grpc): port 34146 is already in use"). Every default port + 10000, and
    # the test stacks' offsets on top, stay below 32768 (tests/infra/test_cluster.py).
    seaweed_admin: int = 17646
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

    def shifted(self, offset: int) -> StackPorts:
        """Every port + ``offset``: a second stack beside this one (tests)."""
        return StackPorts(**{k: v + offset for k, v in self.__dict__.items()})

    def kafka_node(self, node_id: int) -> tuple[int, int]:
        """(client, controller) port of Kafka node ``node_id`` (1-based)."""
        step = NODE_PORT_STEP * (node_id - 1)
        return self.kafka + step, self.kafka_controller + step


@dataclass(frozen=True)
class StackConfig:
    """Everything the launcher needs; build it with :func:`load_stack_config`."""

    state_dir: Path
    ports: StackPorts = field(default_factory=StackPorts)
    # Kafka nodes, each a combined broker+controller; 3 makes a cluster that survives a loss.
    brokers: int = 1
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

    @property
    def cluster_file(self) -> Path:
        """The Kafka cluster's identity (cluster id, node count), written at first format."""
        return self.data_dir / "kafka-cluster.json"

    def __post_init__(self) -> None:
        if not 1 <= self.brokers <= MAX_BROKERS:
            raise ConfigError(f"brokers: must be between 1 and {MAX_BROKERS}, got {self.brokers}")
        taken: dict[int, str] = {}
        others = {k: v for k, v in self.ports.__dict__.items() if not k.startswith("kafka")}
        nodes = {
            f"kafka node {n} ({role})": port
            for n in range(1, self.brokers + 1)
            for role, port in zip(("client", "controller"), self.ports.kafka_node(n), strict=True)
        }
        for name, port in {**nodes, **others}.items():
            if port > 65535:
                raise ConfigError(f"{name}: port {port} is above 65535; lower the base port")
            if port in taken:
                raise ConfigError(f"{name} and {taken[port]} would both use port {port}")
            taken[port] = name


def default_state_dir() -> Path:
    """``$F2P_STACK_DIR`` or ``<repo>/.stack``."""
    value = os.environ.get("F2P_STACK_DIR")
    return Path(value).expanduser().resolve() if value else REPO_ROOT / ".stack"


def load_stack_config(state_dir: Path | None = None, *, brokers: int | None = None) -> StackConfig:
    """Build the stack configuration from ``F2P_STACK_*`` variables and defaults.

    ``brokers``: the argument, else ``F2P_STACK_BROKERS``, else the node count of the cluster
    already formatted in the state directory (so a plain ``f2p stack up`` or a test session
    restarts a 3-broker stack as 3 brokers), else 1. Ports: ``F2P_STACK_<NAME>_PORT``, else
    the ports the state directory's stack was last started on (``ports.json``: ``status``,
    ``down`` and ``f2p kafka`` reach a stack started on other ports with F2P_STACK_DIR alone),
    else the defaults.
    """
    state_dir = state_dir or default_state_dir()
    if brokers is None:
        brokers = _env_int("F2P_STACK_BROKERS") or recorded_brokers(state_dir) or 1
    ports = StackPorts(
        **{
            name: _env_port(f"F2P_STACK_{name.upper()}_PORT", default)
            for name, default in recorded_ports(state_dir).__dict__.items()
        }
    )
    return StackConfig(
        state_dir=state_dir,
        ports=ports,
        brokers=brokers,
        # Three JVMs share 2 cores and the machine's memory with the pipeline: 512m heap each
        # (measured: ~220 MiB resident per idle node).
        kafka_heap=_env_heap("F2P_STACK_KAFKA_HEAP", "768m" if brokers == 1 else "512m"),
        registry_heap=_env_heap("F2P_STACK_REGISTRY_HEAP", "256m"),
        java17_home=_env_path("F2P_STACK_JAVA_HOME"),
        java21_home=_env_path("F2P_STACK_REGISTRY_JAVA_HOME"),
        ready_timeout_s=_env_float("F2P_STACK_READY_TIMEOUT_S", 120.0),
        shared_lib_dir=_env_dir("F2P_STACK_LIB_DIR"),
    )


def recorded_brokers(state_dir: Path) -> int | None:
    """The node count of the Kafka cluster formatted in ``state_dir``, or None if there is none.

    A state directory formatted before clusters existed holds one node under data/kafka.
    """
    cluster_file = state_dir / "data" / "kafka-cluster.json"
    if cluster_file.exists():
        try:
            return int(json.loads(cluster_file.read_text())["brokers"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{cluster_file} is damaged ({exc}); `f2p stack down --purge`"
            ) from exc
    if (state_dir / "data" / "kafka" / "log" / "meta.properties").exists():
        return 1
    return None


def recorded_ports(state_dir: Path) -> StackPorts:
    """The ports ``up`` last started this state directory's stack on, or the defaults."""
    try:
        raw = json.loads((state_dir / "ports.json").read_text())
        return StackPorts(**{k: int(v) for k, v in raw.items() if k in StackPorts().__dict__})
    except (OSError, ValueError, TypeError):
        return StackPorts()


def record_ports(config: StackConfig) -> None:
    """Remember ``config.ports`` for later ``load_stack_config`` calls on this directory."""
    path = config.state_dir / "ports.json"
    text = json.dumps(config.ports.__dict__, indent=2)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3:
        raise ConfigError(f"{name}: must be a small positive integer, got {raw!r}")
    return int(raw)


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 5 or not 1024 <= int(raw) <= 65535:
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
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: must be a positive number of seconds, got {raw!r}")
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
