"""Unfinished product purges are resumed in the background, retried while the database is down."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from favorites.bootstrap import resume_purges
from favorites.service_layer.products import ProductsService


class _Products:
    """Fails ``failures`` times (the database down at start-up), then resumes ``removed``."""

    def __init__(self, failures: int, removed: int) -> None:
        self.failures, self.removed, self.calls = failures, removed, 0

    async def resume_purges(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("connection refused")
        return self.removed


async def test_a_database_down_at_start_up_is_retried_until_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, one failure left the favorites of deleted products until the next start."""
    caplog.set_level(logging.INFO, logger="favorites.products")
    products = _Products(failures=3, removed=7)
    await asyncio.wait_for(resume_purges(cast(ProductsService, products), retry_every=0.01), 5)
    assert products.calls == 4
    records: list[Any] = [r for r in caplog.records if r.name == "favorites.products"]
    assert [r.levelname for r in records] == ["WARNING", "INFO"]  # not one WARN per attempt
    assert (records[1].removed, records[1].failedAttempts) == (7, 3)


async def test_retrying_stops_when_cancelled() -> None:
    """At shutdown: the next instance to start finishes what is left."""
    products = _Products(failures=10**6, removed=0)
    task = asyncio.create_task(resume_purges(cast(ProductsService, products), retry_every=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert products.calls >= 2


async def test_a_cancellation_a_failure_hid_still_stops_it_at_once() -> None:
    """A library may turn the cancellation that lands mid-statement into its own error (the
    rollback of a connection the cancellation closed): the loop must not sleep a retry
    interval through the shutdown that asked it to stop."""
    started = asyncio.Event()

    class _HidesTheCancellation:
        async def resume_purges(self) -> int:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise OSError("cannot call Transaction.rollback(): connection closed") from None
            return 0

    task = asyncio.create_task(resume_purges(cast(ProductsService, _HidesTheCancellation()),
                                             retry_every=30))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)
