"""Review rules: what the registry accepts but the contract forbids (schemas.review)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from schemas import catalog
from schemas.review import missing_docs, review_against, review_change


def _field(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    node = schema
    for name in path:
        fields = node["fields"] if "fields" in node else node["type"]["fields"]
        node = next(f for f in fields if f["name"] == name)
    return node


def _codes(violations) -> set[tuple[str, str]]:
    return {(v.code, v.path) for v in violations}


@pytest.mark.parametrize("name", catalog.RECORD_NAMES)
def test_the_shipped_history_obeys_every_review_rule(name: str) -> None:
    versions = [catalog.load_history(name, v) for v, _ in catalog.history_versions(name)]
    for old, new in itertools.combinations(versions, 2):
        assert review_change(old, new) == []
    assert missing_docs(catalog.schema_json(name)) == []


def test_a_changed_default_is_flagged() -> None:
    old = catalog.schema_json("GenerationRequest")
    new = copy.deepcopy(old)
    _field(new, "params", "steps")["default"] = 50
    assert _codes(review_change(old, new)) == {("DEFAULT_CHANGED", "params.steps")}


def test_a_removed_default_is_flagged() -> None:
    old = catalog.schema_json("DeadLetter")
    new = copy.deepcopy(old)
    del _field(new, "attempts")["default"]
    assert _codes(review_change(old, new)) == {("DEFAULT_REMOVED", "attempts")}


def test_enum_symbols_must_only_be_appended_and_keep_their_default() -> None:
    old = catalog.schema_json("GenerationResult")
    removed, inserted, default = (copy.deepcopy(old) for _ in range(3))
    _field(removed, "status")["type"]["symbols"].remove("EXPIRED")
    _field(inserted, "status")["type"]["symbols"].insert(0, "QUEUED")
    _field(default, "status")["type"]["default"] = "OK"
    assert _codes(review_change(old, removed)) == {("ENUM_SYMBOL_REMOVED", "status")}
    assert _codes(review_change(old, inserted)) == {("ENUM_SYMBOL_NOT_APPENDED", "status")}
    assert _codes(review_change(old, default)) == {("ENUM_DEFAULT_CHANGED", "status")}


def test_a_changed_logical_type_is_flagged_even_inside_an_optional() -> None:
    old = catalog.schema_json("GenerationRequest")
    new = copy.deepcopy(old)
    _field(new, "deadline")["type"][1]["logicalType"] = "timestamp-micros"
    _field(new, "submitted_at")["type"]["logicalType"] = "local-timestamp-millis"
    assert _codes(review_change(old, new)) == {
        ("LOGICAL_TYPE_CHANGED", "deadline"),
        ("LOGICAL_TYPE_CHANGED", "submitted_at"),
    }


def test_union_branches_are_told_apart() -> None:
    old = catalog.schema_json("GenerationRequest")
    new = copy.deepcopy(old)
    inline = next(b for b in _field(new, "face")["type"] if b["name"] == "InlineImage")
    next(f for f in inline["fields"] if f["name"] == "content_type")["default"] = "image/png"
    # The other branch's content_type (no default either) is not confused with this one.
    assert review_change(old, new) == []
    inline_old = copy.deepcopy(new)
    next(f for f in inline["fields"] if f["name"] == "content_type")["default"] = "image/jpeg"
    assert _codes(review_change(inline_old, new)) == {
        ("DEFAULT_CHANGED", "face[InlineImage].content_type")
    }


def test_a_renamed_record_and_a_missing_doc_are_flagged() -> None:
    old = catalog.schema_json("ControlCommand")
    new = copy.deepcopy(old)
    new["namespace"] = "io.f2pstream.v2"
    del _field(new, "reason")["doc"]
    assert ("NAME_CHANGED", "ControlCommand") in _codes(review_change(old, new))
    assert _codes(review_against(new, [old])) == {
        ("NAME_CHANGED", "ControlCommand"),
        ("MISSING_DOC", "reason"),
    }


def test_adding_an_optional_field_with_a_doc_passes() -> None:
    old = catalog.schema_json("RequestStatus")
    new = copy.deepcopy(old)
    new["fields"].append(
        {"name": "region", "type": ["null", "string"], "default": None, "doc": "x"}
    )
    assert review_against(new, [old]) == []
