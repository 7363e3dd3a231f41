"""Scrape targets of the embedded Prometheus, as files (Prometheus ``file_sd_configs``).

Whoever starts an f2p process with a metrics port (a test, a benchmark, a person) registers it
here and Prometheus scrapes it within seconds; nothing in the process itself has to know about
Prometheus. One JSON file per target under ``<stack dir>/monitoring/targets/``; the file's
``job`` label (``f2p-worker``, ``f2p-admission``, ``f2p-analytics``) is the job the rules and
dashboards select, as on Kubernetes (the ServiceMonitor's jobLabel).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from f2p_errors import ConfigError

JOBS = ("f2p-worker", "f2p-admission", "f2p-analytics")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def targets_dir(state_dir: Path) -> Path:
    """Where the target files of the stack in ``state_dir`` live (Prometheus watches it)."""
    return state_dir / "monitoring" / "targets"


def register_target(
    state_dir: Path,
    *,
    name: str,
    job: str,
    port: int,
    host: str = "127.0.0.1",
    labels: dict[str, str] | None = None,
) -> Path:
    """Make Prometheus scrape ``host:port`` as ``job`` (instance label = ``name``); idempotent."""
    if job not in JOBS:
        raise ConfigError(f"scrape target job must be one of {', '.join(JOBS)}, got {job!r}")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"scrape target name must be 1..128 of A-Z a-z 0-9 . _ -, got {name!r}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"scrape target port must be a TCP port, got {port}")
    directory = targets_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    entry = [
        {"targets": [f"{host}:{port}"], "labels": {**(labels or {}), "job": job, "instance": name}}
    ]
    path = directory / f"{name}.json"
    # Prometheus may read while we write: write aside, then rename (atomic on one filesystem).
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)
    return path


def unregister_target(state_dir: Path, name: str) -> None:
    """Stop scraping target ``name`` (missing is fine)."""
    (targets_dir(state_dir) / f"{name}.json").unlink(missing_ok=True)
