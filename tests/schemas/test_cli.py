"""``f2p schemas``: option handling offline, register/check/list against the real registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka.schema_registry import SchemaRegistryClient

from schemas import catalog
from schemas.cli import schemas
from schemas.codec import register_all
from schemas.topics import DEFAULT_SUBJECTS, subject_for


def test_registry_url_is_required(monkeypatch) -> None:
    monkeypatch.delenv("F2P_REGISTRY_URL", raising=False)
    result = CliRunner().invoke(schemas, ["list"])
    assert result.exit_code == 2
    assert "--registry-url" in result.output


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
def test_register_list_and_check_the_default_subjects(stack_settings) -> None:
    env = {"F2P_REGISTRY_URL": stack_settings.registry_url}
    runner = CliRunner()
    result = runner.invoke(schemas, ["register"], env=env)
    assert result.exit_code == 0, result.output
    for topic in DEFAULT_SUBJECTS:
        assert subject_for(topic) in result.output
    assert "FULL_TRANSITIVE" in result.output

    again = runner.invoke(schemas, ["register"], env=env)
    assert again.output == result.output  # idempotent: same ids

    listed = runner.invoke(schemas, ["list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "io.f2pstream.v1.GenerationResult" in listed.output

    checked = runner.invoke(schemas, ["check"], env=env)
    assert checked.exit_code == 0, checked.output
    assert checked.output.count("compatible") == len(DEFAULT_SUBJECTS)


@pytest.mark.integration
def test_check_exits_1_on_an_incompatible_schema(stack_settings, unique_name, tmp_path) -> None:
    topic = unique_name("test.schemas.cli")
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

    fresh = unique_name("test.schemas.cli-new")
    new = CliRunner().invoke(schemas, [*args[:-1], fresh, str(bad_path)])
    assert new.exit_code == 0, new.output  # nothing registered yet: any first version is fine
