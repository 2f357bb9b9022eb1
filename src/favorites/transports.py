"""A transport wrapper whose writes of one event-loop callback leave in one system call.

uvloop sends each ``transport.write`` at once: a ``send`` per call. Both places that write several
pieces per callback use this instead: uvicorn's response head and body (``entrypoints.http.
protocol``), and the cache's Redis commands of many concurrent requests (``adapters.cache.
multiplex``). The pieces are joined and handed to the real transport as soon as the current
callback is done (``loop.call_soon``). Everything else (flow control, closing, extra info) is the
real transport's; ``close`` sends what is pending first, ``abort`` drops it.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
