"""`f2p stack up --monitoring` on a second stack (own state directory and ports): Prometheus
with the project's rules scrapes the lag exporter and file-registered processes; `down` stops
the monitoring components with the rest."""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

import pytest

from infra.monitoring.targets import register_target, targets_dir, unregister_target
from infra.stack.config import StackConfig, StackPorts, load_stack_config
from infra.stack.exceptions import PortInUse
from infra.stack.launcher import stack_components, stack_down, stack_status, stack_up
from infra.stack.processes import ensure_port_free
from infra.stack.state import read_state
from tests.conftest import CLUSTER_PORT_OFFSET

pytestmark = pytest.mark.integration


def _stack_ports(ports: StackPorts, brokers: int = 3, optional: tuple[str, ...] = ()) -> set[int]:
    """Every port a stack on ``ports`` binds (each component's own list, gRPC ports included)."""
    config = StackConfig(state_dir=Path("/nonexistent"), ports=ports, brokers=brokers)
    return {p for c in stack_components(config, optional=optional) for p in c.ports().values()}


def _free_ports() -> StackPorts:
    """The session stack's ports shifted by an offset at which all of them are free now and
    none is a port of the suite's fixed-offset stacks (the main stack, the lifecycle test's at
    + 200, the session's 3-broker cluster, test_cluster's own at + 700), which may start after
    this choice: other engineers run second stacks at fixed offsets too.
    Offsets stop short of 3400: SeaweedFS's highest gRPC port (master, 29333) stays below the
    kernel's ephemeral range (32768), where an outgoing connection could take it later."""
    main = load_stack_config().ports
    reserved = set().union(
        *(_stack_ports(main.shifted(o)) for o in (0, 200, CLUSTER_PORT_OFFSET, 700))
    )
    for offset in random.Random().sample(range(300, 3400, 7), 40):
        ports = main.shifted(offset)
        wanted = _stack_ports(ports, brokers=1, optional=("monitoring",))
        if wanted & reserved:
            continue
        try:
            for port in wanted:
                ensure_port_free(port, component="probe")
        except PortInUse:
            continue
        return ports
    raise AssertionError("no free port offset found")


@pytest.fixture
def ports() -> StackPorts:
    """Chosen when the test runs, not when the module is collected: the session's 3-broker
    cluster (and any stack a test before this one started) takes its ports later than
    collection, and CI twice found an offset chosen at collection taken by then."""
    return _free_ports()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_status_lists_monitoring_only_when_started(tmp_path: Path, ports: StackPorts) -> None:
    status = stack_status(StackConfig(state_dir=tmp_path, ports=ports), probe=False)
    assert set(status["components"]) == {"kafka", "s3", "registry"}


def test_targets_are_files_prometheus_reads(tmp_path: Path) -> None:
    path = register_target(tmp_path, name="w-1", job="f2p-worker", port=9400)
    entry = json.loads(path.read_text())
    assert entry == [
        {"targets": ["127.0.0.1:9400"], "labels": {"job": "f2p-worker", "instance": "w-1"}}
    ]
    unregister_target(tmp_path, "w-1")
    assert not list(targets_dir(tmp_path).glob("*.json"))
    with pytest.raises(Exception, match="job must be one of"):
        register_target(tmp_path, name="x", job="nginx", port=1)
    with pytest.raises(Exception, match="name must be"):
        register_target(tmp_path, name="../../etc/passwd", job="f2p-worker", port=1)


def test_up_with_monitoring_scrapes_and_down_stops_everything(
    tmp_path: Path, stack_settings, monkeypatch, ports: StackPorts
) -> None:
    monkeypatch.setenv("F2P_STACK_PROMETHEUS_SCRAPE_S", "1")
    main = load_stack_config()
    config = StackConfig(
        state_dir=tmp_path / "stack",
        ports=ports,
        kafka_heap="384m",
        registry_heap="192m",
        shared_lib_dir=main.lib_dir,
    )
    try:
        report = stack_up(config, optional=("monitoring",))
        assert report.actions["prometheus"] == "started"
        assert report.actions["lag-exporter"] == "started"
        prometheus = f"http://127.0.0.1:{ports.prometheus}"
        # The project's rules are loaded.
        groups = {g["name"] for g in _get(f"{prometheus}/api/v1/rules")["data"]["groups"]}
        assert {"f2p-recording", "f2p-alerts"} <= groups
        # A registered process is discovered and scraped: the lag exporter itself, as a target.
        register_target(config.state_dir, name="probe", job="f2p-worker", port=ports.lag_exporter)

        def up(job: str) -> bool:
            query = f"{prometheus}/api/v1/query?query=up%7Bjob%3D%22{job}%22%7D"
            result = _get(query)["data"]["result"]
            return bool(result) and result[0]["value"][1] == "1"

        from monitoring_support import wait_for

        wait_for(lambda: up("kafka-exporter") and up("f2p-worker"), 30, "both jobs scraped")
        assert stack_up(config, optional=("monitoring",)).actions["prometheus"] == (
            "already running"
        )
        records = read_state(config.state_file).components
    finally:
        stopped = stack_down(config, purge=True)
    assert {"prometheus", "lag-exporter", "kafka", "s3", "registry"} <= set(stopped)
    assert not any(r.process.is_alive() for r in records.values())
