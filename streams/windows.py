"""Tumbling-window aggregation of GenerationResults per tenant, in event time. No Kafka here.

Time model
    The event time of a result is its ``completed_at`` (integer epoch milliseconds). Windows are
    ``[start, start + window)`` aligned to the epoch, one set per tenant.

    The watermark says "no more results older than this are expected". Each source partition
    contributes the largest event time it delivered; the watermark is the minimum over the
    partitions that delivered something within the last ``idle_s`` seconds (wall clock), so a
    partition that lags holds windows open while a quiet one does not. When every partition is
    quiet the watermark follows the wall clock: nothing is in flight, so time moves on. It never
    moves backwards, and one record cannot push it further than ``grace`` past the wall clock
    (a worker with a clock far in the future would otherwise close every window at once).

    A window closes when ``watermark >= end + grace``. A result that arrives for a closed window
    is *late*: it is dropped and counted (``late_records``), never folded into an emitted window.

Tokens
    Every accepted result carries an opaque token (the faust event) that the window hands back
    when it closes, so that the caller acknowledges source records only once the window that
    counted them has been emitted. A dropped result's token is returned by :meth:`add` at once.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from schemas.analytics_records import AnalyticsWindow, LatencySummary
from schemas.records import GenerationResult, ResultStatus
from streams.exceptions import StreamsConfigError

T = TypeVar("T")

#: Percentiles reported for ``timings.total_ms`` of OK results.
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


@dataclass(frozen=True, kw_only=True)
class WindowPolicy:
    """How results are cut into windows and when a window is complete."""

    window_s: float = 10.0
    # Allowed lateness: a window stays open this long after the watermark passed its end.
    grace_s: float = 2.0
    # A partition silent this long (wall clock) no longer holds the watermark back.
    idle_s: float = 5.0
    # Exact latency list up to this many OK results per window, a uniform sample beyond.
    max_samples: int = 10_000

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.window_s * 1000 == int(self.window_s * 1000)):
            raise StreamsConfigError(f"window_s must be a positive whole ms, got {self.window_s}")
        if self.grace_s < 0 or self.idle_s <= 0:
            raise StreamsConfigError("grace_s must be >= 0 and idle_s > 0")
        if self.max_samples < 1:
            raise StreamsConfigError("max_samples must be >= 1")

    @property
    def window_ms(self) -> int:
        return int(self.window_s * 1000)

    @property
    def grace_ms(self) -> int:
        return int(self.grace_s * 1000)


def event_ms(result: GenerationResult) -> int:
    """The event time of a result: ``completed_at`` in epoch milliseconds."""
    return int(result.completed_at.timestamp() * 1000)


def window_start(t_ms: int, window_ms: int) -> int:
    """Start of the tumbling window holding ``t_ms`` (floor division; exact for negatives)."""
    return t_ms - t_ms % window_ms


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by linear interpolation between closest ranks.

    The "R-7" definition: numpy's default and ``statistics.quantiles(method="inclusive")``.
    ``sorted_values`` must be sorted and non-empty.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within [0, 1], got {q}")
    position = (len(sorted_values) - 1) * q
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    fraction = position - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * fraction


class LatencySample:
    """Latencies of one window: exact up to ``capacity`` values, then a uniform reservoir.

    Count, sum and max stay exact whatever the sample size (Vitter's algorithm R; the seed
    makes a window's sample reproducible).
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.values: list[int] = []
        self.count = 0
        self.total = 0
        self.max = 0
        self._rng = random.Random(seed)

    def add(self, value: int) -> None:
        self.count += 1
        self.total += value
        self.max = max(self.max, value)
        if len(self.values) < self.capacity:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.count)
        if slot < self.capacity:
            self.values[slot] = value

    def summary(self) -> LatencySummary:
        """``count``, ``sampled``, ``mean``, ``max`` and the percentiles (None when empty)."""
        if not self.values:
            return LatencySummary(count=self.count, sampled=0)
        ordered = sorted(self.values)
        quantiles: dict[str, Any] = {
            name: round(percentile(ordered, q), 3) for name, q in PERCENTILES
        }
        return LatencySummary(
            count=self.count,
            sampled=len(self.values),
            mean=round(self.total / self.count, 3),
            max=self.max,
            **quantiles,
        )


def _utc(t_ms: int) -> datetime:
    return datetime.fromtimestamp(t_ms / 1000, UTC)


@dataclass
class WindowAggregate:
    """Everything one tenant's window knows; :meth:`to_record` is what gets emitted."""

    tenant_id: str
    start_ms: int
    end_ms: int
    max_samples: int
    count: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    errors_by_code: Counter[str] = field(default_factory=Counter)
    engine_ms_sum: int = 0
    latency: LatencySample = field(init=False)

    def __post_init__(self) -> None:
        seed = zlib.crc32(f"{self.tenant_id}/{self.start_ms}".encode())
        self.latency = LatencySample(self.max_samples, seed)

    def add(self, result: GenerationResult) -> None:
        """Fold one result in."""
        self.count += 1
        self.by_status[result.status.value] += 1
        if result.error is not None:
            self.errors_by_code[result.error.code] += 1
        # engine_ms is the engine time of the whole batch the request ran in (see
        # docs in streams/analytics.py): summing it counts a batch once per request.
        self.engine_ms_sum += result.timings.engine_ms
        if result.status is ResultStatus.OK:
            self.latency.add(result.timings.total_ms)

    def to_record(self, *, final: bool, emitted_at_ms: int) -> AnalyticsWindow:
        """The analytics record; the newest per (tenant_id, window_start) wins."""
        window_s = (self.end_ms - self.start_ms) / 1000
        not_ok = self.count - self.by_status[ResultStatus.OK.value]
        return AnalyticsWindow(
            tenant_id=self.tenant_id,
            window_start=_utc(self.start_ms),
            window_end=_utc(self.end_ms),
            final=final,
            count=self.count,
            by_status={s.value: self.by_status[s.value] for s in ResultStatus},
            throughput_per_s=round(self.count / window_s, 6),
            error_rate=round(not_ok / self.count, 6) if self.count else 0.0,
            errors_by_code=dict(sorted(self.errors_by_code.items())),
            latency_ms=self.latency.summary(),
            gpu_seconds=self.engine_ms_sum / 1000,
            emitted_at=_utc(emitted_at_ms),
        )


@dataclass
class ClosedWindow(Generic[T]):
    """A window due for emission and the tokens of the results it counted."""

    aggregate: WindowAggregate
    tokens: list[T]


class Watermark:
    """Event-time progress over source partitions (see the module docstring)."""

    def __init__(self, *, idle_s: float, max_ahead_ms: int) -> None:
        self.idle_s = idle_s
        self.max_ahead_ms = max_ahead_ms
        self.value_ms = -(2**63)
        self._max_event: dict[int, int] = {}
        self._last_seen: dict[int, float] = {}

    def observe(self, partition: int, t_ms: int, now: float) -> None:
        """Record that ``partition`` delivered a result with event time ``t_ms`` at ``now``."""
        t_ms = min(t_ms, int(now * 1000) + self.max_ahead_ms)
        self._max_event[partition] = max(self._max_event.get(partition, t_ms), t_ms)
        self._last_seen[partition] = now

    def advance(self, now: float) -> int:
        """Move the watermark as far as the partitions allow at ``now``; return it."""
        active = [
            self._max_event[p] for p, seen in self._last_seen.items() if now - seen < self.idle_s
        ]
        candidate = min(active) if active else int(now * 1000)
        self.value_ms = max(self.value_ms, candidate)
        return self.value_ms

    def track(self, partitions: set[int], now: float) -> None:
        """Hold the watermark back for newly assigned ``partitions`` until they deliver a result
        or stay silent for ``idle_s``: they may hold a backlog older than what others sent."""
        for p in partitions - set(self._last_seen):
            self._max_event[p] = -(2**63)
            self._last_seen[p] = now

    @property
    def partitions(self) -> set[int]:
        """The partitions that delivered results so far."""
        return set(self._last_seen)

    def forget(self, partitions: set[int]) -> None:
        """Stop tracking partitions this worker no longer owns."""
        for p in partitions:
            self._max_event.pop(p, None)
            self._last_seen.pop(p, None)


class TumblingWindows(Generic[T]):
    """Open windows per (tenant, start), closed by the watermark."""

    def __init__(self, policy: WindowPolicy) -> None:
        self.policy = policy
        self.watermark = Watermark(idle_s=policy.idle_s, max_ahead_ms=policy.grace_ms)
        self.late_records = 0
        self._open: dict[tuple[str, int], tuple[WindowAggregate, list[T]]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, result: GenerationResult, *, partition: int, token: T, now: float) -> T | None:
        """Fold ``result`` into its window; return ``token`` back if the result is late."""
        t_ms = event_ms(result)
        start = window_start(t_ms, self.policy.window_ms)
        end = start + self.policy.window_ms
        if end + self.policy.grace_ms <= self.watermark.value_ms:
            self.late_records += 1
            return token
        self.watermark.observe(partition, t_ms, now)
        key = (result.tenant_id, start)
        entry = self._open.get(key)
        if entry is None:
            aggregate = WindowAggregate(result.tenant_id, start, end, self.policy.max_samples)
            entry = self._open[key] = (aggregate, [])
        entry[0].add(result)
        entry[1].append(token)
        return None

    def close_due(self, now: float) -> list[ClosedWindow[T]]:
        """Remove and return the windows the watermark at ``now`` has passed, oldest first."""
        horizon = self.watermark.advance(now) - self.policy.grace_ms
        due = [k for k, (agg, _) in self._open.items() if agg.end_ms <= horizon]
        due.sort(key=lambda k: (k[1], k[0]))
        return [ClosedWindow(*self._open.pop(k)) for k in due]

    def open_windows(self) -> list[WindowAggregate]:
        """The windows still open, oldest first (for a non-final snapshot at shutdown)."""
        return [agg for agg, _ in sorted(self._open.values(), key=lambda e: e[0].start_ms)]

    def reset(self, assigned: set[int], now: float) -> int:
        """Drop every open window (their tokens are never released) and return how many.

        Used on (re)assignment of ``assigned`` source partitions: the source is rewound to the
        committed offsets and the records of open windows are delivered again. The watermark is
        kept, so results of windows already emitted come back as late and are not counted
        twice; newly assigned partitions hold it back until they deliver or fall silent.
        """
        dropped = len(self._open)
        self._open.clear()
        self.watermark.forget(self.watermark.partitions - assigned)
        self.watermark.track(assigned, now)
        return dropped
