"""Broker faults on the embedded cluster, for chaos tests and for people trying failover by hand.

::

    config = load_stack_config(brokers=3)          # or the StackConfig the test started
    node = busiest_broker(admin, [lane, results])  # infra.stack.cluster
    kill_broker(config, node)                      # kill -9, returns once its ports are free
    ...                                            # the pipeline runs on two brokers
    start_broker(config, node)                     # back, and the cluster serves again
    wait_settled(bootstrap_servers(config), 3)     # full ISRs again before the next fault

``pause_broker`` / ``resume_broker`` send SIGSTOP / SIGCONT: a hung broker, whose sockets stay
open, is a different failure from a dead one. Every function acts only on the process recorded
in the stack's ``state.json`` (pid and start time), never on a process found by name.
"""

from __future__ import annotations

import os
import signal
import time

from infra.stack.config import StackConfig
from infra.stack.exceptions import PortInUse, StackError
from infra.stack.kafka import KafkaBroker, node_name
from infra.stack.launcher import stack_up
from infra.stack.processes import ProcessRecord, ensure_port_free, is_paused
from infra.stack.state import read_state


def broker_ids(config: StackConfig) -> list[int]:
    """Node ids of the configured cluster: [1, 2, 3] for three brokers."""
    return list(range(1, config.brokers + 1))


def broker_process(config: StackConfig, node_id: int) -> ProcessRecord:
    """The recorded process of node ``node_id``; StackError when it was never started."""
    _check_id(config, node_id)
    recorded = read_state(config.state_file).components.get(node_name(config, node_id))
    if recorded is None:
        raise StackError(f"Kafka node {node_id} is not recorded in {config.state_file}")
    return recorded.process


def broker_pid(config: StackConfig, node_id: int) -> int:
    """The pid of node ``node_id`` (as recorded; check ``broker_alive`` for liveness)."""
    return broker_process(config, node_id).pid


def broker_alive(config: StackConfig, node_id: int) -> bool:
    """True while the recorded process of node ``node_id`` exists (paused counts as alive)."""
    return broker_process(config, node_id).is_alive()


def broker_endpoint(config: StackConfig, node_id: int) -> str:
    """``127.0.0.1:<client port>`` of node ``node_id``."""
    _check_id(config, node_id)
    return KafkaBroker(config, None, node_id).endpoint()


def kill_broker(
    config: StackConfig, node_id: int, sig: signal.Signals = signal.SIGKILL, timeout_s: float = 30
) -> None:
    """Send ``sig`` (default SIGKILL) to node ``node_id`` and wait until it is gone.

    Gone means exited and its ports free: a JVM shows as a zombie while its other threads still
    hold the sockets, and a restart would find its port taken. With SIGTERM this is a clean
    (controlled) shutdown.
    """
    record = broker_process(config, node_id)
    if not record.is_alive():
        raise StackError(f"Kafka node {node_id} (pid {record.pid}) is not running")
    os.kill(record.pid, sig)
    if is_paused(record) and sig != signal.SIGKILL:
        os.kill(record.pid, signal.SIGCONT)  # a stopped JVM acts on SIGTERM only once resumed
    node = KafkaBroker(config, None, node_id)
    deadline = time.monotonic() + timeout_s
    while True:
        if not record.is_alive() and _ports_free(node):
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"Kafka node {node_id} (pid {record.pid}) still up {timeout_s} s after {sig.name}"
            )
        time.sleep(0.05)


def pause_broker(config: StackConfig, node_id: int) -> None:
    """SIGSTOP node ``node_id``: it keeps its sockets but answers nothing (a hung broker)."""
    record = broker_process(config, node_id)
    if not record.is_alive():
        raise StackError(f"Kafka node {node_id} (pid {record.pid}) is not running")
    os.kill(record.pid, signal.SIGSTOP)


def resume_broker(config: StackConfig, node_id: int) -> None:
    """SIGCONT node ``node_id`` after ``pause_broker``."""
    record = broker_process(config, node_id)
    if record.is_alive():
        os.kill(record.pid, signal.SIGCONT)


def start_broker(config: StackConfig, node_id: int) -> float:
    """Start node ``node_id`` again after a kill (resume it if paused; nothing if it runs).

    Returns once the node is a live broker and the cluster serves every partition (every node
    running: once the cluster is fully settled); the seconds from call to return.
    """
    _check_id(config, node_id)
    started = time.monotonic()
    stack_up(config, only=[node_name(config, node_id)])
    return time.monotonic() - started


def _ports_free(node: KafkaBroker) -> bool:
    try:
        for role, port in node.ports().items():
            ensure_port_free(port, component=f"{node.name} ({role})")
    except PortInUse:
        return False
    return True


def _check_id(config: StackConfig, node_id: int) -> None:
    if node_id not in broker_ids(config):
        raise StackError(f"no Kafka node {node_id}: this stack has nodes {broker_ids(config)}")
