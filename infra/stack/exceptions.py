"""Errors of the embedded stack launcher."""

from __future__ import annotations

from pathlib import Path

from f2p_errors import F2PError


class StackError(F2PError):
    """The embedded stack could not be started, checked or stopped."""


class PortInUse(StackError):
    """A port the stack needs is already taken by another process."""

    def __init__(self, component: str, port: int) -> None:
        super().__init__(
            f"{component}: port 127.0.0.1:{port} is already in use by another process; "
            f"stop it or choose another port (see `f2p stack up --help` for the F2P_STACK_* "
            f"port variables)"
        )
        self.component = component
        self.port = port


class ComponentNotReady(StackError):
    """A component did not become ready before its deadline (or died while starting)."""

    def __init__(self, component: str, reason: str, log_file: Path, log_tail: str) -> None:
        super().__init__(
            f"{component} is not ready: {reason}; log: {log_file}\n--- last lines ---\n{log_tail}"
        )
        self.component = component
        self.log_file = log_file
