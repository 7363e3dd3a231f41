"""Unit tests of the worker's bookkeeping: commit points per partition and dedupe records."""

from __future__ import annotations

import pytest

from inference_consumer.dedupe import DedupeEntry, DedupeState
from inference_consumer.offsets import OffsetTracker, PartitionOffsets
from inference_consumer.work import Outcome, OutcomeKind, WorkItem


def test_commit_point_waits_for_the_lowest_unfinished_offset() -> None:
    part = PartitionOffsets()
    for offset in range(10, 15):
        part.polled(offset)
    assert part.committable() is None
    part.completed(12)
    part.completed(14)
    assert part.committable() is None  # 10 is still in flight
    part.completed(10)
    assert part.committable() == 11
    part.completed(11)
    assert part.committable() == 13  # 13 is unfinished; 14 is done but must wait
    part.committed(13)
    assert part.committable() is None
    part.completed(13)
    assert part.committable() == 15
    assert len(part) == 0


def test_commit_point_skips_offsets_the_consumer_never_returned() -> None:
    """Transaction markers and aborted records occupy offsets that poll() never returns.

    The retry topic is written by transactional producers, so its offsets have a gap after
    every message; the commit point must move past such gaps, not stop at them.
    """
    part = PartitionOffsets()
    part.polled(0)
    part.completed(0)
    assert part.committable() == 1
    part.committed(1)
    part.polled(2)  # offset 1 is a commit marker
    part.polled(4)  # offset 3 as well
    part.completed(4)
    assert part.committable() == 2  # past the marker at 1; 2 itself is still in flight
    part.completed(2)
    assert part.committable() == 5
    part.committed(5)
    assert part.committable() is None


def test_commit_point_of_a_partition_whose_first_polled_offset_is_past_a_gap() -> None:
    part = PartitionOffsets()
    part.polled(7)
    part.completed(7)
    assert part.committable() == 8


def test_committed_offsets_only_move_forward() -> None:
    part = PartitionOffsets()
    part.polled(5)
    part.completed(5)
    part.committed(6)
    part.committed(3)  # a stale commit report must not move the commit point back
    assert part.committable() is None
    part.polled(6)
    part.completed(6)
    assert part.committable() == 7


def test_tracker_counts_in_flight_and_reports_moved_partitions_only() -> None:
    tracker = OffsetTracker()
    a, b = tracker.get("t", 0), tracker.get("t", 1)
    for offset in range(3):
        a.polled(offset)
        b.polled(100 + offset)
    assert tracker.in_flight() == 6
    a.completed(0)
    b.completed(101)
    assert tracker.committable() == {("t", 0): 1}
    assert tracker.in_flight() == 4
    tracker.drop([("t", 0)])
    assert tracker.in_flight() == 2
    assert tracker.get("t", 0).committable() is None  # forgotten: a fresh partition
    tracker.drop()
    assert tracker.in_flight() == 0 and tracker.committable() == {}


@pytest.mark.parametrize("status", ["OK", "FAILED", "EXPIRED", "DEAD_LETTER", "RETRY"])
def test_dedupe_entry_round_trip(status: str) -> None:
    entry = DedupeEntry("f2p.requests.batch.x", 12345678901, status)
    raw = entry.to_bytes()
    assert isinstance(raw, bytes)
    assert DedupeEntry.from_bytes(raw) == entry


def test_dedupe_state_pending_entries_follow_the_transaction() -> None:
    state = DedupeState()
    state.add_pending("t", 0, "r1")
    assert state.seen("t", 0, "r1")
    assert not state.seen("t", 1, "r1")  # partition-scoped
    state.abort_pending()
    assert not state.seen("t", 0, "r1")
    state.add_pending("t", 0, "r1")
    state.commit_pending()
    assert state.seen("t", 0, "r1")
    state.abort_pending()  # committed entries survive a later abort
    assert state.seen("t", 0, "r1")
    state.drop([("t", 0)])
    assert not state.seen("t", 0, "r1")


def _outcome(kind: OutcomeKind, topic: str) -> Outcome:
    item = WorkItem(
        generation=1, topic=topic, partition=0, offset=0, key=b"rid-1", value=b"", headers=[]
    )
    return Outcome(item=item, kind=kind)


@pytest.mark.parametrize(
    ("kind", "topic", "recorded"),
    [
        (OutcomeKind.RESULT, "lane", True),
        (OutcomeKind.DEAD_LETTER, "lane", True),
        (OutcomeKind.RETRY, "lane", True),  # later copies on the lane are duplicates
        (OutcomeKind.RESULT, "retry", True),
        (OutcomeKind.DEAD_LETTER, "retry", True),
        (OutcomeKind.RETRY, "retry", False),  # the next attempt must not look like a duplicate
        (OutcomeKind.DUPLICATE, "lane", False),
    ],
)
def test_which_outcomes_settle_a_request_id(kind: OutcomeKind, topic: str, recorded: bool) -> None:
    outcome = _outcome(kind, topic)
    assert outcome.settles("retry") is recorded
    assert outcome.request_id == "rid-1"
