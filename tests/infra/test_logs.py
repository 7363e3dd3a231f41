"""Logs are bounded whatever the input: per line (formatters) and per template (rate limit)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from f2p_errors import ConfigError
from infra.logs import (
    MAX_EXC_CHARS,
    MAX_FIELD_CHARS,
    MAX_MESSAGE_CHARS,
    JsonFormatter,
    RateLimitFilter,
    TextFormatter,
    configure_logging,
    parse_rate_limit,
)

MIB = 1024 * 1024
# Message + 32 fields of 64-char names and 256-char values + exception + fixed parts.
MAX_LINE = MAX_MESSAGE_CHARS + 32 * (64 + MAX_FIELD_CHARS + 40) + MAX_EXC_CHARS + 512


def hostile_record() -> logging.LogRecord:
    key = b"k3y-" * (MIB // 4)
    try:
        raise ValueError("bad key " + key.decode())
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "inference_consumer.handler",
        logging.WARNING,
        __file__,
        1,
        "dead letter for %s: %s",
        (key.decode(), "x" * MIB),
        exc_info,
    )
    record.request_id = key.decode()  # what the old worker logged on every line
    record.raw_key = key
    record.partitions = list(range(100_000))
    record.offset = 42
    for i in range(100):
        record.__dict__[f"field_{i}"] = "v" * 1000
    return record


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_a_line_is_bounded_whatever_its_input(formatter: logging.Formatter) -> None:
    line = formatter.format(hostile_record())
    assert len(line) <= MAX_LINE, len(line)
    assert "chars]" in line  # a cut says how much it left out
    if isinstance(formatter, JsonFormatter):
        payload = json.loads(line)
        assert len(payload["msg"]) <= MAX_MESSAGE_CHARS + 40
        assert len(payload["request_id"]) <= MAX_FIELD_CHARS + 40
        assert len(payload["exc"]) <= MAX_EXC_CHARS + 60
        # The middle of the traceback is cut: its first frames and the exception's end stay.
        assert payload["exc"].startswith("Traceback") and "chars cut]" in payload["exc"]
        assert payload["exc"].endswith("k3y-")
        assert payload["offset"] == 42  # numbers stay numbers
        assert payload["fields_cut"] > 0


def test_text_lines_cannot_be_forged_by_input() -> None:
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "bad %s", ("a\n2026-01-01 ERROR forged",), None
    )
    record.topic = "t\r\nforged=1"
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert "a\\n2026-01-01 ERROR forged" in line


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, name: str = "w", level: int = logging.WARNING):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_the_rate_limit_passes_a_burst_then_summarises_the_rest() -> None:
    clock, emitted = Clock(), []
    limiter = RateLimitFilter(5, 10.0, emit=emitted.append, clock=clock)
    passed = sum(limiter.filter(record("dead letter: %s", i)) for i in range(1000))
    assert passed == 5
    # Another template, logger or level has its own budget.
    assert limiter.filter(record("request failed: %s", 1))
    assert limiter.filter(record("dead letter: %s", 1, name="other"))
    assert limiter.filter(record("dead letter: %s", 1, level=logging.ERROR))
    assert emitted == []
    clock.now = 10.5
    assert limiter.filter(record("dead letter: %s", 1000))
    [summary] = emitted
    assert summary.getMessage().startswith("… 995 similar lines suppressed")
    assert summary.suppressed == 995 and summary.levelno == logging.WARNING
    assert limiter.filter(summary)  # a summary is never itself suppressed


def test_a_flood_that_stops_is_still_summarised() -> None:
    clock, emitted = Clock(), []
    limiter = RateLimitFilter(2, 1.0, emit=emitted.append, clock=clock)
    for i in range(10):
        limiter.filter(record("poison %s", i))
    clock.now = 5.0
    limiter.filter(record("something else"))  # any later line sweeps the ended windows
    assert [r.suppressed for r in emitted] == [8]


def test_distinct_templates_share_one_budget_beyond_the_table() -> None:
    limiter = RateLimitFilter(3, 10.0, max_keys=10, clock=Clock())
    passed = sum(limiter.filter(record(f"f-string with input {i}")) for i in range(10_000))
    assert passed == 10 + 3  # 10 tracked templates (1 line each) + the shared budget of 3


def test_configure_logging_installs_the_limit(monkeypatch) -> None:
    monkeypatch.setenv("F2P_LOG_RATE_LIMIT", "3/60")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        stream = io.StringIO()
        root.handlers[0].setStream(stream)
        log = logging.getLogger("tests.flood")
        for i in range(100):
            log.warning("poison %d", i, extra={"key": "k" * 10_000})
        lines = stream.getvalue().splitlines()
        assert len(lines) == 3
        assert all(len(line) < 1000 for line in lines)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


@pytest.mark.parametrize("raw", ["", "x/1", "0/10", "5/0", "5/nan", "5/inf", "-1/2", "1e9/1"])
def test_a_bad_rate_limit_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="F2P_LOG_RATE_LIMIT"):
        parse_rate_limit(raw)


def test_rate_limit_values() -> None:
    assert parse_rate_limit("20/10") == (20, 10.0)
    assert parse_rate_limit("0") is None
    assert parse_rate_limit("7") == (7, 1.0)


def test_pending_summaries_are_written_when_the_handler_closes() -> None:
    from infra.logs import LimitedStreamHandler

    stream = io.StringIO()
    handler = LimitedStreamHandler(stream, 2, 3600.0)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.close")
    log.addHandler(handler)
    log.propagate = False
    try:
        for i in range(50):
            log.warning("poison %d", i)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    handler.close()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e.get("suppressed") for e in entries] == [None, None, 48]
