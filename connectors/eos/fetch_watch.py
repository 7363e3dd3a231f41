"""Assigned partitions that librdkafka never starts fetching, found in its statistics.

librdkafka starts fetching an assigned partition once it has read the partition's committed
offset (an OffsetFetch to the group coordinator). When that request fails as a whole — the
broker answers NOT_COORDINATOR with no partitions, as it does while group coordination moves
after a broker restart — the partition stays "queried" for an answer that never comes: it is
never fetched, and its lag grows while the process looks healthy (librdkafka issue #5586, open
in 2.16; seen here in the 3-broker chaos test "two of three brokers down").

The loop reads each partition's committed offset itself (``restore.py``), so it does not need
librdkafka's answer: a partition that is still not fetching a while after the loop activated it
is assigned again with that offset (``EosLoop._restart_stalled_fetches``), which starts the
fetch without asking the coordinator. A rewind's ``seek`` fails the same way on such a
partition (``_STATE``: "not being fetched") and is repaired the same way.

The fetch state comes from the consumer's statistics (``statistics.interval.ms``; the
``fetch_state`` of each partition, see librdkafka's STATISTICS.md), delivered by ``poll`` on the
loop's own thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from connectors.eos.records import TP

log = logging.getLogger(__name__)

#: A partition whose fetcher runs (paused or not: pausing keeps the state).
FETCHING = "active"

#: Bound on the statistics document we parse (one entry per partition the client knows).
MAX_STATS_BYTES = 16 * 1024 * 1024


class FetchWatch:
    """The fetch state librdkafka last reported for each partition, and when it reported."""

    def __init__(
        self, *, interval_ms: int = 2000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_ms = interval_ms
        self.clock = clock
        self._states: dict[TP, str] = {}
        self.reported_at = float("-inf")

    def consumer_config(self) -> dict[str, Any]:
        """What the consumer needs to report to this watch."""
        return {"statistics.interval.ms": self.interval_ms, "stats_cb": self.on_stats}

    def on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics callback (on the polling thread)."""
        if len(stats_json) > MAX_STATS_BYTES:
            return
        try:
            stats = json.loads(stats_json)
            states: dict[TP, str] = {}
            for topic, entry in (stats.get("topics") or {}).items():
                for partition, part in (entry.get("partitions") or {}).items():
                    number = int(partition)
                    if number >= 0:  # -1 is librdkafka's internal "unassigned" partition
                        states[(topic, number)] = str(part.get("fetch_state", ""))
        except (ValueError, AttributeError, TypeError) as exc:  # never fail a poll for it
            log.debug("unreadable consumer statistics: %s", exc)
            return
        self._states = states
        self.reported_at = self.clock()

    def state(self, tp: TP) -> str | None:
        """The last reported fetch state of ``tp`` (None: not reported)."""
        return self._states.get(tp)

    def fetching(self, tp: TP) -> bool:
        return self._states.get(tp) == FETCHING
