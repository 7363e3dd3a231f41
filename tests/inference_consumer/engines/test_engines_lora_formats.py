"""LoRA loading against the real key formats, on the tiny model saved in the hub layout.

Where loading should work (DiffSynth, diffusers, bare, ComfyUI, kohya, Lightning; F2P and
Lightning together) the loaded transformer equals a hand-merged reference; where it must not
(keys the model cannot take, broken pairs, wrong shapes, bad alphas, an adapter that did not
land) the engine refuses with an ``EngineLoadError`` naming the keys (issue 9, items 2 and 3).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import lora_file_formats as lff
import pytest

from inference_consumer.engines import EngineConfig, EngineLoadError, create_engine

torch = pytest.importorskip("torch")

from diffusers import QwenImageTransformer2DModel  # noqa: E402

from inference_consumer.engines import lora  # noqa: E402
from inference_consumer.engines.qwen import QwenF2PEngine  # noqa: E402
from inference_consumer.engines.tiny import TINY_CONDITION_AREA, tiny_artifacts  # noqa: E402

F2P_REPO = "DiffSynth-Studio/Qwen-Image-Edit-F2P"
LIGHTNING_REPO = "lightx2v/Qwen-Image-Lightning"
LIGHTNING_FILE = "Qwen-Image-Edit-Lightning-8steps-V1.0-bf16.safetensors"


@pytest.fixture(autouse=True, scope="module")
def no_network() -> Iterator[None]:
    """Any attempt to open an internet socket fails the test (everything here is local)."""
    original = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address!r}")
        original(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]
    yield
    socket.socket.connect = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def model_dir() -> str:
    return tiny_artifacts(0).model_dir


@pytest.fixture(scope="module")
def base_weights(model_dir: str) -> dict[str, torch.Tensor]:
    transformer = QwenImageTransformer2DModel.from_pretrained(model_dir, subfolder="transformer")
    return {k: v.detach().clone() for k, v in transformer.state_dict().items()}


@pytest.fixture(scope="module")
def shapes(model_dir: str) -> torch.nn.Module:
    return QwenImageTransformer2DModel.from_pretrained(model_dir, subfolder="transformer")


def engine_for(model_dir: str, f2p: str = "", lightning: str | None = None, **kw) -> QwenF2PEngine:
    config = EngineConfig(
        name="qwen-f2p",
        dtype="float32",
        model_path=model_dir,
        lora_path=f2p,
        lightning_lora_path=lightning,
        lightning_steps=8 if lightning else None,
        condition_area=TINY_CONDITION_AREA,
        **kw,
    )
    engine = create_engine(config)
    assert isinstance(engine, QwenF2PEngine)
    return engine


def effective_weights(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each LoRA-wrapped layer's weight as the forward pass applies it: W + sum(scale * B @ A)."""
    weights = {}
    for name, module in transformer.named_modules():
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict):
            weight = module.base_layer.weight.detach().clone()
            for adapter in module.active_adapters:
                weight += module.get_delta_weight(adapter)
            weights[f"{name}.weight"] = weight
    return weights


def transformer_output(transformer: torch.nn.Module) -> torch.Tensor:
    """The transformer on fixed random inputs (4x4 image tokens, 7 text tokens)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn((1, 16, 16), generator=generator)
    text = torch.randn((1, 7, 16), generator=generator)
    with torch.no_grad():
        return transformer(
            hidden_states=hidden,
            encoder_hidden_states=text,
            encoder_hidden_states_mask=torch.ones((1, 7), dtype=torch.long),
            timestep=torch.tensor([0.5]),
            img_shapes=[[(1, 4, 4)]],
            return_dict=False,
        )[0]


def assert_matches_reference(
    engine: QwenF2PEngine,
    model_dir: str,
    base: dict[str, torch.Tensor],
    adapters: list[tuple[list[lff.Layer], float]],
) -> None:
    """The loaded transformer equals the base with every update merged in by hand."""
    merged = lff.merged_weights(base, adapters)
    loaded = effective_weights(engine.pipeline.transformer)
    expected = {layer.module for layers, _ in adapters for layer in layers}
    assert {name.removesuffix(".weight") for name in loaded} == expected
    for name, weight in loaded.items():
        torch.testing.assert_close(weight, merged[name], rtol=1e-6, atol=1e-6, msg=name)
    reference = QwenImageTransformer2DModel.from_pretrained(model_dir, subfolder="transformer")
    reference.load_state_dict(merged)
    torch.testing.assert_close(
        transformer_output(engine.pipeline.transformer),
        transformer_output(reference),
        rtol=1e-5,
        atol=1e-5,
    )


# -- loading that must work -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", lff.FORMATS)
def test_every_format_loads_exactly(fmt: str, model_dir, base_weights, shapes, tmp_path) -> None:
    alpha = 1.0 if fmt in lff.WITH_ALPHA else None  # rank 4, alpha 1: scale 1/4, not 1
    layers = lff.random_layers(shapes, seed=11, alpha=alpha)
    file = lff.write(str(tmp_path / "lora.safetensors"), lff.state_dict(fmt, layers))
    engine = engine_for(model_dir, f2p=file)
    assert engine.pipeline.get_active_adapters() == ["f2p"]
    assert_matches_reference(engine, model_dir, base_weights, [(layers, 1.0)])


def test_layers_of_different_ranks_keep_their_own_scale(
    model_dir, base_weights, shapes, tmp_path
) -> None:
    """diffusers' own config takes the most common rank as every layer's alpha."""
    layers = lff.random_layers(shapes, seed=12, alpha=None, odd_rank_every=3)
    assert len({layer.down.shape[0] for layer in layers}) == 2
    file = lff.write(str(tmp_path / "mixed.safetensors"), lff.state_dict("diffusers", layers))
    engine = engine_for(model_dir, f2p=file)
    assert_matches_reference(engine, model_dir, base_weights, [(layers, 1.0)])


def test_f2p_and_lightning_together_and_the_f2p_scale(
    model_dir, base_weights, shapes, tmp_path
) -> None:
    f2p = lff.random_layers(shapes, seed=13)
    lightning = lff.random_layers(shapes, seed=14, rank=8, alpha=1.0)  # alpha/rank = 1/8
    f2p_file = lff.write(str(tmp_path / "f2p.safetensors"), lff.state_dict("diffsynth", f2p))
    lightning_file = lff.write(
        str(tmp_path / "Qwen-Image-Edit-Lightning-8steps.safetensors"),
        lff.state_dict("lightning", lightning),
    )
    engine = engine_for(model_dir, f2p=f2p_file, lightning=lightning_file)
    assert engine.pipeline.get_active_adapters() == ["f2p", "lightning"]
    assert_matches_reference(engine, model_dir, base_weights, [(f2p, 1.0), (lightning, 1.0)])
    # How a request's F2P scale and the QUALITY preset (Lightning at 0) reach the layers.
    engine._configure(engine.presets.plan("quality", 2, 1.0), lora_scale=0.5)
    assert_matches_reference(engine, model_dir, base_weights, [(f2p, 0.5), (lightning, 0.0)])


def test_the_default_hub_repos_load_offline_from_the_hub_cache(
    model_dir, shapes, tmp_path, monkeypatch
) -> None:
    """The defaults: Qwen/Qwen-Image-Edit + the F2P repo's model.safetensors, no hub call.

    The F2P repo also holds ``edit_0928_lora_step40000.safetensors`` (a different update):
    which file loads must not depend on the listing order. The Lightning file sits in a
    sub-folder of its repo, addressed through the weight name.
    """
    import huggingface_hub.constants

    cache = str(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lff.copy_model(model_dir, lff.hub_snapshot(cache, "Qwen/Qwen-Image-Edit", "a" * 40))
    f2p_snapshot = lff.hub_snapshot(cache, F2P_REPO)
    wanted = lff.random_layers(shapes, seed=15)
    decoy = lff.random_layers(shapes, seed=16)
    lff.write(
        f"{f2p_snapshot}/edit_0928_lora_step40000.safetensors", lff.state_dict("diffsynth", decoy)
    )
    lff.write(f"{f2p_snapshot}/model.safetensors", lff.state_dict("diffsynth", wanted))
    lightning = lff.random_layers(shapes, seed=17, rank=8, alpha=1.0)
    lightning_snapshot = lff.hub_snapshot(cache, LIGHTNING_REPO)
    lff.write(f"{lightning_snapshot}/sub/{LIGHTNING_FILE}", lff.state_dict("lightning", lightning))

    engine = create_engine(
        EngineConfig(
            name="qwen-f2p",
            dtype="float32",
            lightning_lora_path=LIGHTNING_REPO,
            lightning_weight_name=f"sub/{LIGHTNING_FILE}",
            condition_area=TINY_CONDITION_AREA,
        )
    )
    assert engine.model_info.revision == "a" * 40
    assert (
        engine.model_info.lora
        == f"{F2P_REPO}/model.safetensors+{LIGHTNING_REPO}/sub/{LIGHTNING_FILE}"
    )
    assert engine.presets.available == ("QUALITY", "FAST")  # "8steps" in the file name
    layer = engine.pipeline.transformer.get_submodule(wanted[0].module)
    torch.testing.assert_close(layer.lora_A["f2p"].weight, wanted[0].down, rtol=0, atol=0)


# -- loading that must fail, naming the keys ------------------------------------------------------


def load_error(model_dir: str, tensors: dict[str, torch.Tensor], tmp_path) -> str:
    file = lff.write(str(tmp_path / "broken.safetensors"), tensors)
    with pytest.raises(EngineLoadError) as caught:
        engine_for(model_dir, f2p=file)
    return str(caught.value)


def test_keys_for_layers_the_model_lacks_are_named(model_dir, shapes, tmp_path) -> None:
    tensors = lff.state_dict("diffsynth", lff.random_layers(shapes, seed=20))
    tensors["transformer_blocks.9.attn.to_q.lora_A.default.weight"] = torch.zeros(4, 32)
    tensors["transformer_blocks.9.attn.to_q.lora_B.default.weight"] = torch.zeros(32, 4)
    text_encoder = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    tensors[f"{text_encoder}.lora_down.weight"] = torch.zeros(4, 16)
    message = load_error(model_dir, tensors, tmp_path)
    assert "no such Linear layer" in message
    assert "transformer_blocks.9.attn.to_q.lora_A.default.weight" in message
    assert f"{text_encoder}.lora_down.weight" in message


def test_tensors_that_are_not_lora_halves_are_named(model_dir, shapes, tmp_path) -> None:
    tensors = lff.state_dict("kohya", lff.random_layers(shapes, seed=21, alpha=4.0))
    tensors["lora_unet_transformer_blocks_0_attn_to_q.dora_scale"] = torch.ones(1, 32)
    tensors["transformer_blocks.0.attn.to_k.lora_mid.weight"] = torch.ones(4, 4)
    message = load_error(model_dir, tensors, tmp_path)
    assert "not a LoRA down/up/alpha tensor" in message
    assert "dora_scale" in message and "lora_mid.weight" in message


def test_broken_pairs_shapes_and_alphas_are_named(model_dir, shapes, tmp_path) -> None:
    layers = lff.random_layers(shapes, seed=22, alpha=2.0)
    tensors = lff.state_dict("lightning", layers)
    del tensors["transformer_blocks.0.attn.to_q.lora_up.weight"]  # a half without its other
    tensors["transformer_blocks.0.attn.to_k.lora_down.weight"] = torch.zeros(4, 31)  # shape
    tensors["transformer_blocks.0.attn.to_v.alpha"] = torch.tensor(float("nan"))
    tensors["transformer_blocks.1.attn.to_v.alpha"] = torch.tensor([1.0, 2.0])
    message = load_error(model_dir, tensors, tmp_path)
    assert "transformer_blocks.0.attn.to_q.lora_down.weight" in message
    assert "do not fit transformer_blocks.0.attn.to_k" in message
    assert "transformer_blocks.0.attn.to_v.alpha" in message
    assert "transformer_blocks.1.attn.to_v.alpha" in message


def test_two_tensors_for_one_layer_are_named(model_dir, shapes, tmp_path) -> None:
    layers = lff.random_layers(shapes, seed=23)
    tensors = lff.state_dict("diffsynth", layers)
    tensors["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"] = layers[0].down.clone()
    message = load_error(model_dir, tensors, tmp_path)
    assert "more than one tensor for the same layer" in message


def test_an_empty_file_is_refused(model_dir, tmp_path) -> None:
    file = tmp_path / "empty.safetensors"
    lff.write(str(file), {})
    with pytest.raises(EngineLoadError, match="no tensors"):
        engine_for(model_dir, f2p=str(file))


def test_an_adapter_loaded_at_the_wrong_scale_is_named(
    model_dir, shapes, tmp_path, monkeypatch
) -> None:
    """Verification after load: had the alphas been lost (as upstream does), no start."""
    layers = lff.random_layers(shapes, seed=24, alpha=1.0)
    file = lff.write(str(tmp_path / "f2p.safetensors"), lff.state_dict("comfyui", layers))
    original = lora.peft_metadata

    def without_alphas(pairs):
        metadata = original(pairs)
        metadata["lora_alpha"], metadata["alpha_pattern"] = metadata["r"], {}
        return metadata

    monkeypatch.setattr(lora, "peft_metadata", without_alphas)
    with pytest.raises(EngineLoadError) as caught:
        engine_for(model_dir, f2p=file)
    message = str(caught.value)
    assert "applied at scale 1, not alpha/rank x weight = 0.25" in message
    assert "diffusion_model.transformer_blocks.0.attn.add_k_proj.alpha" in message


def test_a_layer_that_did_not_land_is_named(model_dir, shapes, tmp_path, monkeypatch) -> None:
    """Verification after load: a layer dropped during injection stops the worker."""
    layers = lff.random_layers(shapes, seed=26)
    file = lff.write(str(tmp_path / "f2p.safetensors"), lff.state_dict("diffsynth", layers))
    original = lora.load_adapter
    lost = "transformer_blocks.1.img_mlp.net.2"

    def lossy(pipe, pairs, adapter):
        original(pipe, pairs, adapter)
        pipe.transformer.get_submodule(lost).delete_adapter(adapter)

    monkeypatch.setattr(lora, "load_adapter", lossy)
    with pytest.raises(EngineLoadError) as caught:
        engine_for(model_dir, f2p=file)
    message = str(caught.value)
    assert f"not applied to its layer: {lost}.lora_A.default.weight, {lost}.lora_B" in message


def test_the_upstream_loader_drops_alphas_of_lora_a_b_files(model_dir, shapes, tmp_path) -> None:
    """Why the engine maps keys itself: diffusers 0.39 applies such a file at scale 1."""
    layers = lff.random_layers(shapes, seed=25, alpha=1.0)  # intended scale 1/4
    file = lff.write(str(tmp_path / "ab.safetensors"), lff.state_dict("comfyui_ab", layers))
    engine = engine_for(model_dir)
    engine.pipeline.load_lora_weights(file, adapter_name="upstream")
    scale = engine.pipeline.transformer.get_submodule(layers[0].module).scaling["upstream"]
    assert scale == 1.0 != layers[0].scale
