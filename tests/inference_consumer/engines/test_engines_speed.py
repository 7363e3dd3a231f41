"""Presets, cancellation and speed settings on the tiny engine: what runs is what is counted.

Evaluations reported per image are checked against the transformer blocks that actually ran;
the cache hook never makes an image depend on its batch mates; attention backends that cannot
take a padding mask get equal-length batches; compile settles after warm-up (dynamo counters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from inference_consumer.engines import (
    EngineConfig,
    EngineInterrupted,
    EngineRequest,
    GenerationParams,
    create_engine,
)

torch = pytest.importorskip("torch")

from inference_consumer.engines.tiny import TinyEngine  # noqa: E402

RED = Image.new("RGB", (100, 120), (220, 20, 20))
BLUE = Image.new("RGB", (90, 90), (20, 20, 220))
SHORT, LONG = "a man", "a woman in a red dress, smiling, standing outdoors in studio light"


def tiny(**settings: object) -> TinyEngine:
    engine = create_engine(EngineConfig(name="tiny", max_batch_size=4, **settings))
    assert isinstance(engine, TinyEngine)
    return engine


def request(request_id: str, face: Image.Image, prompt: str, **params: object) -> EngineRequest:
    values: dict = {"seed": 1, "steps": 2, "true_cfg_scale": 1.0, "width": 64, "height": 64}
    values.update(params)
    return EngineRequest(request_id, face, prompt, "blurry", GenerationParams(**values))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def fastest() -> TinyEngine:
    """4-step Lightning with the TaylorSeer hook; QUALITY is served too."""
    return tiny(lightning_lora_path="x", lightning_steps=4, cache="taylorseer")


class Counter:
    """Counts transformer calls and the calls in which block 0 really computed."""

    def __init__(self, engine: TinyEngine) -> None:
        transformer = engine.pipeline.transformer
        self.calls = self.computed = 0
        self._hooks = [
            transformer.register_forward_pre_hook(lambda *_: self._call()),
            transformer.transformer_blocks[0].attn.to_q.register_forward_pre_hook(
                lambda *_: self._compute()
            ),
        ]

    def _call(self) -> None:
        self.calls += 1

    def _compute(self) -> None:
        self.computed += 1

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@pytest.fixture
def counted(fastest: TinyEngine) -> Iterator[Counter]:
    counter = Counter(fastest)
    yield counter
    counter.remove()


@pytest.mark.parametrize(
    ("params", "preset", "calls", "evaluations"),
    [
        ({"preset": "fastest"}, "FASTEST", 4, 3),  # 4 steps, step 2 predicted by the hook
        ({}, "FASTEST", 4, 3),  # the worker's default (its Lightning preset)
        ({"preset": "quality", "steps": 3, "true_cfg_scale": 4.0}, "QUALITY", 6, 6),
        ({"preset": "quality", "steps": 3}, "QUALITY", 3, 3),
    ],
)
def test_evaluations_per_image_are_what_ran(
    fastest: TinyEngine, counted: Counter, params: dict, preset: str, calls: int, evaluations: int
) -> None:
    (output,) = fastest.generate([request("a", RED, SHORT, num_images=2, **params)])
    assert (output.preset, output.transformer_evaluations) == (preset, evaluations)
    assert (counted.calls, counted.computed) == (calls, evaluations)  # one call serves 2 images
    assert len(output.images) == 2


def test_the_cache_hook_keeps_images_independent_of_batch_mates(fastest: TinyEngine) -> None:
    a = request("a", RED, LONG, seed=3, preset="fastest")
    b = request("b", BLUE, SHORT, seed=4, preset="fastest")
    alone = fastest.generate([a])[0].images[0]
    together = fastest.generate([b, a])[1].images[0]
    diff = np.abs(pixels(alone) - pixels(together))
    # Stated tolerance: rounding of padded batch maths only, as without the hook.
    assert diff.max() <= 2 and diff.mean() < 0.05
    assert alone.tobytes() == fastest.generate([a])[0].images[0].tobytes()  # state was reset


def test_a_lone_cancelled_request_stops_between_steps(fastest: TinyEngine) -> None:
    polls: list[int] = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) >= 3  # before the start, after step 1: no; after step 2: yes

    plain = request("a", RED, SHORT, preset="fastest")
    with pytest.raises(EngineInterrupted) as caught:
        fastest.generate([dataclasses.replace(plain, cancelled=cancelled)])
    assert caught.value.steps_executed == 2
    # The hook state of the aborted call does not leak into the next one.
    assert fastest.generate([plain])[0].images[0].tobytes() == (
        tiny(lightning_lora_path="x", lightning_steps=4, cache="taylorseer")
        .generate([plain])[0]
        .images[0]
        .tobytes()
    )


def test_a_cancelled_request_does_not_stop_its_batch(fastest: TinyEngine) -> None:
    gone = dataclasses.replace(request("a", RED, SHORT), cancelled=lambda: True)
    outputs = fastest.generate([gone, request("b", BLUE, LONG, seed=2)])
    assert [(o.request_id, o.steps_executed, o.transformer_evaluations) for o in outputs] == [
        ("a", 4, 3),
        ("b", 4, 3),
    ]


def transformer_batches(engine: TinyEngine) -> tuple[list[int], object]:
    sizes: list[int] = []
    hook = engine.pipeline.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    return sizes, hook


def test_backends_without_masks_get_equal_length_batches() -> None:
    """Issue 9 item 5: torch's flash kernel raises on the padding mask of mixed prompts."""
    sdpa, flash = tiny(), tiny(attention_backend="_native_flash")
    batch = [
        request("a", RED, SHORT, seed=1),
        request("b", RED, LONG, seed=2),
        request("c", RED, SHORT, seed=3),
    ]
    sizes, hook = transformer_batches(flash)
    try:
        outputs = flash.generate(batch)
    finally:
        hook.remove()
    assert sorted(sizes) == [1, 1, 2, 2]  # a+c together, b alone, 2 steps each
    for mine, reference in zip(outputs, sdpa.generate(batch), strict=True):
        diff = np.abs(pixels(mine.images[0]) - pixels(reference.images[0]))
        assert diff.max() <= 2, mine.request_id
    assert flash.batch_key(batch[0].params, SHORT) != flash.batch_key(batch[1].params, LONG)
    assert sdpa.batch_key(batch[0].params, SHORT) == sdpa.batch_key(batch[1].params, LONG)
    with pytest.raises(Exception, match="attn_mask"):  # what grouping avoids
        flash.pipeline(
            image=[RED, RED], prompt=[SHORT, LONG], width=64, height=64, num_inference_steps=2,
            condition_area=128 * 128,
        )  # fmt: skip


def test_a_cache_hook_enabled_after_a_call_still_works() -> None:
    """diffusers 0.39 caches the hook registry's children at the first call ("No context is
    set" afterwards); the engine's helper drops that cache."""
    from inference_consumer.engines import acceleration

    engine = tiny()
    engine.generate([request("a", RED, SHORT)])
    hooks = acceleration.enable_cache_hook(engine.pipeline.transformer, "taylorseer")
    engine._cache_hooks = hooks
    assert engine.generate([request("a", RED, SHORT, steps=3)])[0].images[0].size == (64, 64)


def test_int8_weight_only_quantization_spares_the_lora_layers() -> None:
    pytest.importorskip("torchao")
    engine = tiny(quantization="int8wo")
    layer = engine.pipeline.transformer.transformer_blocks[0].attn.to_q
    assert type(layer.base_layer.weight).__name__ == "Int8Tensor"
    assert type(layer.lora_A["f2p"].weight) is torch.nn.Parameter
    assert type(layer.lora_A["f2p"].weight.data) is torch.Tensor
    (output,) = engine.generate([request("a", RED, SHORT)])
    assert output.images[0].size == (64, 64)


@pytest.mark.slow
def test_compile_makes_no_graphs_after_warm_up() -> None:
    """Issue 9 item 4: the regional compile settles; dynamo's own counters are the witness.

    Backend ``eager``: graph capture and guards (which decide recompiles) are dynamo's and do
    not depend on the backend; inductor would only add minutes of C++ compilation on CPU.
    """
    from torch._dynamo.utils import counters

    engine = tiny(
        lightning_lora_path="x", compile=True, compile_backend="eager",
        warmup_sizes=((64, 64), (128, 64)),
    )  # fmt: skip
    before = counters["stats"]["unique_graphs"]
    engine.warmup()
    warmed = counters["stats"]["unique_graphs"]
    assert warmed > before  # the warm-up compiled the graphs
    mix = [
        [request("a", RED, SHORT)],
        [request("b", RED, LONG, seed=2), request("c", BLUE, SHORT, seed=3)],
        [request("d", RED, SHORT, lora_scale=0.5, width=128, height=64)],
        [request(f"e{i}", BLUE, LONG[: 10 * i + 5], lora_scale=0.7) for i in range(3)],
        [request("f", RED, "x", width=64, height=128, preset="quality", true_cfg_scale=4.0)],
        [request("g", RED, LONG, preset="quality", lora_scale=0.2, steps=3)],
    ]
    for batch in mix + mix:
        engine.generate(batch)
    assert counters["stats"]["unique_graphs"] == warmed
    assert engine.recompiles == 0
    engine.generate([request("h", RED, SHORT, width=256, height=64)])  # a new aspect ratio
    assert engine.recompiles == counters["stats"]["unique_graphs"] - warmed
