"""What every log line, metric and span of one request shares, held in a ContextVar.

The observability middleware creates one ``RequestContext`` per request; the business-operation
helper fills in who and what (user, product) as soon as it knows. Log processors read it, so no
caller has to pass the request id or trace id around.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from opentelemetry.trace import TraceState

UNMATCHED = "unmatched"


class RequestContext:
    """Mutable on purpose: one object per request, filled in as the request proceeds."""

    __slots__ = ("method", "product_id", "request_id", "scope", "span_id", "trace_id",
                 "trace_int", "trace_state", "upstream_sampled", "user_id")

    def __init__(
        self, request_id: str | None, trace_id: int, span_id: int, method: str,
        scope: MutableMapping[str, Any], upstream_sampled: bool = False,
        trace_state: TraceState | None = None,
    ):
        self.request_id = request_id
        #: The trace id as logged (32 hex digits) and as a number, and this hop's span id.
        self.trace_id = format(trace_id, "032x")
        self.trace_int = trace_id
        self.span_id = span_id
        self.method = method
        self.scope = scope
        self.upstream_sampled = upstream_sampled
        self.trace_state = trace_state
        self.user_id: UUID | None = None
        self.product_id: UUID | None = None

    @property
    def path(self) -> str:
        """The route template (bounded), or ``unmatched`` before routing and for unknown paths."""
        return route_template(self.scope)

    def __repr__(self) -> str:
        return f"RequestContext(request_id={self.request_id!r}, trace_id={self.trace_id!r})"


def route_template(scope: MutableMapping[str, Any]) -> str:
    """``/v1/users/{user_id}/favorites``, never the raw path: labels and logs stay bounded."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED


current_request: ContextVar[RequestContext | None] = ContextVar("favorites_request", default=None)
