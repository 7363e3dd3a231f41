"""`f2p replay` and `f2p results`: hostile arguments end in a usage error naming the option,
never in a traceback (issue 7 item 15, found by fuzzing the CLI)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from connector_helpers import lane_end_offsets, private_topics, suffix_of

from connectors.cli import replay_cmd, results_cmd
from connectors.replay_selection import parse_offsets
from f2p_errors import ConfigError
from infra.topics import load_topic_specs


@pytest.mark.parametrize(
    "text", ["x:y", "0:-5", "0:99999999999999999999999", "9" * 5000 + ":1", "bad/topic:0:1"]
)
def test_offsets_out_of_kafka_bounds_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="offsets: expected PARTITION:OFFSET"):
        parse_offsets(text)
    assert parse_offsets("0:5,f2p.requests.batch:1:7") == {
        (None, 0): 5,
        ("f2p.requests.batch", 1): 7,
    }


def test_an_illegal_topic_suffix_is_refused() -> None:
    for suffix in ("/bad", "\udcff", "x" * 300):
        with pytest.raises(ConfigError, match="not a legal Kafka topic name"):
            load_topic_specs(suffix=suffix)


@pytest.mark.integration
def test_hostile_replay_and_results_arguments_are_usage_errors(stack_settings, tmp_path) -> None:
    cases = [
        (replay_cmd, ["--dry-run", "--source", "\udcff"], "is not a Kafka topic name"),
        (replay_cmd, ["--dry-run", "--source", "a" * 300], "is not a Kafka topic name"),
        (replay_cmd, ["--dry-run", "--run-id", "\udcff"], "--run-id"),
        (replay_cmd, ["--dry-run", "--run-id", "r" * 129], "--run-id"),
        (replay_cmd, ["--dry-run", "--rate", "nan"], "not a finite number"),
        (results_cmd, ["--follow", "--idle-timeout", "nan"], "not a finite number"),
        (results_cmd, ["--download", "/proc/no/such/dir"], "cannot create /proc/no/such/dir"),
    ]
    for command, args, text in cases:
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert text in result.output, (args, result.output)


@pytest.mark.integration
def test_an_unwritable_checkpoint_is_one_error_before_anything_is_replayed(
    stack_settings, admin, unique_name
) -> None:
    with private_topics(stack_settings, admin, unique_name) as settings:
        before = lane_end_offsets(settings)
        result = CliRunner().invoke(
            replay_cmd,
            ["--checkpoint", "/proc/f2p-no-such-dir/run.json"],
            env={"F2P_TOPIC_SUFFIX": suffix_of(settings)},
        )
        assert isinstance(result.exception, ConfigError), result.output
        assert "cannot write" in str(result.exception)
        assert lane_end_offsets(settings) == before
