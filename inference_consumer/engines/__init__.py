"""Inference engines behind one interface: ``sim`` (simulated GPU), ``tiny``, ``qwen-f2p``.

Importing this package does not import torch; ``create_engine`` imports it for ``tiny`` and
``qwen-f2p`` only.
"""

from .base import Engine, EngineOutput, EngineRequest, GenerationParams, ModelInfo
from .exceptions import EngineError, EngineInputError, EngineLoadError, EngineTransientError
from .factory import EngineConfig, create_engine

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineInputError",
    "EngineLoadError",
    "EngineOutput",
    "EngineRequest",
    "EngineTransientError",
    "GenerationParams",
    "ModelInfo",
    "create_engine",
]
