"""The checkpoint of a replay run: what it covers, how far it got, where its output starts.

A JSON file rewritten atomically (write to a temporary file, fsync, rename) after every batch the
replay has seen delivered. It records:

- ``run_id``: fixed for the run; new request ids are ``uuid5(run_id, original id)``, so a
  resumed run produces the same ids as the interrupted one;
- ``fingerprint``: a hash of the selection, so a checkpoint is never resumed by a different
  replay;
- ``ranges``: per source partition the offsets ``[start, end)`` frozen when the run started
  (the target lane may be one of the sources: the run must not read its own output);
- ``next_offsets``: per source partition the first offset not yet replayed;
- ``target_marks``: per target partition its end offset when the checkpoint was written.
  Everything the run published after this checkpoint lies at or after these offsets; a resumed
  run reads them to skip requests it delivered before it was killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from f2p_errors import ConfigError

VERSION = 1


def partition_key(topic: str, partition: int) -> str:
    """``"<topic>:<partition>"``, the key of a source partition in the file."""
    return f"{topic}:{partition}"


def split_partition_key(key: str) -> tuple[str, int]:
    topic, partition = key.rsplit(":", 1)
    return topic, int(partition)


def default_checkpoint_dir() -> Path:
    """``$XDG_CACHE_HOME/f2p/replay`` (``~/.cache/f2p/replay`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "f2p" / "replay"


@dataclasses.dataclass
class ReplayCheckpoint:
    """The state of one replay run (see the module docstring)."""

    run_id: str
    fingerprint: str
    target_topic: str
    ranges: dict[str, tuple[int, int]]
    next_offsets: dict[str, int]
    target_marks: dict[int, int]
    replayed: int = 0
    scanned: int = 0
    matched: int = 0
    done: bool = False
    created_at: str = dataclasses.field(default_factory=lambda: datetime.now(UTC).isoformat())
    updated_at: str = ""

    @property
    def planned(self) -> int:
        """Messages in the selected ranges."""
        return sum(end - start for start, end in self.ranges.values())

    def save(self, path: Path) -> None:
        """Write atomically: a reader (or a resumed run) sees the old or the new file."""
        self.updated_at = datetime.now(UTC).isoformat()
        payload: dict[str, Any] = {"version": VERSION, **dataclasses.asdict(self)}
        payload["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        payload["target_marks"] = {str(k): v for k, v in self.target_marks.items()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        except OSError as exc:
            raise ConfigError(f"replay checkpoint {path}: cannot write: {exc}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(payload, out, indent=2, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> ReplayCheckpoint | None:
        """The checkpoint at ``path``, or None when there is none; ConfigError if unreadable."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"replay checkpoint {path} is unreadable: {exc}") from exc
        if raw.get("version") != VERSION:
            raise ConfigError(f"replay checkpoint {path} has version {raw.get('version')!r}")
        raw.pop("version")
        try:
            raw["ranges"] = {k: (int(v[0]), int(v[1])) for k, v in raw["ranges"].items()}
            raw["target_marks"] = {int(k): int(v) for k, v in raw["target_marks"].items()}
            return cls(**raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"replay checkpoint {path} is malformed: {exc}") from exc
