"""docs/PUBLISHING.md states the bounds that schemas.validation enforces: a change to one
without the other fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.claim_check import face_key
from schemas.validation import KIB, MIB, RequestLimits

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PUBLISHING.md").read_text()
L = RequestLimits()
TO = "\N{EN DASH}"  # ranges in the guide are written 1<en dash>100


@pytest.mark.parametrize(
    "text",
    [
        f"{L.min_steps}{TO}{L.max_steps} denoising steps",
        f"{L.min_side}{TO}{L.max_side} and a **multiple of {L.side_multiple}**",
        f"{L.min_cfg}{TO}{L.max_cfg}",
        f"1{TO}{L.max_num_images}",
        f"{L.min_lora_scale}{TO}{L.max_lora_scale}",
        f"{L.min_output_quality}{TO}{L.max_output_quality} (WEBP, JPEG)",
        f"1{TO}{L.max_prompt_chars} chars",
        f"0{TO}{L.max_negative_prompt_chars} chars",
        f"≤ {L.max_attributes} entries, keys 1{TO}{L.max_attribute_key_chars} chars, "
        f"values ≤ {L.max_attribute_value_chars} chars",
        f"≤ {L.max_trace_context_entries} entries",
        f"values ≤ {L.max_trace_context_value_chars} chars",
        f"at most **{L.max_inline_image_bytes // KIB} KiB**",
        f"Up to **{L.max_face_image_bytes // MIB} MiB**",
        f"≤ {L.max_key_chars} chars",
        L.tenant_pattern.strip("^$"),
    ],
)
def test_the_guide_states_each_bound(text: str) -> None:
    assert text in DOC


def test_the_guide_states_the_key_layout_the_sdk_writes() -> None:
    assert face_key("acme", "ab" * 32, "image/png") == f"tenants/acme/inputs/{'ab' * 32}.png"
    assert "`tenants/<tenant_id>/inputs/<sha256>.<ext>`" in DOC
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "tenants/<tenant>/inputs/<sha256>.<ext>" in readme
    assert "docs/PUBLISHING.md" in readme
