"""Distributed tracing: one W3C trace per request, from the publisher through admission and the
worker's stages to the committed result.

The trace context travels twice on every hop: in the record itself (``trace_context``, the
``traceparent``/``tracestate`` a publisher set) and in the Kafka headers of each message
(``traceparent``/``tracestate`` of the span that wrote it). Headers win when both parse; both
are untrusted input and go through OpenTelemetry's W3C propagator, which accepts only a
well-formed ``traceparent`` (55 characters of hex and dashes).

Spans are made with OpenTelemetry's API; with no SDK configured they are no-ops (no cost beyond
a function call). ``configure_tracing`` installs the SDK with an OTLP/HTTP exporter when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set — the
standard OpenTelemetry variables (service name, headers, sampler) apply — or with any exporter a
test passes in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_PROPAGATOR = TraceContextTextMapPropagator()
_MAX_HEADER = 512  # W3C: traceparent 55 chars; tracestate at most 512

Headers = Sequence[tuple[str, bytes | None]] | None
Context = otel_context.Context


def configure_tracing(service_name: str, *, exporter: Any = None) -> bool:
    """Install the OpenTelemetry SDK for this process; True when spans will be exported.

    Without ``exporter`` and without an OTLP endpoint in the environment, nothing is installed
    and tracing stays a no-op.
    """
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter is None and not endpoint:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
        processor: Any = BatchSpanProcessor(exporter)
    else:
        processor = SimpleSpanProcessor(exporter)
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    log.info("tracing to %s as %s", endpoint or type(exporter).__name__, name)
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer("f2p-stream")


def enabled() -> bool:
    """Whether spans go anywhere (skip building post-hoc spans when they would not)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def extract(headers: Headers = None, fields: Mapping[str, str] | None = None) -> Context:
    """The parent context from Kafka headers, else from a record's ``trace_context`` map."""
    carrier = {
        name: value.decode("ascii", errors="replace")
        for name, value in headers or ()
        if name in (TRACEPARENT, TRACESTATE) and value is not None and len(value) <= _MAX_HEADER
    }
    if TRACEPARENT not in carrier and fields:
        carrier = {
            k: v
            for k, v in fields.items()
            if k in (TRACEPARENT, TRACESTATE) and len(v) <= _MAX_HEADER
        }
    return _PROPAGATOR.extract(carrier)


def inject(span_or_context: Span | Context | None = None) -> dict[str, str]:
    """The W3C fields of a span (or context); ``{}`` when there is nothing to propagate."""
    ctx: Context | None
    if isinstance(span_or_context, Span):
        ctx = trace.set_span_in_context(span_or_context)
    else:
        ctx = span_or_context
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier


def headers_of(fields: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """``inject()``'s fields as Kafka headers."""
    return [(k, v.encode("ascii")) for k, v in fields.items()]


def start(
    name: str, parent: Context | None, *, kind: SpanKind = SpanKind.INTERNAL, **attrs: Any
) -> Span:
    """Start a span (end it yourself); attributes with None values are left out."""
    return tracer().start_span(
        name,
        context=parent,
        kind=kind,
        attributes={k: v for k, v in attrs.items() if v is not None},
    )


def start_at(name: str, parent: Context | None, start_ns: int, **attrs: Any) -> Span:
    """A span started at ``start_ns`` (end it with ``span.end(end_time=...)``)."""
    return tracer().start_span(
        name,
        context=parent,
        start_time=start_ns,
        attributes={k: v for k, v in attrs.items() if v is not None},
    )


def has_span(ctx: Context) -> bool:
    """Whether ``ctx`` carries a valid remote or local span (a parent to join)."""
    return trace.get_current_span(ctx).get_span_context().is_valid


def record(
    name: str,
    parent: Context | Span | None,
    start_ns: int,
    end_ns: int,
    **attrs: Any,
) -> None:
    """A finished span with explicit times (stages measure their own; spans are made after the
    commit, off the hot path)."""
    ctx = trace.set_span_in_context(parent) if isinstance(parent, Span) else parent
    span = tracer().start_span(
        name,
        context=ctx,
        start_time=start_ns,
        attributes={k: v for k, v in attrs.items() if v is not None},
    )
    span.end(end_time=max(start_ns, end_ns))


def strip(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """``headers`` without trace context (before setting our own)."""
    return [(k, v) for k, v in headers if k not in (TRACEPARENT, TRACESTATE)]
