"""``cancel_and_wait``: how every background task of the service is stopped; ``stop_if_cancelled``:
how a loop stops when a library lost the cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from favorites.tasks import cancel_and_wait, stop_if_cancelled


async def test_the_task_is_cancelled_and_has_unwound_when_it_returns() -> None:
    unwound = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # gives back what it holds, which takes a turn or two
            unwound.set()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()
    assert unwound.is_set()
    await cancel_and_wait(None)  # nothing to stop


async def test_a_caller_given_up_on_is_cancelled_not_answered() -> None:
    """A stop bounded by ``wait_for`` must time out while the task is still unwinding, not return
    as if the task had ended."""

    async def slow_to_unwind() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.5)

    task = asyncio.create_task(slow_to_unwind())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(cancel_and_wait(task), 0.05)
    await cancel_and_wait(task)  # stopping a stopped task is a no-op
    assert task.cancelled()


async def test_a_caller_already_cancelled_still_stops_every_task() -> None:
    """Cleanup in a ``finally`` after the caller's own cancellation (a lifespan cancelled) must
    stop each task, not give up at the first."""
    tasks = [asyncio.create_task(asyncio.sleep(60)) for _ in range(2)]
    stopped: list[int] = []

    async def owner() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            for i, task in enumerate(tasks):
                await cancel_and_wait(task)
                stopped.append(i)

    running = asyncio.create_task(owner())
    await asyncio.sleep(0)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert stopped == [0, 1]
    assert all(task.cancelled() for task in tasks)


async def test_a_task_that_had_failed_is_logged_and_the_stop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("bug in a poll loop")

    task = asyncio.create_task(broken(), name="epoch-sync")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="favorites.tasks"):
        await cancel_and_wait(task)  # does not raise: the caller's other closes still run
    [record] = caplog.records
    assert record.getMessage() == "background task epoch-sync had failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def swallowing_call(started: asyncio.Event) -> None:
    """A dependency call that loses a cancellation landing while it waits and returns normally,
    as redis-py's ``INFO`` was seen to."""
    started.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(60)


async def test_a_loop_stops_even_when_a_call_it_makes_swallows_the_cancellation() -> None:
    started = asyncio.Event()
    steps = 0

    async def poll_loop() -> None:
        nonlocal steps
        while True:
            stop_if_cancelled()
            steps += 1
            await swallowing_call(started)
            await asyncio.sleep(0.001)

    task = asyncio.create_task(poll_loop())
    await started.wait()
    async with asyncio.timeout(5):
        await cancel_and_wait(task)
    assert task.cancelled()
    assert steps == 1  # it did not poll on after the lost cancellation


async def test_outside_a_cancelled_task_it_does_nothing() -> None:
    stop_if_cancelled()
    assert await asyncio.create_task(asyncio.sleep(0, "ran")) == "ran"
