"""Unit tests of RequestBatcher: weighted lanes, batches of equal keys, size and wait."""

from __future__ import annotations

import threading
import time
from collections import Counter

from connectors.eos.records import MessageRef
from inference_consumer.batcher import RequestBatcher
from inference_consumer.work import WorkItem

LANES = {"interactive": 16.0, "batch": 4.0}


def item(offset: int, key: str = "a", topic: str = "t", partition: int = 0) -> WorkItem:
    """A work item whose batch key is its ``key`` (kept in the message key)."""
    return WorkItem(
        ref=MessageRef(topic, partition, offset, 1),
        key=key.encode(),
        value=b"",
        headers=[],
    )


def batcher(
    max_batch_size: int = 4, max_wait_s: float = 0.0, lanes: dict[str, float] | None = None
) -> RequestBatcher:
    return RequestBatcher(
        lanes or LANES,
        lambda i: i.key,
        max_batch_size=max_batch_size,
        max_wait_s=max_wait_s,
    )


def offsets(batch: list[WorkItem]) -> list[int]:
    return [i.offset for i in batch]


def test_interactive_lane_is_served_before_older_batch_work() -> None:
    b = batcher(max_batch_size=2)
    b.put(item(1, "x"), "batch")
    b.put(item(2, "x"), "batch")
    b.put(item(3, "y"), "interactive")
    assert offsets(b.next_batch(0.1)) == [3]
    assert offsets(b.next_batch(0.1)) == [1, 2]
    assert len(b) == 0


def test_a_batch_holds_only_equal_keys_and_others_keep_their_order() -> None:
    b = batcher(max_batch_size=8)
    for offset, key in enumerate("abab c a".replace(" ", "")):
        b.put(item(offset, key), "batch")
    first = b.next_batch(0.1)
    assert offsets(first) == [0, 2, 5]  # every "a", oldest first
    assert {i.key for i in first} == {b"a"}
    assert offsets(b.next_batch(0.1)) == [1, 3]
    assert offsets(b.next_batch(0.1)) == [4]


def test_a_batch_of_the_top_lane_key_takes_equal_work_of_lower_lanes_too() -> None:
    b = batcher(max_batch_size=4)
    b.put(item(1, "a"), "batch")
    b.put(item(2, "a"), "interactive")
    b.put(item(3, "b"), "interactive")
    assert offsets(b.next_batch(0.1)) == [2, 1]  # interactive first, then batch, one key
    assert offsets(b.next_batch(0.1)) == [3]


def test_batches_are_cut_at_max_batch_size() -> None:
    b = batcher(max_batch_size=3)
    for offset in range(7):
        b.put(item(offset), "batch")
    assert [len(b.next_batch(0.1)) for _ in range(3)] == [3, 3, 1]


def test_a_partial_batch_waits_max_wait_for_companions_then_goes() -> None:
    b = batcher(max_batch_size=4, max_wait_s=0.15)
    b.put(item(0), "batch")
    started = time.monotonic()
    batch = b.next_batch(1.0)
    elapsed = time.monotonic() - started
    assert offsets(batch) == [0]
    assert 0.1 <= elapsed < 0.9


def test_companions_arriving_within_max_wait_join_the_batch() -> None:
    b = batcher(max_batch_size=3, max_wait_s=2.0)
    b.put(item(0), "batch")

    def later() -> None:
        time.sleep(0.05)
        b.put(item(1, "other"), "batch")  # a different key does not end the wait
        b.put(item(2), "batch")
        b.put(item(3), "interactive")

    threading.Thread(target=later).start()
    started = time.monotonic()
    batch = b.next_batch(1.0)
    # Full at 3 (no need to wait the full 2 s); the lane that opened the batch comes first.
    assert offsets(batch) == [0, 2, 3]
    assert time.monotonic() - started < 1.5
    b.close()  # do not wait out the 2 s for the "other" item's companions
    assert offsets(b.next_batch(0.1)) == [1]


def test_a_full_batch_does_not_wait() -> None:
    b = batcher(max_batch_size=2, max_wait_s=5.0)
    b.put(item(0), "batch")
    b.put(item(1), "batch")
    started = time.monotonic()
    assert offsets(b.next_batch(1.0)) == [0, 1]
    assert time.monotonic() - started < 0.5


def test_next_batch_times_out_empty_and_close_wakes_it() -> None:
    b = batcher()
    started = time.monotonic()
    assert b.next_batch(0.05) == []
    assert time.monotonic() - started >= 0.04
    threading.Timer(0.05, b.close).start()
    started = time.monotonic()
    assert b.next_batch(5.0) == []
    assert time.monotonic() - started < 2.0


def test_close_does_not_wait_for_companions() -> None:
    b = batcher(max_batch_size=4, max_wait_s=5.0)
    b.put(item(0), "batch")
    threading.Timer(0.05, b.close).start()
    started = time.monotonic()
    assert offsets(b.next_batch(1.0)) == [0]
    assert time.monotonic() - started < 2.0


def test_drop_removes_the_items_of_revoked_partitions() -> None:
    b = batcher(max_batch_size=8)
    b.put(item(0, partition=0), "batch")
    b.put(item(1, partition=1), "interactive")
    b.put(item(2, partition=0), "interactive")
    b.put(item(3, partition=1), "batch")
    dropped = b.drop(lambda i: i.partition != 1)
    assert sorted(offsets(dropped)) == [1, 3]
    assert len(b) == 2
    assert offsets(b.next_batch(0.1)) == [2, 0]


def test_an_unknown_lane_joins_the_last_lane() -> None:
    b = batcher(max_batch_size=1)
    b.put(item(0, "a"), "bulk")
    b.put(item(1, "b"), "batch")
    b.put(item(2, "c"), "interactive")
    assert [offsets(b.next_batch(0.1)) for _ in range(3)] == [[2], [0], [1]]


def test_busy_lanes_share_the_engine_by_weight_and_none_starves() -> None:
    lanes = {"interactive": 16.0, "batch": 4.0, "overquota": 1.0}
    b = batcher(max_batch_size=1, lanes=lanes)
    for n in range(200):
        for lane in lanes:
            b.put(item(n, key=f"{lane}-{n}"), lane)
    served = Counter(b.next_batch(0.1)[0].key.decode().split("-")[0] for _ in range(210))
    assert served["interactive"] == 160 and served["batch"] == 40 and served["overquota"] == 10


def test_a_lane_that_was_idle_gets_no_credit_for_it() -> None:
    b = batcher(max_batch_size=1, lanes={"interactive": 1.0, "batch": 1.0})
    for n in range(20):
        b.put(item(n, key=f"b{n}"), "batch")
    for _ in range(10):
        b.next_batch(0.1)  # the batch lane runs alone: it is owed nothing later
    for n in range(10):
        b.put(item(100 + n, key=f"i{n}"), "interactive")
    order = [b.next_batch(0.1)[0].key.decode()[0] for _ in range(10)]
    assert order.count("i") == 5, order  # equal weights: turns alternate, no burst of 10


def test_with_no_wait_a_batch_starts_at_once_with_what_queued() -> None:
    b = batcher(max_batch_size=4, max_wait_s=0.0)
    b.put(item(0), "batch")
    b.put(item(1), "batch")
    started = time.monotonic()
    assert offsets(b.next_batch(1.0)) == [0, 1]
    assert time.monotonic() - started < 0.05


def where(batch: list[WorkItem]) -> list[tuple[int, int]]:
    return [(i.partition, i.offset) for i in batch]


def queue_backlogs(b: RequestBatcher, backlogs: dict[int, range]) -> None:
    """Queue each partition's offsets on the batch lane, one partition after the other."""
    for partition, offsets_of_partition in backlogs.items():
        for offset in offsets_of_partition:
            b.put(item(offset, partition=partition), "batch")


def test_a_partitions_backlog_does_not_hold_back_a_partition_queued_after_it() -> None:
    # A failover's heir: partition 6's backlog reaches the batcher a moment before 7's. The
    # partitions take turns; each keeps its own order.
    b = batcher(max_batch_size=4)
    queue_backlogs(b, {6: range(8), 7: range(100, 108)})
    assert where(b.next_batch(0.1)) == [(6, 0), (7, 100), (6, 1), (7, 101)]
    assert where(b.next_batch(0.1)) == [(6, 2), (7, 102), (6, 3), (7, 103)]


def test_partitions_take_turns_one_request_at_a_time() -> None:
    b = batcher(max_batch_size=1)
    queue_backlogs(b, {0: range(6), 1: range(10, 13)})
    order = [where(b.next_batch(0.1))[0] for _ in range(9)]
    assert order == [(0, 0), (1, 10), (0, 1), (1, 11), (0, 2), (1, 12), (0, 3), (0, 4), (0, 5)]


def test_a_partition_that_was_idle_gets_no_credit_for_it() -> None:
    b = batcher(max_batch_size=1)
    queue_backlogs(b, {0: range(20)})
    for _ in range(10):
        b.next_batch(0.1)  # partition 0 runs alone: partition 1 is owed nothing later
    queue_backlogs(b, {1: range(100, 110)})
    order = [b.next_batch(0.1)[0].partition for _ in range(10)]
    assert order.count(1) == 5, order  # turns alternate, no burst of partition 1


def test_partition_turns_keep_equal_keys_together() -> None:
    # Turns choose among the requests that fit the batch: another partition's request with a
    # different key waits for a batch of its own key, as before.
    b = batcher(max_batch_size=4)
    b.put(item(0, "a", partition=0), "batch")
    b.put(item(1, "a", partition=0), "batch")
    b.put(item(10, "b", partition=1), "batch")
    b.put(item(11, "a", partition=1), "batch")
    assert where(b.next_batch(0.1)) == [(0, 0), (1, 11), (0, 1)]
    assert where(b.next_batch(0.1)) == [(1, 10)]
