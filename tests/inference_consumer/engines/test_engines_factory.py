"""EngineConfig.from_env and create_engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from f2p_errors import ConfigError
from inference_consumer.engines import EngineConfig, create_engine
from inference_consumer.engines.sim import SimEngine

VARIABLES = (
    "F2P_ENGINE",
    "F2P_ENGINE_DEVICE",
    "F2P_ENGINE_DTYPE",
    "F2P_ENGINE_MAX_BATCH",
    "F2P_ENGINE_CONDITION_AREA",
    "F2P_ENGINE_MODEL_PATH",
    "F2P_ENGINE_LORA_PATH",
    "F2P_ENGINE_LORA_WEIGHT_NAME",
    "F2P_ENGINE_LIGHTNING_LORA_PATH",
    "F2P_ENGINE_LIGHTNING_WEIGHT_NAME",
    "F2P_ENGINE_LIGHTNING_STEPS",
    "F2P_ENGINE_PRESET",
    "F2P_ENGINE_ATTENTION_BACKEND",
    "F2P_ENGINE_COMPILE_BACKEND",
    "F2P_ENGINE_WARMUP_SIZES",
    "F2P_ENGINE_CACHE",
    "F2P_ENGINE_QUANTIZATION",
    "F2P_ENGINE_COMPILE",
    "F2P_ENGINE_CPU_OFFLOAD",
    "F2P_ENGINE_SEED",
    "F2P_SIM_TIME_SCALE",
    "F2P_SIM_SECONDS_PER_STEP",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_defaults() -> None:
    config = EngineConfig(name="qwen-f2p")
    assert (config.device, config.dtype, config.max_batch_size) == ("cpu", "bfloat16", 4)
    assert config.condition_area is None
    assert config.model_path == "Qwen/Qwen-Image-Edit"
    assert config.lora_path == "DiffSynth-Studio/Qwen-Image-Edit-F2P"
    assert (config.sim_time_scale, config.sim_seconds_per_step, config.seed) == (1.0, 0.3, 0)


def test_from_env_parses_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "F2P_ENGINE": "qwen-f2p",
        "F2P_ENGINE_DEVICE": "cuda:1",
        "F2P_ENGINE_DTYPE": "float16",
        "F2P_ENGINE_MAX_BATCH": "8",
        "F2P_ENGINE_CONDITION_AREA": "512x512",
        "F2P_ENGINE_MODEL_PATH": "/models/qwen-image-edit",
        "F2P_ENGINE_LORA_PATH": "/models/f2p",
        "F2P_ENGINE_LORA_WEIGHT_NAME": "model.safetensors",
        "F2P_ENGINE_LIGHTNING_LORA_PATH": "lightx2v/Qwen-Image-Lightning",
        "F2P_ENGINE_LIGHTNING_WEIGHT_NAME": "Qwen-Image-Edit-Lightning-8steps-V1.0.safetensors",
        "F2P_ENGINE_LIGHTNING_STEPS": "8",
        "F2P_ENGINE_PRESET": "FAST",
        "F2P_ENGINE_ATTENTION_BACKEND": "_flash_3",
        "F2P_ENGINE_COMPILE_BACKEND": "eager",
        "F2P_ENGINE_WARMUP_SIZES": "1024x1024, 768x1344",
        "F2P_ENGINE_CACHE": "TaylorSeer",
        "F2P_ENGINE_QUANTIZATION": "int8wo",
        "F2P_ENGINE_COMPILE": "yes",
        "F2P_ENGINE_CPU_OFFLOAD": "false",
        "F2P_ENGINE_SEED": "42",
        "F2P_SIM_TIME_SCALE": "0",
        "F2P_SIM_SECONDS_PER_STEP": "0.25",
    }
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert EngineConfig.from_env() == EngineConfig(
        name="qwen-f2p",
        device="cuda:1",
        dtype="float16",
        max_batch_size=8,
        condition_area=512 * 512,
        model_path="/models/qwen-image-edit",
        lora_path="/models/f2p",
        lora_weight_name="model.safetensors",
        lightning_lora_path="lightx2v/Qwen-Image-Lightning",
        lightning_weight_name="Qwen-Image-Edit-Lightning-8steps-V1.0.safetensors",
        lightning_steps=8,
        preset="fast",
        attention_backend="_flash_3",
        compile_backend="eager",
        warmup_sizes=((1024, 1024), (768, 1344)),
        cache="taylorseer",
        quantization="int8wo",
        compile=True,
        cpu_offload=False,
        seed=42,
        sim_time_scale=0.0,
        sim_seconds_per_step=0.25,
    )


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("F2P_ENGINE", "qwen-f2p")
    monkeypatch.setenv("F2P_ENGINE_MAX_BATCH", "not-a-number")  # ignored: overridden
    config = EngineConfig.from_env(name="sim", max_batch_size=2)
    assert (config.name, config.max_batch_size) == ("sim", 2)


def test_condition_area_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in (("16384", 16384), ("128*128", 16384), ("", None), ("none", None)):
        monkeypatch.setenv("F2P_ENGINE_CONDITION_AREA", raw)
        assert EngineConfig.from_env(name="tiny").condition_area == expected


def test_missing_engine_name_is_named() -> None:
    with pytest.raises(ConfigError, match="F2P_ENGINE"):
        EngineConfig.from_env()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("F2P_ENGINE", "gpt"),
        ("F2P_ENGINE_DEVICE", "gpu0"),
        ("F2P_ENGINE_DTYPE", "int8"),
        ("F2P_ENGINE_MAX_BATCH", "0"),
        ("F2P_ENGINE_MAX_BATCH", "four"),
        ("F2P_ENGINE_CONDITION_AREA", "-5"),
        ("F2P_ENGINE_CONDITION_AREA", "big"),
        ("F2P_ENGINE_COMPILE", "maybe"),
        ("F2P_ENGINE_SEED", "1.5"),
        ("F2P_SIM_TIME_SCALE", "-1"),
        ("F2P_SIM_TIME_SCALE", "nan"),
        ("F2P_SIM_SECONDS_PER_STEP", "fast"),
        ("F2P_ENGINE_LIGHTNING_STEPS", "6"),
        ("F2P_ENGINE_LIGHTNING_STEPS", "eight"),
        ("F2P_ENGINE_PRESET", "turbo"),
        ("F2P_ENGINE_ATTENTION_BACKEND", "cuda-magic"),
        ("F2P_ENGINE_COMPILE_BACKEND", "tensorrt"),
        ("F2P_ENGINE_WARMUP_SIZES", "1024"),
        ("F2P_ENGINE_WARMUP_SIZES", "99999x1024"),
        ("F2P_ENGINE_CACHE", "magcache"),
        ("F2P_ENGINE_QUANTIZATION", "int4"),
    ],
)
def test_invalid_variables_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("F2P_ENGINE", "sim")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        EngineConfig.from_env()
    assert str(caught.value).startswith(f"{variable}=")


def test_invalid_fields_are_named() -> None:
    with pytest.raises(ConfigError, match=r"^max_batch_size="):
        EngineConfig(name="sim", max_batch_size=0)
    with pytest.raises(ConfigError, match=r"^name="):
        EngineConfig(name="dall-e")
    with pytest.raises(ConfigError, match="no setting turbo"):
        EngineConfig.from_env(name="sim", turbo=True)


def test_defaults_are_safe() -> None:
    config = EngineConfig(name="qwen-f2p")
    assert config.attention_backend == "native"  # SDPA: takes padded (masked) batches
    assert (config.quantization, config.cache, config.compile) == ("none", "none", False)
    assert config.preset is None and config.lightning_lora_path is None


def test_quantization_with_cpu_offload_is_refused() -> None:
    with pytest.raises(ConfigError, match="cpu_offload"):
        EngineConfig(name="qwen-f2p", quantization="int8wo", cpu_offload=True)


def test_sim_refuses_an_unknown_default_preset_and_serves_all_presets() -> None:
    engine = create_engine(EngineConfig(name="sim", preset="fastest", sim_time_scale=0))
    assert engine.presets.available == ("QUALITY", "FAST", "FASTEST")
    assert engine.presets.default == "FASTEST"


def test_create_sim_engine() -> None:
    engine = create_engine(
        EngineConfig(name="sim", max_batch_size=3, sim_time_scale=0, sim_seconds_per_step=0.2)
    )
    assert isinstance(engine, SimEngine)
    assert (engine.name, engine.max_batch_size, engine.time_scale) == ("sim", 3, 0)
    assert engine.seconds_per_step == 0.2


def test_sim_does_not_import_torch() -> None:
    """The control-plane benchmarks run sim without paying for torch."""
    code = (
        "import sys\n"
        "from inference_consumer.engines import EngineConfig, create_engine\n"
        "import inference_consumer.engines.config, inference_consumer.engines.presets\n"
        "create_engine(EngineConfig(name='sim'))\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
