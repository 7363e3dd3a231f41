"""Token buckets in GPU-seconds (unit: an injected clock)."""

from __future__ import annotations

from streams.admission.quotas import QuotaPolicy, TenantQuota, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy(rate: float, burst: float) -> QuotaPolicy:
    return QuotaPolicy(TenantQuota(rate, burst, "overquota"), {})


def admitted_in(buckets: TokenBuckets, clock: Clock, seconds: float, every_s: float) -> int:
    count = 0
    for _ in range(round(seconds / every_s)):
        clock.now += every_s
        count += buckets.admit("t", 1.0)
    return count


def test_a_tenant_gets_its_burst_then_its_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(policy(rate=2.0, burst=10.0), shares=1, clock=clock)
    # At once: the burst (it may go into debt by one request).
    assert sum(buckets.admit("t", 1.0) for _ in range(20)) == 11
    # Then 2 GPU-seconds per second, whatever it asks for.
    assert admitted_in(buckets, clock, seconds=10, every_s=0.1) in (19, 20)


def test_an_instance_with_some_partitions_gets_that_share_of_the_quota() -> None:
    clock = Clock()
    buckets = TokenBuckets(policy(rate=8.0, burst=8.0), shares=8, clock=clock)  # 1 of 8 owned
    assert sum(buckets.admit("t", 1.0) for _ in range(5)) == 2  # burst 1, plus one in debt
    assert admitted_in(buckets, clock, seconds=10, every_s=0.1) in (9, 10)  # 1 per second
    buckets.shares = 2  # a rebalance: now 4 of 8 partitions
    assert admitted_in(buckets, clock, seconds=10, every_s=0.1) in (39, 40, 41)
