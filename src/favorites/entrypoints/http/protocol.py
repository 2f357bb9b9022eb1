"""uvicorn's httptools protocol, with the writes of one response leaving in one system call, and
its answer to a request it cannot parse in the service's own error format.

uvicorn writes a response's head and its body with a ``transport.write`` each, and uvloop sends
each at once: two ``send`` calls, and two segments for the client to read, per response. Here
uvicorn writes through a ``CoalescingTransport`` (``favorites.transports``), so a response with a
body costs one system call. Flow control keeps the real transport.

A request the HTTP parser refuses (an unknown method, a request line or header too long, bytes
that are not HTTP) never reaches the app, so no middleware can dress its answer. uvicorn's own is a
bare ``text/plain`` 400; SPEC §3 asks for problem+json, an ``X-Request-ID`` and the security
headers on every response, so this protocol writes that instead.
"""

from __future__ import annotations

import asyncio
import random
from uuid import UUID

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from favorites.domain.errors import MalformedRequest
from favorites.entrypoints.http.middleware import SECURITY_HEADERS
from favorites.entrypoints.http.responses import PROBLEM_JSON, problem_body
from favorites.transports import CoalescingTransport

_UNPARSABLE = MalformedRequest("the request is not valid HTTP/1.1 (method, request line or "
                               "headers); the connection is closed")
_FIXED_HEADERS = b"".join(
    name + b": " + value + b"\r\n"
    for name, value in (*SECURITY_HEADERS, (b"cache-control", b"no-store"),
                        (b"content-type", PROBLEM_JSON.encode()), (b"connection", b"close"))
)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # FlowControl holds the real transport
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        """The parser's 400 as problem+json with the headers every response carries. The path
        may not have been read, so ``instance`` names this occurrence by its request id."""
        request_id = f"{random.getrandbits(128):032x}"
        body = problem_body(
            type_uri=_UNPARSABLE.type_uri, title=_UNPARSABLE.title, status=_UNPARSABLE.status,
            detail=_UNPARSABLE.detail, instance=UUID(hex=request_id).urn,
            request_id=request_id,
        )
        head = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend([_FIXED_HEADERS, b"x-request-id: ", request_id.encode("ascii"), b"\r\n",
                     b"content-length: ", str(len(body)).encode("ascii"), b"\r\n\r\n", body])
        self.transport.write(b"".join(head))
        self.transport.close()
