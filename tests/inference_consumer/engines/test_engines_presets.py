"""Speed presets: which preset a request gets, the steps/CFG policy, evaluations per image."""

from __future__ import annotations

import pytest

from inference_consumer.engines import EngineInputError
from inference_consumer.engines.presets import (
    FASTEST_CACHE,
    NEVER_PREDICT,
    CacheSchedule,
    PresetTable,
    table_for,
)


def test_a_worker_serves_quality_and_the_preset_of_its_lightning_file() -> None:
    assert table_for(lightning_steps=None, default=None).available == ("QUALITY",)
    eight = table_for(lightning_steps=8, default=None)
    assert (eight.available, eight.default) == (("QUALITY", "FAST"), "FAST")
    four = table_for(lightning_steps=4, default="quality")
    assert (four.available, four.default) == (("QUALITY", "FASTEST"), "QUALITY")
    with pytest.raises(ValueError, match="FASTEST is not served"):
        table_for(lightning_steps=8, default="fastest")
    with pytest.raises(ValueError, match="4 or 8"):
        table_for(lightning_steps=6, default=None)


def test_quality_honours_the_request() -> None:
    plan = PresetTable().plan(None, 28, 4.0)
    assert (plan.preset, plan.steps, plan.true_cfg_scale, plan.lightning) == (
        "QUALITY",
        28,
        4,
        False,
    )
    assert plan.note is None
    assert plan.evaluations() == 56  # 28 steps x (conditional + unconditional)
    assert PresetTable().plan("quality", 50, 4.0).evaluations() == 100  # the model card
    assert PresetTable().plan("Quality", 20, 1.0).evaluations() == 20  # CFG 1: one pass a step


@pytest.mark.parametrize(
    ("steps", "cfg", "note"),
    [
        (8, 1.0, None),
        (28, 4.0, "preset FAST: steps 28->8, true_cfg_scale 4->1"),
        (8, 2.5, "preset FAST: true_cfg_scale 2.5->1"),
        (4, 1.0, "preset FAST: steps 4->8"),
    ],
)
def test_lightning_owns_steps_and_cfg_and_says_so(steps: int, cfg: float, note: str | None) -> None:
    plan = table_for(lightning_steps=8, default=None).plan(None, steps, cfg)
    assert (plan.preset, plan.steps, plan.true_cfg_scale, plan.lightning) == ("FAST", 8, 1.0, True)
    assert plan.evaluations() == 8
    if note is None:
        assert plan.note is None
    else:
        assert plan.note is not None and plan.note.startswith(note)


def test_fastest_runs_four_steps_and_three_with_the_cache_hook() -> None:
    plain = table_for(lightning_steps=4, default=None).plan("FASTEST", 28, 4.0)
    assert (plain.steps, plain.cache, plain.evaluations()) == (4, None, 4)
    cached = table_for(lightning_steps=4, default=None, cache="taylorseer").plan("fastest", 4, 1.0)
    assert (cached.steps, cached.cache, cached.evaluations()) == (4, FASTEST_CACHE, 3)
    assert cached.evaluations(steps_executed=2) == 2  # a cancelled call: what actually ran
    # The hook is the fastest preset's alone: other presets keep every step.
    quality = table_for(lightning_steps=4, default=None, cache="taylorseer").plan("quality", 9, 1)
    assert (quality.cache, quality.evaluations()) == (None, 9)


def test_quality_needs_two_steps() -> None:
    """One step under Qwen-Image-Edit's shift_terminal schedule divides 0 by 0."""
    with pytest.raises(EngineInputError) as caught:
        PresetTable().plan("quality", 1, 1.0)
    assert (caught.value.field, caught.value.code) == ("params.steps", "INVALID_PARAMETER")
    assert table_for(lightning_steps=4, default=None).plan("fastest", 1, 1.0).steps == 4


def test_cache_schedules_follow_diffusers_taylorseer() -> None:
    assert [FASTEST_CACHE.computes(step) for step in range(8)] == [
        True, True, False, True, False, True, False, True,
    ]  # fmt: skip
    assert CacheSchedule(before=3, interval=5).computed_steps(10) == 5  # diffusers' defaults
    assert NEVER_PREDICT.computed_steps(1000) == 1000


@pytest.mark.parametrize(
    ("preset", "code"),
    [("FASTEST", "PRESET_UNAVAILABLE"), ("turbo", "INVALID_PARAMETER"), ("", "INVALID_PARAMETER")],
)
def test_presets_a_worker_cannot_serve_fail_with_a_code(preset: str, code: str) -> None:
    table = table_for(lightning_steps=8, default=None)
    with pytest.raises(EngineInputError) as caught:
        table.plan(preset, 8, 1.0)
    assert (caught.value.field, caught.value.code) == ("params.preset", code)
    assert table.key(preset, 8, 1.0)[0] == "invalid-preset"  # batching never raises


def test_enum_values_are_preset_names() -> None:
    import enum

    class Preset(enum.Enum):  # as an Avro enum may reach the engine
        FAST = "FAST"

    plan = table_for(lightning_steps=8, default="quality").plan(Preset.FAST, 8, 1.0)  # type: ignore[arg-type]
    assert plan.preset == "FAST"


def test_keys_group_requests_by_what_runs() -> None:
    table = table_for(lightning_steps=8, default=None)
    assert table.key(None, 28, 4.0) == table.key("fast", 8, 1.0) == ("FAST", 8, 1.0)
    assert table.key("quality", 8, 1.0) != table.key("fast", 8, 1.0)
