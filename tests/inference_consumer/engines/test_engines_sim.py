"""The simulated GPU: exact outputs, determinism, and the documented latency model."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
from PIL import Image

from inference_consumer.engines import (
    EngineConfig,
    EngineInputError,
    EngineInterrupted,
    EngineRequest,
    GenerationParams,
    create_engine,
)
from inference_consumer.engines.sim import SimEngine, expected_service_time

FACE = Image.new("RGB", (80, 96), (200, 150, 120))


def request(
    request_id: str = "r1",
    *,
    prompt: str = "a person in a red coat",
    face: Image.Image = FACE,
    **params: object,
) -> EngineRequest:
    values = {"seed": 7, "steps": 8, "true_cfg_scale": 1.0, "width": 64, "height": 48}
    values.update(params)
    return EngineRequest(request_id, face, prompt, "blurry", GenerationParams(**values))


def pixels(image: Image.Image) -> bytes:
    return image.tobytes()


def test_outputs_have_exact_sizes_and_counts_in_batch_order() -> None:
    engine = SimEngine(time_scale=0)
    batch = [request("a", num_images=3), request("b", seed=8, width=128, height=32)]
    outputs = engine.generate(batch)
    assert [o.request_id for o in outputs] == ["a", "b"]
    assert [len(o.images) for o in outputs] == [3, 1]
    assert {(im.size, im.mode) for im in outputs[0].images} == {((64, 48), "RGB")}
    assert (outputs[1].images[0].size, outputs[1].images[0].mode) == ((128, 32), "RGB")
    assert engine.generate([]) == []


def test_images_are_deterministic_in_seed_and_prompt() -> None:
    engine = SimEngine(time_scale=0)
    first = engine.generate([request(num_images=2)])[0].images
    again = SimEngine(time_scale=0, seed=99).generate([request(num_images=2)])[0].images
    assert [pixels(im) for im in first] == [pixels(im) for im in again]
    assert pixels(first[0]) != pixels(first[1])  # image j uses seed + j
    other_seed = engine.generate([request(seed=8)])[0].images[0]
    other_prompt = engine.generate([request(prompt="a person in a blue coat")])[0].images[0]
    assert pixels(other_seed) != pixels(first[0])
    assert pixels(other_prompt) != pixels(first[0])
    assert pixels(other_seed) == pixels(first[1])  # seed 8 image 0 == seed 7 image 1


def test_face_mode_is_normalised() -> None:
    face = Image.new("RGBA", (50, 50), (10, 20, 30, 128))
    image = SimEngine(time_scale=0).generate([request(face=face)])[0].images[0]
    assert image.mode == "RGB"


def test_service_time_follows_the_latency_model() -> None:
    engine = SimEngine(time_scale=1.0)
    base = engine.service_time([request(steps=8, width=1024, height=1024)])
    # Same request identity, so the same jitter: the factors are exact.
    assert engine.service_time([request(steps=16, width=1024, height=1024)]) == pytest.approx(
        2 * base
    )
    assert engine.service_time(
        [request(steps=8, true_cfg_scale=4.0, width=1024, height=1024)]
    ) == pytest.approx(2 * base)
    assert engine.service_time([request(steps=8, width=512, height=512)]) == pytest.approx(base / 4)
    assert engine.service_time(
        [request(steps=8, width=1024, height=1024, num_images=4)]
    ) == pytest.approx(base * 4**0.85)
    # Jitter is lognormal with sigma 0.05: within 4 sigma of the jitter-free model.
    model = expected_service_time(steps=8, true_cfg_scale=1.0, width=1024, height=1024)
    assert model == pytest.approx(0.3 * 8)
    assert math.exp(-0.2) < base / model < math.exp(0.2)
    assert engine.service_time([request(steps=8, width=1024, height=1024)]) == base  # pure


def test_batching_is_sublinear_and_jitter_is_seeded() -> None:
    engine = SimEngine(time_scale=1.0)
    batch = [request(f"r{i}", seed=i, width=1024, height=1024) for i in range(4)]
    single = expected_service_time(steps=8, true_cfg_scale=1.0, width=1024, height=1024)
    assert engine.service_time(batch) / single == pytest.approx(4**0.85, rel=0.25)
    ratios = {engine.service_time([r]) / single for r in batch}
    assert len(ratios) == 4  # different requests get different jitter
    assert SimEngine(seed=1).service_time(batch) != engine.service_time(batch)


def test_time_scale_zero_never_sleeps() -> None:
    slept: list[float] = []
    engine = SimEngine(time_scale=0, sleep=slept.append)
    batch = [request(f"r{i}", seed=i, steps=50, width=1024, height=1024) for i in range(4)]
    assert engine.service_time(batch) == 0
    start = time.perf_counter()
    outputs = engine.generate(batch)
    assert time.perf_counter() - start < 2.0
    assert slept == []
    assert len(outputs) == 4 and engine.calls == 1


def test_generate_sleeps_out_the_service_time_and_counts_busy_time() -> None:
    engine = SimEngine(time_scale=0.1)  # 8 steps at 256x128, 0.3 s/pass -> ~0.0075 s
    batch = [request(width=256, height=128)]
    expected = engine.service_time(batch)
    assert 0.005 < expected < 0.01
    engine.generate(batch)
    assert engine.busy_seconds >= expected
    slept: list[float] = []
    faked = SimEngine(time_scale=100, sleep=slept.append)
    faked.generate(batch)
    assert len(slept) == 8  # one slice per denoising step, so cancellation can stop between
    assert faked.service_time(batch) - 1.0 < sum(slept) <= faked.service_time(batch)
    assert max(slept) - min(slept) < 0.1  # equal slices (the first one pays the drawing)


def test_batch_key_groups_compatible_requests() -> None:
    engine = SimEngine()
    key = engine.batch_key(request(seed=1).params)
    assert engine.batch_key(request(seed=2, prompt="other").params) == key
    for change in (
        {"width": 128},
        {"height": 64},
        {"steps": 9},
        {"true_cfg_scale": 4.0},
        {"num_images": 2},
        {"lora_scale": 0.5},
        {"preset": "FAST"},
    ):
        assert engine.batch_key(request(**change).params) != key, change


def test_batch_key_groups_requests_clamped_to_the_same_preset() -> None:
    engine = create_engine(EngineConfig(name="sim", preset="fast", sim_time_scale=0))
    defaulted = engine.batch_key(request(steps=28, true_cfg_scale=4.0).params)
    assert engine.batch_key(request(steps=8, true_cfg_scale=1.0).params) == defaulted
    assert engine.batch_key(request(steps=8, preset="quality").params) != defaulted
    assert engine.batch_key(request(preset="turbo").params) != defaulted  # no raise


@pytest.mark.parametrize(
    ("preset", "steps", "cfg", "expected_preset", "evaluations"),
    [
        (None, 28, 4.0, "QUALITY", 56),
        ("quality", 50, 4.0, "QUALITY", 100),
        ("QUALITY", 8, 1.0, "QUALITY", 8),
        ("fast", 28, 4.0, "FAST", 8),
        ("fastest", 28, 4.0, "FASTEST", 4),
    ],
)
def test_presets_set_the_evaluations_and_the_service_time(
    preset: str | None, steps: int, cfg: float, expected_preset: str, evaluations: int
) -> None:
    engine = SimEngine(time_scale=1.0, sleep=lambda _: None, presets=create_engine(
        EngineConfig(name="sim")
    ).presets)  # fmt: skip
    batch = [request(preset=preset, steps=steps, true_cfg_scale=cfg, width=1024, height=1024)]
    (output,) = engine.generate(batch)
    assert (output.preset, output.transformer_evaluations) == (expected_preset, evaluations)
    assert output.steps_executed == (steps if expected_preset == "QUALITY" else evaluations)
    assert (output.note is None) == (expected_preset == "QUALITY")
    model = expected_service_time(steps=evaluations, true_cfg_scale=1.0, width=1024, height=1024)
    assert math.exp(-0.2) < engine.service_time(batch) / model < math.exp(0.2)


def test_fastest_with_the_cache_hook_counts_three_evaluations() -> None:
    engine = create_engine(EngineConfig(name="sim", cache="taylorseer", sim_time_scale=0))
    (output,) = engine.generate([request(preset="fastest")])
    assert (output.steps_executed, output.transformer_evaluations) == (4, 3)


def test_a_preset_the_worker_does_not_know_fails_with_a_code() -> None:
    with pytest.raises(EngineInputError) as caught:
        SimEngine(time_scale=0).generate([request(preset="FAST")])  # default table: QUALITY only
    assert (caught.value.field, caught.value.code) == ("params.preset", "PRESET_UNAVAILABLE")
    with pytest.raises(EngineInputError) as caught:
        SimEngine(time_scale=0).generate([request(preset="turbo")])
    assert (caught.value.field, caught.value.code) == ("params.preset", "INVALID_PARAMETER")


def test_a_lone_cancelled_request_stops_between_steps() -> None:
    polls: list[int] = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) >= 3  # false before the start and after step 1, true after step 2

    slept: list[float] = []
    engine = SimEngine(time_scale=1000, sleep=slept.append)  # ~0.9 s slices, never really slept
    lone = dataclasses.replace(request(steps=8), cancelled=cancelled)
    with pytest.raises(EngineInterrupted) as caught:
        engine.generate([lone])
    assert caught.value.steps_executed == 2
    assert len(slept) == 2  # the remaining six slices of service time were not spent


def test_a_cancelled_request_in_a_batch_does_not_stop_its_batch_mates() -> None:
    engine = SimEngine(time_scale=0)
    cancelled = dataclasses.replace(request("a"), cancelled=lambda: True)
    outputs = engine.generate([cancelled, request("b", seed=9)])
    assert [(o.request_id, o.steps_executed) for o in outputs] == [("a", 8), ("b", 8)]


def test_model_info_has_no_lora() -> None:
    assert SimEngine().model_info.lora is None


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"width": 72}, "params.width", "UNSUPPORTED_SIZE"),
        ({"height": 0}, "params.height", "UNSUPPORTED_SIZE"),
        ({"width": 4096}, "params.width", "UNSUPPORTED_SIZE"),
        ({"steps": 0}, "params.steps", "INVALID_PARAMETER"),
        ({"num_images": 0}, "params.num_images", "INVALID_PARAMETER"),
        ({"true_cfg_scale": float("nan")}, "params.true_cfg_scale", "INVALID_PARAMETER"),
    ],
)
def test_bad_shapes_are_input_errors(change: dict, field: str, code: str) -> None:
    with pytest.raises(EngineInputError) as caught:
        SimEngine(time_scale=0).generate([request(), request("bad", **change)])
    assert (caught.value.field, caught.value.code) == (field, code)


def test_drawing_is_cheap_at_full_size() -> None:
    engine = SimEngine(time_scale=0)
    batch = [request(width=1024, height=1024)]
    engine.generate(batch)
    start = time.perf_counter()
    for _ in range(10):
        engine.generate(batch)
    # Budget is ~20 ms; the bound is loose so a busy CI machine does not flake.
    assert (time.perf_counter() - start) / 10 < 0.1
