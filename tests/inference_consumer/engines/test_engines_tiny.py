"""The tiny engine: the real QwenImageEditPipeline code path on random weights, offline, CPU."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from inference_consumer.engines import (
    EngineConfig,
    EngineError,
    EngineInputError,
    EngineRequest,
    GenerationParams,
    create_engine,
)

torch = pytest.importorskip("torch")

from inference_consumer.engines import pipeline as qwen  # noqa: E402
from inference_consumer.engines.qwen import QwenF2PEngine  # noqa: E402
from inference_consumer.engines.tiny import (  # noqa: E402
    TINY_CONDITION_AREA,
    TinyEngine,
    build_tokenizer,
    tiny_artifacts,
)

RED = Image.new("RGB", (100, 120), (220, 20, 20))
BLUE = Image.new("RGB", (90, 90), (20, 20, 220))
WIDE = Image.new("RGB", (200, 100), (20, 200, 20))


@pytest.fixture(autouse=True, scope="module")
def no_network() -> Iterator[None]:
    """Any attempt to open an internet socket fails the test (the tiny path is offline)."""
    original = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address!r}")
        original(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]
    yield
    socket.socket.connect = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def engine() -> TinyEngine:
    built = create_engine(EngineConfig(name="tiny", max_batch_size=4))
    assert isinstance(built, TinyEngine)
    return built


def params(seed: int = 1, **changes: float) -> GenerationParams:
    values = {"seed": seed, "steps": 2, "true_cfg_scale": 1.0, "width": 64, "height": 64}
    values.update(changes)
    return GenerationParams(**values)


def request(request_id: str, face: Image.Image, prompt: str, p: GenerationParams) -> EngineRequest:
    return EngineRequest(request_id, face, prompt, "blurry, low quality", p)


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_engine_identity_and_limits(engine: TinyEngine) -> None:
    assert engine.name == "tiny"
    assert engine.max_batch_size == 4
    assert engine.size_multiple == 16  # same 8x VAE and 2x2 packing as production
    assert engine.condition_area == TINY_CONDITION_AREA
    assert engine.model_info.name == "tiny-random-qwen-image-edit"
    assert engine.model_info.lora == "tiny-random-f2p"
    assert type(engine.pipeline).__name__ == "F2PQwenImageEditPipeline"


def test_tokenizer_matches_the_pipeline_template(engine: TinyEngine) -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()  # deterministic
    template = engine.pipeline.prompt_template_encode
    prefix = template.split("<|vision_start|>")[0]
    # The pipeline drops this many leading hidden states: the system prompt, as with Qwen's own.
    assert len(tokenizer(prefix)["input_ids"]) == engine.pipeline.prompt_template_encode_start_idx
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"):
        assert len(tokenizer(token)["input_ids"]) == 1


def test_batch_of_two_returns_exact_sizes_in_order(engine: TinyEngine) -> None:
    batch = [
        request("a", RED, "a woman in a red dress", params(seed=1)),
        request("b", BLUE, "a man outdoors, smiling", params(seed=2)),
    ]
    outputs = engine.generate(batch)
    assert [o.request_id for o in outputs] == ["a", "b"]
    for output in outputs:
        assert [(im.size, im.mode) for im in output.images] == [((64, 64), "RGB")]
    assert not np.array_equal(array(outputs[0].images[0]), array(outputs[1].images[0]))


def test_same_seed_gives_identical_images(engine: TinyEngine) -> None:
    r = request("a", RED, "a woman in a red dress", params(seed=5))
    first = engine.generate([r])[0].images[0]
    again = engine.generate([r])[0].images[0]
    assert first.tobytes() == again.tobytes()
    other = engine.generate([request("a", RED, r.prompt, params(seed=6))])[0].images[0]
    assert first.tobytes() != other.tobytes()


def test_images_depend_on_their_own_request_only(engine: TinyEngine) -> None:
    """Batched with num_images=2, each request's images match the request run alone.

    Upstream's own num_images_per_prompt tiling would pair request a's second image with
    request b's face; the engine repeats requests instead.
    """
    a = request("a", RED, "a woman in a red dress", params(seed=1, num_images=2))
    b = request("b", BLUE, "a man outdoors, smiling", params(seed=2, num_images=2))
    together = engine.generate([a, b])
    alone = [engine.generate([a])[0], engine.generate([b])[0]]
    for batched, single in zip(together, alone, strict=True):
        assert len(batched.images) == 2
        for x, y in zip(batched.images, single.images, strict=True):
            diff = np.abs(array(x) - array(y))
            assert diff.max() <= 2 and diff.mean() < 0.05  # batch padding: rounding noise only
    assert not np.array_equal(array(alone[0].images[0]), array(alone[0].images[1]))


def test_mixed_sizes_are_split_into_groups(engine: TinyEngine) -> None:
    batch = [
        request("a", RED, "red", params(seed=1)),
        request("b", RED, "red", params(seed=2, width=128, height=64)),
        request("c", BLUE, "blue", params(seed=3)),
    ]
    calls: list[int] = []
    pipe = engine.pipeline
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["hidden_states"].shape[0]),
        with_kwargs=True,
    )
    try:
        outputs = engine.generate(batch)
    finally:
        hook.remove()
    assert [o.images[0].size for o in outputs] == [(64, 64), (128, 64), (64, 64)]
    assert sorted(calls) == [1, 1, 2, 2]  # 2 steps x (group of a+c, group of b)


def record_condition_sizes(engine: TinyEngine, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record (height, width) of every condition image the VAE encodes."""
    sizes: list[tuple] = []
    vae = engine.pipeline.vae
    original = vae.encode

    def encode(x: torch.Tensor, *args: object, **kwargs: object) -> object:
        sizes.append(tuple(x.shape[-2:]))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(vae, "encode", encode)
    return sizes


def test_condition_area_is_honoured(engine: TinyEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = record_condition_sizes(engine, monkeypatch)
    engine.generate([request("a", WIDE, "green", params())])
    # 2:1 face at 128*128 pixels: calculate_dimensions gives 192x96 (area 18432 ~ 128**2).
    assert sizes == [(96, 192)]
    assert qwen.condition_size(WIDE.size, TINY_CONDITION_AREA) == (192, 96)
    assert qwen._condition_area.get() is None  # the per-call area does not outlive the call

    larger = create_engine(EngineConfig(name="tiny", condition_area=256 * 256))
    sizes = record_condition_sizes(larger, monkeypatch)
    larger.generate([request("a", WIDE, "green", params())])
    assert sizes == [(192, 352)]
    assert 0.9 < 192 * 352 / (256 * 256) < 1.1


def test_default_area_is_untouched_for_plain_pipelines() -> None:
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as upstream

    assert upstream.calculate_dimensions(1024 * 1024, 1.0) == (1024, 1024, None)
    assert qwen._calculate_dimensions(1024 * 1024, 1.0) == (1024, 1024, None)
    assert upstream.calculate_dimensions.__module__ == upstream.__name__


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"width": 72}, "params.width"),
        ({"height": 8}, "params.height"),
        ({"width": 2048}, "params.width"),
    ],
)
def test_invalid_sizes_are_input_errors(engine: TinyEngine, changes: dict, field: str) -> None:
    with pytest.raises(EngineInputError, match=r"16|maximum") as caught:
        engine.generate([request("a", RED, "red", params(**changes))])
    assert caught.value.field == field
    assert caught.value.code == "UNSUPPORTED_SIZE"


def test_degenerate_face_is_an_input_error(engine: TinyEngine) -> None:
    sliver = Image.new("RGB", (400, 2))
    with pytest.raises(EngineInputError) as caught:
        engine.generate([request("a", sliver, "red", params())])
    assert caught.value.code == "INVALID_FACE"


def test_lora_scale_and_cfg_change_the_output(engine: TinyEngine) -> None:
    base = engine.generate([request("a", RED, "red", params())])[0].images[0]
    no_lora = engine.generate([request("a", RED, "red", params(lora_scale=0.0))])[0].images[0]
    back = engine.generate([request("a", RED, "red", params())])[0].images[0]
    cfg = engine.generate([request("a", RED, "red", params(true_cfg_scale=4.0))])[0].images[0]
    assert base.tobytes() != no_lora.tobytes()
    assert base.tobytes() == back.tobytes()
    assert base.tobytes() != cfg.tobytes()
    assert cfg.size == (64, 64)


def test_lightning_adapter_and_no_lora() -> None:
    both = create_engine(EngineConfig(name="tiny", lightning_lora_path="tiny"))
    assert both.model_info.lora == "tiny-random-f2p+tiny-random-lightning"
    assert both.pipeline.get_active_adapters() == ["f2p", "lightning"]
    out = both.generate([request("a", RED, "red", params(lora_scale=0.5, num_images=2))])
    assert [im.size for im in out[0].images] == [(64, 64), (64, 64)]
    plain = create_engine(EngineConfig(name="tiny", lora_path=""))
    assert plain.model_info.lora is None
    assert plain.generate([request("a", RED, "red", params())])[0].images[0].size == (64, 64)


def test_qwen_engine_loads_a_local_model_directory() -> None:
    """The production loader on a local directory: from_pretrained + load_lora_weights."""
    artifacts = tiny_artifacts(0)
    config = EngineConfig(
        name="qwen-f2p",
        dtype="float32",
        model_path=artifacts.model_dir,
        lora_path=f"{artifacts.lora_dir}/f2p_tiny_lora.safetensors",
        condition_area=TINY_CONDITION_AREA,
    )
    engine = create_engine(config)
    assert isinstance(engine, QwenF2PEngine)
    assert engine.name == "qwen-f2p"
    assert engine.model_info.revision == "local"
    assert engine.model_info.lora.endswith("f2p-lora/f2p_tiny_lora.safetensors")
    out = engine.generate([request("a", RED, "red", params())])
    assert out[0].images[0].size == (64, 64)


def test_warmup_and_close() -> None:
    engine = create_engine(EngineConfig(name="tiny"))
    engine.warmup()
    assert engine.busy_seconds > 0
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.generate([request("a", RED, "red", params())])
