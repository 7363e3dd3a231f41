"""Starting, identifying and stopping the stack's child processes.

A pid alone is not an identity: after a crash the number can be reused by an unrelated process.
Each recorded process therefore carries its kernel start time (``/proc/<pid>/stat`` field 22),
and "is it ours?" means "is a process with this pid and this start time alive?".
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.stack.exceptions import PortInUse, StackError


@dataclass(frozen=True)
class ProcessRecord:
    """A process the launcher started: enough to find it again and to stop only it."""

    pid: int
    start_ticks: int
    command: str

    def is_alive(self) -> bool:
        """True when the very process we started (same pid and start time) still runs."""
        ticks = process_start_ticks(self.pid)
        return ticks is not None and ticks == self.start_ticks


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, T for stopped, Z...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def is_paused(record: ProcessRecord) -> bool:
    """True when our process is alive but stopped (SIGSTOP, a debugger)."""
    return record.is_alive() and process_state(record.pid) in ("T", "t")


def process_start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot, or None if no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; only its exit status is left
        return None
    return int(fields[19])


def spawn(argv: list[str], *, log_file: Path, cwd: Path, env: dict[str, str] | None = None):
    """Start ``argv`` detached in its own session, stdout and stderr appended to ``log_file``.

    Its own session means a terminal's Ctrl-C does not reach the stack, and ``stop`` can signal
    the whole process group (the JVMs and ``weed`` start no children we care about, but a
    wrapper might).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    ticks = process_start_ticks(proc.pid)
    if ticks is None:
        raise StackError(f"{argv[0]} exited immediately; see {log_file}")
    return proc, ProcessRecord(pid=proc.pid, start_ticks=ticks, command=" ".join(argv[:3]))


def stop(record: ProcessRecord, *, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group of ``record``, then SIGKILL it if still alive at the deadline.

    Does nothing when the recorded process is gone or the pid now belongs to someone else.
    """
    if not record.is_alive():
        return
    _signal_group(record.pid, signal.SIGTERM)
    # A paused (SIGSTOPped) process only acts on the SIGTERM once it runs again.
    _signal_group(record.pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not record.is_alive():
            return
        time.sleep(0.1)
    _signal_group(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while record.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise StackError(f"not allowed to signal process {pid}: {exc}") from exc


def ensure_port_free(port: int, *, component: str, host: str = "127.0.0.1") -> None:
    """Raise PortInUse naming the component when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(component, port) from exc
            raise


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages; empty when the file does not exist."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
