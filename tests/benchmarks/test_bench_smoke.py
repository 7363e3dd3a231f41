"""``f2p bench --quick`` against the real stack: figures for our worker and the naive baseline.

No wall-clock thresholds here: the figures depend on the machine and on whatever else runs on
it. The targets are judged in docs/BENCHMARKS.md, not in tests.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from benchmarks.cli import bench_cmd
from benchmarks.harness import balanced_request_ids, partition_of, percentile
from connectors.kafka import make_producer
from connectors.partitioner import murmur2

# Kafka's own murmur2 test vectors (clients/.../UtilsTest.testMurmur2), as signed ints.
MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), MURMUR2_VECTORS.items())
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    signed = murmur2(data) - (1 << 32) if murmur2(data) >= 1 << 31 else murmur2(data)
    assert signed == expected


def test_balanced_ids_spread_evenly_over_partitions() -> None:
    ids = balanced_request_ids(80)
    assert len(set(ids)) == 80
    assert Counter(partition_of(rid) for rid in ids) == dict.fromkeys(range(8), 10)
    assert [partition_of(rid) for rid in ids[:8]] == list(range(8))


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0


@pytest.mark.integration
def test_partition_of_predicts_the_producers_partitioner(stack_settings, make_topic) -> None:
    topic = make_topic("bench-keys", partitions=8)
    producer = make_producer(stack_settings)
    landed: dict[str, int] = {}
    ids = balanced_request_ids(32)
    for rid in ids:
        producer.produce(
            topic,
            key=rid.encode(),
            value=b"x",
            on_delivery=lambda err, msg: landed.__setitem__(msg.key().decode(), msg.partition()),
        )
    assert producer.flush(30) == 0
    assert landed == {rid: partition_of(rid) for rid in ids}


@pytest.mark.integration
@pytest.mark.slow
def test_quick_suite_produces_figures_for_both_implementations(stack_settings, tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        bench_cmd, ["--quick", "--json-out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    scenarios = {row["scenario"] for row in report["rows"]}
    assert scenarios >= {"control plane", "overhead", "duty cycle", "scaling", "failover"}
    for row in report["rows"]:
        assert row["ours"] is not None, row
        assert row["naive"] is not None, row
    for key in ("control/ours", "control/naive", "failover/ours", "failover/naive"):
        assert key in report["details"]
        assert report["details"][key]["machine_samples"] >= 1  # the machine-speed reference
    assert "ours" in result.output and "naive" in result.output
