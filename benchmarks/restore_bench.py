"""``f2p bench -s restore``: how long admission takes to restore 1 M dedupe entries, and their RSS.

A partition of the repartition topic serves nothing until its dedupe state is back
(``streams/admission/dedupe.py``, ``StoreRestore``): after a rebalance or a restart, that is the
time its requests wait. Setup: a private changelog topic with the production config
(``f2p.admission.dedupe.v1`` in ``infra/topics.toml``: compacted, small segments), ``entries``
entries in the changelog format (key = a uuid4 request_id, value = ``>qB`` first seen + outcome,
first-seen times rising over the last ``spread_s``, so nothing is past the horizon), written by
a transactional producer ``per_transaction`` at a time (the real changelog is written in
transactions, so the reader skips commit markers), spread over ``partitions`` partitions.

Then each implementation restores *every* partition at once (as an instance does on start) in a
fresh child process (``python -m benchmarks.restore_bench child SPEC``), which reports the
seconds until every partition was ready, the entries loaded, and its RSS before and after (the
store's memory: ``VmRSS`` delta, store kept alive), and its peak (``VmHWM``):

* ``ours``: ``StoreRestore`` as admission runs it;
* ``naive``: the same state built one message at a time (``read_to_end``: a ``poll()`` and a
  ``position()`` call per message), as the first version of ``StoreRestore`` did.
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO_ROOT, BenchError
from benchmarks.session import Bench
from connectors.kafka import make_transactional_producer
from connectors.settings import Settings, load_settings
from infra.topics import apply_topics, load_topic_specs
from streams.admission.dedupe import Seen, StoreRestore, decode_entry, encode_entry

CHANGELOG = "f2p.admission.dedupe.v1"
HORIZON_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class RestoreSizes:
    entries: int
    partitions: int
    per_transaction: int
    spread_s: float  # first-seen times over this much of the past (inside the horizon)


STANDARD = RestoreSizes(entries=1_000_000, partitions=1, per_transaction=1000, spread_s=6 * 86400)
QUICK = RestoreSizes(entries=20_000, partitions=1, per_transaction=1000, spread_s=6 * 86400)


def write_changelog(settings: Settings, topic: str, sizes: RestoreSizes) -> float:
    """Write the entries (uuid4 keys, seeded first-seen times); the seconds it took."""
    producer = make_transactional_producer(
        settings,
        f"f2p-bench-restore-{uuid.uuid4().hex[:8]}",
        linger_ms=20,
        batch_size=1024 * 1024,
        transaction_timeout_ms=60_000,
        delivery_timeout_ms=60_000,
    )
    producer.init_transactions(30)
    rng = random.Random(11)
    now_ms = int(time.time() * 1000)
    started = time.monotonic()
    for first in range(0, sizes.entries, sizes.per_transaction):
        producer.begin_transaction()
        for i in range(first, min(first + sizes.per_transaction, sizes.entries)):
            key = uuid.UUID(int=rng.getrandbits(128), version=4)
            # In write order, as admission writes them (its clock), oldest first.
            seen_ms = now_ms - int((sizes.entries - i) / sizes.entries * sizes.spread_s * 1000)
            while True:
                try:
                    producer.produce(
                        topic,
                        key=str(key).encode(),
                        value=encode_entry(seen_ms, Seen.ACCEPTED),
                        partition=i % sizes.partitions,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.commit_transaction(60)
    return time.monotonic() - started


# -- the child process: one restore, measured -----------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _naive_restore(settings: Settings, topic: str, partition: int) -> tuple[dict, Any]:
    """The first StoreRestore, kept as the baseline: one ``poll()`` (and ``position()``) per
    message through ``read_to_end``, a tuple per entry and a (time, id) tuple per queue slot."""
    from collections import deque

    from connectors.topic_reader import read_to_end

    entries: dict[str, tuple[int, Seen, int]] = {}
    latest: dict[str, int] = {}
    for msg in read_to_end(settings, topic, partitions=[partition], timeout_s=900):
        key = msg.key()
        if key is None:
            continue
        request_id = key.decode("utf-8", errors="replace")
        value = msg.value()
        if value is None or len(value) != 9:
            latest.pop(request_id, None)
            continue
        first_seen, outcome = decode_entry(value)
        latest[request_id] = first_seen
        entries[request_id] = (first_seen, outcome, 0)
    for request_id in set(entries) - set(latest):
        del entries[request_id]
    return entries, deque(sorted((t, rid) for rid, t in latest.items()))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Restore every partition of ``spec['topic']`` with ``spec['impl']``; the measurements."""
    settings = load_settings()
    partitions = list(range(spec["partitions"]))
    gc.collect()
    rss_before = _status_kb("VmRSS")
    started = time.monotonic()
    if spec["impl"] == "ours":
        restores = [StoreRestore(settings, spec["topic"], p, HORIZON_MS) for p in partitions]
        deadline = time.monotonic() + 900
        while not all(r.done for r in restores):
            if time.monotonic() > deadline:
                raise BenchError("restore did not finish in 900 s")
            time.sleep(0.01)
        errors = [r.error for r in restores if r.error is not None]
        if errors:
            raise BenchError(f"restore failed: {errors[0]}")
        stores = [(r.store.entries, r.store.order) for r in restores]
    else:
        stores = [_naive_restore(settings, spec["topic"], p) for p in partitions]
    seconds = time.monotonic() - started
    gc.collect()
    return {
        "impl": spec["impl"],
        "seconds": seconds,
        "entries": sum(len(entries) for entries, _ in stores),
        "expiry_queue": sum(len(order) for _, order in stores),
        "rss_before_mb": rss_before / 1024,
        "rss_after_mb": _status_kb("VmRSS") / 1024,
        "rss_delta_mb": (_status_kb("VmRSS") - rss_before) / 1024,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
    }


def _run_child(impl: str, topic: str, sizes: RestoreSizes, timeout_s: float) -> dict[str, Any]:
    spec = json.dumps({"impl": impl, "topic": topic, "partitions": sizes.partitions})
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.restore_bench", "child", spec],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"restore child ({impl}) exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the scenario ---------------------------------------------------------------------------------


def restore(bench: Bench, sizes: RestoreSizes) -> dict[str, dict[str, Any]]:
    """Write the changelog once, restore it with both implementations; figures per impl."""
    suffix = f".bench-restore-{uuid.uuid4().hex[:6]}"
    spec = next(s for s in load_topic_specs(suffix=suffix) if s.name == CHANGELOG + suffix)
    spec = replace(spec, partitions=sizes.partitions)
    apply_topics(bench.topics.admin, [spec])
    bench.topics.created.append(spec.name)
    bench.console.log(f"restore: writing {sizes.entries} changelog entries to {spec.name}")
    write_s = write_changelog(bench.settings, spec.name, sizes)
    bench.console.log(f"restore: written in {write_s:.1f} s")
    timeout = 120 + sizes.entries / 2000  # generous: a minute plus 2k entries/s at worst
    figures = {}
    for impl in ("ours", "naive"):
        result = _run_child(impl, spec.name, sizes, timeout)
        if result["entries"] != sizes.entries:
            raise BenchError(f"{impl} restored {result['entries']} of {sizes.entries} entries")
        result.update(
            write_s=write_s,
            entries_per_s=result["entries"] / max(1e-9, result["seconds"]),
            bytes_per_entry=result["rss_delta_mb"] * 1024 * 1024 / max(1, result["entries"]),
            partitions=sizes.partitions,
        )
        bench.console.log(f"restore/{impl}: {result['seconds']:.1f} s")
        figures[impl] = result
    return figures


def add_rows(bench: Bench, quick: bool, report: Any, console: Any) -> None:
    """Run the scenario and add its rows to the suite's report."""
    from benchmarks.suite import Row, _attempt

    sizes = QUICK if quick else STANDARD
    runs = _attempt(report, console, "restore", lambda: restore(bench, sizes)) or {}

    def row(metric: str, unit: str, key: str) -> Row:
        ours, naive = ((runs.get(impl) or {}).get(key) for impl in ("ours", "naive"))
        return Row(name, metric, unit, ours, naive)

    n = f"{sizes.entries:,} entries, {sizes.partitions} partition(s)"
    name = "dedupe restore (ours: StoreRestore | naive: one poll() per message)"
    report.rows.extend([
        row(f"restore time, {n}", "s", "seconds"),
        row("restore rate", "entries/s", "entries_per_s"),
        row("store memory (RSS delta)", "MB", "rss_delta_mb"),
        row("  per entry", "bytes", "bytes_per_entry"),
        row("peak RSS of the restoring process", "MB", "peak_rss_mb"),
    ])  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m benchmarks.restore_bench child SPEC (f2p bench -s restore)")
