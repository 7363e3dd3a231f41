"""Where a newly assigned (or rewound) partition resumes: its committed offset and metadata.

Read on the poll thread, within a time budget per turn. With ``read_committed`` a partition
whose previous owner died mid-transaction answers only once the coordinator aborts that
transaction (up to ``transaction.timeout.ms``), and in a multi-partition query that one
partition holds back the answer for all of them. So the loop first asks for every waiting
partition at once (one round trip: the usual case), and when that times out asks partition by
partition with a short timeout, so that the others are not held back by the one that waits.

(Not on helper threads: ``Consumer.committed`` from another thread while the poll thread is in
``poll`` hangs past its own timeout in confluent-kafka 2.16 — measured here.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from connectors.eos.records import TP

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestorePoint:
    """The answer for one partition."""

    tp: TP
    committed: int = -1001  # < 0: never committed
    metadata: str | None = None
    start: int | None = None  # the log start, asked only when nothing was committed


def read_restore_points(
    consumer: Any,
    wanted: Sequence[TP],
    *,
    batch_timeout_s: float,
    single_timeout_s: float,
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[RestorePoint], dict[TP, object]]:
    """Restore points of as many of ``wanted`` as answer within ``budget_s``, and the error of
    each partition that did not answer (it is asked again next turn)."""
    if not wanted:
        return [], {}
    deadline = clock() + budget_s
    errors: dict[TP, object] = {}
    try:
        answers = consumer.committed(
            [TopicPartition(t, p) for t, p in wanted], timeout=batch_timeout_s
        )
        return _points(consumer, answers, single_timeout_s, errors), errors
    except KafkaException as exc:
        if len(wanted) == 1:
            return [], {wanted[0]: exc}
    points: list[RestorePoint] = []
    for t, p in wanted:
        if clock() >= deadline:
            break
        try:
            answers = consumer.committed([TopicPartition(t, p)], timeout=single_timeout_s)
        except KafkaException as exc:
            errors[(t, p)] = exc
            continue
        points.extend(_points(consumer, answers, single_timeout_s, errors))
    return points, errors


def _points(
    consumer: Any, answers: list[TopicPartition], timeout_s: float, errors: dict[TP, object]
) -> list[RestorePoint]:
    points = []
    for answer in answers:
        tp = (answer.topic, answer.partition)
        if answer.error is not None:
            errors[tp] = answer.error
            continue
        start = None
        if answer.offset < 0:
            try:
                start, _ = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=timeout_s)
            except KafkaException as exc:
                errors[tp] = exc
                continue
        points.append(RestorePoint(tp, answer.offset, answer.metadata, start))
    return points
