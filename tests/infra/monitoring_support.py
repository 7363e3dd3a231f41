"""A real Prometheus (and the lag exporter) for a test, on the session's broker, plus f2p
processes it scrapes: what ``f2p stack up --monitoring`` runs, without touching the shared
stack's state (its own state directory and ports)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.monitoring.targets import register_target
from infra.stack.config import StackConfig, load_stack_config
from infra.stack.processes import stop
from infra.stack.prometheus import MONITORING

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class Monitoring:
    config: StackConfig
    url: str

    def register(self, name: str, job: str, port: int) -> None:
        register_target(self.config.state_dir, name=name, job=job, port=port)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (raises on a PromQL error)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr}: {exc.read().decode(errors='replace')}") from exc
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else float("nan")

    def targets_up(self, job: str) -> int:
        return int(sum(float(r["value"][1]) for r in self.query(f'up{{job="{job}"}}')))


@contextmanager
def monitoring(state_dir: Path, *, group_regex: str) -> Iterator[Monitoring]:
    """Prometheus (1 s scrapes, infra/monitoring/rules.yml) and the lag exporter for
    ``group_regex``, on free ports, stopped at exit."""
    shared = load_stack_config()
    ports = dataclasses.replace(shared.ports, prometheus=free_port(), lag_exporter=free_port())
    config = dataclasses.replace(shared, state_dir=state_dir, ports=ports, ready_timeout_s=60)
    os.environ["F2P_STACK_PROMETHEUS_SCRAPE_S"] = "1"
    os.environ["F2P_STACK_LAG_GROUP_REGEX"] = group_regex
    started = []
    try:
        for cls in MONITORING:
            started.append(cls(config, None).start())
        yield Monitoring(config, f"http://127.0.0.1:{ports.prometheus}")
    finally:
        for component in reversed(started):
            stop(component.process)
        os.environ.pop("F2P_STACK_PROMETHEUS_SCRAPE_S", None)
        os.environ.pop("F2P_STACK_LAG_GROUP_REGEX", None)


class F2PProcess:
    """``python -m f2p_cli <args>`` from this checkout, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "f2p_cli", *args],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self.out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def stop(self, timeout_s: float = 40) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)
