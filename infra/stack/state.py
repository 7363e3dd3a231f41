"""The stack's state file: what runs, where, and how to reach it.

``state.json`` in the state directory is the single source of truth for ``down`` (which
processes to stop) and for clients (``f2p stack status --json``, ``connectors.settings``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.stack.processes import ProcessRecord


@dataclass(frozen=True)
class S3Credentials:
    """The access key pair the embedded SeaweedFS S3 gateway accepts."""

    access_key: str
    secret_key: str


@dataclass
class ComponentState:
    """One running component: its process, endpoint and log file."""

    name: str
    process: ProcessRecord
    endpoint: str
    log_file: str
    started_at: float
    ready_after_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class StackState:
    """All components of one stack, as recorded in ``state.json``."""

    components: dict[str, ComponentState] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({n: asdict(c) for n, c in self.components.items()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        raw = json.loads(text)
        components = {}
        for name, data in raw.items():
            data["process"] = ProcessRecord(**data["process"])
            components[name] = ComponentState(**data)
        return cls(components=components)


def read_state(path: Path) -> StackState:
    """The recorded state, or an empty one when no stack was started from this directory."""
    if not path.exists():
        return StackState()
    return StackState.from_json(path.read_text())


def write_state(path: Path, state: StackState) -> None:
    """Write atomically so a crash mid-write never leaves a half file for the next ``up``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


def load_or_create_credentials(path: Path) -> S3Credentials:
    """S3 keys generated once per state directory and kept (mode 0600) for later runs."""
    if path.exists():
        return S3Credentials(**json.loads(path.read_text()))
    creds = S3Credentials(access_key="f2p" + os.urandom(6).hex(), secret_key=os.urandom(20).hex())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(creds), out)
    return creds
