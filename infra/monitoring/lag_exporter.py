"""Consumer-group lag as Prometheus metrics, for the embedded stack.

On Kubernetes, Strimzi's Kafka Exporter serves ``kafka_consumergroup_lag{consumergroup, topic,
partition}``; the lag rules and dashboards read that series. This exporter serves the same
series from the embedded broker, so the same rules run locally (``f2p stack up --monitoring``)
and in the tests. Lag = log-end offset minus the committed offset; a partition the group is
assigned but never committed counts from the log start (as KEDA's ``offsetResetPolicy:
earliest``). Computed on each scrape, bounded by ``--timeout-s``.

Run: ``python -m infra.monitoring.lag_exporter --bootstrap 127.0.0.1:19092 --port 19308``.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Iterable, Iterator
from http.server import ThreadingHTTPServer

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class LagCollector(Collector):
    """Collects ``kafka_consumergroup_lag`` for every group matching ``group_regex``."""

    def __init__(
        self, admin: AdminClient, *, group_regex: str, topic_regex: str, timeout_s: float
    ) -> None:
        self.admin = admin
        self.groups = re.compile(group_regex)
        self.topics = re.compile(topic_regex)
        self.timeout_s = timeout_s
        self.registry = CollectorRegistry()
        self.errors = Counter(
            "f2p_lag_exporter_errors", "Scrapes that failed to read offsets", registry=self.registry
        )
        self.duration = Gauge(
            "f2p_lag_exporter_scrape_seconds", "Time to read the offsets", registry=self.registry
        )

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kafka_consumergroup_lag",
            "Log-end offset minus committed offset",
            labels=["consumergroup", "topic", "partition"],
        )
        started = time.monotonic()
        try:
            for group, tp, lag in self.lags():
                family.add_metric([group, tp.topic, str(tp.partition)], lag)
        except (KafkaException, TimeoutError) as exc:
            self.errors.inc()
            log.warning("reading consumer-group offsets failed: %s", exc)
        self.duration.set(time.monotonic() - started)
        yield family
        yield from self.registry.collect()

    def lags(self) -> Iterator[tuple[str, TopicPartition, int]]:
        """(group, partition, lag) of every matching group and topic."""
        t = self.timeout_s
        listing = self.admin.list_consumer_groups(request_timeout=t).result(t)
        groups = sorted(g.group_id for g in listing.valid if self.groups.fullmatch(g.group_id))
        committed: dict[str, dict[tuple[str, int], int]] = {}
        for group in groups:
            committed[group] = {
                (tp.topic, tp.partition): tp.offset
                for tp in self._committed(group)
                if self.topics.fullmatch(tp.topic)
            }
        for group, members in self._assigned(groups).items():
            for key in members:
                if self.topics.fullmatch(key[0]):
                    committed[group].setdefault(key, -1)
        partitions = {key for offsets in committed.values() for key in offsets}
        ends = self._offsets(partitions, OffsetSpec.latest())
        starts = self._offsets(partitions, OffsetSpec.earliest())
        for group in groups:
            for (topic, partition), offset in sorted(committed[group].items()):
                end = ends.get((topic, partition))
                if end is None:
                    continue  # topic deleted meanwhile
                base = offset if offset >= 0 else starts.get((topic, partition), 0)
                yield group, TopicPartition(topic, partition), max(0, end - base)

    def _committed(self, group: str) -> list[TopicPartition]:
        request = [ConsumerGroupTopicPartitions(group)]
        futures = self.admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)
        result = futures[group].result(self.timeout_s)
        return [tp for tp in result.topic_partitions or [] if tp.error is None]

    def _assigned(self, groups: list[str]) -> dict[str, set[tuple[str, int]]]:
        if not groups:
            return {}
        futures = self.admin.describe_consumer_groups(groups, request_timeout=self.timeout_s)
        assigned: dict[str, set[tuple[str, int]]] = {}
        for group, future in futures.items():
            description = future.result(self.timeout_s)
            assigned[group] = {
                (tp.topic, tp.partition)
                for member in description.members
                for tp in (member.assignment.topic_partitions if member.assignment else [])
            }
        return assigned

    def _offsets(self, keys: Iterable[tuple[str, int]], spec: OffsetSpec) -> dict:
        request = {TopicPartition(topic, partition): spec for topic, partition in keys}
        if not request:
            return {}
        futures = self.admin.list_offsets(request, request_timeout=self.timeout_s)
        out = {}
        for tp, future in futures.items():
            try:
                out[(tp.topic, tp.partition)] = future.result(self.timeout_s).offset
            except KafkaException as exc:  # one deleted topic must not hide the others
                log.debug("no offset for %s[%d]: %s", tp.topic, tp.partition, exc)
        return out


def serve(collector: LagCollector, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server exposing ``collector`` on /metrics (returns it; call serve_forever)."""
    registry = CollectorRegistry()
    registry.register(collector)
    return ThreadingHTTPServer((host, port), MetricsHandler.factory(registry))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--group-regex", default="f2p-.*", help="consumer groups to report")
    parser.add_argument("--topic-regex", default=".*", help="topics to report")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    admin = AdminClient({"bootstrap.servers": args.bootstrap, "client.id": "f2p-lag-exporter"})
    collector = LagCollector(
        admin, group_regex=args.group_regex, topic_regex=args.topic_regex, timeout_s=args.timeout_s
    )
    server = serve(collector, args.host, args.port)
    log.info("lag exporter on http://%s:%d/metrics", args.host, args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
