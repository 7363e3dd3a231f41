"""SIGTERM: a real ``f2p worker`` process drains, commits and exits 0; a successor finishes.

Afterwards every request has exactly one result: nothing the first worker finished is redone
(its drain committed the offsets), nothing it had not finished is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.inference_consumer.conftest import (
    CountingSimEngine,
    publish,
    read_results,
    running_worker,
    sample_request,
    wait_for_results,
    wait_until,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SHUTDOWN_TIMEOUT_S = 10
# ~0.2 s per batch of 4 requests (64x64, 2 steps, no CFG): 60 requests ≈ 3 s of work.
SIM_TIME_SCALE = 0.2 / (0.6 * 2 * (64 * 64 / 1024**2) * 4**0.85)


def test_sigterm_drains_commits_and_exits_cleanly(pipeline, codec, tmp_path) -> None:
    suffix = pipeline.topics.results.removeprefix("f2p.results.v1")
    group = "g-term" + suffix
    backlog = [sample_request() for _ in range(60)]
    ids = {r.request_id for r in backlog}
    publish(pipeline, codec, backlog)
    env = {
        **os.environ,
        "F2P_TOPIC_SUFFIX": suffix,
        "F2P_WORKER_GROUP_ID": group,
        "F2P_WORKER_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        "F2P_WORKER_MAX_IN_FLIGHT": "8",
        "F2P_LOG_FORMAT": "text",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "f2p_cli",
                "worker",
                "--engine",
                "sim",
                "--sim-time-scale",
                str(SIM_TIME_SCALE),
                "--worker-id",
                "term-a",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(
            lambda: proc.poll() is not None or len(read_results(pipeline, codec)) >= 8,
            90,
            "the first results of the subprocess worker",
            step_s=0.1,
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(SHUTDOWN_TIMEOUT_S + 20)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    assert elapsed < SHUTDOWN_TIMEOUT_S + 5, elapsed
    assert "signal SIGTERM: shutting down" in output
    assert "worker stopped" in output
    assert "Traceback" not in output, output[-3000:]

    first = read_results(pipeline, codec)
    first_ids = Counter(r.request_id for r in first)
    assert set(first_ids.values()) == {1}
    assert {r.worker_id for r in first} == {"term-a"}
    assert len(first_ids) < len(backlog), "the backlog was finished before SIGTERM: test too fast"

    # A successor in the same group finishes the rest, and redoes nothing that was committed.
    engine = CountingSimEngine()
    with running_worker(pipeline, engine, worker_id="term-b", group_id=group):
        results = wait_for_results(pipeline, codec, ids, timeout_s=90)
    counts = Counter(r.request_id for r in results)
    assert set(counts) == ids
    assert set(counts.values()) == {1}, counts.most_common(3)
    assert not set(engine.seen) & set(first_ids)
    assert len(engine.seen) == len(backlog) - len(first_ids)
