"""Structured, bounded logging for every f2p process.

``F2P_LOG_FORMAT=json`` (default ``text``)
emits one JSON object per line. Context such as ``request_id``, ``worker_id``, ``topic``,
``partition`` and ``offset`` is passed with ``extra=`` and becomes a field in both formats::

    log.info("result committed", extra={"request_id": rid, "status": "OK"})

Logs are bounded, whatever the input (issue 7: one 1.2 MiB Kafka key, logged on every line of
a retry loop, wrote 782 MB of log in 65 s):

* **per line** (both formatters): the message is cut at ``MAX_MESSAGE_CHARS``, every ``extra``
  field at ``MAX_FIELD_CHARS`` (at most ``MAX_FIELDS`` of them), an exception's text at
  ``MAX_EXC_CHARS`` (its middle is cut: the outer frames and the exception line stay). A cut
  says how much it left out. The text format also escapes line breaks in the message and fields,
  so input cannot forge a log line.
* **per template** (``RateLimitFilter`` on the handler): at most ``burst`` lines per ``period_s``
  for each (logger, level, message template); past that, lines are counted, not written, and one
  "… N similar lines suppressed" line reports them when the period is over. A flood of poison
  therefore adds a bounded number of lines per period whatever its rate.
  ``F2P_LOG_RATE_LIMIT="<lines>/<seconds>"`` (default ``20/10``; ``0``: no limit).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from f2p_errors import ConfigError

MAX_MESSAGE_CHARS = 2048
MAX_FIELD_CHARS = 256
MAX_FIELDS = 32
MAX_EXC_CHARS = 8192

DEFAULT_RATE_LIMIT = "20/10"

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters (plus a note of how many were left out)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars]"


def cut_middle(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, keeping its head and its tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n…[{len(text) - 2 * half} chars cut]…\n{text[-half:]}"


def _field(value: object) -> object:
    """A context value for a log line: numbers as they are, anything else as bounded text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value[: MAX_FIELD_CHARS + 1])  # never repr a megabyte to keep 256 chars
        return cut(repr(data), MAX_FIELD_CHARS) + ("" if len(value) <= len(data) else "…")
    return cut(str(value), MAX_FIELD_CHARS)


def _context(record: logging.LogRecord) -> dict[str, object]:
    """The record's ``extra`` fields, bounded in number, name length and value length."""
    items = [
        (k, v) for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    ]
    context = {cut(str(k), 64): _field(v) for k, v in items[:MAX_FIELDS]}
    if len(items) > MAX_FIELDS:
        context["fields_cut"] = len(items) - MAX_FIELDS
    return context


def _message(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception as exc:  # a bad format string must not lose the line
        message = f"{record.msg!s:.{MAX_MESSAGE_CHARS}} (unformattable: {exc!r:.200})"
    return cut(message, MAX_MESSAGE_CHARS)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the ``extra`` context."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
            **_context(record),
        }
        if record.exc_info:
            payload["exc"] = cut_middle(self.formatException(record.exc_info), MAX_EXC_CHARS)
        if record.stack_info:
            payload["stack"] = cut_middle(self.formatStack(record.stack_info), MAX_EXC_CHARS)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable line with the ``extra`` context appended as key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _one_line(_message(record))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return cut_middle(super().formatException(ei), MAX_EXC_CHARS)

    def formatStack(self, stack_info: str) -> str:
        return cut_middle(super().formatStack(stack_info), MAX_EXC_CHARS)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if context:
            head, sep, tail = line.partition("\n")  # the context goes on the message's line
            pairs = " ".join(f"{k}={_one_line(str(v))}" for k, v in context.items())
            line = f"{head} {pairs}{sep}{tail}"
        return line


@dataclass
class _Window:
    start: float
    lines: int = 0
    suppressed: int = 0
    template: str = ""


# The key of templates beyond ``max_keys`` (f-string messages with input in them, say): they
# share one budget, so that distinct messages cannot get around the limit either.
_OVERFLOW = ("*", 0, "*")


class RateLimitFilter(logging.Filter):
    """At most ``burst`` lines per ``period_s`` per (logger, level, message template); then one
    summary line per period with the number suppressed (written through ``emit``)."""

    def __init__(
        self,
        burst: int = 20,
        period_s: float = 10.0,
        *,
        emit: Callable[[logging.LogRecord], object] | None = None,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.period_s = period_s
        self.emit = emit
        self.max_keys = max_keys
        self.clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_f2p_summary", False):
            return True
        template = str(record.msg)[:200]
        key = (record.name, record.levelno, template)
        now = self.clock()
        summaries: list[tuple[tuple[str, int, str], _Window]] = []
        with self._lock:
            if now - self._last_sweep >= self.period_s:
                summaries += self._sweep(now)
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self.max_keys:
                key = _OVERFLOW
                window = self._windows.get(key)
            if window is not None and now - window.start >= self.period_s:
                if window.suppressed:
                    summaries.append((key, window))
                window = None
            if window is None:
                window = self._windows[key] = _Window(now, template=template)
            window.lines += 1
            allowed = window.lines <= self.burst
            if not allowed:
                window.suppressed += 1
        for summary_key, ended in summaries:
            self._summary(summary_key, ended)
        return allowed

    def flush(self) -> None:
        """Write the summary of every window that suppressed lines now (at exit, say)."""
        with self._lock:
            pending = [(k, w) for k, w in self._windows.items() if w.suppressed]
            for key, _ in pending:
                del self._windows[key]
        for key, window in pending:
            self._summary(key, window)

    def _sweep(self, now: float) -> list[tuple[tuple[str, int, str], _Window]]:
        """Drop windows that are over (keeps the table small); those that suppressed lines
        are returned for their summary."""
        self._last_sweep = now
        ended = [(k, w) for k, w in self._windows.items() if now - w.start >= self.period_s]
        for k, _ in ended:
            del self._windows[k]
        return [(k, w) for k, w in ended if w.suppressed]

    def _summary(self, key: tuple[str, int, str], window: _Window) -> None:
        if self.emit is None:
            return
        name, level, _ = key
        record = logging.LogRecord(
            name if name != "*" else "f2p.logs",
            level or logging.WARNING,
            __file__,
            0,
            "… %d similar lines suppressed (more than %d in %.0f s): %s",
            (window.suppressed, self.burst, self.period_s, window.template[:200]),
            None,
        )
        record._f2p_summary = True
        record.suppressed = window.suppressed
        self.emit(record)


def parse_rate_limit(raw: str) -> tuple[int, float] | None:
    """``"20/10"`` → (20 lines, 10 s); ``"0"`` → None (no limit); ConfigError when malformed."""
    text = raw.strip()
    if text in ("0", "off", "none"):
        return None
    lines, sep, seconds = text.partition("/")
    try:
        burst, period = int(lines), (float(seconds) if sep else 1.0)
    except ValueError:
        burst, period = 0, 0.0
    if not 1 <= burst <= 1_000_000 or not 0 < period <= 86_400:
        raise ConfigError(
            f"F2P_LOG_RATE_LIMIT must be <lines>/<seconds> (e.g. 20/10) or 0, got {raw[:40]!r}"
        )
    return burst, period


class LimitedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """A stream handler with a ``RateLimitFilter`` whose pending summaries are written when the
    handler closes (``logging.shutdown`` at exit): a flood just before exit is reported too."""

    def __init__(self, stream: Any, burst: int, period_s: float) -> None:
        super().__init__(stream)
        self.limiter = RateLimitFilter(burst, period_s, emit=self.handle)
        self.addFilter(self.limiter)

    def close(self) -> None:
        try:
            self.limiter.flush()
        finally:
            super().close()


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Install the formatter and the rate limit on the root logger (idempotent)."""
    fmt = fmt or os.environ.get("F2P_LOG_FORMAT", "text")
    limit = parse_rate_limit(os.environ.get("F2P_LOG_RATE_LIMIT", DEFAULT_RATE_LIMIT))
    handler = (
        logging.StreamHandler(sys.stderr)
        if limit is None
        else LimitedStreamHandler(sys.stderr, *limit)
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # librdkafka's own chatter (connection refused while a broker restarts) is for debugging.
    logging.getLogger("librdkafka").setLevel(max(logging.WARNING, root.level))
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
