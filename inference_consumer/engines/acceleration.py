"""Speed settings of the transformer: attention backend, quantization, cache hook, compile.

Applied by ``loading.load_pipeline`` in this order, each before the first pipeline call:
attention backend, weight-only quantization (after the LoRA adapters were verified), the
TaylorSeer cache hook, then regional compilation. Warm-up (the engine's) comes last.

* **Attention backend** (issue 9, item 5). Batches of prompts with different token counts carry a
  padding mask; only the SDPA family and flex take one. Flash/sage backends raise on a mask and
  their varlen variants would cut image tokens, so for every other backend the engine batches
  only prompts of equal token count (then diffusers passes no mask at all). SDPA
  (``native``) stays the default.
* **Quantization**: torchao weight-only int8 or FP8 of the transformer's base ``Linear`` layers
  (LoRA layers stay in the model dtype); off by default. Lightning's authors publish that naive
  FP8 (downcast without scaling) with their LoRA gives grid artefacts (ModelTC/Qwen-Image-Lightning
  README, "Using Lightning LoRAs with FP8 Models", issue #32); ``fp8wo`` with a Lightning adapter
  logs that warning.
* **Cache hook**: diffusers' TaylorSeer in lite mode (blocks skipped, ``proj_out`` predicted), so a
  predicted step costs no transformer evaluation. Its schedule is deterministic in the step
  index, so an image never depends on its batch mates (threshold-driven hooks — first-block
  cache, MagCache — decide from the whole batch's residuals and are therefore not offered). It
  is registered once and switched per call by setting its schedule (``set_cache_schedule``):
  enabling a hook after a pipeline call raises ``ValueError: No context is set`` in diffusers
  0.39 (the hook registry caches its child list), and re-registering would recompile.
* **Compile**: ``compile_repeated_blocks(dynamic=True)``: one compiled block shared by all 60,
  dynamic shapes; on a mix of batch sizes, sizes, prompt lengths and LoRA scales it settles at
  4 graphs (batch 1 vs >1, mask vs none). ``GraphCounter`` tells how many graphs were compiled
  after warm-up: the worker's ``recompiles`` metric.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .exceptions import EngineLoadError
from .presets import NEVER_PREDICT, CacheSchedule

logger = logging.getLogger(__name__)

# Backends that accept an attention mask (diffusers 0.39 attention_dispatch; checked on CPU for
# native, _native_math and flex, while _native_flash raises "attn_mask is not supported").
MASK_CAPABLE_BACKENDS = frozenset({"native", "_native_math", "_native_efficient", "flex"})
FP8_LIGHTNING_WARNING = (
    "fp8 weight-only quantization with a Lightning LoRA: its authors report grid artefacts with "
    "FP8 weights made by plain downcasting (ModelTC/Qwen-Image-Lightning README, 'Using "
    "Lightning LoRAs with FP8 Models'); check images before serving, or use int8wo"
)


def takes_padded_batches(backend: str) -> bool:
    """True if ``backend`` handles the padding mask of mixed-length prompt batches."""
    return backend in MASK_CAPABLE_BACKENDS


def set_attention_backend(transformer: Any, backend: str) -> None:
    """Select ``backend`` for every attention layer; ``EngineLoadError`` if it is unusable.

    Set even for ``native``: diffusers 0.39 also makes the last backend set the process-wide
    default, which every layer without an explicit backend follows (two engines in one process,
    one of them flash, would otherwise both run flash).
    """
    try:
        transformer.set_attention_backend(backend)
    except Exception as exc:  # a missing package (flash-attn, sageattention), a wrong device
        raise EngineLoadError(f"attention backend {backend!r}: {exc}") from exc


def quantize(transformer: nn.Module, kind: str, *, lightning: bool) -> None:
    """Weight-only quantization of the transformer's base Linear layers (not the LoRA layers)."""
    if kind == "none":
        return
    try:
        from torchao.quantization import (
            Float8WeightOnlyConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError as exc:
        raise EngineLoadError(f"quantization {kind!r} needs torchao: {exc}") from exc
    if kind == "fp8wo" and lightning:
        logger.warning(FP8_LIGHTNING_WARNING)
    config = Int8WeightOnlyConfig() if kind == "int8wo" else Float8WeightOnlyConfig()

    def is_base_linear(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and ".lora_A." not in fqn and ".lora_B." not in fqn

    try:
        quantize_(transformer, config, filter_fn=is_base_linear)
    except Exception as exc:  # e.g. FP8 kernels need a recent GPU
        raise EngineLoadError(f"quantization {kind!r} failed: {exc}") from exc


def enable_cache_hook(transformer: Any, kind: str) -> list[Any]:
    """Register the cache hook ``kind`` (``taylorseer``) and return its hook objects.

    The hooks start with a schedule that never predicts; ``set_cache_schedule`` arms them per
    call. Must run before the first pipeline call (see the module docstring).
    """
    if kind == "none":
        return []
    from diffusers import TaylorSeerCacheConfig
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.taylorseer_cache import TaylorSeerCacheHook

    dtype = next(transformer.parameters()).dtype
    factors_dtype = torch.float32 if dtype == torch.float32 else torch.bfloat16
    transformer.enable_cache(
        TaylorSeerCacheConfig(
            cache_interval=NEVER_PREDICT.interval,
            disable_cache_before_step=NEVER_PREDICT.before,
            taylor_factors_dtype=factors_dtype,
            use_lite_mode=True,
        )
    )
    # The registry caches its list of child registries on first use; drop it in case a caller
    # ran the transformer before (the diffusers 0.39 "No context is set" trap).
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry._child_registries_cache = None
    hooks = [
        hook
        for module in transformer.modules()
        for hook in getattr(getattr(module, "_diffusers_hook", None), "hooks", {}).values()
        if isinstance(hook, TaylorSeerCacheHook)
    ]
    if not hooks:
        raise EngineLoadError(f"cache {kind!r}: no layer of the transformer took the hook")
    return hooks


def set_cache_schedule(hooks: Sequence[Any], schedule: CacheSchedule | None) -> None:
    """Arm the TaylorSeer hooks with ``schedule`` (``None``: compute every step)."""
    chosen = schedule or NEVER_PREDICT
    for hook in hooks:
        hook.disable_cache_before_step = chosen.before
        hook.cache_interval = chosen.interval


def compile_transformer(transformer: Any, backend: str) -> None:
    """Regional compile: the repeated transformer block, dynamic shapes (issue 9, item 4)."""
    try:
        transformer.compile_repeated_blocks(dynamic=True, backend=backend)
    except Exception as exc:
        raise EngineLoadError(f"compile ({backend}): {exc}") from exc


class GraphCounter:
    """Graphs torch.compile has made, in total and since the engine finished warming up.

    Reads dynamo's process-wide ``unique_graphs`` counter: a worker process holds one engine,
    so every graph compiled after its warm-up is a recompile that live traffic paid for.
    """

    def __init__(self) -> None:
        self._baseline: int | None = None

    @staticmethod
    def total() -> int:
        """Graphs compiled in this process so far."""
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    def mark_warm(self) -> None:
        """Warm-up is over: graphs from now on count as recompiles."""
        self._baseline = self.total()

    def since_warm(self) -> int:
        """Graphs compiled since ``mark_warm`` (0 before it)."""
        return 0 if self._baseline is None else self.total() - self._baseline
