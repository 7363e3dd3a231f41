"""Monitoring for the embedded stack (``f2p stack up --monitoring``): a real Prometheus and the
lag exporter it scrapes besides every registered f2p process.

Prometheus and promtool come from Debian's ``prometheus`` package, unpacked into ``.tools/`` by
``make tools`` (no system install); ``F2P_PROMETHEUS_BIN`` points elsewhere. Prometheus loads
``infra/monitoring/rules.yml`` (the rules the PrometheusRule on Kubernetes carries) and finds
f2p processes through files under ``<stack dir>/monitoring/targets`` (``infra.monitoring.targets``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from infra.stack.cluster import bootstrap_servers
from infra.stack.component import Component
from infra.stack.config import REPO_ROOT
from infra.stack.exceptions import StackError

RULES_FILE = REPO_ROOT / "infra" / "monitoring" / "rules.yml"
TOOLS_PROMETHEUS = REPO_ROOT / ".tools" / "prometheus" / "usr" / "bin"


def find_prometheus_tool(name: str = "prometheus") -> Path:
    """``prometheus`` or ``promtool``: ``$F2P_PROMETHEUS_BIN``'s directory, .tools/, or PATH."""
    candidates = []
    if os.environ.get("F2P_PROMETHEUS_BIN"):
        candidates.append(Path(os.environ["F2P_PROMETHEUS_BIN"]).parent / name)
    candidates.append(TOOLS_PROMETHEUS / name)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise StackError(f"{name} not found: run `make tools` (Debian's prometheus package)")


def _scrape_interval() -> str:
    raw = os.environ.get("F2P_STACK_PROMETHEUS_SCRAPE_S", "5")
    if not raw.isdigit() or not 1 <= int(raw) <= 300:
        raise StackError(f"F2P_STACK_PROMETHEUS_SCRAPE_S must be 1..300 seconds, got {raw!r}")
    return f"{int(raw)}s"


class LagExporter(Component):
    """``infra.monitoring.lag_exporter`` against the stack's Kafka node(s)."""

    name = "lag-exporter"

    def ports(self) -> dict[str, int]:
        return {"http": self.config.ports.lag_exporter}

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.lag_exporter}/metrics"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        # Run as a script: it imports nothing from the repo, so no PYTHONPATH is needed.
        return [
            sys.executable,
            str(REPO_ROOT / "infra" / "monitoring" / "lag_exporter.py"),
            # Every node of a cluster: the exporter outlives any one broker's loss.
            f"--bootstrap={bootstrap_servers(self.config)}",
            f"--port={self.config.ports.lag_exporter}",
            # Every group by default (tests name theirs freely; the dashboards select one).
            f"--group-regex={os.environ.get('F2P_STACK_LAG_GROUP_REGEX', '.*')}",
        ]

    def probe(self) -> None:
        with urllib.request.urlopen(self.endpoint(), timeout=5) as response:
            if b"kafka_consumergroup_lag" not in response.read():
                raise StackError("lag exporter answers without kafka_consumergroup_lag")


class PrometheusServer(Component):
    """A Prometheus scraping the lag exporter and every file-registered f2p process."""

    name = "prometheus"

    def ports(self) -> dict[str, int]:
        return {"http": self.config.ports.prometheus}

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.prometheus}"

    @property
    def targets_glob(self) -> str:
        from infra.monitoring.targets import targets_dir

        return str(targets_dir(self.config.state_dir) / "*.json")

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        Path(self.targets_glob).parent.mkdir(parents=True, exist_ok=True)
        interval = _scrape_interval()
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(RULES_FILE)],
            "scrape_configs": [
                {
                    # The job label comes from each target file (f2p-worker, ...).
                    "job_name": "f2p",
                    "file_sd_configs": [{"files": [self.targets_glob], "refresh_interval": "1s"}],
                },
                {
                    "job_name": "kafka-exporter",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{self.config.ports.lag_exporter}"]}
                    ],
                },
            ],
        }
        # JSON is YAML: no YAML writer needed.
        (self.data_dir / "prometheus.yml").write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        return [
            str(find_prometheus_tool()),
            f"--config.file={self.data_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address=127.0.0.1:{self.config.ports.prometheus}",
            # Debian's build serves its UI from system paths we did not install; the API is all
            # the tests and `f2p` need.
            "--web.enable-lifecycle",
        ]

    def probe(self) -> None:
        with urllib.request.urlopen(f"{self.endpoint()}/-/ready", timeout=5) as response:
            if response.status != 200:
                raise StackError(f"prometheus not ready: HTTP {response.status}")

    def extra(self) -> dict[str, str]:
        return {"targets": self.targets_glob}


# Started by `f2p stack up --monitoring`, stopped by `down` with the rest (launcher.OPTIONAL).
MONITORING: tuple[type[Component], ...] = (LagExporter, PrometheusServer)
