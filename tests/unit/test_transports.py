"""The writes of one callback leave in one write to the real transport, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from favorites.transports import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_head_and_body_written_in_one_callback_go_out_together() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"ok")
    assert real.writes == []
    assert transport.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    transport.write(b"next")  # a later callback: its own write, after the first
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_close_sends_what_is_pending_first_and_nothing_after() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    transport.close()
    assert real.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    assert real.closed
    transport.write(b"late")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]


async def test_abort_drops_what_is_pending() -> None:
    """A hung Redis connection is aborted: nothing half-sent goes out on it afterwards."""
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"*1\r\n$4\r\nPING\r\n")
    transport.abort()
    await asyncio.sleep(0)
    assert real.writes == []
    assert real.closed
