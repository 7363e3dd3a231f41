"""``f2p stack up | down | status``: the embedded stack's life cycle.

``up`` is idempotent: components recorded in ``state.json`` and still healthy are left alone,
recorded ones whose process died (a crash, a reboot) are forgotten and started again, and the
missing ones are started in parallel. A file lock serialises concurrent ``up``/``down`` calls
(two terminals, or test sessions started side by side).
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from infra.stack.artifacts import ensure_artifacts
from infra.stack.component import Component
from infra.stack.config import StackConfig
from infra.stack.exceptions import ComponentNotReady
from infra.stack.kafka import KafkaBroker
from infra.stack.processes import stop, tail
from infra.stack.prometheus import MONITORING
from infra.stack.registry import ApicurioRegistry
from infra.stack.seaweed import SeaweedS3
from infra.stack.state import StackState, read_state, write_state

log = logging.getLogger(__name__)

COMPONENTS: tuple[type[Component], ...] = (KafkaBroker, SeaweedS3, ApicurioRegistry)
# Components started only on request (`f2p stack up --monitoring`); `down` stops them too.
OPTIONAL: dict[str, tuple[type[Component], ...]] = {"monitoring": MONITORING}


def _known() -> tuple[type[Component], ...]:
    return COMPONENTS + tuple(cls for group in OPTIONAL.values() for cls in group)


@dataclass(frozen=True)
class UpReport:
    """What ``up`` did per component: "started", "already running" or "restarted (stale)"."""

    actions: dict[str, str]
    ready_after_s: dict[str, float]


@contextmanager
def _locked(config: StackConfig) -> Iterator[None]:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with (config.state_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stack_up(config: StackConfig, *, optional: tuple[str, ...] = ()) -> UpReport:
    """Start every component that is not already running and healthy; wait until all are ready.

    ``optional`` names groups of ``OPTIONAL`` to start as well (``("monitoring",)``).

    Raises PortInUse when a port is taken by a foreign process and ComponentNotReady (naming the
    component and its log) when one does not come up before the deadline.
    """
    with _locked(config):
        state = read_state(config.state_file)
        actions: dict[str, str] = {}
        to_start: list[type[Component]] = []
        for cls in COMPONENTS + tuple(c for g in optional for c in OPTIONAL[g]):
            recorded = state.components.get(cls.name)
            if recorded and recorded.process.is_alive():
                actions[cls.name] = "already running"
                continue
            if recorded:
                log.warning(
                    "%s: recorded process %d is gone; starting anew", cls.name, recorded.process.pid
                )
                del state.components[cls.name]
                actions[cls.name] = "restarted (stale state)"
            else:
                actions[cls.name] = "started"
            to_start.append(cls)
        write_state(config.state_file, state)

        # Components already running may still be booting (another `up` crashed mid-way):
        # probe them with the same deadline as fresh ones.
        for name, action in actions.items():
            if action == "already running":
                _wait_healthy(config, state, name)

        if to_start:
            artifacts = ensure_artifacts(config)
            components = [cls(config, artifacts) for cls in to_start]
            with ThreadPoolExecutor(max_workers=len(components)) as pool:
                futures = {c.name: pool.submit(c.start) for c in components}
                errors = []
                for name, future in futures.items():
                    try:
                        state.components[name] = future.result()
                    except Exception as exc:
                        errors.append(exc)
                # Record what did start, so `down` can stop it even when another part failed.
                write_state(config.state_file, state)
                if errors:
                    raise errors[0]
        ready = {n: c.ready_after_s for n, c in state.components.items()}
        return UpReport(actions=actions, ready_after_s=ready)


def _wait_healthy(config: StackConfig, state: StackState, name: str) -> None:
    component = _component(config, name)
    deadline = time.monotonic() + config.ready_timeout_s
    while True:
        try:
            component.probe()
            return
        except Exception as exc:
            if time.monotonic() > deadline or not state.components[name].process.is_alive():
                raise ComponentNotReady(
                    name,
                    f"running but unhealthy: {exc}",
                    component.log_file,
                    tail(component.log_file),
                ) from exc
            time.sleep(0.2)


def stack_down(config: StackConfig, *, purge: bool = False) -> list[str]:
    """Stop exactly the processes recorded in the state file; return the names stopped.

    ``purge`` also deletes the data directory (Kafka logs, S3 objects), not the fetched jars.
    """
    with _locked(config):
        state = read_state(config.state_file)
        stopped = []
        # Reverse start order: the registry and S3 first, the broker last.
        for name in reversed([cls.name for cls in _known()]):
            recorded = state.components.get(name)
            if recorded is None:
                continue
            if recorded.process.is_alive():
                stop(recorded.process)
                stopped.append(name)
            del state.components[name]
            write_state(config.state_file, state)
        config.state_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(config.data_dir, ignore_errors=True)
        return stopped


def stack_status(config: StackConfig, *, probe: bool = True) -> dict[str, Any]:
    """The stack's endpoints, credentials and per-component health, as a JSON-ready dict."""
    state = read_state(config.state_file)
    components: dict[str, Any] = {}
    for cls in _known():
        recorded = state.components.get(cls.name)
        if recorded is None and cls not in COMPONENTS:
            continue  # an optional component that was not asked for
        if recorded is None:
            components[cls.name] = {"state": "not started", "healthy": False}
            continue
        alive = recorded.process.is_alive()
        healthy = False
        error = None
        if alive and probe:
            try:
                _component(config, cls.name).probe()
                healthy = True
            except Exception as exc:
                error = str(exc)
        components[cls.name] = {
            "state": "running" if alive else "dead (stale state)",
            "healthy": healthy,
            "pid": recorded.process.pid,
            "endpoint": recorded.endpoint,
            "log_file": recorded.log_file,
            "ready_after_s": recorded.ready_after_s,
            **({"error": error} if error else {}),
            **recorded.extra,
        }
    return {
        "state_dir": str(config.state_dir),
        "healthy": all(c["healthy"] for c in components.values()),
        "bootstrap_servers": components["kafka"].get("endpoint"),
        "s3": {
            "endpoint_url": components["s3"].get("endpoint"),
            "access_key": components["s3"].get("access_key"),
            "secret_key": components["s3"].get("secret_key"),
            "region": components["s3"].get("region"),
            "buckets": (components["s3"].get("buckets") or "").split(",") or [],
        },
        "registry_url": components["registry"].get("endpoint"),
        "components": components,
    }


def _component(config: StackConfig, name: str) -> Component:
    cls = next(c for c in _known() if c.name == name)
    return cls(config, None)
