"""``f2p stack up | down | status``: the embedded stack's life cycle.

``up`` is idempotent: components recorded in ``state.json`` and still healthy are left alone,
recorded ones whose process died (a crash, a reboot, a chaos test's kill -9) are forgotten and
started again, a paused one (SIGSTOP) is resumed, and the missing ones are started in parallel.
With several Kafka nodes ``up`` returns once the cluster serves again, and once it is fully
settled (full ISRs) when every node runs. Optional groups (``OPTIONAL``: ``monitoring``) start
only when ``up`` is asked for them, after the core components are ready (they read Kafka);
``status`` shows them once recorded and ``down`` stops them first. A file lock serialises
concurrent ``up``/``down`` calls (two terminals, or test sessions started side by side).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from infra.stack.artifacts import ensure_artifacts
from infra.stack.cluster import bootstrap_servers, ensure_layout, wait_settled
from infra.stack.component import Component
from infra.stack.config import StackConfig, record_ports
from infra.stack.exceptions import ComponentNotReady, StackError
from infra.stack.kafka import KafkaBroker, kafka_nodes, probe_cluster
from infra.stack.processes import is_paused, stop, tail
from infra.stack.prometheus import MONITORING
from infra.stack.registry import ApicurioRegistry
from infra.stack.seaweed import SeaweedS3
from infra.stack.state import ComponentState, StackState, read_state, write_state

log = logging.getLogger(__name__)

# The component classes of a 1-broker stack (a cluster has one KafkaBroker per node).
COMPONENTS: tuple[type[Component], ...] = (KafkaBroker, SeaweedS3, ApicurioRegistry)
# Component groups started only on request (`f2p stack up --monitoring`), in start order.
OPTIONAL: dict[str, tuple[type[Component], ...]] = {"monitoring": MONITORING}


@dataclass(frozen=True)
class UpReport:
    """What ``up`` did per component: "started", "already running", "restarted (stale
    state)" or "resumed (was paused)"; how long each took to be ready; for a cluster, how long
    it then took to serve (or settle)."""

    actions: dict[str, str]
    ready_after_s: dict[str, float]
    cluster_ready_after_s: float | None = None


def stack_components(
    config: StackConfig, artifacts: Any = None, *, optional: Collection[str] = ()
) -> list[Component]:
    """Every component of the configured stack, in start order: Kafka nodes, S3, registry,
    then those of the ``optional`` groups named (keys of ``OPTIONAL``)."""
    _check_groups(optional)
    extra = [cls(config, artifacts) for g in OPTIONAL if g in optional for cls in OPTIONAL[g]]
    return [*kafka_nodes(config, artifacts), SeaweedS3(config, artifacts),
            ApicurioRegistry(config, artifacts), *extra]  # fmt: skip


def _check_groups(optional: Collection[str]) -> None:
    unknown = sorted(set(optional) - set(OPTIONAL))
    if unknown:
        raise StackError(f"unknown optional component group(s) {unknown}; known: {list(OPTIONAL)}")


def _known(config: StackConfig, artifacts: Any = None) -> list[Component]:
    """The core components and every optional one, asked for or not."""
    return stack_components(config, artifacts, optional=OPTIONAL)


def _is_optional(name: str) -> bool:
    return any(cls.name == name for group in OPTIONAL.values() for cls in group)


@contextmanager
def _locked(config: StackConfig) -> Iterator[None]:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with (config.state_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stack_up(
    config: StackConfig,
    *,
    only: Collection[str] | None = None,
    optional: Collection[str] = (),
) -> UpReport:
    """Start every component that is not already running and healthy; wait until all are ready.

    ``only`` limits this to the named components (``["kafka-2"]``: bring back one node).
    ``optional`` names groups of ``OPTIONAL`` to start as well (``("monitoring",)``); optional
    components already running are checked (and restarted if dead) even when not named.
    Raises PortInUse when a port is taken by a foreign process, ComponentNotReady (naming the
    component and its log) when one does not come up before the deadline, and StackError when
    the state directory holds a cluster of another size.
    """
    _check_groups(optional)
    with _locked(config):
        ensure_layout(config)
        record_ports(config)
        state = read_state(config.state_file)
        actions: dict[str, str] = {}
        to_start: list[Component] = []
        running: list[str] = []
        for component in _known(config):
            name = component.name
            if only is not None and name not in only:
                continue
            recorded = state.components.get(name)
            if _is_optional(name) and recorded is None and not _asked(name, optional):
                continue  # an optional component nobody asked for
            if recorded and recorded.process.is_alive():
                if is_paused(recorded.process):
                    log.warning(
                        "%s: process %d was paused; resuming it", name, recorded.process.pid
                    )
                    os.kill(recorded.process.pid, signal.SIGCONT)
                    actions[name] = "resumed (was paused)"
                else:
                    actions[name] = "already running"
                running.append(name)
                continue
            if recorded:
                log.warning("%s: recorded process %d is gone; starting anew", name,
                            recorded.process.pid)  # fmt: skip
                del state.components[name]
                actions[name] = "restarted (stale state)"
            else:
                actions[name] = "started"
            to_start.append(component)
        write_state(config.state_file, state)

        # Core first: the optional components (lag exporter, Prometheus) read Kafka.
        core = [c.name for c in to_start if not _is_optional(c.name)]
        if core:
            _start_all(config, state, core)
        extra = [c.name for c in to_start if _is_optional(c.name)]
        if extra:
            _start_all(config, state, extra)
        # Components already running may still be booting (another `up` crashed mid-way):
        # probe them with the same deadline as fresh ones.
        for name in running:
            _wait_healthy(config, state, name)
        cluster_ready = None
        if config.brokers > 1 and any(n.startswith("kafka") for n in actions):
            cluster_ready = _wait_cluster(config, state)
        ready = {n: c.ready_after_s for n, c in state.components.items()}
        if ApicurioRegistry.name in actions:  # not when only Kafka nodes were asked for
            _register_schemas(state)
        return UpReport(actions=actions, ready_after_s=ready, cluster_ready_after_s=cluster_ready)


def _asked(name: str, optional: Collection[str]) -> bool:
    return any(cls.name == name for group in optional for cls in OPTIONAL[group])


def _start_all(config: StackConfig, state: StackState, names: list[str]) -> None:
    """Start the named components in parallel (a cluster's nodes must: a node is ready only
    once a majority of controllers runs) and record each one that started."""
    artifacts = ensure_artifacts(config)
    components = [c for c in _known(config, artifacts) if c.name in names]
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


def _wait_cluster(config: StackConfig, state: StackState) -> float:
    """Wait until the cluster serves (every node running: until it is settled); seconds."""
    started = time.monotonic()
    bootstrap = bootstrap_servers(config)
    nodes = [n.name for n in kafka_nodes(config)]
    all_alive = all(
        name in state.components and state.components[name].process.is_alive() for name in nodes
    )
    if all_alive:
        return wait_settled(bootstrap, config.brokers, config.ready_timeout_s)
    deadline = started + config.ready_timeout_s
    while True:
        try:
            probe_cluster(bootstrap)
            return time.monotonic() - started
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(f"Kafka cluster at {bootstrap} does not serve: {exc}") from exc
            time.sleep(0.2)


def _register_schemas(state: StackState) -> None:
    """Every subject of infra/topics.toml, FULL_TRANSITIVE from its first version (issue 12)."""
    from connectors.registry import register_stack_schemas

    register_stack_schemas(state.components[ApicurioRegistry.name].endpoint)


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

    Optional components go first (Prometheus before what it scrapes), then the registry and S3,
    then every Kafka node at once (one by one, the last nodes would wait for a controller
    quorum that is already gone). ``purge`` also deletes the data directory (Kafka logs, S3
    objects, the cluster's identity), not the fetched jars.
    """
    with _locked(config):
        state = read_state(config.state_file)
        kafka = sorted(n for n in state.components if n.startswith("kafka"))
        optional = [c.name for c in reversed(_known(config)) if _is_optional(c.name)]
        others = [n for n in (*optional, "registry", "s3") if n in state.components]
        others += [n for n in state.components if n not in kafka and n not in others]
        stopped = [n for n in others if _stop_recorded(state, n)]
        with ThreadPoolExecutor(max_workers=max(1, len(kafka))) as pool:
            results = list(pool.map(lambda n: _stop_recorded(state, n), kafka))
        stopped += [n for n, was_running in zip(kafka, results, strict=True) if was_running]
        config.state_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(config.data_dir, ignore_errors=True)
        return stopped


def _stop_recorded(state: StackState, name: str) -> bool:
    recorded = state.components[name]
    alive = recorded.process.is_alive()
    if alive:
        stop(recorded.process)
    return alive


def stack_status(config: StackConfig, *, probe: bool = True) -> dict[str, Any]:
    """The stack's endpoints, credentials and per-component health, as a JSON-ready dict.

    ``brokers`` lists every Kafka node (id, endpoint, pid, state, healthy); with several nodes
    ``components["kafka"]`` is the cluster as a whole ("running", "degraded (2 of 3 brokers
    running)", ...) and ``components["kafka-<id>"]`` each node. Optional components appear
    once ``up`` has started them.
    """
    state = read_state(config.state_file)
    components: dict[str, Any] = {}
    for component in _known(config):
        recorded = state.components.get(component.name)
        if recorded is None and _is_optional(component.name):
            continue  # an optional component that was not asked for
        components[component.name] = _status_of(component, recorded, probe)
    nodes = kafka_nodes(config)
    # Endpoints as recorded by the `up` that started each node (the ports of this process's
    # environment may differ), computed for nodes never started.
    brokers = [
        {"id": n.node_id, "name": n.name,
         "endpoint": components[n.name].get("endpoint") or n.endpoint(),
         "controller_endpoint": n.controller_endpoint(), "data_dir": str(n.data_dir),
         **{k: components[n.name].get(k) for k in ("pid", "state", "healthy", "log_file")}}
        for n in nodes
    ]  # fmt: skip
    if config.brokers > 1:
        components = {"kafka": _cluster_status(config, brokers, probe), **components}
    return {
        "state_dir": str(config.state_dir),
        "healthy": all(c["healthy"] for c in components.values()),
        "bootstrap_servers": components["kafka"].get("endpoint"),
        "brokers": brokers,
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


def _status_of(component: Component, recorded: ComponentState | None, probe: bool) -> dict:
    if recorded is None:
        return {"state": "not started", "healthy": False}
    alive = recorded.process.is_alive()
    paused = alive and is_paused(recorded.process)
    healthy = False
    error = None
    if paused:
        error = "paused (SIGSTOP); `f2p stack up` resumes it"
    elif alive and probe:
        try:
            component.probe()
            healthy = True
        except Exception as exc:
            error = str(exc)
    return {
        "state": "paused" if paused else "running" if alive else "dead (stale state)",
        "healthy": healthy,
        "pid": recorded.process.pid,
        "endpoint": recorded.endpoint,
        "log_file": recorded.log_file,
        "ready_after_s": recorded.ready_after_s,
        **({"error": error} if error else {}),
        **recorded.extra,
    }


def _cluster_status(config: StackConfig, brokers: list[dict], probe: bool) -> dict[str, Any]:
    recorded = [b for b in brokers if b["state"] != "not started"]
    running = [b for b in brokers if b["state"] == "running"]
    if not recorded:
        return {"state": "not started", "healthy": False}
    if len(running) == len(brokers):
        summary = "running"
    elif running:
        summary = f"degraded ({len(running)} of {len(brokers)} brokers running)"
    else:
        summary = "dead (stale state)"
    bootstrap = ",".join(b["endpoint"] for b in brokers)
    status: dict[str, Any] = {"state": summary, "healthy": False, "endpoint": bootstrap}
    if probe and running and all(b["healthy"] for b in brokers):
        try:
            probe_cluster(bootstrap)
            status["healthy"] = True
        except Exception as exc:
            status["error"] = str(exc)
    return status


def _component(config: StackConfig, name: str) -> Component:
    return next(c for c in _known(config) if c.name == name)
