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

from inference_consumer.engines.qwen import QwenF2PEngine, split_weight_path  # noqa: E402

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
        create_engine(EngineConfig(name="qwen-f2p", model_path=str(tmp_path)))


def test_uncached_hub_id_offline_is_a_load_error(offline: None) -> None:
    with pytest.raises(EngineLoadError, match="f2p-test-no-such-org/no-such-model"):
        create_engine(
            EngineConfig(name="qwen-f2p", model_path="f2p-test-no-such-org/no-such-model")
        )


def test_split_weight_path() -> None:
    assert split_weight_path("owner/repo", None) == ("owner/repo", None)
    assert split_weight_path("owner/repo", "x.safetensors") == ("owner/repo", "x.safetensors")
    assert split_weight_path("owner/repo/x.safetensors", None) == ("owner/repo", "x.safetensors")
    assert split_weight_path("/loras/f2p/model.safetensors", None) == (
        "/loras/f2p",
        "model.safetensors",
    )


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


def fake_engine(behaviour: object) -> tuple[QwenF2PEngine, FakePipeline]:
    pipe = FakePipeline(behaviour)
    engine = QwenF2PEngine(pipe, model_info=ModelInfo("m", "r", "l"))  # type: ignore[arg-type]
    return engine, pipe


def request(request_id: str = "a", **changes: float) -> EngineRequest:
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
    engine, _ = fake_engine(RuntimeError("boom"))
    with pytest.raises(EngineError, match="boom") as caught:
        engine.generate([request()])
    assert not isinstance(caught.value, EngineTransientError | EngineInputError)


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
