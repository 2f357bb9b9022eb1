"""Concurrent loads of one key run once; cancellation of any caller leaves the others served."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from favorites.service_layer.singleflight import SingleFlight


class Loader:
    """A load that waits for ``release`` and counts how often it ran."""

    def __init__(self, value: str = "page") -> None:
        self.value = value
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return f"{self.value}-{self.calls}"


async def test_concurrent_callers_share_one_load() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    callers = [asyncio.create_task(flights.run("k", loader)) for _ in range(5)]
    await loader.started.wait()
    await asyncio.sleep(0)
    loader.release.set()
    assert await asyncio.gather(*callers) == ["page-1"] * 5
    assert (loader.calls, flights.loads, flights.joined, len(flights)) == (1, 1, 4, 0)


async def test_other_keys_and_later_calls_load_again() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    loader.release.set()
    assert await flights.run("a", loader) == "page-1"
    assert await flights.run("a", loader) == "page-2"  # nothing cached: only concurrency merges
    assert await flights.run("b", loader) == "page-3"


async def test_an_error_reaches_every_caller_and_is_not_left_unretrieved() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()

    async def failing() -> str:
        await gate.wait()
        raise ConnectionError("database down")

    callers = [asyncio.create_task(flights.run("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = asyncio.create_task(flights.run("solo", failing))
        with pytest.raises(ConnectionError):
            await alone
        gc.collect()  # an unretrieved exception would be reported here
    assert len(flights) == 0


async def test_a_waiting_caller_cancelled_leaves_the_load_and_the_others_alone() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    leader = asyncio.create_task(flights.run("k", loader))
    await loader.started.wait()
    quitter = asyncio.create_task(flights.run("k", loader))
    stayer = asyncio.create_task(flights.run("k", loader))
    await asyncio.sleep(0)
    quitter.cancel()
    loader.release.set()
    assert await leader == "page-1"
    assert await stayer == "page-1"
    assert quitter.cancelled()
    assert loader.calls == 1


async def test_when_the_loading_caller_is_cancelled_a_waiting_one_loads_instead() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    loader = Loader()
    leader = asyncio.create_task(flights.run("k", loader))
    await loader.started.wait()
    waiters = [asyncio.create_task(flights.run("k", loader)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0.01)
    loader.release.set()
    # One waiter took the load over; the other two joined it: two loads in all.
    assert await asyncio.gather(*waiters) == ["page-2"] * 3
    assert leader.cancelled()
    assert loader.calls == 2
    assert len(flights) == 0
