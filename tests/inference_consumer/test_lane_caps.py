"""Unit tests of the worker's per-lane in-flight caps (``Worker._loop_config``): a lane's share
follows its weight, but never falls below two of the engine's batches nor rises above the
worker's whole in-flight bound. No broker: the codec and S3 client are never used here."""

from __future__ import annotations

import pytest

from connectors.settings import Settings
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.sim import SimEngine
from inference_consumer.worker import Worker

SETTINGS = Settings(
    bootstrap_servers="127.0.0.1:1",
    registry_url="http://127.0.0.1:1",
    s3_endpoint_url=None,
    s3_access_key=None,
    s3_secret_key=None,
)
T = SETTINGS.topics


def caps(max_in_flight: int, max_batch: int) -> dict[str, int]:
    worker = Worker(
        SETTINGS,
        WorkerConfig(worker_id="caps", max_in_flight=max_in_flight),
        SimEngine(max_batch_size=max_batch),
        codec=object(),  # type: ignore[arg-type]
        s3=object(),
    )
    return dict(worker._loop_config().topic_in_flight)


def test_caps_follow_the_lane_weights_when_they_exceed_two_batches() -> None:
    # Weights 16 / 4 / 0.25 of 1024 slots: 1024, 256, 16 — all above 2 x 4.
    assert caps(1024, 4) == {
        T.lanes_interactive: 1024,
        T.lanes_batch: 256,
        T.lanes_overquota: 16,
    }


@pytest.mark.parametrize(
    ("max_in_flight", "max_batch", "expected"),
    [
        # 64 slots, batches of 4: overquota's share (1) is raised to two batches (8).
        (64, 4, {"interactive": 64, "batch": 16, "overquota": 8}),
        # 8 slots, batches of 4: batch 2 -> 8, overquota 1 -> 8 (the old caps ran batches of 2).
        (8, 4, {"interactive": 8, "batch": 8, "overquota": 8}),
        # Two batches are more than the whole bound: capped at max_in_flight.
        (8, 16, {"interactive": 8, "batch": 8, "overquota": 8}),
    ],
)
def test_a_lane_holds_at_least_two_batches_and_never_more_than_the_bound(
    max_in_flight: int, max_batch: int, expected: dict[str, int]
) -> None:
    by_lane = {"interactive": T.lanes_interactive, "batch": T.lanes_batch,
               "overquota": T.lanes_overquota}  # fmt: skip
    assert caps(max_in_flight, max_batch) == {by_lane[k]: v for k, v in expected.items()}


def test_the_retry_topic_has_no_lane_cap() -> None:
    assert T.retry not in caps(64, 4)


def test_shares_are_of_the_lanes_the_worker_serves() -> None:
    """The heaviest lane *served* takes every slot: a worker of the batch lane alone is not
    held to the 16 of 64 that leave room for an interactive lane it does not read."""

    def served_caps(lanes: tuple[str, ...]) -> dict[str, int]:
        worker = Worker(
            SETTINGS,
            WorkerConfig(worker_id="caps", max_in_flight=64, lanes=lanes),
            SimEngine(max_batch_size=4),
            codec=object(),  # type: ignore[arg-type]
            s3=object(),
        )
        return dict(worker._loop_config().topic_in_flight)

    assert served_caps((T.lanes_batch,)) == {T.lanes_batch: 64}
    # 64 x 0.25 / 4 = 4, raised to two batches of 4.
    assert served_caps((T.lanes_batch, T.lanes_overquota)) == {
        T.lanes_batch: 64,
        T.lanes_overquota: 8,
    }
