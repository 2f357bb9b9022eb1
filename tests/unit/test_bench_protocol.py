"""bench.protocol measures what it says: every request fed in is answered, by the protocol named."""

from __future__ import annotations

from bench import protocol

from favorites.entrypoints.http.protocol import CoalescingHttpToolsProtocol


async def test_every_request_fed_in_is_answered_by_the_protocol_measured() -> None:
    measured = protocol._protocol_class(protocol.DEFAULT)
    assert measured.__name__ == CoalescingHttpToolsProtocol.__name__
    assert measured is not CoalescingHttpToolsProtocol  # loaded from the file given
    per_request, answered = await protocol.run(measured, 50)
    assert per_request > 0
    assert answered > len(b'{"hello":"world"}')  # a status line and headers too, each time
