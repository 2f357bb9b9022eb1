"""uvicorn's httptools protocol, with the writes of one response leaving in one system call, and
its answer to a request it cannot parse in the service's own error format.

uvicorn writes a response's head and its body with a ``transport.write`` each, and uvloop sends
each at once: two ``send`` calls, and two segments for the client to read, per response. Here
uvicorn writes through a ``CoalescingTransport`` (``favorites.transports``), so a response with a
body costs one system call. Flow control keeps the real transport.

A request the HTTP parser refuses (an unknown method, a request line or header too long, bytes
that are not HTTP) never reaches the app, so no middleware can dress its answer. uvicorn's own is a
bare ``text/plain`` 400; SPEC §3 asks for problem+json, an ``X-Request-ID`` and the security
headers on every response, so this protocol writes that instead. For a method httptools does not
know, it answers what the app answers any method a path does not have: 405 with ``Allow`` (404
on a path no route has).

The request head (request line and headers) is bounded here too, as the body is by the app:
httptools buffers a header of any size, and uvicorn stops timing a connection at its first byte.
Unbounded, one connection sending a 60 MB header held a worker's event loop for seconds, and one
sending a header line a second held its connection forever. A head over ``MAX_HEAD_BYTES`` is
answered 431, one not complete ``HEAD_TIMEOUT`` seconds after its first piece arrived 408; the connection
is closed either way. It is closed the way a web server closes on a client still sending (a
lingering close): the answer and then the end of our side, while what still arrives is read and
dropped for up to ``LINGER_SECONDS``. Closed at once, the unread bytes make the kernel reset the
connection, and the client may lose the answer before reading it.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
from urllib.parse import unquote
from uuid import UUID

import httptools
import structlog
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from favorites.domain.errors import (
    FavoritesError,
    HeadersTooLarge,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
)
from favorites.entrypoints.http.methods import allowed_methods, method_table_of
from favorites.entrypoints.http.middleware import SECURITY_HEADERS
from favorites.entrypoints.http.responses import PROBLEM_JSON, problem_body
from favorites.observability.metrics import HTTP_METHODS, HttpMetrics
from favorites.transports import CoalescingTransport

_log = structlog.get_logger("favorites.http")
_metrics = HttpMetrics()

_UNPARSABLE = MalformedRequest("the request is not valid HTTP/1.1 (method, request line or "
                               "headers); the connection is closed")
#: Far above what a browser or a service sends (a token is about 400 bytes; nginx's default
#: buffers take 8 KB a header line): 16 KiB, as uvicorn's h11 protocol allows.
MAX_HEAD_BYTES = 16 * 1024
#: Seconds from a request's first byte to the end of its headers.
HEAD_TIMEOUT = 10.0
#: Seconds a refused connection's incoming bytes are still read (and dropped) before it closes.
LINGER_SECONDS = 2.0
_TOO_LARGE = HeadersTooLarge(f"the request line and headers exceed {MAX_HEAD_BYTES} bytes; "
                             "the connection is closed")
_TOO_SLOW = RequestTimeout(f"the request line and headers did not arrive within "
                           f"{HEAD_TIMEOUT:g} s; the connection is closed")
_FIXED_HEADERS = b"".join(
    name + b": " + value + b"\r\n"
    for name, value in (*SECURITY_HEADERS, (b"cache-control", b"no-store"),
                        (b"content-type", PROBLEM_JSON.encode()), (b"connection", b"close"))
)


#: A request line (origin form) whose method may be one httptools does not know: it refuses such
#: a request before reading its target, so the target is read here, from the chunk received.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (/[^ \r\n]*) HTTP/1\.[01]\r?\n")

#: Called directly rather than through ``super()``: one lookup less on every chunk received.
_data_received = HttpToolsProtocol.data_received


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # FlowControl holds the real transport
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        #: Bytes of the request head under way, the scope it belongs to and its timer. No parser
        #: callback is overridden: each override is one more Python call per request, and
        #: uvicorn's own state says enough after each chunk (``_head_in_progress``).
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._timed_scope: object = None
        self._refused = False
        self._chunk = b""

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        self._chunk = data  # for an unknown method's target (_unknown_method)
        _data_received(self, data)
        # Inline, on every chunk: see _head_in_progress.
        scope, cycle = self.scope, self.cycle
        if scope is None or (cycle is not None and cycle.scope is scope) or self._refused:
            self._head_bytes = 0
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(_TOO_LARGE)
        elif self._head_timer is None or self._timed_scope is not self.scope:
            # Only now: a head that arrives in one piece, as nearly all do, costs no timer.
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._timed_scope = self.scope
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    def _head_in_progress(self) -> bool:
        """The parser has begun a request (uvicorn made its scope) whose headers are not
        complete (no cycle for that scope yet), and it has not been refused."""
        scope, cycle = self.scope, self.cycle
        return (scope is not None and (cycle is None or cycle.scope is not scope)
                and not self._refused)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if (self._head_in_progress() and self.scope is self._timed_scope
                and not self.transport.is_closing()):
            self._refuse(_TOO_SLOW)

    def _method(self) -> str:
        """The request's method if the parser read one this service knows, else OTHER (before
        the target is read, the parser's method is a placeholder; uvicorn collects the target
        into ``url`` from an empty one at each request's start)."""
        if not getattr(self, "url", b""):  # set at the first request's start
            return "OTHER"
        try:
            method = self.parser.get_method().decode("ascii", "replace")
        except Exception:  # not parsed yet, or not a method at all
            return "OTHER"
        return method if method in HTTP_METHODS else "OTHER"

    def send_400_response(self, msg: str) -> None:
        """The parser's 400 as problem+json with the headers every response carries; for a
        method it does not know, what the app answers any method a path does not have (uvicorn
        calls this while handling the parser's error)."""
        if isinstance(sys.exc_info()[1], httptools.HttpParserInvalidMethodError):
            answer = self._unknown_method()
            if answer is not None:
                self._refuse(answer)
                return
        self._refuse(_UNPARSABLE)

    def _unknown_method(self) -> FavoritesError | None:
        """SPEC §3: a method a path does not have is 405 with ``Allow``, and a path no route
        has is 404; a method httptools does not know is no exception. ``None``: no request
        line with such a method in the chunk (the bytes are not HTTP)."""
        for match in _REQUEST_LINE.finditer(self._chunk):
            method = match.group(1).decode("ascii")
            if method in HTTP_METHODS:
                continue  # a request before it, in the same chunk
            table = method_table_of(self.app)
            if table is None:
                return None
            path = unquote(match.group(2).decode("ascii", "replace").partition("?")[0])
            allowed = allowed_methods(table, path)
            if not allowed:
                return NotFound("no such resource")
            return MethodNotAllowed(f"{method} is not allowed here",
                                    headers={"Allow": ", ".join(allowed)})
        return None

    def _refuse(self, error: FavoritesError) -> None:
        """A problem+json answer to a request the app never saw, and the connection closed. The
        path may not have been read, so ``instance`` names this occurrence by its request id.
        Counted and logged like any answer (``path`` is ``unmatched``: no route was matched), so
        a flood of them shows on the dashboards and in the logs."""
        self._cancel_head_timer()
        request_id = f"{random.getrandbits(128):032x}"
        method = self._method()
        _metrics.observe(method, "unmatched", error.status, 0.0)
        _log.info(f"{method} refused before routing: {error.status} {error.slug}",
                  operation="httpRequest", requestId=request_id, method=method,
                  path="unmatched", status=error.status)
        body = problem_body(
            type_uri=error.type_uri, title=error.title, status=error.status,
            detail=error.detail, instance=UUID(hex=request_id).urn, request_id=request_id,
        )
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        for header, text in error.headers.items():
            head.extend([header.lower().encode("ascii"), b": ", text.encode("latin-1"), b"\r\n"])
        head.extend([_FIXED_HEADERS, b"x-request-id: ", request_id.encode("ascii"), b"\r\n",
                     b"content-length: ", str(len(body)).encode("ascii"), b"\r\n\r\n", body])
        self.transport.write(b"".join(head))
        self._refused = True
        try:
            self.transport.write_eof()
        except (NotImplementedError, RuntimeError, OSError):
            self.transport.close()
            return
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
