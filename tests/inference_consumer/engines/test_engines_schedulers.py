"""Flow-matching schedules: Qwen-Image-Edit's own, and Lightning's whenever Lightning runs."""

from __future__ import annotations

import math
import warnings

import pytest
from PIL import Image

from inference_consumer.engines import EngineConfig, EngineRequest, GenerationParams, create_engine

torch = pytest.importorskip("torch")

from inference_consumer.engines.schedulers import (  # noqa: E402
    LIGHTNING_SCHEDULER_CONFIG,
    QWEN_IMAGE_EDIT_SCHEDULER_CONFIG,
    make_scheduler,
    pipeline_sigmas,
)
from inference_consumer.engines.tiny import TinyEngine  # noqa: E402

FACE = Image.new("RGB", (96, 96), (200, 120, 90))


def test_lightning_sigmas_at_1024_are_the_prescribed_ones() -> None:
    """Issue 9 item 1: [1, .9, .75, .5, 0]; the base schedule gives [1, .767, .456, .02, 0]."""
    lightning = pipeline_sigmas(make_scheduler(LIGHTNING_SCHEDULER_CONFIG), 4, 1024, 1024)
    assert lightning == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0], abs=1e-6)
    base = pipeline_sigmas(make_scheduler(QWEN_IMAGE_EDIT_SCHEDULER_CONFIG), 4, 1024, 1024)
    assert base == pytest.approx([1.0, 0.767, 0.456, 0.02, 0.0], abs=5e-4)
    # A constant shift of 3: the same sigmas at every size, 8 steps as well.
    assert pipeline_sigmas(make_scheduler(LIGHTNING_SCHEDULER_CONFIG), 4, 768, 1344) == lightning
    # Why QUALITY needs two steps (presets.MIN_QUALITY_STEPS): one step is 0/0 upstream.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "invalid value in divide"
        one = pipeline_sigmas(make_scheduler(QWEN_IMAGE_EDIT_SCHEDULER_CONFIG), 1, 1024, 1024)
    assert math.isnan(one[0])
    eight = pipeline_sigmas(make_scheduler(LIGHTNING_SCHEDULER_CONFIG), 8, 1024, 1024)
    expected = [3 * s / (1 + 2 * s) for s in (1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8)]
    assert eight == pytest.approx([*expected, 0.0], abs=1e-6)


@pytest.fixture(scope="module")
def engine() -> TinyEngine:
    built = create_engine(
        EngineConfig(name="tiny", lightning_lora_path="x", lightning_steps=4, preset="fastest")
    )
    assert isinstance(built, TinyEngine)
    return built


def test_tiny_uses_the_real_qwen_image_edit_schedule(engine: TinyEngine) -> None:
    config = engine.pipeline.scheduler.config
    assert {key: config[key] for key in QWEN_IMAGE_EDIT_SCHEDULER_CONFIG} == dict(
        QWEN_IMAGE_EDIT_SCHEDULER_CONFIG
    )


def timesteps_seen(engine: TinyEngine, **params: object) -> list[float]:
    """The sigmas the transformer was called with (timestep / 1000) for one request."""
    seen: list[float] = []
    hook = engine.pipeline.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(round(float(kwargs["timestep"][0]), 6)),
        with_kwargs=True,
    )
    values = {"seed": 1, "steps": 4, "true_cfg_scale": 1.0, "width": 64, "height": 64}
    values.update(params)
    try:
        engine.generate([EngineRequest("r", FACE, "a portrait", "", GenerationParams(**values))])
    finally:
        hook.remove()
    return seen


def test_lightning_runs_on_its_schedule_and_quality_on_the_base_one(engine: TinyEngine) -> None:
    assert timesteps_seen(engine) == pytest.approx([1.0, 0.9, 0.75, 0.5], abs=1e-6)
    base = pipeline_sigmas(make_scheduler(QWEN_IMAGE_EDIT_SCHEDULER_CONFIG), 4, 64, 64)
    assert timesteps_seen(engine, preset="quality") == pytest.approx(base[:-1], abs=1e-6)
    assert timesteps_seen(engine, preset="fastest") == pytest.approx(
        [1.0, 0.9, 0.75, 0.5], abs=1e-6
    )
