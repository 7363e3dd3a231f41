"""What every stack component provides, and the start-and-wait-until-ready loop they share."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

from infra.stack.artifacts import StackArtifacts
from infra.stack.config import StackConfig
from infra.stack.exceptions import ComponentNotReady, PortInUse
from infra.stack.processes import ensure_port_free, spawn, tail
from infra.stack.state import ComponentState


class Component(ABC):
    """One server of the stack: its ports, how to prepare and start it, how to probe it."""

    name: str

    def __init__(self, config: StackConfig, artifacts: StackArtifacts | None) -> None:
        self.config = config
        self.artifacts = artifacts

    @property
    def log_file(self) -> Path:
        return self.config.log_dir / f"{self.name}.log"

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir / self.name

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Every port the component binds, by role, so all can be checked before starting."""

    @abstractmethod
    def endpoint(self) -> str:
        """The address clients use (bootstrap servers, URL)."""

    def prepare(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Write config files and initialise storage; idempotent."""

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that starts the server in the foreground."""

    @abstractmethod
    def probe(self) -> None:
        """Raise any exception while the component is not ready; return when it is."""

    def extra(self) -> dict[str, str]:
        """Component-specific facts for ``status --json`` (credentials, buckets...)."""
        return {}

    def _wait_ports_free(self, grace_s: float = 5.0) -> None:
        """Raise PortInUse unless every port is free; a process killed a moment ago may hold
        its ports for a little while after it stops showing as alive, so retry briefly."""
        deadline = time.monotonic() + grace_s
        while True:
            try:
                for role, port in self.ports().items():
                    ensure_port_free(port, component=f"{self.name} ({role})")
                return
            except PortInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def start(self) -> ComponentState:
        """Check ports, prepare, spawn and wait for readiness; raise ComponentNotReady on failure.

        The wait polls :meth:`probe` until the configured deadline and gives up early when the
        process exits, so a crash at start-up is reported at once with the log's last lines.
        """
        self._wait_ports_free()
        self.prepare()
        started = time.monotonic()
        proc, record = spawn(self.command(), log_file=self.log_file, cwd=self.data_dir)
        deadline = started + self.config.ready_timeout_s
        last_error: Exception | None = None
        delay = 0.05
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ComponentNotReady(
                    self.name,
                    f"process exited with code {proc.returncode} while starting",
                    self.log_file,
                    tail(self.log_file),
                )
            try:
                self.probe()
            except Exception as exc:  # any probe failure means "not yet"
                last_error = exc
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
                continue
            return ComponentState(
                name=self.name,
                process=record,
                endpoint=self.endpoint(),
                log_file=str(self.log_file),
                started_at=time.time(),
                ready_after_s=round(time.monotonic() - started, 3),
                extra=self.extra(),
            )
        proc.terminate()
        raise ComponentNotReady(
            self.name,
            f"not ready after {self.config.ready_timeout_s:.0f} s (last probe error: {last_error})",
            self.log_file,
            tail(self.log_file),
        )
