"""Structured logging for every f2p process.

``F2P_LOG_FORMAT=json`` (default ``text``)
emits one JSON object per line. Context such as ``request_id``, ``worker_id``, ``topic``,
``partition`` and ``offset`` is passed with ``extra=`` and becomes a field in both formats::

    log.info("result committed", extra={"request_id": rid, "status": "OK"})
"""

from __future__ import annotations

import json
import logging
import os
import sys

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the ``extra`` context."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable line with the ``extra`` context appended as key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return line


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Install the formatter on the root logger (idempotent)."""
    fmt = fmt or os.environ.get("F2P_LOG_FORMAT", "text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # librdkafka's own chatter (connection refused while a broker restarts) is for debugging.
    logging.getLogger("librdkafka").setLevel(max(logging.WARNING, root.level))
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
