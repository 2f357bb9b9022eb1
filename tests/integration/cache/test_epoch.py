"""The cache epoch: coalesced bumps, fail-safe when it cannot be read, migration 0002."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.cache.epoch import CacheEpoch
from favorites.adapters.cache.epoch_repository import CacheEpochRepository
from favorites.adapters.cache.redis_client import RedisClient
from favorites.adapters.db import migrate
from favorites.adapters.db.engine import PoolSettings, create_engine
from tests.integration.cache.conftest import (
    new_product,
    redis_instance,
    user,
)
from tests.integration.cache.test_read_your_writes import add, listed


class SlowStore:
    def __init__(self) -> None:
        self.epoch = 7
        self.bumps = 0
        self.release = asyncio.Event()
        self.fail = False

    async def read(self) -> int:
        if self.fail:
            raise OSError("database unreachable")
        return self.epoch

    async def bump(self, floor: int = 0) -> int:
        self.bumps += 1
        await self.release.wait()
        if self.fail:
            raise OSError("database unreachable")
        self.epoch = max(self.epoch, floor) + 1
        return self.epoch


async def test_a_new_redis_server_bumps_once_an_outage_neither_bumps_nor_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """None is Redis not answering (no news, and the breaker's business); an identity that
    cannot be had for another reason (INFO refused) is logged once per streak."""
    caplog.set_level(logging.WARNING, logger="favorites.cache")
    store = SlowStore()
    store.release.set()
    answers: list[object] = ["run-a", None, None, "run-a", "run-b", "run-b",
                             PermissionError("NOPERM"), PermissionError("NOPERM"), "run-b"]

    async def identity() -> str | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    epoch = CacheEpoch(store, identity=identity)
    await epoch.sync()
    bumps = []
    for _ in range(9):
        await epoch.check_server()
        bumps.append(store.bumps)
    assert bumps == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.name == "favorites.cache"]
    assert [w for w in warnings if w.startswith("cannot ask Redis")] == [
        "cannot ask Redis which server it is; a restart from an older snapshot is not noticed "
        "until it can"]
    assert sum(w.startswith("Redis is a new server") for w in warnings) == 1


async def test_concurrent_bumps_are_coalesced_but_none_is_skipped() -> None:
    store = SlowStore()
    epoch = CacheEpoch(store)
    await epoch.sync()
    first = asyncio.create_task(epoch.bump())
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first UPDATE is running; these failures happened after it began
    later = [asyncio.create_task(epoch.bump()) for _ in range(20)]
    await asyncio.sleep(0.01)
    store.release.set()
    await asyncio.gather(first, *later)
    assert store.bumps == 2, "one UPDATE for the first, one after it for all the others"
    assert epoch.current == 9
    assert epoch.fresh


async def test_bumps_during_an_outage_are_one_warning_a_minute_with_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every write of an outage bumps (coalesced): one WARN line, then DEBUG, not a WARN each."""
    caplog.set_level(logging.DEBUG, logger="favorites.cache")
    store = SlowStore()
    store.release.set()
    epoch = CacheEpoch(store)
    await epoch.sync()
    for _ in range(5):
        await epoch.bump()
    assert store.bumps == 5
    levels = [r.levelname for r in caplog.records if "epoch bumped" in r.getMessage()]
    assert levels == ["WARNING", "DEBUG", "DEBUG", "DEBUG", "DEBUG"]
    assert caplog.records[0].getMessage().endswith("bumps since the last such line: 1")


async def test_a_failed_bump_keeps_the_instance_off_redis_until_it_is_retried() -> None:
    store = SlowStore()
    store.release.set()
    epoch = CacheEpoch(store, interval=0.05)
    await epoch.start()
    try:
        assert epoch.fresh
        store.fail = True
        await epoch.bump()  # never raises: the write it follows is committed
        assert not epoch.fresh
        await asyncio.sleep(0.2)
        assert not epoch.fresh  # still failing
        store.fail = False
        for _ in range(40):
            if epoch.fresh:
                break
            await asyncio.sleep(0.025)
        assert epoch.fresh
        assert epoch.current == 8
    finally:
        await epoch.stop()


async def test_a_failing_bump_is_retried_once_a_poll_with_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database that cannot take the bump is not hammered: one retry per poll interval, one
    ERROR line for the whole streak (it was a retry and a traceback per turn of the loop)."""
    store = SlowStore()
    store.release.set()
    epoch = CacheEpoch(store, interval=0.1)
    await epoch.start()
    try:
        store.fail = True
        with caplog.at_level(logging.ERROR, logger="favorites.cache"):
            await epoch.bump()
            await asyncio.sleep(0.55)
        assert 3 <= store.bumps <= 8  # the first, then about one per 0.1 s
        assert len([r for r in caplog.records if "bump failed" in r.getMessage()]) == 1
        assert not epoch.fresh
    finally:
        await epoch.stop()


async def test_an_epoch_not_read_recently_is_not_trusted() -> None:
    now = [100.0]
    store = SlowStore()
    epoch = CacheEpoch(store, max_staleness=3.0, clock=lambda: now[0])
    assert not epoch.fresh  # never read
    await epoch.sync()
    assert epoch.fresh
    now[0] += 3.5
    assert not epoch.fresh
    await epoch.sync()
    epoch.require_sync()  # e.g. Redis just came back
    assert not epoch.fresh
    now[0] += 0.01
    await epoch.sync()
    assert epoch.fresh


async def test_require_sync_wakes_the_poll_loop_at_once() -> None:
    store = SlowStore()
    epoch = CacheEpoch(store, interval=60)
    await epoch.start()
    try:
        store.epoch = 11
        epoch.require_sync()
        for _ in range(40):
            if epoch.fresh:
                break
            await asyncio.sleep(0.01)
        assert epoch.fresh
        assert epoch.current == 11
    finally:
        await epoch.stop()


async def assert_stops_within_5_s(epoch: CacheEpoch, poll_loop: asyncio.Task[None]) -> None:
    stopping = asyncio.create_task(epoch.stop())
    done, _ = await asyncio.wait([stopping], timeout=5)
    if not done:  # leave nothing running behind the test
        poll_loop.cancel()
        await asyncio.wait([stopping], timeout=5)
    assert done, "stop() was still waiting for the poll loop after 5 s"
    assert poll_loop.done()


async def test_stop_ends_the_poll_loop_even_when_it_is_woken_at_that_moment() -> None:
    """A wake-up and the stop's cancellation in the same turn of the loop: on Python 3.11,
    ``asyncio.wait_for`` returns the finished wait and drops the cancellation, so the loop polled
    on and ``stop`` (a worker's shutdown) waited for it forever."""
    store = SlowStore()
    store.release.set()
    epoch = CacheEpoch(store, interval=60)
    await epoch.start()
    await asyncio.sleep(0.01)  # the loop is waiting for its next poll
    poll_loop = epoch._task
    assert poll_loop is not None
    epoch.require_sync()
    await assert_stops_within_5_s(epoch, poll_loop)


async def test_stop_ends_the_poll_loop_even_when_redis_py_loses_the_cancellation() -> None:
    """redis-py's ``INFO`` (the server check) was seen returning normally after a cancellation
    landed while it waited: 4 of 300 stops in a stress run then waited for the loop forever."""
    store = SlowStore()
    store.release.set()
    asked = asyncio.Event()

    async def identity() -> str:
        if asked.is_set():  # the start's check answers; the loop's first one is held
            with contextlib.suppress(asyncio.CancelledError):  # lost, as redis-py lost it
                await asyncio.sleep(60)
        asked.set()
        return "the same server"

    epoch = CacheEpoch(store, interval=0.001, identity=identity)
    await epoch.start()
    poll_loop = epoch._task
    assert poll_loop is not None
    await asyncio.sleep(0.05)  # the loop is inside its first server check
    await assert_stops_within_5_s(epoch, poll_loop)


async def test_the_epoch_row_on_postgres_counts_up(pg_engine: AsyncEngine) -> None:
    repository = CacheEpochRepository(pg_engine)
    before = await repository.read()
    assert await repository.bump() == before + 1
    assert await repository.read() == before + 1


async def test_a_bump_goes_past_the_callers_epoch_whatever_the_row_holds(
    database_url: str,
) -> None:
    """A row deleted, or a database restored with an older epoch: a bump must still retire the
    entries stored under the epoch the instances are at, so it counts from there."""
    engine = create_engine(database_url, PoolSettings(1, 2, 5000))
    repository = CacheEpochRepository(engine)
    try:
        at = await repository.read() + 10  # the session's other tests never see it go down
        async with engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM cache_epoch"))
        assert await repository.bump(at) == at + 1  # the row recreated above the floor
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE cache_epoch SET epoch = 2"))
        assert await repository.bump(at + 1) == at + 2  # the row went back
        assert await repository.bump(0) == at + 3  # a floor below the row changes nothing
        assert await repository.read() == at + 3
    finally:
        await engine.dispose()


async def test_an_epoch_read_lower_than_the_current_one_is_bumped_past(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = SlowStore()
    store.release.set()
    epoch = CacheEpoch(store, interval=60)
    await epoch.sync()
    assert epoch.current == 7
    store.epoch = 1  # restored from an older backup
    with caplog.at_level(logging.WARNING, logger="favorites.cache"):
        await epoch.sync()
    assert (epoch.current, store.epoch, epoch.fresh) == (8, 8, True)
    assert any("went back from 7 to 1" in r.getMessage() for r in caplog.records)


async def test_a_read_that_started_before_a_bump_is_not_the_epoch_going_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The poll's read and this instance's own bump overlap: the read's snapshot predates the
    bump, so it returns the epoch from before. Taken for the row going back, it bumped again:
    a second retirement of every entry for nothing (seen under load, right after the first)."""
    store = SlowStore()
    store.release.set()
    snapshot_taken, answer = asyncio.Event(), asyncio.Event()
    answer.set()

    async def read() -> int:
        value = store.epoch  # the snapshot, when the statement starts
        snapshot_taken.set()
        await answer.wait()
        return value

    store.read = read  # type: ignore[method-assign]
    ticks = iter(range(1, 1_000_000))
    epoch = CacheEpoch(store, interval=60, clock=lambda: next(ticks) / 1000)
    await epoch.sync()
    answer.clear()
    snapshot_taken.clear()
    poll = asyncio.create_task(epoch.sync())
    await snapshot_taken.wait()
    await epoch.bump()
    answer.set()
    with caplog.at_level(logging.WARNING, logger="favorites.cache"):
        await poll
    assert (epoch.current, store.epoch, store.bumps, epoch.fresh) == (8, 8, 1, True)
    assert not any("went back" in r.getMessage() for r in caplog.records)
    # A read that starts after the bump and still finds less is the row going back.
    store.epoch = 3
    with caplog.at_level(logging.WARNING, logger="favorites.cache"):
        await epoch.sync()
    assert (epoch.current, store.bumps) == (9, 2)
    assert any("went back from 8 to 3" in r.getMessage() for r in caplog.records)


def test_migration_0002_creates_seeds_and_drops_the_epoch_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    sync = sa.create_engine(url)
    try:
        migrate.upgrade(url, "0002")
        with sync.connect() as conn:
            assert conn.execute(sa.text("SELECT id, epoch FROM cache_epoch")).all() == [(1, 0)]
        migrate.downgrade(url, "0001")
        assert "cache_epoch" not in sa.inspect(sync).get_table_names()
        assert "favorites" in sa.inspect(sync).get_table_names()
    finally:
        sync.dispose()


@pytest.fixture
def database_at_0001(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0001")
    return url


async def test_without_migration_0002_the_redis_caches_are_bypassed_not_broken(
    database_at_0001: str, shared_redis: RedisClient,
) -> None:
    """Green deployed before its migration ran: the epoch cannot be read, so Redis is not used
    (and every read and write still works from the database)."""
    engine = create_engine(database_at_0001, PoolSettings(1, 5, 5000))
    instance = redis_instance(engine, shared_redis, owns_client=False)
    await instance.caches.start()
    try:
        assert instance.caches.gate is not None
        assert not instance.caches.gate.epoch.fresh
        user_id, product = uuid.uuid4(), await new_product(instance)
        await add(instance, user_id, product)
        assert await listed(instance, user_id) == {product}
        assert await instance.favorites.count(user(user_id), user_id) == 1
        assert (await instance.caches.readiness()).startswith("degraded")  # type: ignore[misc]
        assert instance.lookups["favorites_page", "hit"] == 0
    finally:
        await instance.close()
        await engine.dispose()
