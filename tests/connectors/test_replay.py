"""Replay against the real stack: time windows, kill -9 and resume, dry run, filters, offsets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from connector_helpers import (
    REPO,
    ResultWriter,
    cli_env,
    lane_end_offsets,
    private_topics,
    read_requests,
    suffix_of,
    wait_until,
)

from connectors.cli import replay_cmd
from connectors.publisher import Publisher
from connectors.registry import make_registry_client
from connectors.replay import ReplaySelection, replay_request_id, run_replay
from connectors.replay_checkpoint import ReplayCheckpoint
from f2p_errors import ConfigError
from schemas.codec import AvroCodec
from schemas.images import make_sample_face
from schemas.records import GenerationRequest, GenerationResult, Lane, ModelRef, utc_now

pytestmark = pytest.mark.integration


@pytest.fixture
def private_settings(stack_settings, admin, unique_name):
    with private_topics(stack_settings, admin, unique_name) as settings:
        yield settings


def _publish(settings, tenant: str, n: int, *, lanes=(Lane.INTERACTIVE, Lane.BATCH)) -> list[str]:
    """Publish ``n`` requests (lanes alternating) and wait until all are delivered."""
    face = make_sample_face(seed=31)
    with Publisher(settings) as publisher:
        futures = [
            publisher.submit(
                tenant_id=tenant, prompt=f"#{i}", face=face, lane=lanes[i % len(lanes)]
            )
            for i in range(n)
        ]
        return [f.result(timeout=30).request_id for f in futures]


def _boundary() -> datetime:
    """A millisecond instant after every message produced so far and not after any later one.

    Waits (spinning, at most ~2 ms) for the wall clock to pass the chosen millisecond.
    """
    boundary_ms = time.time_ns() // 1_000_000 + 1
    while time.time_ns() // 1_000_000 < boundary_ms:
        pass
    return datetime.fromtimestamp(boundary_ms / 1000, UTC)


def _replays(settings, lane: Lane = Lane.BATCH) -> list[GenerationRequest]:
    codec = AvroCodec(make_registry_client(settings), auto_register=False)
    topic = settings.topics.requests_batch if lane is Lane.BATCH else (
        settings.topics.requests_interactive)  # fmt: skip
    decoded = [codec.decode(m.topic(), m.value()) for m in read_requests(settings, (topic,))]
    return [r for r in decoded if r.replay_of is not None]


def test_time_window_replay_resumes_after_kill_9_and_dry_run_publishes_nothing(
    private_settings, unique_name, tmp_path
) -> None:
    tenant = unique_name("shop")
    before_ids = _publish(private_settings, tenant, 10)
    since = _boundary()
    window_ids = _publish(private_settings, tenant, 60)
    until = _boundary()
    _publish(private_settings, tenant, 10)
    window = ["--from", since.isoformat(), "--to", until.isoformat()]
    checkpoint = tmp_path / "replay.json"
    env = cli_env(private_settings)

    # Dry run: counts the window, publishes nothing, writes no checkpoint.
    offsets = lane_end_offsets(private_settings)
    dry = CliRunner().invoke(
        replay_cmd, [*window, "--dry-run", "--json", "--checkpoint", str(checkpoint)],
        env={"F2P_TOPIC_SUFFIX": suffix_of(private_settings)},
    )  # fmt: skip
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert (report["matched"], report["replayed"], report["planned"]) == (60, 0, 60)
    assert lane_end_offsets(private_settings) == offsets
    assert not checkpoint.exists()

    # A slow run, killed with SIGKILL once its checkpoint shows progress.
    slow = subprocess.Popen(
        [sys.executable, "-m", "f2p_cli", "replay", *window, "--rate", "15",
         "--checkpoint", str(checkpoint), "--json"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        state = wait_until(
            lambda: (s := ReplayCheckpoint.load(checkpoint)) is not None and s.replayed >= 10 and s,
            timeout_s=30, what="replay checkpoint progress",
        )  # fmt: skip
    finally:
        slow.send_signal(signal.SIGKILL)
        slow.wait(10)
    assert not state.done and state.replayed < 60
    killed_at = ReplayCheckpoint.load(checkpoint)
    assert killed_at is not None and not killed_at.done

    # The rerun resumes the same run and finishes it.
    resumed = subprocess.run(
        [sys.executable, "-m", "f2p_cli", "replay", *window, "--checkpoint", str(checkpoint),
         "--json"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed"] and report["done"] and report["run_id"] == state.run_id
    assert report["matched"] == report["replayed"] + report["already_replayed"] == 60

    replays = _replays(private_settings)
    by_original = Counter(r.replay_of for r in replays)
    assert len(replays) == 60 and set(by_original) == set(window_ids)
    assert set(by_original.values()) == {1}
    assert not set(by_original) & set(before_ids)
    for replay in replays:
        assert replay.request_id == replay_request_id(replay.replay_of, state.run_id)
        assert replay.lane is Lane.BATCH and replay.tenant_id == tenant

    # A finished run publishes nothing more when run again.
    offsets = lane_end_offsets(private_settings)
    again = CliRunner().invoke(
        replay_cmd, [*window, "--checkpoint", str(checkpoint), "--json"],
        env={"F2P_TOPIC_SUFFIX": suffix_of(private_settings)},
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["done"]
    assert lane_end_offsets(private_settings) == offsets


class CrashingPublisher(Publisher):
    """Dies (raises) on the ``crash_at``-th send, after the earlier ones went out."""

    def __init__(self, settings, crash_at: int) -> None:
        super().__init__(settings)
        self.crash_at, self.sent = crash_at, 0

    def send(self, prepared):
        self.sent += 1
        if self.sent == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().send(prepared)


def test_resume_skips_requests_delivered_after_the_last_checkpoint(
    private_settings, unique_name, tmp_path
) -> None:
    tenant = unique_name("shop")
    originals = _publish(private_settings, tenant, 30)
    selection = ReplaySelection(sources=private_settings.topics.request_lanes)
    checkpoint = tmp_path / "cp.json"

    crashing = CrashingPublisher(private_settings, crash_at=13)
    with pytest.raises(RuntimeError, match="simulated crash"):
        # No checkpoint after the start: everything sent before the crash is unrecorded.
        run_replay(private_settings, selection, checkpoint_path=checkpoint,
                   publisher=crashing, batch_size=10_000, checkpoint_interval_s=3600)  # fmt: skip
    crashing.close()
    assert len(_replays(private_settings)) == 12
    assert ReplayCheckpoint.load(checkpoint).replayed == 0

    report = run_replay(private_settings, selection, checkpoint_path=checkpoint)
    assert report.resumed and report.done
    assert (report.already_replayed, report.replayed) == (12, 18)
    replayed_originals = Counter(r.replay_of for r in _replays(private_settings))
    assert replayed_originals == Counter(originals)


def test_filters_by_tenant_result_status_and_offsets(private_settings, unique_name, tmp_path):
    acme, other = unique_name("acme"), unique_name("other")
    acme_ids = _publish(private_settings, acme, 8)
    _publish(private_settings, other, 4)
    now = utc_now()
    statuses = ["OK", "OK", "OK", "FAILED", "FAILED", "FAILED"]  # the last two have no result
    results = [
        GenerationResult(request_id=rid, tenant_id=acme, status=status, worker_id="w",
                         model=ModelRef(name="sim", revision="0"), submitted_at=now,
                         completed_at=now)
        for rid, status in zip(acme_ids, statuses, strict=False)
    ]  # fmt: skip
    ResultWriter(private_settings, unique_name("worker")).write(results)

    selection = ReplaySelection(
        sources=private_settings.topics.request_lanes, target_lane=Lane.INTERACTIVE,
        tenant=acme, result_statuses=frozenset({"FAILED"}),
    )  # fmt: skip
    report = run_replay(private_settings, selection, checkpoint_path=tmp_path / "a.json")
    assert (report.matched, report.replayed) == (3, 3)
    assert report.skipped["tenant"] == 4 and report.skipped["result_status"] == 5
    replays = _replays(private_settings, Lane.INTERACTIVE)
    assert sorted(r.replay_of for r in replays) == sorted(acme_ids[3:6])
    assert all(r.lane is Lane.INTERACTIVE for r in replays)

    # Another selection cannot reuse that checkpoint.
    with pytest.raises(ConfigError, match="another replay selection"):
        run_replay(private_settings, ReplaySelection(sources=selection.sources),
                   checkpoint_path=tmp_path / "a.json")  # fmt: skip

    # Explicit offsets: the message at offset 1 of every partition of the batch lane.
    batch = private_settings.topics.requests_batch
    at_one = [m for m in read_requests(private_settings, (batch,)) if m.offset() == 1]
    partitions = range(8)
    by_offsets = ReplaySelection(
        sources=(batch,),
        start_offsets={(None, p): 1 for p in partitions},
        end_offsets={(batch, p): 2 for p in partitions},
    )
    dry = run_replay(private_settings, by_offsets, dry_run=True)
    assert dry.dry_run and dry.checkpoint is None
    assert (dry.planned, dry.matched, dry.replayed) == (len(at_one), len(at_one), 0)
