"""Tasks and cancellation: background loops (syncs, flushes) stop the same way everywhere, and
writes finish even when the request that made them is cancelled."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger("favorites.tasks")

P = ParamSpec("P")
T = TypeVar("T")

#: Writes still running (``to_completion``), whose callers may be gone: a shutdown waits for them
#: (``wait_for_writes``) before it closes the pools and caches they need.
_writes: set[asyncio.Future[Any]] = set()


async def to_completion(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled, then pass the cancellation on.

    For a write and what must follow its commit (the cache invalidation). Cancelled between the
    two (a shutdown that gave up waiting for requests), a write would be in the database and its
    invalidation lost, and the user's cached page would miss it until the entry expired; cancelled
    during its one statement, the write may be committed without anyone knowing. A write is short
    (the statement timeout bounds it), so it is finished instead, and only then is the caller's
    cancellation raised. Its result or error is then dropped: nobody is waiting for the answer.
    """
    task = asyncio.ensure_future(work)
    _writes.add(task)
    task.add_done_callback(_writes.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():  # the caller was cancelled, not the work: let the work finish
            await asyncio.wait([task])
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("a write whose caller was cancelled failed", exc_info=error)
        raise


async def wait_for_writes(within: float) -> None:
    """At shutdown, before closing what writes use: uvicorn cancels the requests still running
    when its graceful timeout ends, and then runs the lifespan's shutdown; their writes go on
    (``to_completion``) and would otherwise find the pools closed, or be cancelled for good when
    the event loop ends, committed and not invalidated."""
    loop = asyncio.get_running_loop()
    running = [task for task in _writes if task.get_loop() is loop]
    if running:
        await asyncio.wait(running, timeout=within)


def runs_to_completion(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Awaitable[T]]:
    """``to_completion`` for every call of ``method`` (a use case that writes)."""
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return await to_completion(method(*args, **kwargs))
    return wrapper


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` in a background loop whose stop was asked for but lost.

    A library may swallow a cancellation that lands while it waits: redis-py's ``INFO`` was seen
    to return normally after one, and 4 of 300 stops of the cache epoch's poll loop in a stress
    run hung that way. The task is then still marked as cancelling, but nothing raises, so the
    loop would poll on for ever, and ``cancel_and_wait`` (a worker's shutdown) would wait for it.
    Loops call this at the top of each round.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished unwinding, so nothing it holds (a pooled
    connection, a half-sent batch) outlives the object that stops it. ``None`` is a no-op."""
    if task is None:
        return
    current = asyncio.current_task()
    # Counted before: a caller already cancelled (cleaning up in a ``finally``) must still be
    # able to stop every task it owns; only a cancellation of this wait goes on up.
    cancelled_before = current.cancelling() if current is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # The task's own cancellation ends here; the caller's (a shutdown given up on, a
        # ``wait_for`` that timed out) goes on up.
        if current is not None and current.cancelling() > cancelled_before:
            raise
    except Exception:
        # It had died already (these loops catch their own errors, so a bug): logged here, and
        # the rest of the shutdown still closes what it must.
        log.exception("background task %s had failed", task.get_name())
