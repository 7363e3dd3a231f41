"""qwen-f2p without weights: load failures, error mapping, helpers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from PIL import Image

from inference_consumer.engines import (
    EngineConfig,
    EngineError,
    EngineInputError,
    EngineLoadError,
    EngineRequest,
    EngineTransientError,
    GenerationParams,
    ModelInfo,
    create_engine,
)

torch = pytest.importorskip("torch")

from inference_consumer.engines.lora import (  # noqa: E402
    lightning_steps_from_name,
    resolve_weight_file,
)
from inference_consumer.engines.qwen import QwenF2PEngine  # noqa: E402

FACE = Image.new("RGB", (64, 64), (120, 90, 80))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 (also in the already-imported hub constants) and no internet sockets."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"network access attempted: {address!r}")

    original = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse(self, address)
        original(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


def test_missing_local_model_path_is_a_clear_load_error(offline: None, tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EngineLoadError, match="no such local directory") as caught:
        create_engine(EngineConfig(name="qwen-f2p", model_path=str(missing)))
    assert str(missing) in str(caught.value)
    assert isinstance(caught.value, EngineError)


def test_empty_model_directory_is_a_load_error(offline: None, tmp_path) -> None:
    with pytest.raises(EngineLoadError, match=r"model_index\.json"):
        create_engine(EngineConfig(name="qwen-f2p", model_path=str(tmp_path), lora_path=""))


def test_uncached_hub_id_offline_is_a_load_error(offline: None) -> None:
    with pytest.raises(EngineLoadError, match="f2p-test-no-such-org/no-such-model"):
        create_engine(
            EngineConfig(
                name="qwen-f2p", model_path="f2p-test-no-such-org/no-such-model", lora_path=""
            )
        )


def test_an_uncached_lora_fails_before_the_base_weights_are_read(offline: None) -> None:
    with pytest.raises(EngineLoadError, match="DiffSynth-Studio/Qwen-Image-Edit-F2P"):
        create_engine(EngineConfig(name="qwen-f2p", model_path="f2p-test-no-such-org/model"))


def test_a_local_file_needs_no_weight_name(tmp_path) -> None:
    file = tmp_path / "f2p.safetensors"
    file.write_bytes(b"x")
    assert resolve_weight_file(str(file), None, adapter="f2p") == str(file)
    with pytest.raises(EngineLoadError, match="is a file"):
        resolve_weight_file(str(file), "other.safetensors", adapter="f2p")


def test_a_directory_needs_an_explicit_weight_name(tmp_path) -> None:
    """Issue 9 item 2: with two files the loaded one must not depend on the listing order."""
    for name in ("model.safetensors", "edit_0928_lora_step40000.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "lightning.safetensors").write_bytes(b"x")
    with pytest.raises(EngineLoadError) as caught:
        resolve_weight_file(str(tmp_path), None, adapter="f2p")
    message = str(caught.value)
    for name in ("model.safetensors", "edit_0928_lora_step40000.safetensors", "sub/lightning"):
        assert name in message
    chosen = resolve_weight_file(
        str(tmp_path), "edit_0928_lora_step40000.safetensors", adapter="f2p"
    )
    assert chosen == str(tmp_path / "edit_0928_lora_step40000.safetensors")
    nested = resolve_weight_file(str(tmp_path), "sub/lightning.safetensors", adapter="lightning")
    assert nested == str(tmp_path / "sub" / "lightning.safetensors")
    for bad in ("../escape.safetensors", "/etc/passwd", "missing.safetensors"):
        with pytest.raises(EngineLoadError):
            resolve_weight_file(str(tmp_path), bad, adapter="f2p")


def test_a_hub_repo_needs_a_file_unless_it_is_known(offline: None) -> None:
    with pytest.raises(EngineLoadError, match="name the weight file"):
        resolve_weight_file("lightx2v/Qwen-Image-Lightning", None, adapter="lightning")
    with pytest.raises(EngineLoadError, match="already names a file"):
        resolve_weight_file("owner/repo/x.safetensors", "y.safetensors", adapter="f2p")
    with pytest.raises(EngineLoadError, match=r"not a \.safetensors"):
        resolve_weight_file("owner/repo", "weights.bin", adapter="f2p")
    # Offline and not cached: a clear load error naming the file, no network attempt.
    with pytest.raises(EngineLoadError, match=r"model\.safetensors"):
        resolve_weight_file("DiffSynth-Studio/Qwen-Image-Edit-F2P", None, adapter="f2p")


def test_lightning_steps_from_the_file_name() -> None:
    assert lightning_steps_from_name("Qwen-Image-Edit-Lightning-8steps-V1.0-bf16.safetensors") == 8
    assert lightning_steps_from_name("a/b/Qwen-Image-Edit-Lightning-4steps-V1.0.safetensors") == 4
    assert lightning_steps_from_name("lightning.safetensors") is None


class FakePipeline:
    """Stands in for the diffusers pipeline: records calls, raises or returns what it is told."""

    vae_scale_factor = 8

    def __init__(self, behaviour: object) -> None:
        self.behaviour = behaviour
        self.calls: list[dict] = []

    def __call__(self, **kwargs: object) -> object:
        self.calls.append(kwargs)
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour
        return self.behaviour(kwargs)  # type: ignore[operator]

    def maybe_free_model_hooks(self) -> None:
        self.calls.append({"freed": True})


def fake_engine(behaviour: object) -> tuple[QwenF2PEngine, FakePipeline]:
    pipe = FakePipeline(behaviour)
    pipe.scheduler = object()
    engine = QwenF2PEngine(pipe, model_info=ModelInfo("m", "r", "l"))  # type: ignore[arg-type]
    return engine, pipe


def request(request_id: str = "a", **changes: object) -> EngineRequest:
    values = {"seed": 3, "steps": 4, "true_cfg_scale": 1.0, "width": 64, "height": 32}
    values.update(changes)
    return EngineRequest(request_id, FACE, "prompt", "", GenerationParams(**values))


def blank_images(kwargs: dict) -> SimpleNamespace:
    size = (kwargs["width"], kwargs["height"])
    return SimpleNamespace(images=[Image.new("RGB", size) for _ in kwargs["prompt"]])


def test_out_of_memory_is_transient() -> None:
    engine, _ = fake_engine(torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(EngineTransientError, match="out of memory"):
        engine.generate([request()])


def test_other_pipeline_failures_are_engine_errors() -> None:
    engine, pipe = fake_engine(RuntimeError("boom"))
    with pytest.raises(EngineError, match="boom") as caught:
        engine.generate([request()])
    assert not isinstance(caught.value, EngineTransientError | EngineInputError)
    assert pipe.calls[-1] == {"freed": True}  # cache-hook state reset after an aborted call


def test_wrong_output_shape_is_an_engine_error() -> None:
    engine, _ = fake_engine(lambda kwargs: SimpleNamespace(images=[Image.new("RGB", (8, 8))]))
    with pytest.raises(EngineError, match="expected 1 images"):
        engine.generate([request()])


def test_pipeline_call_arguments() -> None:
    engine, pipe = fake_engine(blank_images)
    outputs = engine.generate([request("a", num_images=2), request("b", seed=10, num_images=2)])
    assert [len(o.images) for o in outputs] == [2, 2]
    (call,) = pipe.calls
    assert call["prompt"] == ["prompt"] * 4
    assert call["negative_prompt"] is None  # no CFG: no negative prompt, no warning upstream
    assert call["num_images_per_prompt"] == 1
    assert call["condition_area"] == 1024 * 1024  # diffusers' default for qwen-f2p
    assert call["output_type"] == "pil"
    seeds = [g.initial_seed() for g in call["generator"]]
    assert seeds == [3, 4, 10, 11]  # image j of a request uses seed + j

    engine.generate([request(true_cfg_scale=4.0)])
    assert pipe.calls[-1]["negative_prompt"] == [" "]  # empty negative prompt still enables CFG
    assert pipe.calls[-1]["true_cfg_scale"] == 4.0


def test_large_batches_are_chunked_to_max_batch_size() -> None:
    engine, pipe = fake_engine(blank_images)
    engine.max_batch_size = 2
    outputs = engine.generate([request(f"r{i}", seed=i) for i in range(5)])
    assert [o.request_id for o in outputs] == [f"r{i}" for i in range(5)]
    assert [len(call["prompt"]) for call in pipe.calls] == [2, 2, 1]
