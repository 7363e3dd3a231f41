"""Engine settings (``EngineConfig``) and ``create_engine``.

Environment variables read by ``EngineConfig.from_env`` (keyword overrides win):

==================================  ===========================  ============================
variable                            field                        example
==================================  ===========================  ============================
``F2P_ENGINE``                      ``name``                     ``sim``, ``tiny``, ``qwen-f2p``
``F2P_ENGINE_DEVICE``               ``device``                   ``cpu``, ``cuda``, ``cuda:1``
``F2P_ENGINE_DTYPE``                ``dtype``                    ``bfloat16``
``F2P_ENGINE_MAX_BATCH``            ``max_batch_size``           ``4``
``F2P_ENGINE_CONDITION_AREA``       ``condition_area``           ``1048576``, ``512x512``
``F2P_ENGINE_MODEL_PATH``           ``model_path``               hub id or local directory
``F2P_ENGINE_LORA_PATH``            ``lora_path``                empty = no LoRA
``F2P_ENGINE_LORA_WEIGHT_NAME``     ``lora_weight_name``         ``model.safetensors``
``F2P_ENGINE_LIGHTNING_LORA_PATH``  ``lightning_lora_path``      ``owner/repo/file.safetensors``
``F2P_ENGINE_COMPILE``              ``compile``                  ``1``, ``true``, ``no``
``F2P_ENGINE_CPU_OFFLOAD``          ``cpu_offload``              ``0``
``F2P_ENGINE_SEED``                 ``seed``                     ``0``
``F2P_SIM_TIME_SCALE``              ``sim_time_scale``           ``0`` (no sleep), ``1``
``F2P_SIM_SECONDS_PER_STEP``        ``sim_seconds_per_step``     ``0.3``
==================================  ===========================  ============================

Torch and diffusers are imported only when a ``tiny`` or ``qwen-f2p`` engine is created.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from f2p_errors import ConfigError

from .base import Engine

ENGINE_NAMES = ("sim", "tiny", "qwen-f2p")
DTYPE_NAMES = ("bfloat16", "float16", "float32")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_AREA = re.compile(r"^(\d+)\s*[x*]\s*(\d+)$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one engine, resolved once at the entry point; see the module docstring."""

    name: str
    device: str = "cpu"
    dtype: str = "bfloat16"
    max_batch_size: int = 4
    condition_area: int | None = None  # None: 1024*1024 for qwen-f2p (diffusers), 128*128 tiny
    model_path: str = "Qwen/Qwen-Image-Edit"
    lora_path: str = "DiffSynth-Studio/Qwen-Image-Edit-F2P"  # "" = no F2P LoRA
    lora_weight_name: str | None = None
    lightning_lora_path: str | None = None
    compile: bool = False
    cpu_offload: bool = False
    sim_time_scale: float = 1.0  # multiplies the simulated service time; 0 = no sleep at all
    sim_seconds_per_step: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _validate(field.name, getattr(self, field.name), field.name)

    @classmethod
    def from_env(cls, **overrides: Any) -> EngineConfig:
        """Settings from ``F2P_ENGINE*`` / ``F2P_SIM_*`` variables, then ``overrides``.

        An invalid variable raises ``ConfigError`` naming it; ``F2P_ENGINE`` is required unless
        ``name`` is overridden.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"EngineConfig has no setting {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for field_name, (variable, parse) in _ENV.items():
            raw = os.environ.get(variable)
            if raw is None or field_name in overrides:
                continue
            try:
                value = parse(raw.strip())
                _validate(field_name, value, variable)
            except ConfigError:
                raise
            except ValueError as exc:
                raise ConfigError(f"{variable}={raw!r}: {exc}") from None
            values[field_name] = value
        values.update(overrides)
        if "name" not in values:
            raise ConfigError(f"F2P_ENGINE is not set (one of {', '.join(ENGINE_NAMES)})")
        return cls(**values)


def create_engine(config: EngineConfig) -> Engine:
    """Build the engine ``config.name`` names (loading weights for ``tiny`` and ``qwen-f2p``)."""
    if config.name == "sim":
        from .sim import SimEngine

        return SimEngine(
            max_batch_size=config.max_batch_size,
            seconds_per_step=config.sim_seconds_per_step,
            time_scale=config.sim_time_scale,
            seed=config.seed,
        )
    if config.name == "tiny":
        from .tiny import TinyEngine

        return TinyEngine.from_config(config)
    if config.name == "qwen-f2p":
        from .qwen import QwenF2PEngine

        return QwenF2PEngine.from_config(config)
    raise ConfigError(f"engine {config.name!r} is not one of {', '.join(ENGINE_NAMES)}")


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _parse_area(raw: str) -> int | None:
    if raw.lower() in {"", "none", "default"}:
        return None
    match = _AREA.match(raw)
    if match:
        return int(match.group(1)) * int(match.group(2))
    return int(raw)


def _parse_optional_str(raw: str) -> str | None:
    return raw or None


_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "name": ("F2P_ENGINE", str),
    "device": ("F2P_ENGINE_DEVICE", str),
    "dtype": ("F2P_ENGINE_DTYPE", str),
    "max_batch_size": ("F2P_ENGINE_MAX_BATCH", int),
    "condition_area": ("F2P_ENGINE_CONDITION_AREA", _parse_area),
    "model_path": ("F2P_ENGINE_MODEL_PATH", str),
    "lora_path": ("F2P_ENGINE_LORA_PATH", str),
    "lora_weight_name": ("F2P_ENGINE_LORA_WEIGHT_NAME", _parse_optional_str),
    "lightning_lora_path": ("F2P_ENGINE_LIGHTNING_LORA_PATH", _parse_optional_str),
    "compile": ("F2P_ENGINE_COMPILE", _parse_bool),
    "cpu_offload": ("F2P_ENGINE_CPU_OFFLOAD", _parse_bool),
    "seed": ("F2P_ENGINE_SEED", int),
    "sim_time_scale": ("F2P_SIM_TIME_SCALE", float),
    "sim_seconds_per_step": ("F2P_SIM_SECONDS_PER_STEP", float),
}


def _check(condition: bool, where: str, value: Any, expectation: str) -> None:
    if not condition:
        raise ConfigError(f"{where}={value!r}: expected {expectation}")


def _validate(field_name: str, value: Any, where: str) -> None:
    """Raise ``ConfigError`` naming ``where`` (a field or a variable) if ``value`` is invalid."""
    rule = _RULES.get(field_name)
    if rule is not None:
        check, expectation = rule
        _check(check(value), where, value, expectation)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: Any, *, minimum: float, strict: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value > minimum if strict else value >= minimum


_RULES: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: v in ENGINE_NAMES, f"one of {', '.join(ENGINE_NAMES)}"),
    "device": (lambda v: isinstance(v, str) and bool(_DEVICE.match(v)), "cpu, mps, cuda or cuda:N"),
    "dtype": (lambda v: v in DTYPE_NAMES, f"one of {', '.join(DTYPE_NAMES)}"),
    "max_batch_size": (_positive_int, "a positive integer"),
    "condition_area": (
        lambda v: v is None or (_positive_int(v) and v >= 32 * 32),
        "pixels >= 1024 (e.g. 1048576 or 1024x1024), or empty for the default",
    ),
    "model_path": (lambda v: isinstance(v, str) and bool(v), "a hub id or a local directory"),
    "lora_path": (lambda v: isinstance(v, str), "a hub id, a local path, or empty"),
    "lora_weight_name": (lambda v: v is None or isinstance(v, str), "a file name"),
    "lightning_lora_path": (lambda v: v is None or isinstance(v, str), "a hub id or path"),
    "compile": (lambda v: isinstance(v, bool), "a boolean"),
    "cpu_offload": (lambda v: isinstance(v, bool), "a boolean"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "sim_time_scale": (lambda v: _finite(v, minimum=0, strict=False), "a finite number >= 0"),
    "sim_seconds_per_step": (lambda v: _finite(v, minimum=0, strict=False), "a number >= 0"),
}
