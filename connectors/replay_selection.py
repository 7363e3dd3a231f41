"""What a replay covers: the selection (sources, window, offsets, filters, target lane) and
the offset ranges it resolves to on the broker when a run starts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime

from confluent_kafka import Consumer

from connectors.replay_checkpoint import partition_key
from connectors.results import ResultsError, offsets_at, partitions_of, watermarks
from connectors.settings import Settings
from f2p_errors import ConfigError, F2PError
from schemas.records import Lane, ResultStatus

#: ``(topic or None for every source, partition) → offset``.
OffsetSpec = Mapping[tuple[str | None, int], int]


class ReplayError(F2PError):
    """A replay could not run or stopped; its checkpoint lets a rerun resume."""


#: Kafka's legal topic names (and their length limit).
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _bounded(text: str, limit: int) -> int:
    """A non-negative decimal integer below ``limit``; ValueError otherwise."""
    if not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) >= limit:
        raise ValueError(text)
    return int(text)


def parse_offsets(text: str) -> dict[tuple[str | None, int], int]:
    """``"0:100,1:250"`` or ``"f2p.requests.batch:0:100"`` → ``{(topic|None, p): offset}``."""
    spec: dict[tuple[str | None, int], int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.rsplit(":", 2)
        try:
            if len(parts) == 2:
                topic, partition, offset = (
                    None,
                    _bounded(parts[0], 2**31),
                    _bounded(parts[1], 2**63),
                )
            elif len(parts) == 3 and TOPIC_NAME.fullmatch(parts[0]):
                topic, partition, offset = (
                    parts[0],
                    _bounded(parts[1], 2**31),
                    _bounded(parts[2], 2**63),
                )
            else:
                raise ValueError(item)
            spec[(topic, partition)] = offset
        except ValueError:
            shown = item if len(item) <= 80 else f"{item[:80]}... ({len(item)} characters)"
            raise ConfigError(
                f"offsets: expected PARTITION:OFFSET or TOPIC:PARTITION:OFFSET with a partition "
                f"below 2^31 and an offset below 2^63, got {shown!r}"
            ) from None
    return spec


@dataclasses.dataclass(frozen=True)
class ReplaySelection:
    """What to replay and where to: ``since`` inclusive, ``until`` and end offsets exclusive."""

    sources: tuple[str, ...]
    target_lane: Lane = Lane.BATCH
    since: datetime | None = None
    until: datetime | None = None
    start_offsets: OffsetSpec = dataclasses.field(default_factory=dict)
    end_offsets: OffsetSpec = dataclasses.field(default_factory=dict)
    tenant: str | None = None
    result_statuses: frozenset[ResultStatus] = frozenset()

    def __post_init__(self) -> None:
        statuses = frozenset(ResultStatus(str(s).upper()) for s in self.result_statuses)
        object.__setattr__(self, "result_statuses", statuses)
        object.__setattr__(self, "target_lane", Lane(str(self.target_lane).upper()))
        object.__setattr__(self, "sources", tuple(self.sources))

    def fingerprint(self, settings: Settings) -> str:
        """A short hash identifying this selection on this cluster (names checkpoint files)."""

        def offsets(spec: OffsetSpec) -> list[list[object]]:
            return sorted([t or "*", p, o] for (t, p), o in spec.items())

        text = json.dumps(
            [
                settings.bootstrap_servers, sorted(self.sources), self.target_lane.value,
                self.since.isoformat() if self.since else None,
                self.until.isoformat() if self.until else None,
                offsets(self.start_offsets), offsets(self.end_offsets), self.tenant,
                sorted(s.value for s in self.result_statuses),
            ]
        )  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_ranges(
    consumer: Consumer, selection: ReplaySelection, timeout_s: float = 10.0
) -> dict[str, tuple[int, int]]:
    """Per source partition (``"topic:p"``), the offsets ``[start, end)`` to replay now."""
    ranges: dict[str, tuple[int, int]] = {}
    for topic in selection.sources:
        try:
            partitions = partitions_of(consumer, topic, timeout_s)
        except ResultsError as exc:
            raise ReplayError(f"source topic {topic} does not exist") from exc
        marks = watermarks(consumer, topic, partitions, timeout_s)
        starts = ends = None
        if selection.since is not None:
            starts = offsets_at(consumer, topic, partitions, selection.since, timeout_s)
        if selection.until is not None:
            ends = offsets_at(consumer, topic, partitions, selection.until, timeout_s)
        for p in partitions:
            low, high = marks[p]
            start = low if starts is None else (starts[p] if starts[p] >= 0 else high)
            end = high if ends is None or ends[p] < 0 else ends[p]
            explicit_start = selection.start_offsets.get(
                (topic, p), selection.start_offsets.get((None, p))
            )
            explicit_end = selection.end_offsets.get(
                (topic, p), selection.end_offsets.get((None, p))
            )
            if explicit_start is not None:
                start = max(start, explicit_start)
            if explicit_end is not None:
                end = min(end, explicit_end)
            start = min(max(start, low), high)
            ranges[partition_key(topic, p)] = (start, max(start, min(end, high)))
    return ranges


def target_marks(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """Current end offset of every partition of ``topic``."""
    try:
        partitions = partitions_of(consumer, topic, timeout_s)
    except ResultsError as exc:
        raise ReplayError(f"target topic {topic} does not exist") from exc
    return {p: high for p, (_, high) in watermarks(consumer, topic, partitions, timeout_s).items()}
