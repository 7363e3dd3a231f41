"""Topics as code against the real broker: create, idempotence, drift, partition increase."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from f2p_errors import ConfigError
from infra.stack.config import load_stack_config
from infra.topics import (
    TopicApplyError,
    apply_topics,
    delete_topics,
    describe_configs,
    load_topic_specs,
)


def test_spec_declares_every_pipeline_topic() -> None:
    names = {s.name for s in load_topic_specs()}
    assert {
        "f2p.requests.interactive",
        "f2p.requests.batch",
        "f2p.results.v1",
        "f2p.retry.v1",
        "f2p.dlq.v1",
        "f2p.dedupe.v1",
        "f2p.analytics.v1",
    } <= names
    dedupe = next(s for s in load_topic_specs() if s.name == "f2p.dedupe.v1")
    assert dedupe.config["cleanup.policy"] == "compact"


def test_every_topic_declares_the_record_its_values_carry() -> None:
    schemas = {s.name: s.value_schema for s in load_topic_specs()}
    assert schemas["f2p.requests.interactive"] == schemas["f2p.retry.v1"] == "GenerationRequest"
    assert schemas["f2p.results.v1"] == "GenerationResult"
    assert schemas["f2p.dlq.v1"] == "DeadLetter"
    assert schemas["f2p.analytics.v1"] == "AnalyticsWindow"
    assert schemas["f2p.status.v1"] == "RequestStatus"
    assert schemas["f2p.control.v1"] == "ControlCommand"
    assert schemas["f2p.dedupe.v1"] is None  # no registry-framed Avro
    status = next(s for s in load_topic_specs() if s.name == "f2p.status.v1")
    assert "compact" in status.config["cleanup.policy"]


def test_an_unknown_value_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "topics.toml"
    path.write_text('[topics."t"]\npartitions = 1\nvalue_schema = "Order"\n')
    with pytest.raises(ConfigError, match="value_schema 'Order'"):
        load_topic_specs(path)


@pytest.mark.integration
def test_apply_cli_registers_every_value_schema(stack_settings, admin, unique_name) -> None:
    from click.testing import CliRunner
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from infra.cli import topics_group

    suffix = "." + unique_name("t")
    specs = load_topic_specs(suffix=suffix)
    registry = SchemaRegistryClient({"url": stack_settings.registry_url})
    subjects = [f"{s.name}-value" for s in specs if s.value_schema]
    try:
        result = CliRunner().invoke(topics_group, ["apply", "--suffix", suffix])
        assert result.exit_code == 0, result.output
        for subject in subjects:
            assert f"schema registered  {subject}" in result.output
            assert registry.get_compatibility(subject) == "FULL_TRANSITIVE"
        assert "f2p.dedupe.v1" + suffix + "-value" not in result.output
    finally:
        delete_topics(admin, [s.name for s in specs])
        for subject in subjects:
            for permanent in (False, True):
                with contextlib.suppress(SchemaRegistryError):  # already gone
                    registry.delete_subject(subject, permanent=permanent)


def test_production_profile_overlays_replication() -> None:
    spec = load_topic_specs(profile="production")[0]
    assert spec.replication_factor == 3
    assert spec.config["min.insync.replicas"] == "2"
    with pytest.raises(ConfigError, match="nope"):
        load_topic_specs(profile="nope")


@pytest.mark.integration
def test_apply_twice_changes_nothing_the_second_time(admin, unique_name) -> None:
    specs = load_topic_specs(suffix="." + unique_name("t"))
    first = apply_topics(admin, specs)
    assert sorted(first.created) == sorted(s.name for s in specs)

    second = apply_topics(admin, specs)
    assert not second.changed
    assert second.created == []
    assert sorted(second.unchanged) == sorted(s.name for s in specs)
    assert second.drift == []

    configs = describe_configs(admin, [s.name for s in specs])
    for spec in specs:
        for key, value in spec.config.items():
            assert configs[spec.name][key] == value, (spec.name, key)
    delete_topics(admin, [s.name for s in specs])


@pytest.mark.integration
def test_drift_is_reported_then_partitions_raised_when_asked(admin, unique_name) -> None:
    specs = load_topic_specs(suffix="." + unique_name("t"))
    apply_topics(admin, specs)
    results = next(s for s in specs if s.name.startswith("f2p.results.v1"))
    grown = [
        type(s)(
            s.name, s.partitions + 2, s.replication_factor, {**s.config, "retention.ms": "1000"}
        )
        if s is results
        else s
        for s in specs
    ]

    report = apply_topics(admin, grown)
    assert not report.changed
    settings = {(d.topic, d.setting) for d in report.drift}
    assert (results.name, "partitions") in settings
    assert (results.name, "retention.ms") in settings

    fixed = apply_topics(admin, grown, raise_partitions=True, alter_configs=True)
    assert fixed.partitions_raised == [results.name]
    assert fixed.configs_altered == [results.name]
    metadata = admin.list_topics(results.name, timeout=10)
    assert len(metadata.topics[results.name].partitions) == results.partitions + 2
    assert apply_topics(admin, grown).drift == []
    delete_topics(admin, [s.name for s in specs])


# -- replication (issue 7 item 12) ---------------------------------------------------------------


def _f2p(args: list[str], stack_dir: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "F2P_STACK_DIR": stack_dir}
    env.pop("F2P_BOOTSTRAP_SERVERS", None)
    return subprocess.run([sys.executable, "-m", "f2p_cli", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)  # fmt: skip


@pytest.mark.integration
def test_replication_drift_is_reported_and_min_insync_never_set_above_it(admin, unique_name):
    suffix = "." + unique_name("t")
    default = load_topic_specs(suffix=suffix)
    apply_topics(admin, default)  # replication 1, min.insync 1
    try:
        production = load_topic_specs(profile="production", suffix=suffix)
        report = apply_topics(admin, production)
        drift = {(d.topic, d.setting): (d.spec, d.actual) for d in report.drift}
        for spec in production:
            assert drift[(spec.name, "replication_factor")] == ("3", "1")

        with pytest.raises(TopicApplyError, match=r"refusing to set min.insync.replicas=2") as info:
            apply_topics(admin, production, alter_configs=True)
        assert any(spec.name in str(info.value) for spec in production)
        configs = describe_configs(admin, [s.name for s in default])
        assert {c["min.insync.replicas"] for c in configs.values()} == {"1"}  # nothing altered
    finally:
        delete_topics(admin, [s.name for s in default])


@pytest.mark.integration
def test_topics_list_shows_replication_and_min_insync(admin, unique_name, stack_settings):
    suffix = "." + unique_name("t")
    specs = load_topic_specs(suffix=suffix)
    apply_topics(admin, specs)
    try:
        done = _f2p(["topics", "list", "--suffix", suffix], str(load_stack_config().state_dir))
        assert done.returncode == 0, done.stderr
        header = next(line for line in done.stdout.splitlines() if line.startswith("topic"))
        assert "replication" in header and "min.insync" in header
        row = next(line for line in done.stdout.splitlines() if line.startswith(specs[0].name))
        # partitions, replication and min.insync, each "spec / broker".
        assert row.split()[1:10] == ["8", "/", "8", "1", "/", "1", "1", "/", "1"]
    finally:
        delete_topics(admin, [s.name for s in specs])


@pytest.mark.integration
@pytest.mark.slow
def test_apply_without_a_profile_on_three_brokers_warns_and_production_does_not(
    cluster_stack, unique_name
) -> None:
    suffix = "." + unique_name("t")
    stack_dir = str(cluster_stack.config.state_dir)
    done = _f2p(["topics", "apply", "--suffix", suffix, "--dry-run"], stack_dir)
    assert done.returncode == 0, done.stderr
    assert "WARNING: the cluster has 3 brokers" in done.stderr
    assert "--profile production" in done.stderr

    done = _f2p(["topics", "apply", "--suffix", suffix, "--profile", "production"], stack_dir)
    assert done.returncode == 0, done.stderr
    assert "WARNING: the cluster has" not in done.stderr
    listed = _f2p(["topics", "list", "--suffix", suffix, "--profile", "production"], stack_dir)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines() if suffix in line]
    assert len(rows) == len(load_topic_specs())
    assert {tuple(r[4:10]) for r in rows} == {("3", "/", "3", "2", "/", "2")}
    from connectors.kafka import make_admin

    delete_topics(
        make_admin(cluster_stack.settings), [s.name for s in load_topic_specs(suffix=suffix)]
    )
