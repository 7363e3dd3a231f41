"""Errors of the stream processors."""

from __future__ import annotations

from f2p_errors import ConfigError, F2PError


class StreamsError(F2PError):
    """Base of every error the stream processors raise on purpose."""


class StreamsConfigError(StreamsError, ConfigError):
    """A stream processor setting is invalid or a topic it needs is missing."""
