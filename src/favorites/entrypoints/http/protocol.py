"""uvicorn's httptools protocol, with the writes of one response leaving in one system call.

uvicorn writes a response's head and its body with a ``transport.write`` each, and uvloop sends
each at once: two ``send`` calls, and two segments for the client to read, per response. Here
uvicorn writes through a ``CoalescingTransport`` (``favorites.transports``), so a response with a
body costs one system call. Flow control keeps the real transport.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from favorites.transports import CoalescingTransport


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # FlowControl holds the real transport
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
