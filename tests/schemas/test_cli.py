"""``f2p schemas``: option handling offline, register/check/list against the real registry."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.registry import project_subjects
from infra.topics import load_topic_specs
from schemas import catalog
from schemas.cli import schemas
from schemas.codec import register_all
from schemas.topics import subject_for


def test_without_a_registry_the_error_says_where_to_find_one(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("F2P_REGISTRY_URL", raising=False)
    monkeypatch.delenv("F2P_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("F2P_STACK_DIR", str(tmp_path))  # no stack running there
    result = CliRunner().invoke(schemas, ["list"])
    assert result.exit_code == 1, result.output
    assert "--registry-url" in result.output and "f2p stack up" in result.output


def test_check_refuses_a_foreign_schema_file(tmp_path: Path) -> None:
    path = tmp_path / "order.avsc"
    path.write_text(
        json.dumps({"type": "record", "name": "Order", "namespace": "com.shop", "fields": []})
    )
    result = CliRunner().invoke(
        schemas, ["check", "--registry-url", "http://127.0.0.1:1", str(path)]
    )
    assert result.exit_code == 1
    assert "not one of the f2p records" in result.output


@pytest.mark.integration
def test_list_finds_the_embedded_registry_through_state_json(stack_settings, monkeypatch) -> None:
    monkeypatch.delenv("F2P_REGISTRY_URL", raising=False)
    listed = CliRunner().invoke(schemas, ["list"])  # F2P_STACK_DIR names the running stack
    assert listed.exit_code == 0, listed.output
    assert "f2p.results.v1-value" in listed.output
    assert "io.f2pstream.v1.GenerationResult  FULL_TRANSITIVE" in listed.output


@pytest.mark.integration
def test_register_list_and_check_every_project_subject(stack_settings, topic_suffix) -> None:
    env = {"F2P_REGISTRY_URL": stack_settings.registry_url}
    runner = CliRunner()
    result = runner.invoke(schemas, ["register", "--suffix", topic_suffix], env=env)
    assert result.exit_code == 0, result.output
    topics = project_subjects(load_topic_specs(suffix=topic_suffix))
    for topic in topics:
        assert subject_for(topic) in result.output
    assert result.output.count("FULL_TRANSITIVE") == len(topics)

    again = runner.invoke(schemas, ["register", "--suffix", topic_suffix], env=env)
    assert again.output == result.output  # idempotent: same ids

    listed = runner.invoke(schemas, ["list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert f"f2p.status.v1{topic_suffix}-value  v1" in listed.output

    checked = runner.invoke(schemas, ["check", "--suffix", topic_suffix], env=env)
    assert checked.exit_code == 0, checked.output
    assert checked.output.count("compatible") == len(topics)
    assert "REVIEW" not in checked.output and "LEVEL" not in checked.output


@pytest.mark.integration
def test_check_exits_1_on_an_incompatible_schema(stack_settings, subject, tmp_path) -> None:
    topic = subject("cli").removesuffix("-value")
    registry = SchemaRegistryClient({"url": stack_settings.registry_url})
    register_all(registry, {"GenerationResult": [topic]})
    current = catalog.schema_json("GenerationResult")
    bad = {**current, "fields": [f for f in current["fields"] if f["name"] != "worker_id"]}
    bad_path = tmp_path / "GenerationResult.avsc"
    bad_path.write_text(json.dumps(bad))
    args = ["check", "--registry-url", stack_settings.registry_url, "--topic", topic]

    result = CliRunner().invoke(schemas, [*args, str(bad_path)])
    assert result.exit_code == 1
    assert "INCOMPATIBLE" in result.output and subject_for(topic) in result.output

    good = CliRunner().invoke(schemas, [*args, str(catalog.schema_path("GenerationResult"))])
    assert good.exit_code == 0, good.output

    fresh = subject("cli-new").removesuffix("-value")
    new = CliRunner().invoke(schemas, [*args[:-1], fresh, str(bad_path)])
    assert new.exit_code == 0, new.output  # nothing registered yet: any first version is fine


@pytest.mark.integration
def test_check_catches_what_the_registry_accepts(stack_settings, subject, tmp_path) -> None:
    """A changed default and a removed enum symbol resolve under FULL_TRANSITIVE, so the
    registry says compatible; the review rules of `check` refuse them."""
    topic = subject("review").removesuffix("-value")
    registry = SchemaRegistryClient({"url": stack_settings.registry_url})
    register_all(registry, {"GenerationRequest": [topic]})
    changed = copy.deepcopy(catalog.schema_json("GenerationRequest"))
    params = next(f for f in changed["fields"] if f["name"] == "params")["type"]
    next(f for f in params["fields"] if f["name"] == "steps")["default"] = 50
    lane = next(f for f in changed["fields"] if f["name"] == "lane")["type"]
    lane["symbols"].remove("INTERACTIVE")
    path = tmp_path / "GenerationRequest.avsc"
    path.write_text(json.dumps(changed))

    url = stack_settings.registry_url
    result = CliRunner().invoke(
        schemas, ["check", "--registry-url", url, "--topic", topic, str(path)]
    )
    assert result.exit_code == 1, result.output
    assert f"compatible    {subject_for(topic)}" in result.output  # the registry's verdict
    assert "REVIEW" in result.output and "DEFAULT_CHANGED params.steps: 28 → 50" in result.output
    assert "ENUM_SYMBOL_REMOVED lane" in result.output


@pytest.mark.integration
def test_check_flags_a_subject_left_at_level_none(stack_settings, subject) -> None:
    topic = subject("level").removesuffix("-value")
    registry = SchemaRegistryClient({"url": stack_settings.registry_url})
    register_all(registry, {"ControlCommand": [topic]}, compatibility="NONE")
    url = stack_settings.registry_url
    path = str(catalog.schema_path("ControlCommand"))
    result = CliRunner().invoke(schemas, ["check", "--registry-url", url, "--topic", topic, path])
    assert result.exit_code == 1, result.output
    assert "LEVEL" in result.output and "is NONE, must be FULL_TRANSITIVE" in result.output
