"""`f2p stack up | down | status` against real processes, on a second stack with its own ports.

The session's stack (fixture ``stack_settings``) is not touched: these tests run another one
from a temporary state directory, sharing only the fetched jars.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack.config import StackConfig, StackPorts, load_stack_config
from infra.stack.exceptions import PortInUse
from infra.stack.launcher import stack_down, stack_status, stack_up
from infra.stack.state import read_state

pytestmark = pytest.mark.integration

# Every port of the session's stack + 200 (SeaweedFS gRPC ports are +10000, still distinct).
OFFSET_PORTS = StackPorts(**{k: v + 200 for k, v in load_stack_config().ports.__dict__.items()})


@pytest.fixture
def second_stack(tmp_path: Path, stack_settings) -> StackConfig:
    main = load_stack_config()
    config = StackConfig(
        state_dir=tmp_path / "stack",
        ports=OFFSET_PORTS,
        kafka_heap="384m",
        registry_heap="192m",
        shared_lib_dir=main.lib_dir,
        ready_timeout_s=120.0,
    )
    yield config
    stack_down(config, purge=True)


def _our_pids(config: StackConfig) -> dict[str, int]:
    return {n: c.process.pid for n, c in read_state(config.state_file).components.items()}


def _pids_of_cmdline(fragment: str) -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if fragment in cmdline:
                pids.add(int(proc.name))
    return pids


def test_up_twice_starts_one_broker_and_down_stops_all(second_stack: StackConfig) -> None:
    first = stack_up(second_stack)
    assert set(first.actions.values()) == {"started"}
    pids = _our_pids(second_stack)
    state_dir = str(second_stack.state_dir)
    brokers_before = _pids_of_cmdline(f"{state_dir}/data/kafka/server.properties")
    assert len(brokers_before) == 1

    second = stack_up(second_stack)
    assert set(second.actions.values()) == {"already running"}
    assert _our_pids(second_stack) == pids
    assert _pids_of_cmdline(f"{state_dir}/data/kafka/server.properties") == brokers_before

    status = stack_status(second_stack)
    assert status["healthy"] is True
    assert status["bootstrap_servers"] == f"127.0.0.1:{OFFSET_PORTS.kafka}"

    stopped = stack_down(second_stack)
    assert sorted(stopped) == ["kafka", "registry", "s3"]
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"pid {pid} still runs"
    assert _pids_of_cmdline(state_dir) == set()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_taken_port_gives_a_clear_error(second_stack: StackConfig) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", OFFSET_PORTS.kafka))
        squatter.listen()
        with pytest.raises(PortInUse) as info:
            stack_up(second_stack)
    message = str(info.value)
    assert f"127.0.0.1:{OFFSET_PORTS.kafka}" in message
    assert "kafka" in message
    assert "already in use" in message


def test_stale_state_after_a_crash_is_cleaned(second_stack: StackConfig) -> None:
    stack_up(second_stack)
    pids = _our_pids(second_stack)
    os.kill(pids["s3"], 9)  # simulate a crash of one component
    _wait_gone(pids["s3"])
    assert stack_status(second_stack)["components"]["s3"]["state"] == "dead (stale state)"

    report = stack_up(second_stack)
    assert report.actions["s3"] == "restarted (stale state)"
    assert report.actions["kafka"] == "already running"
    assert stack_status(second_stack)["healthy"] is True


def _wait_gone(pid: int) -> None:
    import time

    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not exit after SIGKILL"
        time.sleep(0.05)


def test_status_json_cli_names_every_endpoint(stack_settings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "f2p_cli", "stack", "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    status = json.loads(out.stdout)
    assert status["healthy"] is True
    assert status["bootstrap_servers"] == stack_settings.bootstrap_servers
    assert status["registry_url"] == stack_settings.registry_url
    assert status["s3"]["endpoint_url"] == stack_settings.s3_endpoint_url
    assert status["s3"]["access_key"] == stack_settings.s3_access_key
    assert {"f2p-inputs", "f2p-results"} <= set(status["s3"]["buckets"])
    assert all(c["healthy"] for c in status["components"].values())
