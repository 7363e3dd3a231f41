"""Tenant quotas in GPU-seconds: token buckets with burst, from a quotas file as code.

A request costs what the engine's latency model says it will take on a GPU (steps, CFG, size,
images, the preset's own steps and CFG; ``inference_consumer/engines/sim.py`` is calibrated on
published H100 figures). Each tenant has a rate (GPU-seconds per second) and a burst; a request
that finds its tenant's bucket in credit is admitted to its lane and the bucket is charged (it
may go into debt by one request), one that finds it in debt is *over quota*: by the tenant's
policy it goes to the over-quota lane, which workers serve with leftover capacity at the lowest
weight (work-conserving: never starved, never ahead of tenants within their quota), or it is
REJECTED with QUOTA_EXCEEDED.

Admission instances split the work by repartition partition; every instance holds one bucket
per tenant for all the partitions it owns, with owned/N of the rate and burst (N = repartition
partitions; ``TokenBuckets.shares`` = N/owned). A tenant's request_ids are uuids, spread evenly
over the partitions, so the instances' buckets add up to the tenant's quota. One bucket per
*partition* would add up the same on average, but each would hold 1/N of the burst: a tenant
sending at its quota with Poisson arrivals spilled over it by chance (30 s of burst, 80 s at
its quota: 0.03 % of its requests at 8 partitions, 8 % at 64; one bucket: none; simulated in
docs/BENCHMARKS.md), and a spilled request waits behind any flood in the over-quota lane.
After a rebalance the buckets keep their tokens under the new share (quotas are not
exactly-once state).
"""

from __future__ import annotations

import math
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from f2p_errors import ConfigError
from inference_consumer.engines.presets import LIGHTNING_CFG, LIGHTNING_STEPS
from inference_consumer.engines.sim import expected_service_time
from schemas.records import RequestParams

QUOTAS_FILE = Path(__file__).resolve().parents[2] / "infra" / "quotas.toml"
POLICIES = ("overquota", "reject")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


@dataclass(frozen=True)
class TenantQuota:
    rate: float  # GPU-seconds per second
    burst: float  # GPU-seconds
    over_quota: str  # "overquota" or "reject"


@dataclass(frozen=True)
class QuotaPolicy:
    """Quotas of every tenant (``tenants``) and of those not listed (``default``)."""

    default: TenantQuota
    tenants: dict[str, TenantQuota]
    seconds_per_step: float = 0.3
    default_preset: str = "QUALITY"

    def of(self, tenant: str) -> TenantQuota:
        return self.tenants.get(tenant, self.default)

    def cost(self, params: RequestParams) -> float:
        """Estimated GPU-seconds of a request (its preset's steps and CFG)."""
        preset = getattr(params.preset, "value", params.preset) or self.default_preset
        steps, cfg = params.steps, params.true_cfg_scale
        if preset in LIGHTNING_STEPS:
            steps, cfg = LIGHTNING_STEPS[preset], LIGHTNING_CFG
        return expected_service_time(
            steps=steps,
            true_cfg_scale=cfg,
            width=params.width,
            height=params.height,
            images=params.num_images,
            seconds_per_step=self.seconds_per_step,
        )


def load_quotas(path: Path = QUOTAS_FILE) -> QuotaPolicy:
    """Parse the quotas file; ConfigError naming the entry that is wrong."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"quotas file {path}: {exc}") from exc
    default = _quota(path, "defaults", raw.get("defaults", {}), None)
    tenants = {}
    for name, body in raw.get("tenants", {}).items():
        if not _TENANT.fullmatch(name):
            raise ConfigError(f"{path}: tenants.{name[:80]!r} is not a valid tenant id")
        tenants[name] = _quota(path, f"tenants.{name}", body, default)
    model = raw.get("model", {})
    seconds_per_step = _number(path, "model.seconds_per_step", model.get("seconds_per_step", 0.3))
    preset = str(model.get("default_preset", "QUALITY")).upper()
    if preset not in ("QUALITY", "FAST", "FASTEST"):
        raise ConfigError(f"{path}: model.default_preset must be QUALITY, FAST or FASTEST")
    return QuotaPolicy(default, tenants, seconds_per_step, preset)


def _quota(path: Path, where: str, body: dict, fallback: TenantQuota | None) -> TenantQuota:
    rate = body.get("gpu_seconds_per_second", fallback.rate if fallback else None)
    burst = body.get("burst_gpu_seconds", fallback.burst if fallback else None)
    policy = body.get("over_quota", fallback.over_quota if fallback else "overquota")
    if rate is None or burst is None:
        raise ConfigError(f"{path}: {where} needs gpu_seconds_per_second and burst_gpu_seconds")
    if policy not in POLICIES:
        raise ConfigError(f"{path}: {where}.over_quota must be one of {POLICIES}, got {policy!r}")
    return TenantQuota(
        _number(path, f"{where}.gpu_seconds_per_second", rate),
        _number(path, f"{where}.burst_gpu_seconds", burst),
        policy,
    )


def _number(path: Path, where: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 1e9
    ):
        raise ConfigError(f"{path}: {where} must be a positive number, got {value!r}")
    return float(value)


class TokenBuckets:
    """Per-tenant buckets of one instance's repartition partitions (1/``shares`` of each tenant's
    quota; the owner sets ``shares`` = all partitions / owned ones on every rebalance)."""

    # Buckets of tenants not seen for this long are forgotten (memory bounded by live tenants).
    IDLE_S = 3600.0

    def __init__(
        self,
        policy: QuotaPolicy,
        shares: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.shares = shares
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill)

    def admit(self, tenant: str, cost: float) -> bool:
        """Charge ``cost`` if the tenant is in credit; False (nothing charged) if over quota."""
        quota = self.policy.of(tenant)
        rate, burst = quota.rate / self.shares, quota.burst / self.shares
        now = self.clock()
        tokens, last = self._buckets.get(tenant, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 0:
            self._buckets[tenant] = (tokens, now)
            return False
        self._buckets[tenant] = (tokens - cost, now)
        if len(self._buckets) > 10_000:
            self._forget_idle(now)
        return True

    def _forget_idle(self, now: float) -> None:
        self._buckets = {t: b for t, b in self._buckets.items() if now - b[1] < self.IDLE_S}
