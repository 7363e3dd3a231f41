"""Inference engines behind one interface: ``sim`` (simulated GPU), ``tiny``, ``qwen-f2p``.

Importing this package does not import torch; ``create_engine`` imports it for ``tiny`` and
``qwen-f2p`` only.
"""

from .base import Engine, EngineOutput, EngineRequest, GenerationParams, ModelInfo
from .config import EngineConfig
from .exceptions import (
    EngineError,
    EngineInputError,
    EngineInterrupted,
    EngineLoadError,
    EngineTransientError,
)
from .factory import create_engine

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineInputError",
    "EngineInterrupted",
    "EngineLoadError",
    "EngineOutput",
    "EngineRequest",
    "EngineTransientError",
    "GenerationParams",
    "ModelInfo",
    "create_engine",
]
