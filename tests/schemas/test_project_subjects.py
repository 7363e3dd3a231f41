"""Every subject the project creates is FULL_TRANSITIVE from its first version and refuses an
incompatible change, whether registered from topics.toml or auto-registered by the codec."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from schema_samples import V1_SAMPLES

from connectors.registry import project_subjects, register_project_schemas
from infra.topics import load_topic_specs
from schemas import catalog
from schemas.codec import DEFAULT_COMPATIBILITY, AvroCodec, set_level
from schemas.topics import subject_for

pytestmark = pytest.mark.integration


def string_to_int(schema: dict[str, Any]) -> dict[str, Any]:
    """The change of issue 12: the first string field of the record retyped to int."""
    changed = copy.deepcopy(schema)
    for field in changed["fields"]:
        kind = field["type"]
        if kind == "string" or (isinstance(kind, dict) and kind.get("type") == "string"):
            field["type"] = "int"
            return changed
    raise AssertionError(f"{schema['name']} has no string field")


def test_every_topic_with_avro_values_has_a_subject() -> None:
    subjects = project_subjects(load_topic_specs())
    assert subjects["f2p.requests.interactive"] == subjects["f2p.requests.batch"]
    assert subjects["f2p.analytics.v1"] == "AnalyticsWindow"
    assert subjects["f2p.status.v1"] == "RequestStatus"
    assert subjects["f2p.control.v1"] == "ControlCommand"
    assert "f2p.dedupe.v1" not in subjects
    assert set(subjects.values()) == set(catalog.RECORD_NAMES)


def test_every_project_subject_refuses_an_incompatible_change(registry, topic_suffix) -> None:
    specs = load_topic_specs(suffix=topic_suffix)
    ids = register_project_schemas(registry, specs)
    subjects = project_subjects(specs)
    assert set(ids) == {subject_for(t) for t in subjects}

    for topic, record in subjects.items():
        subject = subject_for(topic)
        assert registry.get_compatibility(subject) == DEFAULT_COMPATIBILITY, subject
        bad = Schema(catalog.canonical_text(string_to_int(catalog.schema_json(record))), "AVRO")
        with pytest.raises(SchemaRegistryError) as err:
            registry.register_schema(subject, bad)
        assert err.value.http_status_code == 409, subject
        assert registry.get_versions(subject) == [1], subject

    # Registering again changes nothing (same ids, no new version).
    assert register_project_schemas(registry, specs) == ids


def test_the_stack_registered_the_real_subjects_protected(registry) -> None:
    """``stack_up`` (the session fixture) registered every real subject: level and a refused
    change are checked read-only, so a failure cannot pollute the shared registry."""
    for topic, record in project_subjects(load_topic_specs()).items():
        subject = subject_for(topic)
        assert registry.get_compatibility(subject) == DEFAULT_COMPATIBILITY, subject
        current = Schema(catalog.schema_str(record), "AVRO")
        assert registry.lookup_schema(subject, current).schema_id > 0
        bad = Schema(catalog.canonical_text(string_to_int(catalog.schema_json(record))), "AVRO")
        assert registry.test_compatibility_all_versions(subject, bad) is False, subject


@pytest.mark.parametrize("name", catalog.RECORD_NAMES)
def test_an_auto_registered_subject_is_protected_from_its_first_version(
    registry, stack_settings, unique_name, subject, name
) -> None:
    topic = subject(f"auto.{name.lower()}").removesuffix("-value")
    AvroCodec(registry, auto_register=True).encode(topic, V1_SAMPLES[name]())
    assert registry.get_compatibility(subject_for(topic)) == DEFAULT_COMPATIBILITY
    bad = Schema(catalog.canonical_text(string_to_int(catalog.schema_json(name))), "AVRO")
    with pytest.raises(SchemaRegistryError) as err:
        registry.register_schema(subject_for(topic), bad)
    assert err.value.http_status_code == 409
    assert registry.get_versions(subject_for(topic)) == [1]


def _race(subject_name: str, url: str, call, threads: int = 8) -> list[BaseException]:
    """Run ``call(client, subject)`` from ``threads`` threads released at once; the errors."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def one() -> None:
        client = SchemaRegistryClient({"url": url})
        barrier.wait()
        try:
            call(client, subject_name)
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    return errors


def test_setting_the_level_races_safely(registry, stack_settings, subject) -> None:
    """Apicurio answers 409 to the loser of two concurrent first PUTs of a subject's level
    (seen as publisher threads auto-registering one subject); set_level retries it."""
    fresh = subject("race")
    url = stack_settings.registry_url
    errors = _race(fresh, url, lambda c, s: set_level(c, s, DEFAULT_COMPATIBILITY))
    assert errors == []
    assert registry.get_compatibility(fresh) == DEFAULT_COMPATIBILITY
