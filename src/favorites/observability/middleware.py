"""One pure ASGI middleware for the request's log line, metrics and server span.

It sits just inside ``EdgeMiddleware`` (which assigns the request id and turns an unhandled
exception into a 500 problem): so the request id is known here, and an exception passing through
is logged here, with the request's ids and stack trace, before the edge answers for it.

Per request it does only what cannot be done at start-up: read two headers, make or continue the
trace id (and start a server span when spans are exported), time the call, pick the cached
metric children for (method, route, status), write one log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from favorites.observability import tracing
from favorites.observability.context import (
    UNMATCHED,
    RequestContext,
    current_request,
    route_template,
)
from favorites.observability.logs import log_request_event
from favorites.observability.metrics import HttpMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_OPERATION = "httpRequest"
#: ``scope["state"]`` key of the ``traceparent`` header for the 500 that ``EdgeMiddleware``
#: answers after an exception passed through here: that answer is sent outside this middleware.
UNHANDLED_ERROR_TRACEPARENT = "unhandled_error_traceparent"
_ERROR_STATUS = Status(StatusCode.ERROR)
#: Probe paths: their 503 is a state reported on purpose (draining after SIGTERM, the database
#: unreachable), not a request that failed. Alerts leave them out of the error rate; the log does
#: too, so that "level is ERROR" stays a list of requests that failed on our side.
_PROBE_PREFIX = "/health/"


def _level(status: int, path: str) -> int:
    if status < 500:
        return logging.INFO
    return logging.WARNING if path.startswith(_PROBE_PREFIX) else logging.ERROR


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._metrics = HttpMetrics()
        self._tracing = tracing.STATE
        #: endpoint -> path of the app's plain Starlette routes (/metrics, /docs), which do not
        #: leave ``scope["route"]``; built on the first request that needs it.
        self._plain_routes: dict[Any, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        headers = dict(scope["headers"])  # one C-level pass instead of a Python loop
        traceparent = headers.get(b"traceparent")
        remote = (tracing.parse_traceparent(traceparent, headers.get(b"tracestate"))
                  if traceparent is not None else None)
        upstream = remote is not None and remote.trace_flags.sampled
        recording = self._tracing.recording
        span: trace.Span | None = None
        otel_token = None
        if recording:
            parent = (trace.set_span_in_context(NonRecordingSpan(remote))
                      if remote is not None else None)
            span = self._tracing.tracer.start_span(
                method, context=parent, kind=SpanKind.SERVER,
                attributes={"http.request.method": method},
            )
            span_context = span.get_span_context()
            trace_id, span_id = span_context.trace_id, span_context.span_id
            # Child spans (database, cache) find their parent in the OpenTelemetry context.
            otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
        else:  # nothing to export: only the ids, for logs, headers and outgoing calls
            trace_id = remote.trace_id if remote is not None else tracing.new_trace_id()
            span_id = tracing.new_span_id()
        sampled = tracing.head_sampled(trace_id, upstream)
        state = scope.get("state")
        request = RequestContext(state.get("request_id") if state else None, trace_id, span_id,
                                 method, scope, upstream,
                                 remote.trace_state if remote is not None else None)
        request_token = current_request.set(request)
        traceparent_prefix = f"00-{request.trace_id}-{span_id:016x}-"
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                header = (b"traceparent", (traceparent_prefix + (
                    "01" if sampled or status >= 500 else "00")).encode("ascii"))
                response_headers = message.get("headers")
                if isinstance(response_headers, list):
                    response_headers.append(header)
                else:
                    message["headers"] = [*(response_headers or ()), header]
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, receive, send_observed)
        except Exception as exc:
            error = exc
            status = 500
            if state is not None:  # the trace is kept (a 5xx), so the flag says sampled
                state[UNHANDLED_ERROR_TRACEPARENT] = (
                    b"traceparent", (traceparent_prefix + "01").encode("ascii"))
            raise
        finally:
            elapsed = time.perf_counter() - started
            path = route_template(scope)
            if path is UNMATCHED and "endpoint" in scope:
                path = self._plain_route(scope)
            self._metrics.observe(method, path, status, elapsed)
            log_request_event(
                _level(status, path), f"{method} {path} {status}",
                REQUEST_OPERATION, user_id=request.user_id, product_id=request.product_id,
                duration_ms=round(elapsed * 1000, 3), status=status, path=path, exc_info=error,
            )
            if span is not None:
                span.update_name(f"{method} {path}")
                span.set_attribute("http.route", path)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(_ERROR_STATUS)
                span.end()
            if otel_token is not None:
                otel_context.detach(otel_token)
            current_request.reset(request_token)

    def _plain_route(self, scope: Scope) -> str:
        if self._plain_routes is None:
            routes = getattr(scope.get("app"), "routes", ())
            self._plain_routes = {
                route.endpoint: route.path_format for route in routes
                if isinstance(getattr(route, "path_format", None), str)
                and getattr(route, "endpoint", None) is not None
            }
        return self._plain_routes.get(scope["endpoint"], UNMATCHED)
