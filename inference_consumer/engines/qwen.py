"""``qwen-f2p``: Qwen-Image-Edit with the F2P LoRA, speed presets, batched and counted.

Loading is ``loading.load_pipeline`` (weights, verified adapters, speed settings). Generating
(``QwenF2PEngine.generate``):

1. Each request gets its ``Plan`` (``presets.py``): preset, effective steps and CFG, whether the
   Lightning adapter and scheduler run, the cache schedule. A preset this worker cannot serve is
   an ``EngineInputError`` with a code.
2. Requests are grouped by plan, size, LoRA scale, condition size and — for attention backends
   that cannot take a padding mask — prompt token count; each group is one pipeline call with
   one CPU ``torch.Generator`` per image (image ``j`` of a request uses ``seed + j``), so an
   image depends on its own seed only, not on its batch mates.
3. Before each call the scheduler (base or Lightning), the adapter weights (F2P at the request's
   scale, Lightning at 1 or 0) and the cache schedule are set; they are per-call settings of a
   pipeline that only this engine's lock-holder drives.
4. Between denoising steps ``callback_on_step_end`` counts the steps and, when the call serves a
   single request whose ``cancelled()`` turns true, stops it: ``EngineInterrupted``.
5. Every output reports its preset, steps executed and transformer evaluations per image.
"""

from __future__ import annotations

import copy
import gc
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from . import acceleration
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
from .exceptions import EngineError, EngineInputError, EngineInterrupted, EngineTransientError
from .loading import F2P_ADAPTER, LIGHTNING_ADAPTER, describe_lora, load_pipeline, model_revision
from .pipeline import DEFAULT_CONDITION_AREA, F2PQwenImageEditPipeline, condition_size
from .presets import QUALITY, Plan, PresetTable

if TYPE_CHECKING:
    from .config import EngineConfig

logger = logging.getLogger(__name__)

MIN_CONDITION_SIDE = 32  # calculate_dimensions rounds to 32: a side of 0 means a degenerate face
QUALITY_WARMUP_STEPS = 3  # enough to pass every branch of the cache hook's update path
WARMUP_PROMPTS = ("warmup", "warmup: a longer prompt, so that the batch needs a padding mask")


class _Cancelled(Exception):
    """Raised from the step callback to stop a cancelled call; never leaves the engine."""

    def __init__(self, steps: int) -> None:
        super().__init__(steps)
        self.steps = steps


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
        warmup_sizes: Sequence[tuple[int, int]] = ((1024, 1024),),
        adapters: Sequence[str] = (),
        presets: PresetTable | None = None,
        lightning_scheduler: Any = None,
        cache_hooks: Sequence[Any] = (),
        attention_backend: str = "native",
        compiled: bool = False,
    ) -> None:
        self.model_info = model_info
        self.max_batch_size = max_batch_size
        self.condition_area = condition_area or DEFAULT_CONDITION_AREA
        self.size_multiple = pipe.vae_scale_factor * 2  # VAE factor x 2x2 latent packing
        self.max_side = max_side
        self.warmup_sizes = tuple(warmup_sizes)
        self.presets = presets or PresetTable()
        self.attention_backend = attention_backend
        self.compiled = compiled
        self._pipe: F2PQwenImageEditPipeline | None = pipe
        self._adapters = tuple(adapters)
        self._base_scheduler = pipe.scheduler
        self._lightning_scheduler = lightning_scheduler
        self._cache_hooks = list(cache_hooks)
        self._padded_batches = acceleration.takes_padded_batches(attention_backend)
        self._adapter_weights: tuple[float, ...] | None = None
        # Token counts for batch keys are asked from the worker's threads while a call runs:
        # a copy of the tokenizer, behind its own lock (fast tokenizers refuse concurrent use).
        self._template = getattr(pipe, "prompt_template_encode", "{}")
        self._key_tokenizer = None if self._padded_batches else copy.deepcopy(pipe.tokenizer)
        self._key_lock = threading.Lock()
        self._lock = threading.Lock()
        self._clock = BusyClock()
        self._graphs = acceleration.GraphCounter()
        self._recompiles_seen = 0

    @classmethod
    def from_config(cls, config: EngineConfig) -> QwenF2PEngine:
        """Load the pipeline named by ``config`` and wrap it."""
        loaded = load_pipeline(config)
        model_info = ModelInfo(
            name=config.model_path,
            revision=model_revision(config.model_path),
            lora=describe_lora(config),
        )
        logger.info(
            "loaded %s@%s (LoRA %s) on %s as %s; presets %s, default %s",
            model_info.name,
            model_info.revision,
            model_info.lora,
            config.device,
            config.dtype,
            ",".join(loaded.presets.available),
            loaded.presets.default,
        )
        return cls(
            loaded.pipe,
            model_info=model_info,
            max_batch_size=config.max_batch_size,
            condition_area=config.condition_area,
            warmup_sizes=config.warmup_sizes or ((1024, 1024),),
            adapters=loaded.adapters,
            presets=loaded.presets,
            lightning_scheduler=loaded.lightning_scheduler,
            cache_hooks=loaded.cache_hooks,
            attention_backend=config.attention_backend,
            compiled=loaded.compiled,
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

    @property
    def recompiles(self) -> int:
        """Graphs torch.compile made after warm-up (0 uncompiled): export it as a metric."""
        return self._graphs.since_warm() if self.compiled else 0

    def batch_key(self, params: GenerationParams, prompt: str | None = None) -> tuple:
        """The base key, plus the prompt's token count where padded batches cannot run."""
        key = super().batch_key(params)
        if prompt is not None and not self._padded_batches:
            return (*key, self._prompt_tokens(prompt))
        return key

    def generate(self, batch: Sequence[EngineRequest]) -> list[EngineOutput]:
        """One pipeline call per group of compatible requests; outputs in batch order."""
        if not batch:
            return []
        faces, plans = [], []
        for request in batch:
            faces.append(self._checked_face(request))
            params = request.params
            plans.append(self.presets.plan(params.preset, params.steps, params.true_cfg_scale))
        keys = [self._group_key(r, f, p) for r, f, p in zip(batch, faces, plans, strict=True)]
        cancelled = batch[0].cancelled if len(batch) == 1 else None
        outputs: list[EngineOutput | None] = [None] * len(batch)
        with self._lock, self._clock.timing():
            for indices in group_indices(keys, self.max_batch_size):
                group = [batch[i] for i in indices]
                plan = plans[indices[0]]
                images, executed = self._generate_group(
                    group, [faces[i] for i in indices], plan, cancelled
                )
                for index, request_images in zip(indices, images, strict=True):
                    outputs[index] = EngineOutput(
                        request_id=batch[index].request_id,
                        images=request_images,
                        transformer_evaluations=plans[index].evaluations(executed),
                        steps_executed=executed,
                        preset=plans[index].preset,
                        note=plans[index].note,
                    )
            self._note_recompiles()
        return [output for output in outputs if output is not None]

    def warmup(self) -> None:
        """Run every served preset at every warm-up size, alone and batched, then mark warm.

        Batches of one and two (and a padded one where the backend takes masks) are the graph
        variants torch.compile specialises on; after this, ``recompiles`` counts what traffic
        made compile again. Uncompiled, one call per preset fills allocator caches.
        """
        face = Image.new("RGB", (64, 64), (128, 128, 128))
        sizes = [self._fit(w, h) for w, h in self.warmup_sizes] or [self._fit(1024, 1024)]
        if not self.compiled:
            sizes = sizes[:1]
        for preset in self.presets.available:
            quality = preset == QUALITY
            for width, height in sizes:
                params = GenerationParams(
                    seed=0, steps=QUALITY_WARMUP_STEPS if quality else 1,
                    true_cfg_scale=4.0 if quality else 1.0, width=width, height=height,
                    preset=preset,
                )  # fmt: skip
                for prompts in self._warmup_batches():
                    self.generate(
                        [
                            EngineRequest(f"warmup-{i}", face, prompt, "", params)
                            for i, prompt in enumerate(prompts)
                        ]
                    )
        self._graphs.mark_warm()
        self._recompiles_seen = 0
        if self.compiled:
            logger.info("warm: %d compiled graphs", acceleration.GraphCounter.total())

    def close(self) -> None:
        """Drop the pipeline and return accelerator memory."""
        with self._lock:
            self._pipe = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- helpers, in the order generate calls them -------------------------------------------------

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

    def _group_key(self, request: EngineRequest, face: Image.Image, plan: Plan) -> tuple:
        params = request.params
        key: tuple = (
            plan.preset, plan.steps, plan.true_cfg_scale, params.width, params.height,
            params.num_images, params.lora_scale, condition_size(face.size, self.condition_area),
        )  # fmt: skip
        if not self._padded_batches:
            # Same condition size, so the same image tokens: equal text tokens, no mask.
            negative = (request.negative_prompt or " ") if plan.cfg_factor == 2 else ""
            key += (self._prompt_tokens(request.prompt), self._prompt_tokens(negative))
        return key

    def _prompt_tokens(self, prompt: str) -> int:
        """Text tokens of ``prompt`` in the encoder template (the condition image's aside)."""
        tokenizer = self._key_tokenizer
        assert tokenizer is not None, "keys by prompt length exist only without padded batches"
        with self._key_lock:
            return len(tokenizer(self._template.format(prompt))["input_ids"])

    def _generate_group(
        self,
        group: Sequence[EngineRequest],
        faces: Sequence[Image.Image],
        plan: Plan,
        cancelled: Callable[[], bool] | None,
    ) -> tuple[list[list[Image.Image]], int]:
        """One pipeline call for requests sharing a plan; (images per request, steps run).

        Every request is repeated ``num_images`` times rather than passed with
        ``num_images_per_prompt``: upstream tiles the condition latents batch-major
        (img0, img1, img0, img1) but the prompts request-major (p0, p0, p1, p1), which pairs
        the wrong face with a prompt when a batch has several requests and several images.
        """
        params = group[0].params
        count = params.num_images
        pipe = self.pipeline
        if cancelled is not None and cancelled():
            raise EngineInterrupted(group[0].request_id, 0)
        executed = 0

        def on_step_end(_pipe: Any, step: int, _t: Any, _kwargs: dict) -> dict:
            nonlocal executed
            executed = step + 1
            if cancelled is not None and executed < plan.steps and cancelled():
                raise _Cancelled(executed)
            return {}

        try:
            self._configure(plan, params.lora_scale)
            result = pipe(
                image=[face for face in faces for _ in range(count)],
                prompt=[request.prompt for request in group for _ in range(count)],
                negative_prompt=(
                    [request.negative_prompt or " " for request in group for _ in range(count)]
                    if plan.cfg_factor == 2
                    else None
                ),
                true_cfg_scale=plan.true_cfg_scale,
                num_inference_steps=plan.steps,
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
                callback_on_step_end=on_step_end,
            )
        except _Cancelled as stop:
            self._reset_hooks()
            raise EngineInterrupted(group[0].request_id, stop.steps) from None
        except torch.OutOfMemoryError as exc:
            self._reset_hooks()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise EngineTransientError(
                f"{self.name}: out of memory on a batch of {len(group)} x {count} images "
                f"at {params.width}x{params.height}"
            ) from exc
        except Exception as exc:
            self._reset_hooks()
            raise EngineError(f"{self.name}: pipeline call failed: {exc!r}") from exc
        images = [as_rgb(image) for image in result.images]
        expected = (params.width, params.height)
        if len(images) != len(group) * count or any(im.size != expected for im in images):
            raise EngineError(
                f"{self.name}: pipeline returned {[im.size for im in images]}, expected "
                f"{len(group) * count} images of {expected}"
            )
        return [images[i * count : (i + 1) * count] for i in range(len(group))], executed

    def _configure(self, plan: Plan, lora_scale: float) -> None:
        """Scheduler, adapter weights and cache schedule of ``plan`` (no-ops when unchanged)."""
        pipe = self.pipeline
        if plan.lightning and self._lightning_scheduler is None:
            raise EngineError(f"{self.name}: {plan.preset} needs the Lightning adapter")
        scheduler = self._lightning_scheduler if plan.lightning else self._base_scheduler
        if pipe.scheduler is not scheduler:
            pipe.scheduler = scheduler
        weights = {F2P_ADAPTER: lora_scale, LIGHTNING_ADAPTER: 1.0 if plan.lightning else 0.0}
        wanted = tuple(weights[name] for name in self._adapters)
        if self._adapters and wanted != self._adapter_weights:
            pipe.set_adapters(list(self._adapters), adapter_weights=list(wanted))
            self._adapter_weights = wanted
        acceleration.set_cache_schedule(self._cache_hooks, plan.cache)

    def _reset_hooks(self) -> None:
        """After an aborted call: reset cache-hook state (and offload hooks) as upstream does."""
        try:
            self.pipeline.maybe_free_model_hooks()
        except Exception:  # the original failure matters more than a failed cleanup
            logger.exception("resetting the pipeline hooks failed")

    def _note_recompiles(self) -> None:
        recompiles = self.recompiles
        if recompiles > self._recompiles_seen:
            logger.warning(
                "torch.compile made %d graph(s) after warm-up (%d in all): add the new shape to "
                "F2P_ENGINE_WARMUP_SIZES",
                recompiles - self._recompiles_seen,
                recompiles,
            )
            self._recompiles_seen = recompiles

    def _warmup_batches(self) -> list[tuple[str, ...]]:
        batches: list[tuple[str, ...]] = [WARMUP_PROMPTS[:1]]
        if self.compiled and self.max_batch_size >= 2:
            batches.append((WARMUP_PROMPTS[0], WARMUP_PROMPTS[0]))
            if self._padded_batches:
                batches.append(WARMUP_PROMPTS)
        return batches

    def _fit(self, width: int, height: int) -> tuple[int, int]:
        def side(value: int) -> int:
            clamped = max(self.size_multiple, min(value, self.max_side))
            return clamped // self.size_multiple * self.size_multiple

        return side(width), side(height)
