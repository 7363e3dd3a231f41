"""`f2p publish` against hostile input and broken surroundings (issue 7, items 15 and 16).

Hostile arguments and JSON lines end in a refusal naming the field and a code, never in a
traceback; an unreachable registry, S3 or Kafka (closed loopback ports) or a wrong S3 secret
ends in one line that says where and why, within seconds, with nothing sent and every request
counted once.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time

import pytest
from click.testing import CliRunner
from connector_helpers import (
    cli_env,
    lane_end_offsets,
    private_topics,
    run_f2p,
    suffix_of,
    wait_until,
)

from connectors.cli import publish_cmd
from connectors.kafka import make_producer
from connectors.publish_batch import publish_all, sample_requests
from connectors.publisher import Publisher
from schemas.images import make_sample_face

pytestmark = pytest.mark.integration


@pytest.fixture
def private_settings(stack_settings, admin, unique_name):
    with private_topics(stack_settings, admin, unique_name) as settings:
        yield settings


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _invoke(settings, args: list[str]):
    env = {"F2P_TOPIC_SUFFIX": suffix_of(settings)}
    return CliRunner().invoke(publish_cmd, args, env=env)


def _no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def test_hostile_arguments_are_refused_by_field_and_code(private_settings, tmp_path) -> None:
    base = ["--count", "1", "--tenant", "acme"]
    cases = [
        # (extra args, exit code, text in the output)
        (["--prompt", "studio \udcff photo"], 1, "prompt: must be valid Unicode text"),
        (["--negative-prompt", "\udcfe"], 1, "negative_prompt: must be valid Unicode text"),
        (["--attr", "sku=a\udcffb"], 1, "attributes.sku: must be valid Unicode text"),
        (["--attr", "s\udcffku=v"], 1, "[INVALID_TEXT]"),
        (["--deadline-s", "nan"], 1, "deadline_s: must be more than 0"),
        (["--deadline-s", "inf"], 1, "[INVALID_DEADLINE]"),
        (["--deadline-s", "1e20"], 1, "[INVALID_DEADLINE]"),
        (["--deadline-s", "-1e20"], 1, "[INVALID_DEADLINE]"),
        (["--cfg", "nan"], 1, "params.true_cfg_scale: must be between"),
        (["--rate", "nan"], 2, "'nan' is not a finite number"),
        (["--rate", "1e-300"], 2, "--rate"),
        (["--duplicate-fraction", "nan"], 2, "'nan' is not a finite number"),
        (["--count", "99999999999999999999"], 2, "--count"),
        (["--distinct-faces", "99999999999"], 2, "--distinct-faces"),
    ]
    before = lane_end_offsets(private_settings)
    for extra, code, text in cases:
        args = [*base, *extra]
        if "--count" in extra:
            args = ["--tenant", "acme", *extra]
        result = _invoke(private_settings, args)
        _no_traceback(result)
        assert result.exit_code == code, (extra, result.output)
        assert text in result.output, (extra, result.output)
    assert lane_end_offsets(private_settings) == before


def test_undecodable_command_line_bytes_are_refused_not_a_traceback(private_settings) -> None:
    # A real argv: bytes that are not UTF-8 (Python turns them into lone surrogates).
    env = cli_env(private_settings)
    before = lane_end_offsets(private_settings)
    done = run_f2p(["publish", "--count", "1", "--tenant", "acme", "--prompt", "caf\udce9"], env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "prompt: must be valid Unicode text" in done.stderr and "[INVALID_TEXT]" in done.stderr
    assert lane_end_offsets(private_settings) == before


def test_hostile_json_lines_are_refused_by_line_and_code(private_settings, tmp_path) -> None:
    (tmp_path / "face.png").write_bytes(make_sample_face(seed=5))
    ok = '"tenant": "acme", "prompt": "p", "face": "face.png"'
    lines = {
        # name: (raw line, code, text)
        "surrogate prompt": (b'{"tenant": "acme", "prompt": "a\\ud800", "face": "face.png"}',
                             "INVALID_TEXT", "line 1: prompt: must be valid Unicode text"),
        "surrogate attr": (('{' + ok + ', "attributes": {"k": "\\udfff"}}').encode(),
                           "INVALID_TEXT", "line 1: attributes.k"),
        "deadline NaN": (('{' + ok + ', "deadline_s": NaN}').encode(), "INVALID_DEADLINE",
                         "line 1: deadline_s"),
        "deadline 1e300": (('{' + ok + ', "deadline_s": 1e300}').encode(), "INVALID_DEADLINE",
                           "line 1: deadline_s"),
        "deadline Infinity": (('{' + ok + ', "deadline_s": Infinity}').encode(),
                              "INVALID_DEADLINE", "line 1: deadline_s"),
        "not UTF-8": (b'{"tenant": "acme", "prompt": "\xff\xfe", "face": "face.png"}',
                      "INVALID_TEXT", "line 1: is not UTF-8"),
        "nested too deep": (b"[" * 100_000 + b"]" * 100_000, "INVALID_JSON", "nested too deeply"),
        "5000-digit seed": (('{' + ok + ', "seed": ' + "9" * 5000 + "}").encode(),
                            "INVALID_JSON", "line 1: invalid JSON"),
        "NUL in face path": (b'{"tenant": "acme", "prompt": "p", "face": "fa\\u0000ce.png"}',
                             "MISSING_IMAGE", "line 1: face: cannot read"),
        "surrogate face path": (b'{"tenant": "acme", "prompt": "p", "face": "\\ud800.png"}',
                                "MISSING_IMAGE", "line 1: face: cannot read"),
        "face not a string": (b'{"tenant": "acme", "prompt": "p", "face": {"a": 1}}',
                              "MISSING_IMAGE", "line 1: face: must be a path"),
        "too long": (b'{"prompt": "' + b"p" * (2 * 1024 * 1024) + b'"}', "INVALID_JSON",
                     "longer than"),
    }  # fmt: skip
    before = lane_end_offsets(private_settings)
    for name, (raw, code, text) in lines.items():
        path = tmp_path / "in.jsonl"
        path.write_bytes(raw + b"\n")
        result = _invoke(private_settings, ["--from-jsonl", str(path)])
        _no_traceback(result)
        assert result.exit_code == 1, (name, result.output)
        assert f"[{code}]" in result.output and text in result.output, (name, result.output)
    assert lane_end_offsets(private_settings) == before


def test_an_unreachable_registry_is_one_line_naming_it(private_settings) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    env = {**cli_env(private_settings), "F2P_REGISTRY_URL": url}
    before = lane_end_offsets(private_settings)
    done = run_f2p(["publish", "--count", "1", "--tenant", "acme"], env, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: schema registry at {url} is unavailable: ConnectError: "
                      "[Errno 111] Connection refused"], done.stderr  # fmt: skip
    assert lane_end_offsets(private_settings) == before


def _publish_json(settings, env_extra: dict[str, str], count: int = 3):
    env = {**cli_env(settings), **env_extra}
    started = time.monotonic()
    done = run_f2p(
        ["publish", "--count", str(count), "--distinct-faces", str(count), "--tenant", "acme",
         "--json"], env, timeout=90,
    )  # fmt: skip
    return done, time.monotonic() - started


def test_a_wrong_s3_secret_says_why_and_that_nothing_was_sent(private_settings) -> None:
    before = lane_end_offsets(private_settings)
    done, _ = _publish_json(private_settings, {"F2P_S3_SECRET_KEY": "not-the-secret"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["failed"] == {"UPLOAD_FAILED": 1} and summary["delivered"] == 0
    assert summary["not_sent"] == 2  # the first failure stopped the rest
    cause = summary["errors"]["UPLOAD_FAILED"]
    assert "SignatureDoesNotMatch" in cause
    assert private_settings.s3_endpoint_url in cause and "was not sent" in cause
    assert summary["failed_request_ids"] == summary["request_ids"]
    assert lane_end_offsets(private_settings) == before


def test_a_closed_s3_port_says_why_and_that_nothing_was_sent(private_settings) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    before = lane_end_offsets(private_settings)
    done, took = _publish_json(private_settings, {"F2P_S3_ENDPOINT_URL": endpoint})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["failed"] == {"UPLOAD_FAILED": 1} and summary["not_sent"] == 2
    cause = summary["errors"]["UPLOAD_FAILED"]
    assert endpoint in cause and "EndpointConnectionError" in cause and "was not sent" in cause
    assert took < 30
    assert lane_end_offsets(private_settings) == before

    text = run_f2p(["publish", "--count", "1", "--tenant", "acme"],
                   {**cli_env(private_settings), "F2P_S3_ENDPOINT_URL": endpoint})  # fmt: skip
    assert "(failed: not delivered)" in text.stdout
    assert "failed: 1 UPLOAD_FAILED: request " in text.stdout and endpoint in text.stdout


def test_an_unreachable_kafka_fails_fast_with_one_clear_error(private_settings) -> None:
    # The subject exists (as in production, where `f2p schemas register` ran): the run gets as
    # far as Kafka.
    assert _publish_json(private_settings, {}, count=1)[0].returncode == 0
    bootstrap = f"127.0.0.1:{closed_port()}"
    done, took = _publish_json(private_settings, {"F2P_BOOTSTRAP_SERVERS": bootstrap}, count=1)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: Kafka at {bootstrap} did not answer a metadata request" in done.stderr
    assert "nothing was sent" in done.stderr
    assert took < 30, took  # was 121 s (delivery.timeout.ms + flush)
    print(f"unreachable Kafka reported after {took:.1f} s")


def test_a_request_pending_at_the_deadline_is_counted_once(private_settings) -> None:
    unreachable = dataclasses.replace(
        private_settings, bootstrap_servers=f"127.0.0.1:{closed_port()}"
    )
    producer = make_producer(unreachable, delivery_timeout_ms=1500, config={"log_level": 0})
    publisher = Publisher(unreachable, producer=producer, inline_small_images=True)
    try:
        samples = sample_requests(publisher, 1, {"tenant": "acme"})
        summary = publish_all(publisher, samples, expected=1, first_alone=False,
                              flush_timeout_s=0.5)  # fmt: skip
        assert summary.failed == {"NOT_DELIVERED_IN_TIME": 1}
        # Its delivery report (_MSG_TIMED_OUT) comes later: it must not count a second time.
        wait_until(lambda: publisher.pending == 0, 30, "the late delivery report")
        assert summary.failed == {"NOT_DELIVERED_IN_TIME": 1}
        assert summary.delivered + sum(summary.failed.values()) == summary.sent == 1
    finally:
        publisher.close(timeout=5)
