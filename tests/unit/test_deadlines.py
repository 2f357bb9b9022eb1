"""``deadline``: a stalled event loop is not a slow dependency; a slow dependency still times out.

The answer comes over a real socket pair, so the loop's own ordering of timers and reads is what
is tested, on asyncio and on uvloop (what ``favorites serve`` runs on).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import uvloop

from favorites.deadlines import deadline

Timeout = Callable[[float], AbstractAsyncContextManager[Any]]
LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@asynccontextmanager
async def socket_pair() -> AsyncIterator[tuple[asyncio.StreamReader, socket.socket]]:
    """A reader on the loop and the other end, written to from outside it."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        yield reader, theirs
    finally:
        writer.close()
        theirs.close()


async def answered_during_a_stall(bound: Timeout) -> bytes:
    """The answer arrives while the loop is stuck for three times the deadline."""
    async with socket_pair() as (reader, other_end):
        async def call() -> bytes:
            async with bound(0.1):
                return await reader.read(1)

        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)  # the call is waiting for its answer
        other_end.send(b"x")
        time.sleep(0.3)  # noqa: ASYNC251 -- the stall under test
        return await task


async def never_answered(bound: Timeout, *, stall: float) -> float:
    async with socket_pair() as (reader, _):
        started = time.monotonic()

        async def call() -> bytes:
            async with bound(0.1):
                return await reader.read(1)

        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)
        time.sleep(stall)  # noqa: ASYNC251 -- the stall under test
        with pytest.raises(TimeoutError):
            await task
        return time.monotonic() - started


def run(loop: str, coroutine: Coroutine[Any, Any, Any]) -> Any:
    return LOOPS[loop](coroutine)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_answer_that_came_while_the_loop_was_stuck_is_taken(loop: str) -> None:
    assert run(loop, answered_during_a_stall(deadline)) == b"x"


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_asyncio_timeout_alone_takes_the_stall_for_a_slow_answer(loop: str) -> None:
    """Why ``deadline`` exists: the same scenario with ``asyncio.timeout`` times out."""
    with pytest.raises(TimeoutError):
        run(loop, answered_during_a_stall(asyncio.timeout))


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_no_answer_times_out_on_time_without_a_stall_and_soon_after_one(loop: str) -> None:
    assert 0.09 <= run(loop, never_answered(deadline, stall=0)) < 0.2
    assert 0.39 <= run(loop, never_answered(deadline, stall=0.3)) < 0.55  # stall + one more 0.1


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_answer_in_time_is_returned_and_leaves_no_timer(loop: str) -> None:
    async def scenario() -> bytes:
        async with socket_pair() as (reader, other_end):
            other_end.send(b"y")
            async with deadline(0.1):
                answer = await reader.read(1)
            await asyncio.sleep(0.15)  # past the deadline: nothing fires into this task
            return answer

    assert run(loop, scenario()) == b"y"
