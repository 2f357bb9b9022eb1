"""Background tasks (syncs, flushes) stop the same way everywhere."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("favorites.tasks")


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
