"""The engine interface the worker codes against, and helpers every engine shares.

An engine turns a batch of face-to-photo requests into images. The worker groups requests whose
``Engine.batch_key`` is equal into one ``generate`` call of at most ``max_batch_size`` requests,
calls it from a single inference thread, and maps the ``EngineError`` subclasses it raises
(``exceptions.py``) to retries or FAILED results.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

from .exceptions import EngineInputError
from .presets import PresetTable


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one request; validated upstream, shape-checked again by engines.

    ``num_images`` images are made per request; image ``j`` uses seed ``seed + j``.
    """

    seed: int
    steps: int
    true_cfg_scale: float
    width: int
    height: int
    num_images: int = 1
    lora_scale: float = 1.0
    preset: str | None = None  # QUALITY / FAST / FASTEST (any case); None: the worker's default


@dataclass(frozen=True)
class EngineRequest:
    """One request as the engine sees it: decoded face, prompts and parameters.

    ``cancelled`` is polled between denoising steps: when it returns True and the request is
    alone in its ``generate`` call, the engine stops and raises ``EngineInterrupted``; in a
    batch of several the others are not held back, and the worker drops this one's output.
    """

    request_id: str
    face: Image.Image
    prompt: str
    negative_prompt: str
    params: GenerationParams
    cancelled: Callable[[], bool] | None = None


@dataclass(frozen=True)
class EngineOutput:
    """The images of one request: ``params.num_images`` RGB images of exactly width x height.

    ``transformer_evaluations`` counts the transformer forward passes that ran for each image
    (steps x 2 with true CFG, fewer where a cache hook predicted a step): the cost of an image
    without a GPU clock. ``preset`` is the preset that ran (``QUALITY``/``FAST``/``FASTEST``),
    ``note`` says how the request's parameters were adjusted to it (``None``: not at all).
    """

    request_id: str
    images: list[Image.Image]
    transformer_evaluations: int = 0
    steps_executed: int = 0
    preset: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What produced an image, recorded with every result (model, its revision, the LoRAs).

    ``lora`` is ``None`` when no LoRA is loaded (the result schema's null), never ``"none"``.
    """

    name: str
    revision: str
    lora: str | None


class Engine(ABC):
    """A text+face to image generator behind the worker.

    ``generate`` is called from one thread at a time; implementations also hold a lock so a
    misbehaving caller cannot run two batches on one model at once.
    """

    name: str
    model_info: ModelInfo
    max_batch_size: int
    presets: PresetTable = PresetTable()

    def batch_key(self, params: GenerationParams, prompt: str | None = None) -> tuple:
        """Requests whose keys are equal may share one ``generate`` call.

        The seed is not part of the key: every image gets its own generator. The preset part is
        the *effective* preset, steps and CFG, so requests clamped to the same Lightning values
        share a batch. ``prompt`` matters only to engines whose attention backend cannot take
        padded batches (they add the prompt's token count); it never raises.
        """
        return (
            params.width,
            params.height,
            params.num_images,
            params.lora_scale,
            *self.presets.key(params.preset, params.steps, params.true_cfg_scale),
        )

    @abstractmethod
    def generate(self, batch: Sequence[EngineRequest]) -> list[EngineOutput]:
        """Generate the images of ``batch``; outputs are in the order of ``batch``.

        Raises ``EngineInputError`` (permanent), ``EngineTransientError`` (retry later) or
        ``EngineError`` (the engine failed).
        """

    def warmup(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Run one small generation so the first real batch pays no one-off costs."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release the model and its memory; the engine is unusable afterwards."""


class BusyClock:
    """Accumulates the wall time spent inside ``generate`` (for the GPU duty-cycle figures)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = 0.0
        self._calls = 0

    @property
    def busy_seconds(self) -> float:
        """Total seconds spent generating since the engine was created."""
        with self._lock:
            return self._busy

    @property
    def calls(self) -> int:
        """Number of ``generate`` calls timed so far."""
        with self._lock:
            return self._calls

    @contextmanager
    def timing(self, clock: Callable[[], float] = time.perf_counter) -> Iterator[None]:
        """Add the duration of the ``with`` body to ``busy_seconds``, even if it raises."""
        start = clock()
        try:
            yield
        finally:
            elapsed = clock() - start
            with self._lock:
                self._busy += elapsed
                self._calls += 1


def check_request(
    request: EngineRequest, *, multiple_of: int, max_side: int, max_num_images: int = 16
) -> None:
    """Fail fast with an ``EngineInputError`` if ``request`` cannot be served.

    Sizes must be positive multiples of ``multiple_of`` (the VAE factor times the 2x2 latent
    packing, 16 for Qwen-Image) and at most ``max_side``; the face must be a non-empty image.
    """
    params = request.params
    for field, value in (("width", params.width), ("height", params.height)):
        if not isinstance(value, int) or value <= 0 or value % multiple_of:
            raise EngineInputError(
                f"params.{field}",
                f"{value} is not a positive multiple of {multiple_of}",
                "UNSUPPORTED_SIZE",
            )
        if value > max_side:
            raise EngineInputError(
                f"params.{field}",
                f"{value} exceeds this engine's maximum of {max_side}",
                "UNSUPPORTED_SIZE",
            )
    if not isinstance(params.steps, int) or params.steps < 1:
        raise EngineInputError("params.steps", f"{params.steps} is not >= 1", "INVALID_PARAMETER")
    if not isinstance(params.num_images, int) or not 1 <= params.num_images <= max_num_images:
        raise EngineInputError(
            "params.num_images",
            f"{params.num_images} is not in [1, {max_num_images}]",
            "INVALID_PARAMETER",
        )
    for field, scale in (
        ("true_cfg_scale", params.true_cfg_scale),
        ("lora_scale", params.lora_scale),
    ):
        if not math.isfinite(scale) or scale < 0:
            raise EngineInputError(
                f"params.{field}", f"{scale} is not a finite number >= 0", "INVALID_PARAMETER"
            )
    face = request.face
    if not isinstance(face, Image.Image) or face.width < 1 or face.height < 1:
        raise EngineInputError("face", "is not a non-empty image", "INVALID_FACE")


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB mode (faces may arrive as L, RGBA, P, CMYK...)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def group_indices(keys: Sequence[tuple], max_size: int) -> list[list[int]]:
    """Indices of ``keys`` grouped by equal key (first-seen order), chunked to ``max_size``."""
    groups: dict[tuple, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [
        indices[start : start + max_size]
        for indices in groups.values()
        for start in range(0, len(indices), max_size)
    ]
