"""The environment knobs of the benchmark scenarios are parsed with bounds."""

from __future__ import annotations

import pytest

from benchmarks.scenarios import _fixed_rate


def test_an_unset_rate_means_the_scenario_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("F2P_BENCH_OVERHEAD_RPS", raising=False)
    assert _fixed_rate("F2P_BENCH_OVERHEAD_RPS") is None
    monkeypatch.setenv("F2P_BENCH_OVERHEAD_RPS", " ")
    assert _fixed_rate("F2P_BENCH_OVERHEAD_RPS") is None


def test_a_fixed_rate_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("F2P_BENCH_OVERHEAD_RPS", "15.5")
    assert _fixed_rate("F2P_BENCH_OVERHEAD_RPS") == 15.5


@pytest.mark.parametrize("text", ["0", "-3", "nan", "inf", "1e9", "fast"])
def test_a_bad_rate_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("F2P_BENCH_OVERHEAD_RPS", text)
    with pytest.raises(ValueError, match="F2P_BENCH_OVERHEAD_RPS must be a rate"):
        _fixed_rate("F2P_BENCH_OVERHEAD_RPS")
