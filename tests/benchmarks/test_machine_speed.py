"""The bench's machine-speed reference: what a scenario reports from its samples."""

from __future__ import annotations

from benchmarks.machine_speed import summarize, unit_cpu_ms


def test_the_median_and_the_spread_of_the_samples_are_reported() -> None:
    samples = [5.0, 9.0, 5.5, 20.0, 6.0, 5.2, 7.0, 5.1, 5.3, 8.0]
    figures = summarize(samples)
    assert figures["machine_unit_ms"] == 5.75  # one slow burst (20 ms) does not move it
    low, high = figures["machine_unit_p10_p90_ms"]
    assert 5.0 <= low < 5.2 and 9.0 <= high <= 20.0
    assert figures["machine_samples"] == 10


def test_no_samples_is_said_not_guessed() -> None:
    assert summarize([]) == {
        "machine_unit_ms": None,
        "machine_unit_p10_p90_ms": None,
        "machine_samples": 0,
    }
    assert summarize([4.2]) == {
        "machine_unit_ms": 4.2,
        "machine_unit_p10_p90_ms": None,
        "machine_samples": 1,
    }


def test_the_unit_costs_cpu_time() -> None:
    assert unit_cpu_ms() > 0
