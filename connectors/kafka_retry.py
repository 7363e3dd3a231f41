"""One home for retrying Kafka calls that failed with a retriable error.

librdkafka marks most transient errors ``retriable()``; a few that clients see while leadership
moves (a broker restarted, a partition just created, a coordinator being loaded) are not marked
but are transient all the same: ``TRANSIENT_CODES``. Every reader, admin and transactional call
that may meet a moving cluster goes through :func:`retry_kafka`, with a deadline and a backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Errors seen while a cluster settles that librdkafka does not flag retriable() in every path.
TRANSIENT_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        KafkaError._TIMED_OUT_QUEUE,
    }
)


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_retriable(exc: BaseException) -> bool:
    """Whether calling again later may succeed (never for fatal or abort-requiring errors)."""
    error = kafka_error(exc)
    if error is None:
        return False
    if error.fatal() or error.txn_requires_abort():
        return False
    return error.retriable() or error.code() in TRANSIENT_CODES


def retry_kafka(
    what: str,
    call: Callable[[], _T],
    *,
    deadline_s: float = 30.0,
    backoff_s: float = 0.05,
    max_backoff_s: float = 1.0,
    retriable: Callable[[BaseException], bool] = is_retriable,
) -> _T:
    """``call()``, called again with exponential backoff while it raises a retriable Kafka error,
    until ``deadline_s`` has passed; then the last error is raised."""
    deadline = time.monotonic() + deadline_s
    delay = backoff_s
    attempt = 1
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not retriable(exc) or time.monotonic() + delay > deadline:
                raise
            # The first retry is routine (a leader moving); later ones are worth a line.
            level = logging.DEBUG if attempt == 1 else logging.WARNING
            log.log(level, "%s: retriable error (attempt %d): %s", what, attempt, exc)
        time.sleep(delay)
        delay = min(delay * 2, max_backoff_s)
        attempt += 1
