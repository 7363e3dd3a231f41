"""The project's base exceptions, shared by every package.

Each package has its own ``exceptions.py`` whose classes derive from these, so that a caller can
catch ``F2PError`` for anything the project raises on purpose.
"""

from __future__ import annotations


class F2PError(Exception):
    """Base of every error f2p-stream raises on purpose."""


class ConfigError(F2PError):
    """A setting (env var, flag, config file) is missing or invalid; the message names it."""


class InvalidInput(F2PError):
    """An external input failed validation.

    ``field`` is the dotted path of the offending field (``params.steps``) and ``reason`` a short
    human sentence; ``code`` is the machine-readable reason that ends up in FAILED results and
    DLQ records (``INVALID_PARAMETER``, ``NOT_AN_IMAGE``, ...).
    """

    def __init__(self, field: str, reason: str, code: str = "INVALID_INPUT") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code
