"""Prometheus rules: promtool's checks and unit tests (infra/monitoring/rules_test.yml), and
proof that those tests can fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from infra.monitoring.render import RULES_FILE
from infra.stack.prometheus import find_prometheus_tool

MONITORING = RULES_FILE.parent


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(find_prometheus_tool("promtool")), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", "rules.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_unit_tests_pass() -> None:
    out = promtool("test", "rules", "rules_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rule_unit_tests_fail_when_a_rule_is_weakened(tmp_path: Path) -> None:
    """A "no results" alert that fires while results flow must break the tests."""
    shutil.copy(MONITORING / "rules_test.yml", tmp_path / "rules_test.yml")
    rules = RULES_FILE.read_text()
    weakened = rules.replace(
        "\n            unless on () sum(rate(f2p_worker_results_total[5m])) > 0", ""
    )
    assert weakened != rules
    (tmp_path / "rules.yml").write_text(weakened)
    out = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert out.returncode != 0
    assert "F2PNoResultsWhileLag" in out.stdout + out.stderr
