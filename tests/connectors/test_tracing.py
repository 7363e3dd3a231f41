"""One W3C trace per request, publisher → admission → worker stages → commit (real stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from connectors import tracing

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_one_trace_per_request_through_every_stage(pipeline) -> None:
    suffix = pipeline.topics.results.removeprefix("f2p.results.v1")
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("tracing_scenario.py")), suffix, "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    spans = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    traces: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        traces[span["trace"]].append(span)
    by_request = {
        s["request_id"]: s["trace"] for s in spans if s["name"] == "publish" and s["request_id"]
    }
    assert len(by_request) == 5
    expected = {
        "publish",
        "admission",
        "worker",
        "prefetch",
        "queue wait",
        "engine",
        "upload",
        "commit",
    }
    for request_id, trace_id in by_request.items():
        names = [s["name"] for s in traces[trace_id]]
        assert expected <= set(names), (request_id, names)
        ids = {s["span"]: s for s in traces[trace_id]}
        worker = next(s for s in traces[trace_id] if s["name"] == "worker")
        publish = next(s for s in traces[trace_id] if s["name"] == "publish")
        # Admission takes one hop, or two when the request's repartition partition was not yet
        # serving here (at start-up): ingress → "repartitioned" → admitted, each hop a span and
        # the second a child of the first. The worker continues the hop that admitted.
        hops = sorted(
            (s for s in traces[trace_id] if s["name"] == "admission"), key=lambda s: s["start"]
        )
        assert [h["outcome"] for h in hops[:-1]] == ["repartitioned"] * (len(hops) - 1), hops
        assert hops[-1]["outcome"] == "accepted", hops
        assert [h["parent"] for h in hops] == [publish["span"]] + [h["span"] for h in hops[:-1]]
        assert len(hops) <= 2, hops
        assert worker["parent"] == hops[-1]["span"]
        for stage in ("prefetch", "queue wait", "engine", "upload", "commit"):
            child = next(s for s in traces[trace_id] if s["name"] == stage)
            assert child["parent"] == worker["span"], stage
            assert worker["start"] <= child["start"] <= child["end"] <= worker["end"], stage
        assert all(s["parent"] is None or s["parent"] in ids for s in traces[trace_id])


def test_trace_context_from_untrusted_headers_is_parsed_or_ignored() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = tracing.extract([("traceparent", good.encode())])
    assert tracing.has_span(ctx)
    for bad in (
        b"\xff" * 55,
        b"00-zz-yy-01",
        b"x" * 5000,
        b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",
    ):
        assert not tracing.has_span(tracing.extract([("traceparent", bad)]))
    # Falls back to the record's trace_context when the headers carry none.
    assert tracing.has_span(tracing.extract([], {"traceparent": good}))
