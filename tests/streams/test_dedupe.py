"""Admission's dedupe state: the store's operations (unit) and its restore from a real changelog."""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass

import pytest

from connectors.kafka import make_transactional_producer
from streams.admission.dedupe import (
    PartitionStore,
    Seen,
    StoreRestore,
    encode_entry,
    load_entries,
)

HOUR_MS = 3600 * 1000


def test_the_store_answers_what_was_added_and_counts_duplicates() -> None:
    store = PartitionStore(horizon_ms=HOUR_MS)
    store.add("r1", 1_000, Seen.REJECTED)
    assert store.get("r1") == (1_000, Seen.REJECTED, 0)
    assert store.get("r2") is None
    assert store.duplicate("r1") == 1
    assert store.duplicate("r1") == 2
    assert store.get("r1") == (1_000, Seen.REJECTED, 2)
    assert len(store) == 1


def test_expiry_removes_entries_past_the_horizon_in_first_seen_order_up_to_the_limit() -> None:
    store = PartitionStore(horizon_ms=HOUR_MS)
    for i in range(5):
        store.add(f"r{i}", i * 1_000, Seen.ACCEPTED)
    store.duplicate("r0")
    now = HOUR_MS + 3_500  # r0..r3 are older than the horizon
    assert store.expire(now, limit=2) == ["r0", "r1"]
    assert store.expire(now, limit=10) == ["r2", "r3"]
    assert store.expire(now, limit=10) == []
    assert [rid for rid in store.entries] == ["r4"]
    assert store.duplicates == {}  # the duplicate count left with its entry
    store.add("r0", now, Seen.ACCEPTED)  # seen again past the horizon: a new entry
    assert store.get("r0") == (now, Seen.ACCEPTED, 0)


@dataclass
class FakeMessage:
    k: bytes | None
    v: bytes | None

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes | None:
        return self.v


def test_load_entries_keeps_the_last_record_per_key_and_drops_tombstoned_ones() -> None:
    batches = [
        [FakeMessage(b"a", encode_entry(10, Seen.ACCEPTED)), FakeMessage(b"b", b"short")],
        [
            FakeMessage(b"c", encode_entry(30, Seen.EXPIRED)),
            FakeMessage(None, encode_entry(1, Seen.ACCEPTED)),
            FakeMessage(b"a", None),  # tombstone
            FakeMessage(b"d", encode_entry(40, Seen.CANCELLED)),
            FakeMessage(b"c", encode_entry(35, Seen.REJECTED)),  # a later record wins
            FakeMessage(b"e", (50).to_bytes(8, "big") + bytes([9])),  # an outcome unknown here
        ],
    ]
    store = PartitionStore(HOUR_MS, entries=load_entries(batches))
    assert store.get("a") is None and store.get("b") is None
    assert store.get("c") == (35, Seen.REJECTED, 0)
    assert store.get("d") == (40, Seen.CANCELLED, 0)
    assert store.get("e") == (50, Seen.ACCEPTED, 0)  # still "seen": no second outcome
    assert len(store) == 3


@pytest.mark.integration
def test_restore_reads_a_transactional_changelog_to_its_end(stack_settings, make_topic) -> None:
    topic = make_topic("dedupe-restore", partitions=2)
    producer = make_transactional_producer(stack_settings, f"test-restore-{uuid.uuid4().hex[:8]}")
    producer.init_transactions(30)
    now_ms = int(time.time() * 1000)
    ids = [str(uuid.uuid4()) for _ in range(25_000)]  # more than one consume() batch
    for start in range(0, len(ids), 5_000):
        producer.begin_transaction()
        for i, rid in enumerate(ids[start : start + 5_000], start):
            # First-seen times rise with the offset, 1 ms apart, the oldest 20 s ago.
            value = encode_entry(now_ms - 20_000 + i, Seen.ACCEPTED)
            producer.produce(topic, key=rid.encode(), value=value, partition=0)
        producer.commit_transaction(30)
    producer.begin_transaction()  # aborted: none of it may be restored
    producer.produce(topic, key=b"aborted", value=encode_entry(now_ms, Seen.ACCEPTED), partition=0)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=ids[0].encode(), value=None, partition=0)  # tombstone
    producer.produce(topic, key=b"other", value=encode_entry(now_ms, Seen.ACCEPTED), partition=1)
    producer.commit_transaction(30)

    restore = StoreRestore(stack_settings, topic, 0, horizon_ms=10_000, timeout_s=60)
    deadline = time.monotonic() + 60
    while not restore.done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert restore.done and restore.error is None
    store = restore.store
    assert restore.loaded == len(store) == len(ids) - 1
    assert store.get(ids[0]) is None and store.get("aborted") is None
    assert store.get("other") is None  # partition 1 is not this store's
    assert store.get(ids[-1]) is not None
    assert store.order == deque(ids[1:])  # the expiry queue in first-seen order
    # At now_ms, the entries first seen more than 10 s before are past the horizon.
    assert store.expire(now_ms, limit=len(ids)) == ids[1:10_000]
