"""Errors raised by inference engines.

The worker sorts them into its bins: ``EngineInputError`` is permanent for that request (a FAILED
result with ``.code``), ``EngineTransientError`` is retried later, and any other ``EngineError``
is a failure of the engine itself (logged with its cause; the worker decides whether to retry).
"""

from __future__ import annotations

from f2p_errors import F2PError, InvalidInput


class EngineError(F2PError):
    """An engine failed to load or to generate."""


class EngineLoadError(EngineError):
    """The model, its LoRA adapters or its device could not be loaded; the message says which."""


class EngineInputError(EngineError, InvalidInput):
    """The request cannot be served by this engine (e.g. a size it cannot make): permanent.

    Also an ``InvalidInput``, so it carries ``field`` (``params.width``), ``reason`` and the
    machine-readable ``code`` (``UNSUPPORTED_SIZE``, ``INVALID_PARAMETER``, ``INVALID_FACE``).
    """


class EngineTransientError(EngineError):
    """The request may succeed if retried later (e.g. the accelerator ran out of memory)."""


class EngineInterrupted(EngineError):
    """A request alone in its batch was cancelled between denoising steps; nothing was made.

    ``steps_executed`` is how many denoising steps ran before the stop (the GPU time spent).
    """

    def __init__(self, request_id: str, steps_executed: int) -> None:
        super().__init__(f"request {request_id[:200]} cancelled after {steps_executed} step(s)")
        self.request_id = request_id
        self.steps_executed = steps_executed
