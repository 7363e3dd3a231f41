"""Prometheus metrics of an admission instance (names prefixed ``f2p_admission_``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The hop is milliseconds when things are well; seconds while a broker fails over.
_HOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class AdmissionMetrics:
    """One instance's instruments in its own registry (several instances can share a process)."""

    def __init__(self, instance_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instance_id = instance_id
        self.requests = Counter(
            "f2p_admission_requests",
            "Ingress messages by what admission did: accepted, overquota, duplicate, rejected, "
            "expired, cancelled, dead_letter, repartitioned",
            ["outcome"],
            registry=r,
        )
        self.errors = Counter(
            "f2p_admission_errors",
            "Dead letters by machine-readable reason",
            ["reason"],
            registry=r,
        )
        self.hop_seconds = Histogram(
            "f2p_admission_hop_seconds",
            "Ingress message timestamp to its admission committed",
            buckets=_HOP_BUCKETS,
            registry=r,
        )
        self.restore_seconds = Histogram(
            "f2p_admission_restore_seconds",
            "Time to restore one partition's dedupe state",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.dedupe_entries = Gauge(
            "f2p_admission_dedupe_entries", "request_ids held in the dedupe state", registry=r
        )
        self.transactions = Counter(
            "f2p_admission_transactions", "Transactions by outcome", ["outcome"], registry=r
        )
        self.assigned_partitions = Gauge(
            "f2p_admission_assigned_partitions", "Partitions currently assigned", registry=r
        )
        self.paused_partitions = Gauge(
            "f2p_admission_paused_partitions", "Partitions paused", registry=r
        )
        self.in_flight = Gauge("f2p_admission_in_flight", "Polled, not yet done", registry=r)
        self.consumer_lag = Gauge(
            "f2p_admission_consumer_lag", "High watermark minus commit point, summed", registry=r
        )
        self.redelivered_done = Counter(
            "f2p_admission_redelivered_done", "Redelivered messages already done", registry=r
        )
        self.fetch_restarts = Counter(
            "f2p_admission_fetch_restarts",
            "Partitions assigned again because the consumer never started fetching them",
            registry=r,
        )

    # -- connectors.eos.loop.LoopMetrics -------------------------------------------------------

    def transaction(self, outcome: str) -> None:
        self.transactions.labels(outcome=outcome).inc()

    def set_assignment(self, assigned: int, paused: int, in_flight: int) -> None:
        self.assigned_partitions.set(assigned)
        self.paused_partitions.set(paused)
        self.in_flight.set(in_flight)

    def set_lag(self, lag: int) -> None:
        self.consumer_lag.set(lag)

    def redelivered(self, count: int) -> None:
        self.redelivered_done.inc(count)

    def fetch_restarted(self) -> None:
        self.fetch_restarts.inc()
