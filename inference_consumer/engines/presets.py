"""Speed presets, the steps/CFG policy under Lightning, and counting transformer evaluations.

Presets (names as in the Avro enum ``Preset``; matched case-insensitively):

============  ===================================================  ==========================
preset        what runs                                            evaluations per image
============  ===================================================  ==========================
``QUALITY``   the base model with the request's own steps and      steps x 2 with true CFG
              CFG (model card: 50 steps, CFG 4.0 -> 100)           (x 1 without)
``FAST``      the 8-step Lightning LoRA: 8 steps, CFG 1            8
``FASTEST``   the 4-step Lightning LoRA: 4 steps, CFG 1, plus the  4, or 3 with the TaylorSeer
              worker's cache hook if one is configured             hook (steps 0, 1, 3 run)
============  ===================================================  ==========================

A worker serves ``QUALITY`` and the Lightning preset of the Lightning file it loaded (a file is
distilled for 8 or 4 steps; one file, one preset). A request names a preset or leaves it to the
worker's default.

Policy for requests that do not fit (one rule, stated once):

* A preset this worker cannot serve (its Lightning file is not loaded here), or an unknown name,
  is a permanent input error: ``EngineInputError`` on ``params.preset`` with code
  ``PRESET_UNAVAILABLE`` / ``INVALID_PARAMETER``. Silently running another preset would change
  the cost (up to 25x) or the look of the image behind the caller's back.
* Under a Lightning preset the preset owns steps and CFG: the request's ``steps`` and
  ``true_cfg_scale`` are clamped to the distilled values (e.g. 28 steps, CFG 4 -> 8 steps, CFG 1)
  and the output carries a ``note`` saying so. Lightning was distilled for exactly these values
  (lightx2v runs it with ``--steps 8 --cfg 1.0``); other values only cost more and look worse,
  and the schema's defaults (28 steps, CFG 4) would otherwise make every defaulted request fail.

This module is pure Python: ``sim`` uses it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .exceptions import EngineInputError

QUALITY = "QUALITY"
FAST = "FAST"
FASTEST = "FASTEST"
PRESETS = (QUALITY, FAST, FASTEST)
LIGHTNING_STEPS = {FAST: 8, FASTEST: 4}  # the steps each Lightning file was distilled for
LIGHTNING_CFG = 1.0
# The Qwen-Image-Edit model card (and lightx2v's "Run Base Edit Model": --steps 50 --cfg 4.0).
MODEL_CARD_STEPS = 50
MODEL_CARD_CFG = 4.0
MIN_QUALITY_STEPS = 2


def canonical(name: object) -> str:
    """``"fast"`` (or an enum whose value is ``"FAST"``) → ``"FAST"``; else ``ValueError``."""
    value = getattr(name, "value", name)
    upper = value.upper() if isinstance(value, str) else ""
    if upper not in PRESETS:
        raise ValueError(f"{str(value)[:40]!r} is not one of {', '.join(PRESETS)}")
    return upper


def preset_for_lightning_steps(steps: int) -> str:
    """The preset a Lightning file distilled for ``steps`` (8 or 4) serves."""
    for preset, preset_steps in LIGHTNING_STEPS.items():
        if preset_steps == steps:
            return preset
    raise ValueError(f"Lightning files are distilled for 4 or 8 steps, not {steps}")


@dataclass(frozen=True)
class CacheSchedule:
    """Which denoising steps a TaylorSeer hook computes; the others are predicted.

    Mirrors diffusers 0.39 ``TaylorSeerCacheHook._measure_should_compute``: a step computes if
    ``step < before`` (warm-up) or ``(step - before - 1) % interval == 0``.
    """

    before: int
    interval: int

    def computes(self, step: int) -> bool:
        """True if step ``step`` (0-based) runs the transformer blocks."""
        return step < self.before or (step - self.before - 1) % self.interval == 0

    def computed_steps(self, steps: int) -> int:
        """How many of the first ``steps`` steps run the blocks."""
        return sum(1 for step in range(steps) if self.computes(step))


# For 4 Lightning steps: 0 and 1 fill the Taylor factors, 2 is predicted, 3 computes -> 3 of 4.
# (A first-order prediction needs two computed steps; predicting two of four was not tried
# without a GPU to judge the images, so the schedule stays conservative.)
FASTEST_CACHE = CacheSchedule(before=2, interval=2)
# Set on the hook for every other preset: never predicts, so the hook costs a copy, not quality.
NEVER_PREDICT = CacheSchedule(before=1_000_000, interval=1)


@dataclass(frozen=True)
class Plan:
    """What one request actually runs: its preset, steps, CFG, adapters and cache schedule."""

    preset: str
    steps: int
    true_cfg_scale: float
    lightning: bool
    cache: CacheSchedule | None
    note: str | None = None

    @property
    def cfg_factor(self) -> int:
        """Transformer passes per step: 2 with true CFG (a conditional and an unconditional)."""
        return 2 if self.true_cfg_scale > 1 else 1

    def evaluations(self, steps_executed: int | None = None) -> int:
        """Transformer evaluations per image for the first ``steps_executed`` steps (all)."""
        steps = self.steps if steps_executed is None else min(steps_executed, self.steps)
        computed = steps if self.cache is None else self.cache.computed_steps(steps)
        return computed * self.cfg_factor


@dataclass(frozen=True)
class PresetTable:
    """The presets one worker serves, its default, and the cache hook ``FASTEST`` uses."""

    available: tuple[str, ...] = (QUALITY,)
    default: str = QUALITY
    fastest_cache: CacheSchedule | None = None

    def __post_init__(self) -> None:
        if self.default not in self.available:
            raise ValueError(
                f"default preset {self.default} is not served here "
                f"(this worker serves {', '.join(self.available)})"
            )

    def plan(self, preset: str | None, steps: int, true_cfg_scale: float) -> Plan:
        """The ``Plan`` of a request; ``EngineInputError`` if its preset cannot be served."""
        name = self.default if preset is None else _parse(preset)
        if name not in self.available:
            raise EngineInputError(
                "params.preset",
                f"{name} is not served by this worker (it serves {', '.join(self.available)})",
                "PRESET_UNAVAILABLE",
            )
        if name == QUALITY:
            if steps < MIN_QUALITY_STEPS:
                # Qwen-Image-Edit's schedule stretches its last sigma to shift_terminal (0.02);
                # for one step that is 0/0: NaN latents, a black image.
                raise EngineInputError(
                    "params.steps",
                    f"{steps} < {MIN_QUALITY_STEPS}, the fewest steps Qwen-Image-Edit's "
                    "schedule is defined for (use FAST or FASTEST for few steps)",
                    "INVALID_PARAMETER",
                )
            return Plan(QUALITY, steps, true_cfg_scale, lightning=False, cache=None)
        target = LIGHTNING_STEPS[name]
        changes = []
        if steps != target:
            changes.append(f"steps {steps}->{target}")
        if true_cfg_scale != LIGHTNING_CFG:
            changes.append(f"true_cfg_scale {true_cfg_scale:g}->{LIGHTNING_CFG:g}")
        note = None
        if changes:
            note = (
                f"preset {name}: {', '.join(changes)} (the Lightning LoRA is distilled for "
                f"{target} steps without CFG)"
            )
        cache = self.fastest_cache if name == FASTEST else None
        return Plan(name, target, LIGHTNING_CFG, lightning=True, cache=cache, note=note)

    def key(self, preset: str | None, steps: int, true_cfg_scale: float) -> tuple:
        """A batching key of the effective preset, steps and CFG; never raises.

        Requests clamped to the same Lightning values share a key; an unservable preset gets
        its own key, and ``generate`` then fails that request with a code.
        """
        try:
            plan = self.plan(preset, steps, true_cfg_scale)
        except EngineInputError:
            return ("invalid-preset", str(preset)[:40], steps, true_cfg_scale)
        return (plan.preset, plan.steps, plan.true_cfg_scale)


def _parse(preset: str) -> str:
    try:
        return canonical(preset)
    except ValueError as exc:
        raise EngineInputError("params.preset", str(exc), "INVALID_PARAMETER") from None


def table_for(
    *,
    lightning_steps: int | None,
    default: str | None,
    cache: str = "none",
    extra: Sequence[str] = (),
) -> PresetTable:
    """The ``PresetTable`` of a worker from its settings (``ValueError`` if inconsistent).

    ``lightning_steps`` is the distillation of the loaded Lightning file (``None``: none
    loaded); ``default`` is the configured default preset (``None``: the Lightning preset if one
    is loaded, else ``QUALITY``); ``extra`` adds presets a simulated engine pretends to serve.
    """
    available = [QUALITY]
    if lightning_steps is not None:
        available.append(preset_for_lightning_steps(lightning_steps))
    available += [canonical(name) for name in extra if canonical(name) not in available]
    ordered = tuple(name for name in PRESETS if name in available)
    if default is None:
        chosen = preset_for_lightning_steps(lightning_steps) if lightning_steps else QUALITY
    else:
        chosen = canonical(default)
    fastest_cache = FASTEST_CACHE if cache == "taylorseer" else None
    return PresetTable(available=ordered, default=chosen, fastest_cache=fastest_cache)
