"""OpenTelemetry tracing: W3C ``traceparent`` in and out, and the helpers other code uses.

Configured once at start-up from the standard variables:

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``: export over OTLP/HTTP
  when set. Otherwise nothing is recorded (spans nobody receives are pure cost), but every
  request still gets a trace id, continued from its ``traceparent``: in every log line, in the
  response's ``traceparent`` and in ``inject_headers``. ``OTEL_TRACES_EXPORTER=none`` or
  ``OTEL_SDK_DISABLED=true`` turn export off.
- ``OTEL_TRACES_SAMPLER_ARG``: the share of normal traces kept (default 0.1); traces with an error
  or a 5xx are always kept (see ``sampling``). ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
  as usual.

The tracer lives in ``STATE`` (not the global provider) so tests can swap in an in-memory
exporter; spans are parented through the ordinary OpenTelemetry context. Leaving the global
provider alone also keeps FastAPI's own telemetry (which turns itself on when a global provider
is configured) off: one server span per request, ours.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from favorites.config import ConfigError
from favorites.observability.context import current_request
from favorites.observability.sampling import TailSamplingSpanProcessor, in_ratio, ratio_bound

SERVICE_NAME = "favorites-service"
DEFAULT_RATIO = 0.1
_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


class TracingState:
    """What the hot paths read per call; replaced wholesale by ``configure_tracing``."""

    __slots__ = ("bound", "provider", "ratio", "recording", "sampler", "tracer")

    def __init__(self) -> None:
        self.tracer: trace.Tracer = trace.NoOpTracer()
        #: False when there is no exporter: the middleware then only propagates ids.
        self.recording = False
        self.provider: TracerProvider | None = None
        self.sampler: TailSamplingSpanProcessor | None = None
        self.ratio = DEFAULT_RATIO
        self.bound = ratio_bound(DEFAULT_RATIO)


STATE = TracingState()


_SAMPLERS = ("", "always_on", "always_off", "traceidratio", "parentbased_always_on",
             "parentbased_always_off", "parentbased_traceidratio")


def ratio_from_env() -> float:
    """The sampling ratio; also where the ``OTEL_*`` settings are checked at start-up (a bad one
    stops it with one line, like a bad ``FAVORITES_*``)."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = os.environ.get(name, "").strip()
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"{name}: must be an http:// or https:// URL (OTLP over HTTP)")
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler not in _SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER: must be one of {', '.join(_SAMPLERS[1:])}")
    if sampler in ("always_on", "parentbased_always_on"):
        return 1.0
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    raw = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw:
        return DEFAULT_RATIO
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1")
    return ratio


def exporter_from_env() -> SpanExporter | None:
    """An OTLP/HTTP exporter when an endpoint is configured, else None (export nowhere)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return None
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(
    exporter: SpanExporter | None = None, *, ratio: float | None = None, from_env: bool = True
) -> TracingState:
    """(Re)build the tracer. ``exporter`` overrides the environment's (tests pass an in-memory
    one); without any, nothing is recorded but trace ids still flow."""
    shutdown_tracing()
    ratio = ratio_from_env() if ratio is None else ratio
    if exporter is None and from_env:
        exporter = exporter_from_env()
    STATE.ratio = ratio
    STATE.bound = ratio_bound(ratio)
    if exporter is None:
        return STATE
    attributes = {"service.version": "0.1.0"}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = SERVICE_NAME
    # Every span is recorded; the tail sampler decides what is exported once a trace ends.
    provider = TracerProvider(sampler=ALWAYS_ON, resource=Resource.create(attributes))
    sampler = TailSamplingSpanProcessor(BatchSpanProcessor(exporter), ratio)
    provider.add_span_processor(sampler)
    STATE.provider = provider
    STATE.sampler = sampler
    STATE.tracer = provider.get_tracer("favorites")
    STATE.recording = True
    return STATE


def shutdown_tracing() -> None:
    """Flush and stop the exporter (end of the lifespan); the tracer becomes a no-op."""
    provider, STATE.provider, STATE.sampler = STATE.provider, None, None
    STATE.tracer = trace.NoOpTracer()
    STATE.recording = False
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_millis: int = 10_000) -> bool:
    return STATE.provider.force_flush(timeout_millis) if STATE.provider is not None else True


def parse_traceparent(value: bytes, tracestate: bytes | None = None) -> SpanContext | None:
    """The caller's span from a W3C ``traceparent`` header, or None when it is not valid."""
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_hex, span_hex, flags = match.group(1, 2, 3, 4)
    if version == b"ff" or (version == b"00" and match.group(5)):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = None
    if tracestate:
        try:
            state = TraceState.from_header([tracestate.decode("latin-1")])
        except ValueError:
            state = None
    return SpanContext(trace_id, span_id, is_remote=True,
                       trace_flags=TraceFlags(int(flags, 16) & TraceFlags.SAMPLED),
                       trace_state=state)


def head_sampled(trace_id: int, upstream_sampled: bool = False) -> bool:
    """What is known when a trace starts: the caller sampled it, or it falls in the ratio."""
    return upstream_sampled or in_ratio(trace_id, STATE.bound)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def new_trace_id() -> int:
    """For a request when nothing is recorded: logs and headers still carry a trace id."""
    return random.getrandbits(128) or 1


def new_span_id() -> int:
    return random.getrandbits(64) or 1


def inject_headers(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the current span to outgoing ``headers``.

    The sampled flag is the head decision (caller's flag or the ratio), so a downstream service
    keeps the traces we most likely keep.
    """
    request = current_request.get()
    upstream = request is not None and request.upstream_sampled
    context = trace.get_current_span().get_span_context()
    state: TraceState | None
    if context.is_valid:  # recording: the current span (a database or cache span, the request)
        trace_id, span_id, state = context.trace_id, context.span_id, context.trace_state
    elif request is not None:  # nothing recorded: the request's own ids
        trace_id, span_id, state = request.trace_int, request.span_id, request.trace_state
    else:
        return
    headers["traceparent"] = format_traceparent(trace_id, span_id,
                                                head_sampled(trace_id, upstream))
    if state:
        headers["tracestate"] = state.to_header()


@contextmanager
def cache_span(cache_name: str, operation: str) -> Iterator[trace.Span]:
    """A client span around one cache call: ``with cache_span("favorites_page", "get"):``.

    An exception marks the span as failed (by type only: messages may carry keys) and propagates.
    """
    span = STATE.tracer.start_span(
        f"cache {operation}", kind=SpanKind.CLIENT,
        attributes={"cache.name": cache_name, "cache.operation": operation},
    )
    with trace.use_span(span, end_on_exit=True, record_exception=False,
                        set_status_on_exception=False):
        try:
            yield span
        except Exception as error:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
