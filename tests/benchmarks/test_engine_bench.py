"""``f2p bench -s engine``: evaluations per image per preset, on the tiny engine."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from benchmarks import engine_bench, suite


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return engine_bench.run_engine_bench(images=1, repeats=1)


def test_each_preset_reports_its_evaluations_per_image(rows: list[dict[str, Any]]) -> None:
    figures = {row["preset"]: row for row in rows}
    assert {p: r["transformer_evaluations_per_image"] for p, r in figures.items()} == {
        "QUALITY": 100,  # the model card: 50 steps x 2 (true CFG)
        "FAST": 8,  # 8-step Lightning, CFG 1
        "FASTEST": 3,  # 4-step Lightning, step 2 predicted by the TaylorSeer hook
    }
    assert [(r["steps"], r["true_cfg_scale"]) for r in rows] == [(50, 4.0), (8, 1.0), (4, 1.0)]
    assert all(r["cpu_ms_per_image"] > 0 and r["images"] == 1 for r in rows)


def test_the_suite_prints_them_next_to_quality(
    rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "engine" in suite.SCENARIOS
    monkeypatch.setattr(engine_bench, "run_engine_bench", lambda: rows)
    report = suite.Report(machine={}, sizes={})
    suite._RUNNERS["engine"](None, None, report, Console(quiet=True))  # type: ignore[arg-type]
    evaluations = {
        row.metric.split(":")[0]: (row.ours, row.naive)
        for row in report.rows
        if "evaluations" in row.metric
    }
    assert evaluations == {"QUALITY": (100, 100), "FAST": (8, 100), "FASTEST": (3, 100)}
