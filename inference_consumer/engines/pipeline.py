"""``F2PQwenImageEditPipeline``: ``QwenImageEditPipeline`` with a per-call condition area.

The upstream pipeline resizes the face to ``calculate_dimensions(1024 * 1024, ratio)``, a
module-level function it looks up when called. ``F2PQwenImageEditPipeline`` runs the upstream
``__call__`` code under a copy of the module's globals in which that name reads a context
variable, so the area is a per-call argument, other pipelines in the process are not affected,
and no lock is needed.
"""

from __future__ import annotations

import contextvars
import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from diffusers import QwenImageEditPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as _edit_module

DEFAULT_CONDITION_AREA = 1024 * 1024  # what diffusers uses when no area is given

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
