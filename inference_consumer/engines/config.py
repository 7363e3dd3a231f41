"""Engine settings: ``EngineConfig``, resolved once at the entry point, frozen, passed down.

Lives apart from ``factory.py`` so that worker configuration can import it without importing the
engines (issue 7: the old home made an import circle). Importing this module imports neither
torch nor diffusers.

Environment variables read by ``EngineConfig.from_env`` (keyword overrides win):

====================================  ========================  ==================================
variable                              field                     example
====================================  ========================  ==================================
``F2P_ENGINE``                        ``name``                  ``sim``, ``tiny``, ``qwen-f2p``
``F2P_ENGINE_DEVICE``                 ``device``                ``cpu``, ``cuda``, ``cuda:1``
``F2P_ENGINE_DTYPE``                  ``dtype``                 ``bfloat16``
``F2P_ENGINE_MAX_BATCH``              ``max_batch_size``        ``4``
``F2P_ENGINE_CONDITION_AREA``         ``condition_area``        ``1048576``, ``512x512``
``F2P_ENGINE_MODEL_PATH``             ``model_path``            hub id or local directory
``F2P_ENGINE_LORA_PATH``              ``lora_path``             empty = no F2P LoRA
``F2P_ENGINE_LORA_WEIGHT_NAME``       ``lora_weight_name``      ``model.safetensors``
``F2P_ENGINE_LIGHTNING_LORA_PATH``    ``lightning_lora_path``   ``lightx2v/Qwen-Image-Lightning``
``F2P_ENGINE_LIGHTNING_WEIGHT_NAME``  ``lightning_weight_name`` ``Qwen-Image-Edit-Lightning-8s…``
``F2P_ENGINE_LIGHTNING_STEPS``        ``lightning_steps``       ``8`` or ``4`` (empty: from name)
``F2P_ENGINE_PRESET``                 ``preset``                ``quality``, ``fast``, ``fastest``
``F2P_ENGINE_ATTENTION_BACKEND``      ``attention_backend``     ``native`` (SDPA), ``flash``, …
``F2P_ENGINE_COMPILE``                ``compile``               ``1``, ``true``, ``no``
``F2P_ENGINE_COMPILE_BACKEND``        ``compile_backend``       ``inductor`` (``eager``: tests)
``F2P_ENGINE_WARMUP_SIZES``           ``warmup_sizes``          ``1024x1024,768x1344``
``F2P_ENGINE_CACHE``                  ``cache``                 ``none``, ``taylorseer``
``F2P_ENGINE_QUANTIZATION``           ``quantization``          ``none``, ``int8wo``, ``fp8wo``
``F2P_ENGINE_CPU_OFFLOAD``            ``cpu_offload``           ``0``
``F2P_ENGINE_SEED``                   ``seed``                  ``0``
``F2P_SIM_TIME_SCALE``                ``sim_time_scale``        ``0`` (no sleep), ``1``
``F2P_SIM_SECONDS_PER_STEP``          ``sim_seconds_per_step``  ``0.3``
====================================  ========================  ==================================

Weight files are explicit (issue 9, item 2): a LoRA path is either a ``.safetensors`` file
(local, or ``owner/repo/sub/dir/file.safetensors`` on the hub) or a directory / hub repo plus a
weight name (which may contain a sub-folder). Only the default F2P repo has a known file name.
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

ENGINE_NAMES = ("sim", "tiny", "qwen-f2p")
DTYPE_NAMES = ("bfloat16", "float16", "float32")
PRESET_NAMES = ("quality", "fast", "fastest")
CACHE_NAMES = ("none", "taylorseer")
QUANTIZATION_NAMES = ("none", "int8wo", "fp8wo")
LIGHTNING_STEP_COUNTS = (4, 8)
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
# Copied from diffusers 0.39 ``AttentionBackendName`` (values): validated here without importing
# diffusers; diffusers checks again at load time that the backend's package is installed.
ATTENTION_BACKENDS = (
    "native",
    "_native_cudnn",
    "_native_efficient",
    "_native_flash",
    "_native_math",
    "_native_npu",
    "_native_xla",
    "flex",
    "flash",
    "flash_hub",
    "flash_varlen",
    "flash_varlen_hub",
    "flash_4_hub",
    "_flash_3",
    "_flash_varlen_3",
    "_flash_3_hub",
    "_flash_3_varlen_hub",
    "aiter",
    "sage",
    "sage_hub",
    "sage_varlen",
    "_sage_qk_int8_pv_fp8_cuda",
    "_sage_qk_int8_pv_fp8_cuda_sm90",
    "_sage_qk_int8_pv_fp16_cuda",
    "_sage_qk_int8_pv_fp16_triton",
    "xformers",
)
DEFAULT_F2P_REPO = "DiffSynth-Studio/Qwen-Image-Edit-F2P"
# The published file names of known repos, so the defaults need no hub listing (issue 9, item 2).
KNOWN_WEIGHT_NAMES: Mapping[str, str] = {DEFAULT_F2P_REPO: "model.safetensors"}
MAX_WARMUP_SIZES = 16
MAX_SIDE = 4096

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_AREA = re.compile(r"^(\d+)\s*[x*]\s*(\d+)$")
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
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
    lora_path: str = DEFAULT_F2P_REPO  # "" = no F2P LoRA
    lora_weight_name: str | None = None  # None: the file lora_path names, or a known repo's file
    lightning_lora_path: str | None = None
    lightning_weight_name: str | None = None
    lightning_steps: int | None = None  # 4 or 8; None: read from the file name ("8steps")
    preset: str | None = None  # worker default; None: the Lightning preset if loaded, else quality
    attention_backend: str = "native"  # SDPA: the only family that takes padded (masked) batches
    compile: bool = False
    compile_backend: str = "inductor"
    warmup_sizes: tuple[tuple[int, int], ...] = ()  # (width, height); () = the engine's default
    cache: str = "none"
    quantization: str = "none"
    cpu_offload: bool = False
    sim_time_scale: float = 1.0  # multiplies the simulated service time; 0 = no sleep at all
    sim_seconds_per_step: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.preset, str):
            object.__setattr__(self, "preset", self.preset.lower())
        for field in dataclasses.fields(self):
            _validate(field.name, getattr(self, field.name), field.name)
        if self.quantization != "none" and self.cpu_offload:
            raise ConfigError("quantization: not supported together with cpu_offload")

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
                raise ConfigError(f"{variable}={raw[:200]!r}: {exc}") from None
            values[field_name] = value
        values.update(overrides)
        if "name" not in values:
            raise ConfigError(f"F2P_ENGINE is not set (one of {', '.join(ENGINE_NAMES)})")
        return cls(**values)


def parse_sizes(raw: str) -> tuple[tuple[int, int], ...]:
    """``"1024x1024, 768x1344"`` → ``((1024, 1024), (768, 1344))``; empty → ``()``."""
    sizes = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        match = _SIZE.match(part.lower())
        if not match:
            raise ValueError(f"{part[:40]!r} is not WIDTHxHEIGHT")
        sizes.append((int(match.group(1)), int(match.group(2))))
    return tuple(sizes)


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


def _parse_optional_int(raw: str) -> int | None:
    return int(raw) if raw else None


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
    "lightning_weight_name": ("F2P_ENGINE_LIGHTNING_WEIGHT_NAME", _parse_optional_str),
    "lightning_steps": ("F2P_ENGINE_LIGHTNING_STEPS", _parse_optional_int),
    "preset": ("F2P_ENGINE_PRESET", lambda raw: raw.lower() or None),
    "attention_backend": ("F2P_ENGINE_ATTENTION_BACKEND", str),
    "compile": ("F2P_ENGINE_COMPILE", _parse_bool),
    "compile_backend": ("F2P_ENGINE_COMPILE_BACKEND", str),
    "warmup_sizes": ("F2P_ENGINE_WARMUP_SIZES", parse_sizes),
    "cache": ("F2P_ENGINE_CACHE", str.lower),
    "quantization": ("F2P_ENGINE_QUANTIZATION", str.lower),
    "cpu_offload": ("F2P_ENGINE_CPU_OFFLOAD", _parse_bool),
    "seed": ("F2P_ENGINE_SEED", int),
    "sim_time_scale": ("F2P_SIM_TIME_SCALE", float),
    "sim_seconds_per_step": ("F2P_SIM_SECONDS_PER_STEP", float),
}


def _validate(field_name: str, value: Any, where: str) -> None:
    """Raise ``ConfigError`` naming ``where`` (a field or a variable) if ``value`` is invalid."""
    rule = _RULES.get(field_name)
    if rule is not None:
        check, expectation = rule
        if not check(value):
            shown = value[:200] if isinstance(value, str) else value
            raise ConfigError(f"{where}={shown!r}: expected {expectation}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: Any, *, minimum: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value >= minimum


def _optional_name(value: Any) -> bool:
    return value is None or (isinstance(value, str) and 0 < len(value) <= 1024)


def _sizes(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) <= MAX_WARMUP_SIZES
        and all(
            isinstance(size, tuple)
            and len(size) == 2
            and all(_positive_int(side) and side <= MAX_SIDE for side in size)
            for size in value
        )
    )


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
    "lora_path": (lambda v: isinstance(v, str) and len(v) <= 1024, "a hub id, a path, or empty"),
    "lora_weight_name": (_optional_name, "a file name"),
    "lightning_lora_path": (_optional_name, "a hub id or a path"),
    "lightning_weight_name": (_optional_name, "a file name"),
    "lightning_steps": (
        lambda v: v is None or v in LIGHTNING_STEP_COUNTS,
        "4 or 8 (the steps the Lightning LoRA was distilled for), or empty",
    ),
    "preset": (lambda v: v is None or v in PRESET_NAMES, f"one of {', '.join(PRESET_NAMES)}"),
    "attention_backend": (
        lambda v: v in ATTENTION_BACKENDS,
        "a diffusers attention backend (native, flash, _flash_3, sage, ...)",
    ),
    "compile": (lambda v: isinstance(v, bool), "a boolean"),
    "compile_backend": (lambda v: v in COMPILE_BACKENDS, f"one of {', '.join(COMPILE_BACKENDS)}"),
    "warmup_sizes": (_sizes, f"up to {MAX_WARMUP_SIZES} WIDTHxHEIGHT sizes, sides <= {MAX_SIDE}"),
    "cache": (lambda v: v in CACHE_NAMES, f"one of {', '.join(CACHE_NAMES)}"),
    "quantization": (
        lambda v: v in QUANTIZATION_NAMES,
        f"one of {', '.join(QUANTIZATION_NAMES)}",
    ),
    "cpu_offload": (lambda v: isinstance(v, bool), "a boolean"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "sim_time_scale": (lambda v: _finite(v, minimum=0), "a finite number >= 0"),
    "sim_seconds_per_step": (lambda v: _finite(v, minimum=0), "a number >= 0"),
}
