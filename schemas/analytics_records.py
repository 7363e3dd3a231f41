"""Dataclass of the analytics record (``AnalyticsWindow`` on ``f2p.analytics.v1``).

Same conventions as :mod:`schemas.records`; ``streams.windows`` builds it, readers decode it
with the codec like every other topic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Self

from schemas.coerce import flat_fields, set_frozen, to_utc


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatencySummary:
    """Latency of a window's OK results; the statistics are None when there were none."""

    count: int = 0
    sampled: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    max: int | None = None

    def to_avro(self) -> dict[str, Any]:
        return flat_fields(self)

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnalyticsWindow:
    """One tenant's metrics over one window (``io.f2pstream.v1.AnalyticsWindow``)."""

    tenant_id: str
    window_start: datetime
    window_end: datetime
    final: bool
    count: int
    throughput_per_s: float
    error_rate: float
    gpu_seconds: float
    emitted_at: datetime
    by_status: Mapping[str, int] = dataclasses.field(default_factory=dict)
    errors_by_code: Mapping[str, int] = dataclasses.field(default_factory=dict)
    latency_ms: LatencySummary = dataclasses.field(default_factory=LatencySummary)

    def __post_init__(self) -> None:
        for name in ("window_start", "window_end", "emitted_at"):
            set_frozen(self, name, to_utc(getattr(self, name), name))
        set_frozen(self, "by_status", dict(self.by_status))
        set_frozen(self, "errors_by_code", dict(self.errors_by_code))

    @property
    def key(self) -> bytes:
        """The message key: the tenant_id."""
        return self.tenant_id.encode()

    @property
    def window_start_ms(self) -> int:
        """``window_start`` in epoch milliseconds (what the wire carries)."""
        return round(self.window_start.timestamp() * 1000)

    def to_avro(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "final": self.final,
            "count": self.count,
            "by_status": dict(self.by_status),
            "throughput_per_s": self.throughput_per_s,
            "error_rate": self.error_rate,
            "errors_by_code": dict(self.errors_by_code),
            "latency_ms": self.latency_ms.to_avro(),
            "gpu_seconds": self.gpu_seconds,
            "emitted_at": self.emitted_at,
        }

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Self:
        return cls(
            tenant_id=d["tenant_id"],
            window_start=d["window_start"],
            window_end=d["window_end"],
            final=d["final"],
            count=d["count"],
            by_status=d.get("by_status") or {},
            throughput_per_s=d["throughput_per_s"],
            error_rate=d["error_rate"],
            errors_by_code=d.get("errors_by_code") or {},
            latency_ms=LatencySummary.from_avro(d["latency_ms"]),
            gpu_seconds=d["gpu_seconds"],
            emitted_at=d["emitted_at"],
        )
