"""Lag is visible from the first message (issue 7, item 13: ``kafka-consumer-groups --describe``
showed lag ``-`` for 7 of 8 partitions while 18 requests waited, so a lag-based autoscaler such as
KEDA saw no backlog).

A fresh group starts on a backlog with its engine wedged, so no message can be done. Still, once
the worker has its assignment, every lane and retry partition has a committed offset (its start
position, committed by the loop at once), and the group's lag read by the admin API — what KEDA's
Kafka scaler reads — is the whole backlog. When the engine resumes, the lag drains to 0.
"""

from __future__ import annotations

import dataclasses

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import OffsetSpec

from tests.inference_consumer.conftest import (
    CountingSimEngine,
    publish,
    read_results,
    running_worker,
    sample_request,
    wait_for_results,
    wait_until,
)

pytestmark = pytest.mark.integration

PARTITIONS = 8
BACKLOG = 18


def group_lag(admin, group: str, topics: list[str]) -> dict[tuple[str, int], int | None]:
    """Lag per partition as an autoscaler computes it: end offset minus committed offset, or
    None where nothing is committed (the ``-`` of kafka-consumer-groups)."""
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
    )
    future = admin.list_consumer_group_offsets([request])[group]
    committed = {(tp.topic, tp.partition): tp.offset for tp in future.result(30).topic_partitions}
    ends = admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in committed})
    lag: dict[tuple[str, int], int | None] = {}
    for tp, result in ends.items():
        offset = committed[(tp.topic, tp.partition)]
        lag[(tp.topic, tp.partition)] = None if offset < 0 else result.result(30).offset - offset
    return lag


def test_a_fresh_group_shows_its_backlog_as_lag_before_anything_is_done(pipeline, codec, admin):
    topics = pipeline.topics
    served = [topics.lanes_interactive, topics.lanes_batch, topics.lanes_overquota, topics.retry]
    backlog = [dataclasses.replace(sample_request(), prompt="wedge") for _ in range(BACKLOG)]
    publish(pipeline, codec, backlog)  # keyed by request_id: spread over the batch lane
    engine = CountingSimEngine(gated_prompt="wedge")
    engine.gate.clear()
    with running_worker(pipeline, engine) as worker:
        group = worker.config.group_id
        lag = wait_until(
            lambda: (
                (lags := group_lag(admin, group, served)) and None not in lags.values() and lags
            ),
            30,
            "a committed offset on every served partition",
            step_s=0.2,
        )
        assert engine.entered_gate.wait(30)
        assert read_results(pipeline, codec) == []  # nothing was done, yet the lag is known
        assert sum(lag.values()) == BACKLOG, lag
        busy = {tp for tp, n in lag.items() if n}
        assert len(busy) > 1 and {t for t, _ in busy} == {topics.lanes_batch}
        print(f"\nlag before any result: {sum(lag.values())} on {len(busy)} partitions")

        engine.gate.set()
        wait_for_results(pipeline, codec, {r.request_id for r in backlog})
        wait_until(
            lambda: sum(n or 0 for n in group_lag(admin, group, served).values()) == 0,
            30,
            "the lag to drain to 0",
            step_s=0.2,
        )
