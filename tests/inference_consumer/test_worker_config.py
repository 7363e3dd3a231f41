"""Unit tests of WorkerConfig: defaults < F2P_WORKER_* < overrides; errors name their cause."""

from __future__ import annotations

import dataclasses

import pytest

from f2p_errors import ConfigError
from inference_consumer.config import RetryPolicy, WorkerConfig
from schemas.records import ImageFormat


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [f"F2P_WORKER_{f.name.upper()}" for f in dataclasses.fields(WorkerConfig)]:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_valid_and_frozen() -> None:
    config = WorkerConfig.from_env()
    assert config.max_in_flight > 0 and config.worker_id
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_in_flight = 1  # type: ignore[misc]


def test_variables_are_parsed_by_field_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("F2P_WORKER_WORKER_ID", "gpu-7")
    monkeypatch.setenv("F2P_WORKER_MAX_IN_FLIGHT", "12")
    monkeypatch.setenv("F2P_WORKER_SHUTDOWN_TIMEOUT_S", "2.5")
    monkeypatch.setenv("F2P_WORKER_STATIC_MEMBERSHIP", "no")
    monkeypatch.setenv("F2P_WORKER_OUTPUT_FORMAT", "png")
    monkeypatch.setenv("F2P_WORKER_METRICS_HOST", "0.0.0.0")
    config = WorkerConfig.from_env()
    assert config.worker_id == "gpu-7"
    assert config.max_in_flight == 12
    assert config.shutdown_timeout_s == 2.5
    assert config.static_membership is False
    assert config.output_format is ImageFormat.PNG
    assert config.metrics_host == "0.0.0.0"


def test_overrides_win_over_variables_and_none_means_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("F2P_WORKER_MAX_IN_FLIGHT", "12")
    monkeypatch.setenv("F2P_WORKER_GROUP_ID", "from-env")
    config = WorkerConfig.from_env(max_in_flight=3, group_id=None)
    assert config.max_in_flight == 3
    assert config.group_id == "from-env"


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("F2P_WORKER_MAX_IN_FLIGHT", "lots"),
        ("F2P_WORKER_MAX_IN_FLIGHT", "1.5"),
        ("F2P_WORKER_SHUTDOWN_TIMEOUT_S", "soon"),
        ("F2P_WORKER_STATIC_MEMBERSHIP", "maybe"),
        ("F2P_WORKER_OUTPUT_FORMAT", "gif"),
    ],
)
def test_unparseable_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigError, match=variable):
        WorkerConfig.from_env()


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("F2P_WORKER_MAX_IN_FLIGHT", "0"),
        ("F2P_WORKER_PREFETCH_THREADS", "-1"),
        ("F2P_WORKER_UPLOAD_THREADS", "0"),
        ("F2P_WORKER_COMMIT_INTERVAL_MS", "-1"),  # 0 is valid: commit as soon as possible
        ("F2P_WORKER_MAX_COMMIT_INTERVAL_MS", "-1"),
        ("F2P_WORKER_BUSY_POLL_MS", "0"),
        ("F2P_WORKER_OBJECT_STORE", "gcs"),
        ("F2P_WORKER_SESSION_TIMEOUT_MS", "0"),
        ("F2P_WORKER_TRANSACTION_TIMEOUT_MS", "-5"),
        ("F2P_WORKER_MAX_BATCH_WAIT_MS", "-1"),
        ("F2P_WORKER_WEBP_METHOD", "7"),
        ("F2P_WORKER_WEBP_METHOD", "-1"),
        ("F2P_WORKER_PNG_COMPRESS_LEVEL", "10"),
        ("F2P_WORKER_HEARTBEAT_INTERVAL_MS", "5000"),  # more than session_timeout_ms / 3
        ("F2P_WORKER_HEARTBEAT_INTERVAL_MS", "0"),
        ("F2P_WORKER_SHUTDOWN_TIMEOUT_S", "-1"),
        ("F2P_WORKER_METRICS_PORT", "70000"),
        ("F2P_WORKER_WORKER_ID", "x" * 201),
    ],
)
def test_out_of_range_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigError, match=variable):
        WorkerConfig.from_env()


def test_out_of_range_override_names_the_field() -> None:
    with pytest.raises(ConfigError, match="max_in_flight"):
        WorkerConfig.from_env(max_in_flight=0)


def test_retry_policy_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(retry_backoff_s=1.0, max_retry_backoff_s=5.0)
    assert [policy.retry_delay_s(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_invalid_retry_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        WorkerConfig(retry=RetryPolicy(max_attempts=0)).validate()
    with pytest.raises(ConfigError, match="in_place_attempts"):
        WorkerConfig(retry=RetryPolicy(in_place_attempts=0)).validate()
