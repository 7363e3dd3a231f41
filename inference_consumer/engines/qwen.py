"""``qwen-f2p``: diffusers ``QwenImageEditPipeline`` with the F2P LoRA, batched.

Loading (``load_pipeline``): ``from_pretrained`` (hub id or local directory) in the configured
dtype, the F2P LoRA as adapter ``f2p`` and optionally a Lightning LoRA as adapter ``lightning``
(both through ``load_lora_weights``), then the device (or model CPU offload) and optionally
``torch.compile`` of the transformer. The ``tiny`` engine loads its random pipeline through this
same function and generates through this same class, so the unit tests exercise everything here
but the download, GPU placement, CPU offload and compile.

Generating (``QwenF2PEngine.generate``): requests are grouped by batch key and condition size,
and each group is one pipeline call with one CPU ``torch.Generator`` per image (image ``j`` of a
request uses ``seed + j``), so an image depends on its own seed only, not on its batch mates.

Condition area: the upstream pipeline resizes the face to ``calculate_dimensions(1024 * 1024,
ratio)``, a module-level function it looks up when called. ``F2PQwenImageEditPipeline`` runs the
upstream ``__call__`` code under a copy of the module's globals in which that name reads a
context variable, so the area is a per-call argument, other pipelines in the process are not
affected, and no lock is needed.
"""

from __future__ import annotations

import contextvars
import gc
import inspect
import logging
import os
import threading
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers import QwenImageEditPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as _edit_module
from PIL import Image

from .base import (
    BusyClock,
    Engine,
    EngineOutput,
    EngineRequest,
    GenerationParams,
    ModelInfo,
    as_rgb,
    check_request,
    group_indices,
)
from .exceptions import EngineError, EngineInputError, EngineLoadError, EngineTransientError

if TYPE_CHECKING:
    from .factory import EngineConfig

logger = logging.getLogger(__name__)

DEFAULT_CONDITION_AREA = 1024 * 1024  # what diffusers uses when no area is given
MIN_CONDITION_SIDE = 32  # calculate_dimensions rounds to 32: a side of 0 means a degenerate face
F2P_ADAPTER = "f2p"
LIGHTNING_ADAPTER = "lightning"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

_condition_area: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "f2p_condition_area", default=None
)


def condition_size(face_size: tuple[int, int], area: int) -> tuple[int, int]:
    """(width, height) the pipeline resizes a face of ``face_size`` to for a condition ``area``."""
    width, height, _ = _edit_module.calculate_dimensions(area, face_size[0] / face_size[1])
    return int(width), int(height)


def _calculate_dimensions(target_area: float, ratio: float) -> tuple[int, int, None]:
    """Upstream ``calculate_dimensions`` with the area of the current call, if one was given."""
    area = _condition_area.get()
    return _edit_module.calculate_dimensions(area if area is not None else target_area, ratio)


def _with_globals(function: Callable[..., Any], **replacements: Any) -> Callable[..., Any]:
    """A copy of ``function`` (undecorated) that resolves the given global names differently."""
    raw = inspect.unwrap(function)
    missing = set(replacements) - set(raw.__code__.co_names)
    if missing:
        raise ImportError(
            f"{raw.__qualname__} no longer uses {sorted(missing)}; this diffusers version is not "
            "supported by the condition-area hook"
        )
    namespace = {**raw.__globals__, **replacements}
    copy = types.FunctionType(
        raw.__code__, namespace, raw.__name__, raw.__defaults__, raw.__closure__
    )
    copy.__kwdefaults__ = raw.__kwdefaults__
    return copy


_upstream_call = _with_globals(
    QwenImageEditPipeline.__call__, calculate_dimensions=_calculate_dimensions
)


class F2PQwenImageEditPipeline(QwenImageEditPipeline):
    """``QwenImageEditPipeline`` whose condition-image area is a per-call argument."""

    @torch.no_grad()
    def __call__(self, *args: Any, condition_area: int | None = None, **kwargs: Any) -> Any:
        """Upstream ``__call__``; ``condition_area`` (pixels) replaces its fixed 1024*1024."""
        token = _condition_area.set(condition_area)
        try:
            return _upstream_call(self, *args, **kwargs)
        finally:
            _condition_area.reset(token)


def split_weight_path(path: str, weight_name: str | None) -> tuple[str, str | None]:
    """``(repo_or_dir, weight_name)``; a path ending in ``.safetensors`` names the file itself."""
    if weight_name is None and path.endswith(".safetensors") and "/" in path:
        directory, _, name = path.rpartition("/")
        return directory, name
    return path, weight_name


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(("./", "../", "~")) or os.path.exists(path)


def load_pipeline(config: EngineConfig) -> F2PQwenImageEditPipeline:
    """Load the pipeline and its LoRA adapters as ``config`` says; raises ``EngineLoadError``.

    Steps: 1. weights, 2. LoRA adapters, 3. device or CPU offload, 4. optional compile.
    """
    # Step 1. Base weights, from a local directory or the hub (or its cache).
    path = os.path.expanduser(config.model_path)
    if _looks_local(path) and not os.path.isdir(path):
        raise EngineLoadError(f"model_path {config.model_path!r}: no such local directory")
    try:
        pipe = F2PQwenImageEditPipeline.from_pretrained(path, torch_dtype=DTYPES[config.dtype])
    except Exception as exc:
        raise EngineLoadError(
            f"cannot load the Qwen-Image-Edit pipeline from {config.model_path!r}: {exc}"
        ) from exc

    # Step 2. LoRA adapters: F2P (scaled per request), then Lightning (always at 1.0).
    adapters = []
    if config.lora_path:
        _load_lora(pipe, config.lora_path, config.lora_weight_name, F2P_ADAPTER)
        adapters.append(F2P_ADAPTER)
    if config.lightning_lora_path:
        _load_lora(pipe, config.lightning_lora_path, None, LIGHTNING_ADAPTER)
        adapters.append(LIGHTNING_ADAPTER)
    if adapters:
        pipe.set_adapters(adapters, adapter_weights=[1.0] * len(adapters))

    # Step 3. Placement.
    try:
        if config.cpu_offload:
            pipe.enable_model_cpu_offload(device=config.device)
        else:
            pipe.to(config.device)
    except Exception as exc:
        raise EngineLoadError(f"cannot place the pipeline on {config.device!r}: {exc}") from exc

    # Step 4. Compile the transformer in place (after the adapters, which it then traces).
    if config.compile:
        pipe.transformer.compile()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_lora(
    pipe: QwenImageEditPipeline, path: str, weight_name: str | None, adapter: str
) -> None:
    source, weight_name = split_weight_path(os.path.expanduser(path), weight_name)
    if _looks_local(source) and not os.path.exists(source):
        raise EngineLoadError(f"LoRA {adapter!r}: {path!r} does not exist")
    try:
        with warnings.catch_warnings():
            # PEFT warns on every adapter after the first; several adapters are intended here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            pipe.load_lora_weights(source, weight_name=weight_name, adapter_name=adapter)
    except Exception as exc:
        raise EngineLoadError(f"cannot load LoRA {adapter!r} from {path!r}: {exc}") from exc


def describe_model(config: EngineConfig) -> ModelInfo:
    """The ``ModelInfo`` of a pipeline loaded from ``config`` (revision from the hub cache)."""
    lora = "none"
    if config.lora_path:
        source, weight_name = split_weight_path(config.lora_path, config.lora_weight_name)
        lora = f"{source}/{weight_name}" if weight_name else source
    if config.lightning_lora_path:
        lora = f"{lora}+{config.lightning_lora_path}"
    return ModelInfo(name=config.model_path, revision=_revision(config.model_path), lora=lora)


def _revision(model_path: str) -> str:
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


class QwenF2PEngine(Engine):
    """Batched Qwen-Image-Edit(-F2P) generation behind the ``Engine`` interface."""

    name = "qwen-f2p"

    def __init__(
        self,
        pipe: F2PQwenImageEditPipeline,
        *,
        model_info: ModelInfo,
        max_batch_size: int = 4,
        condition_area: int | None = None,
        max_side: int = 2048,
        warmup_size: int = 1024,
        adapters: Sequence[str] = (),
    ) -> None:
        self.model_info = model_info
        self.max_batch_size = max_batch_size
        self.condition_area = condition_area or DEFAULT_CONDITION_AREA
        self.size_multiple = pipe.vae_scale_factor * 2  # VAE factor x 2x2 latent packing
        self.max_side = max_side
        self.warmup_size = warmup_size
        self._pipe: F2PQwenImageEditPipeline | None = pipe
        self._adapters = tuple(adapters)
        self._lora_scale = 1.0
        self._lock = threading.Lock()
        self._clock = BusyClock()

    @classmethod
    def from_config(cls, config: EngineConfig) -> QwenF2PEngine:
        """Load the pipeline named by ``config`` and wrap it."""
        pipe = load_pipeline(config)
        model_info = describe_model(config)
        logger.info(
            "loaded %s@%s (LoRA %s) on %s as %s",
            model_info.name,
            model_info.revision,
            model_info.lora,
            config.device,
            config.dtype,
        )
        return cls(
            pipe,
            model_info=model_info,
            max_batch_size=config.max_batch_size,
            condition_area=config.condition_area,
            adapters=loaded_adapters(config),
        )

    @property
    def pipeline(self) -> F2PQwenImageEditPipeline:
        """The loaded pipeline; ``EngineError`` once the engine is closed."""
        if self._pipe is None:
            raise EngineError(f"{self.name} engine is closed")
        return self._pipe

    @property
    def busy_seconds(self) -> float:
        """Total wall time spent inside ``generate``."""
        return self._clock.busy_seconds

    def generate(self, batch: Sequence[EngineRequest]) -> list[EngineOutput]:
        """One pipeline call per (batch key, condition size) group, outputs in batch order."""
        if not batch:
            return []
        faces = [self._checked_face(request) for request in batch]
        keys = [
            (self.batch_key(request.params), condition_size(face.size, self.condition_area))
            for request, face in zip(batch, faces, strict=True)
        ]
        outputs: list[EngineOutput | None] = [None] * len(batch)
        with self._lock, self._clock.timing():
            for indices in group_indices(keys, self.max_batch_size):
                group = [batch[i] for i in indices]
                images = self._generate_group(group, [faces[i] for i in indices])
                for index, request, request_images in zip(indices, group, images, strict=True):
                    outputs[index] = EngineOutput(request.request_id, request_images)
        return [output for output in outputs if output is not None]

    def warmup(self) -> None:
        """One 1-step generation at ``warmup_size`` (compiles kernels, fills allocator caches)."""
        side = min(self.warmup_size, self.max_side) // self.size_multiple * self.size_multiple
        params = GenerationParams(seed=0, steps=1, true_cfg_scale=1.0, width=side, height=side)
        face = Image.new("RGB", (64, 64), (128, 128, 128))
        self.generate([EngineRequest("warmup", face, "warmup", "", params)])

    def close(self) -> None:
        """Drop the pipeline and return accelerator memory."""
        with self._lock:
            self._pipe = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _checked_face(self, request: EngineRequest) -> Image.Image:
        check_request(request, multiple_of=self.size_multiple, max_side=self.max_side)
        face = as_rgb(request.face)
        width, height = condition_size(face.size, self.condition_area)
        if min(width, height) < MIN_CONDITION_SIDE:
            raise EngineInputError(
                "face",
                f"aspect ratio {face.width}x{face.height} is too extreme for the condition image",
                "INVALID_FACE",
            )
        return face

    def _generate_group(
        self, group: Sequence[EngineRequest], faces: Sequence[Image.Image]
    ) -> list[list[Image.Image]]:
        """One pipeline call for requests sharing a batch key; images per request.

        Every request is repeated ``num_images`` times rather than passed with
        ``num_images_per_prompt``: upstream tiles the condition latents batch-major
        (img0, img1, img0, img1) but the prompts request-major (p0, p0, p1, p1), which pairs
        the wrong face with a prompt when a batch has several requests and several images.
        """
        params = group[0].params
        count = params.num_images
        pipe = self.pipeline
        cfg = params.true_cfg_scale > 1
        try:
            self._apply_lora_scale(params.lora_scale)
            result = pipe(
                image=[face for face in faces for _ in range(count)],
                prompt=[request.prompt for request in group for _ in range(count)],
                negative_prompt=(
                    [request.negative_prompt or " " for request in group for _ in range(count)]
                    if cfg
                    else None
                ),
                true_cfg_scale=params.true_cfg_scale,
                num_inference_steps=params.steps,
                width=params.width,
                height=params.height,
                num_images_per_prompt=1,
                generator=[
                    torch.Generator(device="cpu").manual_seed((request.params.seed + j) % 2**64)
                    for request in group
                    for j in range(count)
                ],
                output_type="pil",
                condition_area=self.condition_area,
            )
        except torch.OutOfMemoryError as exc:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise EngineTransientError(
                f"{self.name}: out of memory on a batch of {len(group)} x {count} images "
                f"at {params.width}x{params.height}"
            ) from exc
        except Exception as exc:
            raise EngineError(f"{self.name}: pipeline call failed: {exc!r}") from exc
        images = [as_rgb(image) for image in result.images]
        expected = (params.width, params.height)
        if len(images) != len(group) * count or any(im.size != expected for im in images):
            raise EngineError(
                f"{self.name}: pipeline returned {[im.size for im in images]}, expected "
                f"{len(group) * count} images of {expected}"
            )
        return [images[i * count : (i + 1) * count] for i in range(len(group))]

    def _apply_lora_scale(self, scale: float) -> None:
        """Weight the F2P adapter by ``scale`` (Lightning stays at 1.0); no-op if unchanged."""
        if F2P_ADAPTER not in self._adapters or scale == self._lora_scale:
            return
        weights: Mapping[str, float] = {LIGHTNING_ADAPTER: 1.0, F2P_ADAPTER: scale}
        self.pipeline.set_adapters(
            list(self._adapters), adapter_weights=[weights[name] for name in self._adapters]
        )
        self._lora_scale = scale


def loaded_adapters(config: EngineConfig) -> tuple[str, ...]:
    """Names of the adapters ``load_pipeline(config)`` loads, in load order."""
    names = []
    if config.lora_path:
        names.append(F2P_ADAPTER)
    if config.lightning_lora_path:
        names.append(LIGHTNING_ADAPTER)
    return tuple(names)
