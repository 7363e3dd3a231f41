"""Admission's benchmarks (``f2p bench -s fairness|admission|restore --quick``) against the stack.

As for the other scenarios, no wall-clock thresholds: the figures depend on the machine. The
tests check that each scenario runs end to end, reports its figures for both columns, and the
facts that do not depend on timing (who went over quota, which publishers needed two hops,
how many entries came back).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks import fairness
from benchmarks.cli import bench_cmd
from benchmarks.pipeline import poisson_times, quotas_toml
from streams.admission.quotas import load_quotas


def test_poisson_schedules_are_seeded_and_have_the_asked_rate() -> None:
    first = poisson_times(50, 100, random.Random(1))
    assert first == poisson_times(50, 100, random.Random(1))
    assert 4500 < len(first) < 5500
    assert all(0 <= a < b < 100 for a, b in itertools.pairwise(first))


def test_the_flood_replays_the_same_schedule_for_b_and_c() -> None:
    rates = {"a": 2.0, "b": 6.0, "c": 6.0}
    base = fairness._schedule(rates, 10, 8, "same")
    flood = fairness._schedule({"b": 6.0, "c": 6.0}, 10, 8, "same")
    assert [e for e in base if e[1] != "a"] == flood


def test_the_bench_quotas_file_is_what_admission_loads(tmp_path: Path) -> None:
    path = tmp_path / "quotas.toml"
    path.write_text(quotas_toml({"bench-x-a": (0.5, 10.0)}))
    policy = load_quotas(path)
    assert policy.of("bench-x-a").rate == 0.5 and policy.of("bench-x-a").burst == 10.0
    assert policy.of("someone-else").rate >= 1e6  # the warm-up is never over quota
    assert fairness.request_cost("bench-x-a") == pytest.approx(0.3 * 2 * 64 * 64 / 1024**2)


def _run(tmp_path: Path, scenario: str) -> dict:
    out = tmp_path / f"{scenario}.json"
    result = CliRunner().invoke(
        bench_cmd, ["--quick", "-s", scenario, "--json-out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    return report


@pytest.mark.integration
@pytest.mark.slow
def test_fairness_runs_with_and_without_admission(stack_settings, tmp_path) -> None:
    report = _run(tmp_path, "fairness")
    with_admission = report["details"]["fairness/admission"]
    without = report["details"]["fairness/direct"]
    # The flood went over quota with admission (and nothing could without it).
    assert with_admission["a_overquota"] > 0
    assert "a_overquota" not in without
    for figures in (with_admission, without):
        assert figures["b_samples"] > 0 and figures["c_samples"] > 0
        assert figures["fleet_flood_rps"] > 0 and figures["engine_busy_flood"] > 0
    rows = [r for r in report["rows"] if r["metric"].startswith("B P99 queue wait")]
    assert len(rows) == 2 and all(r["ours"] is not None and r["naive"] is not None for r in rows)


@pytest.mark.integration
@pytest.mark.slow
def test_admission_hop_runs_for_the_sdk_and_a_foreign_partitioner(stack_settings, tmp_path):
    figures = _run(tmp_path, "admission")["details"]["admission"]
    for variant in ("direct", "sdk", "foreign"):
        assert figures[f"{variant}_completed"] == figures[f"{variant}_requests"] > 0
    # murmur2 on the request_id into as many partitions: each request is already where its
    # dedupe state lives, and the range assignor gave both to the same instance.
    assert figures["sdk_repartitioned"] == 0
    # CRC32 puts about half of them on the other instance's partitions.
    assert 0 < figures["foreign_repartitioned"] < 1


@pytest.mark.integration
def test_restore_bench_restores_every_entry_both_ways(stack_settings, tmp_path) -> None:
    report = _run(tmp_path, "restore")
    runs = report["details"]["restore"]
    for impl in ("ours", "naive"):
        assert runs[impl]["entries"] == runs[impl]["expiry_queue"] == 20_000
        assert runs[impl]["seconds"] > 0 and runs[impl]["rss_delta_mb"] > 0
