"""``create_engine``: the engine an ``EngineConfig`` names.

Settings live in ``config.py`` (re-exported here for old imports). Torch and diffusers are
imported only when a ``tiny`` or ``qwen-f2p`` engine is created.
"""

from __future__ import annotations

from f2p_errors import ConfigError

from .base import Engine
from .config import ENGINE_NAMES, EngineConfig
from .presets import PRESETS, table_for

__all__ = ["EngineConfig", "create_engine"]


def create_engine(config: EngineConfig) -> Engine:
    """Build the engine ``config.name`` names (loading weights for ``tiny`` and ``qwen-f2p``)."""
    if config.name == "sim":
        from .sim import SimEngine

        try:
            # A simulated GPU pretends to hold every adapter, so every preset can be asked for.
            presets = table_for(
                lightning_steps=None, default=config.preset, cache=config.cache, extra=PRESETS
            )
        except ValueError as exc:
            raise ConfigError(f"preset: {exc}") from None
        return SimEngine(
            max_batch_size=config.max_batch_size,
            seconds_per_step=config.sim_seconds_per_step,
            time_scale=config.sim_time_scale,
            seed=config.seed,
            presets=presets,
        )
    if config.name == "tiny":
        from .tiny import TinyEngine

        return TinyEngine.from_config(config)
    if config.name == "qwen-f2p":
        from .qwen import QwenF2PEngine

        return QwenF2PEngine.from_config(config)
    raise ConfigError(f"engine {config.name!r} is not one of {', '.join(ENGINE_NAMES)}")
