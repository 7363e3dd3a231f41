"""``sim``: a simulated GPU that takes as long as the real model and returns real images.

Latency model (one ``generate`` call on a batch)::

    service_time = seconds_per_step            # 0.3 s: one transformer pass of the 20B MMDiT
                                               #   at 1024x1024 on an H100/H200-class GPU
                 * evaluations                 # transformer passes per image under its preset:
                                               #   steps x 2 with true CFG; 8 for FAST, 4 (3 with
                                               #   the TaylorSeer hook) for FASTEST (presets.py)
                 * (width * height / 1024**2)  # attention-heavy, roughly linear in pixels here
                 * n_images_total ** 0.85      # batch efficiency: 4 images cost ~3.25x one
                 * jitter                      # lognormal, sigma 0.05, mean 1
                 * time_scale                  # 0 = no sleep at all (control-plane benchmarks)

Calibration (DESIGN.md, published H100/H200 figures): ~0.6 s per denoising step with true CFG,
i.e. 0.3 s per transformer pass. With the defaults, 1024x1024: 40-50 steps with CFG take 24-30 s,
8 Lightning steps without CFG 2.4 s (~3 s quoted). ``F2P_SIM_SECONDS_PER_STEP`` changes it.

A batch that mixes parameters (which the worker does not send)
uses the image-weighted mean of the per-image cost in place of the first four factors. The jitter
is seeded by the engine seed and the batch's request ids and seeds, so ``service_time(batch)`` is
a pure function the benchmarks can call to compute the expected duty cycle.

``generate`` first draws the images, then sleeps until ``service_time`` has passed since it
started, so drawing counts as GPU time. It sleeps in one slice per denoising step and, like the
real engines, stops with ``EngineInterrupted`` between slices when the only request of the call
is cancelled. Images are deterministic in (seed, image index, prompt,
face): a two-colour gradient, the face pasted at a seeded place, a few seeded shapes. Drawing
costs a few milliseconds at 1024x1024.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw

from .base import (
    BusyClock,
    Engine,
    EngineOutput,
    EngineRequest,
    ModelInfo,
    as_rgb,
    check_request,
)
from .exceptions import EngineInputError, EngineInterrupted
from .presets import Plan, PresetTable

REFERENCE_AREA = 1024 * 1024
BATCH_EXPONENT = 0.85
JITTER_SIGMA = 0.05
SIZE_MULTIPLE = 16  # same rule as the real pipeline, so sim rejects what qwen-f2p rejects
MAX_SIDE = 2048

_RAMP = Image.linear_gradient("L").crop((0, 0, 1, 256))  # 1x256, black at the top to white
_DIRECTIONS = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
)


class SimEngine(Engine):
    """A simulated GPU engine: real images, simulated service time (see the module docstring)."""

    name = "sim"

    def __init__(
        self,
        *,
        max_batch_size: int = 4,
        seconds_per_step: float = 0.3,
        time_scale: float = 1.0,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        presets: PresetTable | None = None,
    ) -> None:
        self.model_info = ModelInfo(name="sim", revision="latency-model-2", lora=None)
        self.presets = presets or PresetTable()
        self.max_batch_size = max_batch_size
        self.seconds_per_step = seconds_per_step
        self.time_scale = time_scale
        self.seed = seed
        self._sleep = sleep
        self._clock = BusyClock()
        self._lock = threading.Lock()

    @property
    def busy_seconds(self) -> float:
        """Total wall time spent inside ``generate`` (drawing plus simulated service time)."""
        return self._clock.busy_seconds

    @property
    def calls(self) -> int:
        """Number of ``generate`` calls so far."""
        return self._clock.calls

    def service_time(self, batch: Sequence[EngineRequest]) -> float:
        """Simulated seconds ``generate(batch)`` takes, ``time_scale`` included."""
        if not batch or self.time_scale == 0:
            return 0.0
        weighted_cost = 0.0
        total_images = 0
        for request in batch:
            params = request.params
            area_factor = params.width * params.height / REFERENCE_AREA
            evaluations = self._plan_or_raw(request).evaluations()
            weighted_cost += evaluations * area_factor * params.num_images
            total_images += params.num_images
        mean_cost = weighted_cost / total_images
        return (
            self.seconds_per_step
            * mean_cost
            * total_images**BATCH_EXPONENT
            * self._jitter(batch)
            * self.time_scale
        )

    def generate(self, batch: Sequence[EngineRequest]) -> list[EngineOutput]:
        """Draw the images of ``batch``, then sleep out the rest of its service time."""
        plans = []
        for request in batch:
            check_request(request, multiple_of=SIZE_MULTIPLE, max_side=MAX_SIDE)
            params = request.params
            plans.append(self.presets.plan(params.preset, params.steps, params.true_cfg_scale))
        lone = batch[0] if len(batch) == 1 else None
        with self._lock, self._clock.timing():
            start = time.perf_counter()
            service_time = self.service_time(batch)
            steps = max((plan.steps for plan in plans), default=0)
            if lone is not None and lone.cancelled is not None and lone.cancelled():
                raise EngineInterrupted(lone.request_id, 0)
            images = [
                [draw_image(request, index) for index in range(request.params.num_images)]
                for request in batch
            ]
            executed = self._sleep_steps(start, service_time, steps, lone)
        return [
            EngineOutput(
                request_id=request.request_id,
                images=request_images,
                transformer_evaluations=plan.evaluations(executed),
                steps_executed=executed,
                preset=plan.preset,
                note=plan.note,
            )
            for request, request_images, plan in zip(batch, images, plans, strict=True)
        ]

    def _sleep_steps(
        self, start: float, service_time: float, steps: int, lone: EngineRequest | None
    ) -> int:
        """Sleep until ``start + service_time`` in ``steps`` slices; the steps executed.

        Slice ``i`` ends at ``start + service_time * (i + 1) / steps``; with an injected sleep
        that does not advance the clock, each slice still sleeps its own share only.
        """
        reached = time.perf_counter()
        for step in range(steps):
            if service_time > 0:
                target = start + service_time * (step + 1) / steps
                remaining = target - max(time.perf_counter(), reached)
                if remaining > 0:
                    self._sleep(remaining)
                reached = target
            last_step = step + 1 == steps  # a request done at its last step is not interrupted
            if (
                lone is not None
                and lone.cancelled is not None
                and not last_step
                and lone.cancelled()
            ):
                raise EngineInterrupted(lone.request_id, step + 1)
        return steps

    def _plan_or_raw(self, request: EngineRequest) -> Plan:
        """The request's plan; for a preset this engine cannot serve, its raw steps and CFG."""
        params = request.params
        try:
            return self.presets.plan(params.preset, params.steps, params.true_cfg_scale)
        except EngineInputError:
            return Plan("?", params.steps, params.true_cfg_scale, lightning=False, cache=None)

    def _jitter(self, batch: Sequence[EngineRequest]) -> float:
        """Lognormal factor with mean 1, seeded by the engine seed and the batch's identity."""
        identity = "|".join(f"{r.request_id}:{r.params.seed}" for r in batch)
        rng = random.Random(_digest(f"jitter|{self.seed}|{identity}"))
        return rng.lognormvariate(-(JITTER_SIGMA**2) / 2, JITTER_SIGMA)


def draw_image(request: EngineRequest, index: int = 0) -> Image.Image:
    """A cheap, deterministic RGB image of the requested size for image ``index`` of ``request``."""
    params = request.params
    width, height = params.width, params.height
    rng = random.Random(_digest(f"image|{params.seed + index}|{request.prompt}"))

    # Step 1. A two-colour linear gradient in a seeded direction: coloured as a 1x256 strip,
    # then stretched (one resize of a strip is the cheapest way to fill a large image). The
    # strip is one C-level blend of two flat strips through the ramp: building per-channel
    # lookup tables in Python cost ~80 us an image, half of drawing a 64x64 one.
    start, end = _colour(rng), _colour(rng)
    strip = Image.composite(
        Image.new("RGB", (1, 256), end), Image.new("RGB", (1, 256), start), _RAMP
    )
    direction = rng.choice(_DIRECTIONS)
    if direction is not None:
        strip = strip.transpose(direction)
    image = strip.resize((width, height), Image.Resampling.BILINEAR)

    # Step 2. A few seeded shapes.
    draw = ImageDraw.Draw(image)
    short_side = min(width, height)
    for _ in range(3):
        size = max(2, int(short_side * rng.uniform(0.08, 0.25)))
        x, y = rng.randrange(0, max(1, width - size)), rng.randrange(0, max(1, height - size))
        box = (x, y, x + size, y + size)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=_colour(rng))
        else:
            draw.rectangle(box, fill=_colour(rng))

    # Step 3. The face, resized to about 40 % of the short side, at a seeded place.
    side = max(1, int(short_side * 0.4))
    face = as_rgb(request.face).resize((side, side), Image.Resampling.BILINEAR)
    image.paste(face, (rng.randrange(0, width - side + 1), rng.randrange(0, height - side + 1)))
    return image


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def expected_service_time(
    *,
    steps: int,
    true_cfg_scale: float,
    width: int,
    height: int,
    images: int = 1,
    seconds_per_step: float = 0.3,
) -> float:
    """The latency model without jitter or time scale, for sizing benchmarks and tests.

    For a ``QUALITY`` request (steps and CFG as given); a Lightning preset's cost is that of its
    own steps without CFG.
    """
    cfg_factor = 2.0 if true_cfg_scale > 1 else 1.0
    area_factor = width * height / REFERENCE_AREA
    return seconds_per_step * steps * cfg_factor * area_factor * images**BATCH_EXPONENT


__all__ = ["SimEngine", "draw_image", "expected_service_time"]
