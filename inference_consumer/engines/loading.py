"""Loading the production pipeline: weights, verified LoRA adapters, schedulers, speed settings.

``load_pipeline`` is the one path from an ``EngineConfig`` to a ready pipeline; ``tiny`` runs it
on its locally built model, so everything here but the download and the GPU is exercised by the
unit tests. Every failure is an ``EngineLoadError`` naming what failed: the worker refuses to
start rather than serve with a broken adapter (issue 9, item 3).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from . import acceleration, lora
from .config import EngineConfig
from .exceptions import EngineLoadError
from .pipeline import F2PQwenImageEditPipeline
from .presets import PresetTable, table_for
from .schedulers import LIGHTNING_SCHEDULER_CONFIG, make_scheduler

logger = logging.getLogger(__name__)

F2P_ADAPTER = "f2p"
LIGHTNING_ADAPTER = "lightning"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Dynamo falls back to eager, silently, once a code object has this many graphs; the regional
# compile settles at 4 to 16 (with the cache hook), so 64 leaves room without hiding a leak:
# every graph after warm-up shows in ``recompiles``.
RECOMPILE_LIMIT = 64


@dataclass
class LoadedPipeline:
    """A loaded pipeline and what the engine needs to drive it."""

    pipe: F2PQwenImageEditPipeline
    adapters: tuple[str, ...] = ()
    presets: PresetTable = field(default_factory=PresetTable)
    lightning_scheduler: Any = None
    cache_hooks: list[Any] = field(default_factory=list)
    compiled: bool = False


@dataclass(frozen=True)
class AdapterFiles:
    """The weight files ``config`` names, resolved before the base weights are read."""

    f2p: str | None
    lightning: str | None
    lightning_steps: int | None


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(("./", "../", "~")) or os.path.exists(path)


def resolve_adapter_files(config: EngineConfig) -> AdapterFiles:
    """Find both LoRA files (fail fast: before 40 GB of base weights) and Lightning's steps."""
    f2p = None
    if config.lora_path:
        f2p = lora.resolve_weight_file(
            config.lora_path, config.lora_weight_name, adapter=F2P_ADAPTER
        )
    lightning = steps = None
    if config.lightning_lora_path:
        lightning = lora.resolve_weight_file(
            config.lightning_lora_path, config.lightning_weight_name, adapter=LIGHTNING_ADAPTER
        )
        steps = config.lightning_steps or lora.lightning_steps_from_name(lightning)
        if steps not in (4, 8):
            raise EngineLoadError(
                f"LoRA {LIGHTNING_ADAPTER!r}: cannot tell from {os.path.basename(lightning)!r} "
                "whether it is the 4- or the 8-step file; set F2P_ENGINE_LIGHTNING_STEPS"
            )
    return AdapterFiles(f2p, lightning, steps)


def load_pipeline(config: EngineConfig) -> LoadedPipeline:
    """Load the pipeline, adapters and speed settings ``config`` names; ``EngineLoadError``.

    Steps: 1. adapter files and presets, 2. base weights, 3. adapters (verified),
    4. placement, 5. quantization, 6. attention backend, 7. cache hook, 8. compile.
    """
    # Step 1. Which files, which presets: refuse a bad setting before reading any weights.
    path = os.path.expanduser(config.model_path)
    if _looks_local(path) and not os.path.isdir(path):
        raise EngineLoadError(f"model_path {config.model_path!r}: no such local directory")
    files = resolve_adapter_files(config)
    try:
        presets = table_for(
            lightning_steps=files.lightning_steps, default=config.preset, cache=config.cache
        )
    except ValueError as exc:
        raise EngineLoadError(f"preset: {exc}") from None

    # Step 2. Base weights, from a local directory or the hub (or its cache).
    try:
        pipe = F2PQwenImageEditPipeline.from_pretrained(path, torch_dtype=DTYPES[config.dtype])
    except Exception as exc:
        raise EngineLoadError(
            f"cannot load the Qwen-Image-Edit pipeline from {config.model_path!r}: {exc}"
        ) from exc
    loaded = LoadedPipeline(pipe=pipe, presets=presets)

    # Step 3. LoRA adapters: F2P (scaled per request), Lightning (1.0 under its preset, else 0).
    load_adapters(loaded, files)

    # Step 4. Placement.
    try:
        if config.cpu_offload:
            pipe.enable_model_cpu_offload(device=config.device)
        else:
            pipe.to(config.device)
    except Exception as exc:
        raise EngineLoadError(f"cannot place the pipeline on {config.device!r}: {exc}") from exc

    # Steps 5-8. Speed settings, all before the first pipeline call.
    transformer = pipe.transformer
    acceleration.quantize(transformer, config.quantization, lightning=files.lightning is not None)
    acceleration.set_attention_backend(transformer, config.attention_backend)
    loaded.cache_hooks = acceleration.enable_cache_hook(transformer, config.cache)
    if config.compile:
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
        )
        acceleration.compile_transformer(transformer, config.compile_backend)
        loaded.compiled = True
    pipe.set_progress_bar_config(disable=True)
    return loaded


def load_adapters(loaded: LoadedPipeline, files: AdapterFiles) -> None:
    """Parse, inject and verify the adapters ``files`` names (step 3 of ``load_pipeline``)."""
    pipe = loaded.pipe
    layers = lora.linear_layers(pipe.transformer)
    parsed: list[tuple[str, list[lora.LoraPair]]] = []
    for adapter, file in ((F2P_ADAPTER, files.f2p), (LIGHTNING_ADAPTER, files.lightning)):
        if file is None:
            continue
        pairs = lora.parse_lora(lora.read_lora_file(file, adapter=adapter), layers, adapter=adapter)
        lora.load_adapter(pipe, pairs, adapter)
        parsed.append((adapter, pairs))
        logger.info("LoRA %s from %s: %s", adapter, file, lora.summary(pairs))
    if not parsed:
        return
    loaded.adapters = tuple(name for name, _ in parsed)
    try:
        pipe.set_adapters(list(loaded.adapters), adapter_weights=[1.0] * len(parsed))
    except Exception as exc:
        raise EngineLoadError(f"cannot activate LoRA adapters {loaded.adapters}: {exc}") from exc
    for adapter, pairs in parsed:
        lora.verify_adapter(pipe.transformer, pairs, adapter, weight=1.0)
    if files.lightning is not None:
        loaded.lightning_scheduler = make_scheduler(LIGHTNING_SCHEDULER_CONFIG)


def describe_lora(config: EngineConfig) -> str | None:
    """``owner/repo/file.safetensors[+…]`` for the result's model info; ``None``: no LoRA."""
    names = []
    for path, weight_name in (
        (config.lora_path, config.lora_weight_name),
        (config.lightning_lora_path, config.lightning_weight_name),
    ):
        if not path:
            continue
        if weight_name is None and path in lora.KNOWN_WEIGHT_NAMES:
            weight_name = lora.KNOWN_WEIGHT_NAMES[path]
        names.append(f"{path.rstrip('/')}/{weight_name}" if weight_name else path)
    return "+".join(names) or None


def model_revision(model_path: str) -> str:
    """The hub snapshot the model was loaded from (``local`` for a directory)."""
    if _looks_local(model_path):
        return "local"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_path, "model_index.json")
    except Exception:  # an invalid repo id, a broken cache: not worth failing a load over
        return "unknown"
    if isinstance(cached, str) and "/snapshots/" in cached:
        return cached.split("/snapshots/", 1)[1].split("/", 1)[0]
    return "unknown"
