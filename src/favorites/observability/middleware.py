"""One pure ASGI middleware for the request's log line, metrics and server span.

It sits just inside ``EdgeMiddleware`` (which assigns the request id and turns an unhandled
exception into a 500 problem): so the request id is known here, and an exception passing through
is logged here, with the request's ids and stack trace, before the edge answers for it.

Per request it does only what cannot be done at start-up: read two headers, start a span, time
the call, pick the cached metric children for (method, route, status), write one log line.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from favorites.observability import logs, tracing
from favorites.observability.context import (
    UNMATCHED,
    RequestContext,
    current_request,
    route_template,
)
from favorites.observability.metrics import HttpMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_OPERATION = "httpRequest"
_ERROR_STATUS = Status(StatusCode.ERROR)


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._metrics = HttpMetrics()
        self._tracing = tracing.STATE
        self._log = logs.get_logger()
        #: endpoint -> path of the app's plain Starlette routes (/metrics, /docs), which do not
        #: leave ``scope["route"]``; built on the first request that needs it.
        self._plain_routes: dict[Any, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
        remote = tracing.parse_traceparent(traceparent, tracestate) if traceparent else None
        parent = None
        upstream = remote is not None and remote.trace_flags.sampled
        span: trace.Span
        if self._tracing.recording:
            if remote is not None:
                parent = trace.set_span_in_context(NonRecordingSpan(remote))
            span = self._tracing.tracer.start_span(
                method, context=parent, kind=SpanKind.SERVER,
                attributes={"http.request.method": method},
            )
            span_context = span.get_span_context()
            trace_id, span_id = span_context.trace_id, span_context.span_id
            sampled = tracing.head_sampled(trace_id, upstream)
        else:  # nothing to export: only the ids, for logs, headers and outgoing calls
            trace_id = remote.trace_id if remote else tracing.new_trace_id()
            span_id = tracing.new_span_id()
            sampled = tracing.head_sampled(trace_id, upstream)
            span = trace.INVALID_SPAN
        state = scope.get("state")
        request_id = state.get("request_id") if state else None
        request = RequestContext(request_id, trace_id, span_id, method, scope, upstream,
                                 remote.trace_state if remote is not None else None)
        request_token = current_request.set(request)
        # Child spans (database, cache) need the span in the OpenTelemetry context; without an
        # exporter there are none, and inject_headers reads the ids from the request context.
        otel_token = (otel_context.attach(trace.set_span_in_context(span, parent))
                      if self._tracing.recording else None)
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                header = tracing.format_traceparent(trace_id, span_id, sampled or status >= 500)
                message["headers"] = [*message.get("headers", ()),
                                      (b"traceparent", header.encode("ascii"))]
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, receive, send_observed)
        except Exception as exc:
            error = exc
            status = 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            path = route_template(scope)
            if path is UNMATCHED and "endpoint" in scope:
                path = self._plain_route(scope)
            self._metrics.observe(method, path, status, elapsed)
            if span.is_recording():
                span.update_name(f"{method} {path}")
                span.set_attribute("http.route", path)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(_ERROR_STATUS)
            ms = round(elapsed * 1000, 3)
            message = f"{method} {path} {status}"
            if error is not None:
                self._log.error(message, operation=REQUEST_OPERATION, path=path, status=status,
                                durationMs=ms, exc_info=error)
            elif status >= 500:
                self._log.error(message, operation=REQUEST_OPERATION, path=path, status=status,
                                durationMs=ms)
            else:
                self._log.info(message, operation=REQUEST_OPERATION, path=path, status=status,
                               durationMs=ms)
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
