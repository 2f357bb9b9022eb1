"""The edge of every request, as pure ASGI middleware (no BaseHTTPMiddleware).

``EdgeMiddleware``, outermost, assigns the request id, adds the security headers to every
response, errors included, and answers an unhandled exception with a clean 500.
``BodyLimitMiddleware`` enforces the body limit before the app reads a byte too many; it sits
inside ``ObservabilityMiddleware`` so that a refused body is logged, counted and traced like any
other answer. Header values are encoded once here, at start-up, not per request.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol

from starlette.routing import Match

from favorites.domain.errors import FavoritesError, MalformedRequest, PayloadTooLarge
from favorites.entrypoints.http.responses import PROBLEM_JSON, problem_body
from favorites.observability.middleware import UNHANDLED_ERROR_TRACEPARENT

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
log = logging.getLogger("favorites.http")

_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_NO_STORE = (b"cache-control", b"no-store")
_CLOSE = (b"connection", b"close")
#: Interactive docs need scripts and styles from the page itself; everything else gets 'none'.
_DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: "
    b"https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'none'",
)
_DOCS_PATHS = frozenset({"/docs", "/redoc"})
#: ``scope["state"]`` key under which authentication leaves the encoded ``RateLimit-*`` headers
#: once the limiter has counted the request; appended to whatever response follows, errors too.
RATE_LIMIT_HEADERS = "rate_limit_headers"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class Draining(Protocol):
    """The instance's state after SIGTERM (the container): ``draining`` once it began."""

    draining: bool


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, docs: bool = False, state: Draining | None = None):
        self.app = app
        self.docs = docs
        self._state = state
        self._headers = list(SECURITY_HEADERS)
        self._docs_headers = [h for h in self._headers if h[0] != b"content-security-policy"]
        self._docs_headers.append(_DOCS_CSP)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:  # every GET answers HEAD too: the same status and headers, no body
            scope = {**scope, "method": "GET"}
        incoming = _header(scope, b"x-request-id")
        if incoming is not None:
            # White space around a field value is not part of it (RFC 9110 §5.5); the parser
            # drops the leading, not always the trailing.
            incoming = incoming.strip(b" \t")
        if incoming is not None and _VALID_REQUEST_ID.match(incoming):
            request_id = incoming.decode("ascii")
        else:
            # A correlation id, not a secret: 128 random bits from the process's generator
            # (seeded from the OS), without uuid4's system call and object per request.
            request_id = f"{random.getrandbits(128):032x}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        extra = self._docs_headers if self.docs and scope["path"] in _DOCS_PATHS else self._headers
        rid_header = (b"x-request-id", request_id.encode("ascii"))
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                own = message.get("headers", ())
                headers = [*own, *extra, rid_header, *state.get(RATE_LIMIT_HEADERS, ())]
                # Responses are private by default; a handler may opt in to caching (JWKS).
                # Only the response's own headers can: none of those added here is one.
                if not any(name.lower() == b"cache-control" for name, _ in own):
                    headers.append(_NO_STORE)
                if self._state is not None and self._state.draining:
                    # The client's next request then opens a new connection, which the load
                    # balancer sends to another pod; kept alive, it would reach this one just
                    # as it stops, and be reset.
                    headers.append(_CLOSE)
                message["headers"] = headers
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # Every 5xx is a bug: log it whole, answer without a trace of it.
            log.exception("unhandled error", extra={"path": scope["path"]})
            if not started:
                traceparent = state.get(UNHANDLED_ERROR_TRACEPARENT)
                await reject(scope, send_with_headers, FavoritesError(
                    "the request failed; quote the request id when reporting it"), request_id,
                    () if traceparent is None else (traceparent,))
        finally:
            request_id_var.reset(token)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int = 1024):
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._bounded_body(scope, receive)
        except FavoritesError as error:
            state = scope.get("state") or {}
            _name_the_route(scope)
            await reject(scope, send, error, state.get("request_id", "-"))
            return
        await self.app(scope, receive, send)

    async def _bounded_body(self, scope: Scope, receive: Receive) -> Receive:
        """Read at most ``max_body`` + 1 bytes, then replay them; chunked bodies included."""
        length = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding") is not None
        if length is None and not chunked:
            return receive
        if length is not None:
            if not length.isdigit():
                raise MalformedRequest("Content-Length is not a number")
            if int(length) > self.max_body:
                raise PayloadTooLarge(f"request bodies are limited to {self.max_body} bytes")
            if int(length) == 0 and not chunked:
                return receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _replay([message], receive)
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                raise PayloadTooLarge(f"request bodies are limited to {self.max_body} bytes")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return _replay([whole], receive)


def _name_the_route(scope: Scope) -> None:
    """A body refused before routing still belongs to its route: metrics and logs name it (not
    ``unmatched``). Matched here, on the refusal only."""
    for route in getattr(scope.get("app"), "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            scope["route"] = route
            return


async def reject(
    scope: Scope, send: Send, error: FavoritesError, request_id: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Answer ``error`` as problem+json from middleware, outside the app's exception handlers."""
    body = problem_body(
        type_uri=error.type_uri, title=error.title, status=error.status, detail=error.detail,
        instance=scope["path"], request_id=request_id,
    )
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        # The unread rest of a body makes the connection unusable for another request.
        (b"connection", b"close"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], then: Receive) -> Receive:
    """Hand the buffered body to the app, then the server's own receive (disconnects)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return await then()

    return receive
