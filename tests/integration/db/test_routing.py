"""Replica routing of the unit-of-work factory, on SQLite files standing in for the servers.

Each "server" is its own database file, so where a read went shows in what it sees. The real
streaming replica is exercised in test_replicas.py; this covers the rules quickly and exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.db import migrate
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.recent_writers import InProcessRecentWriters
from favorites.adapters.db.replicas import ReplicaSet
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.bootstrap import build_database
from favorites.config import ConfigError, Settings, load_settings
from favorites.domain.models import Favorite
from tests.integration.db.helpers import closed_port

T0 = datetime(2026, 3, 1, tzinfo=UTC)
POOL = PoolSettings(1, 5, 5000)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Servers:
    primary: AsyncEngine
    replica_a: AsyncEngine
    replica_b: AsyncEngine
    #: Present only in the file of the server it names: reading it back says who answered.
    markers: dict[str, Favorite]


@pytest.fixture(scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    root = tmp_path_factory.mktemp("routing")
    engines: dict[str, AsyncEngine] = {}
    markers: dict[str, Favorite] = {}
    for name in ("primary", "replica_a", "replica_b"):
        url = f"sqlite:///{root / name}.db"
        await asyncio.to_thread(migrate.upgrade, url)  # Alembic runs its own event loop
        engines[name] = create_engine(url, POOL)
        markers[name] = Favorite(uuid.uuid4(), uuid.uuid4(), T0)
        async with SqlUnitOfWorkFactory(engines[name])() as work:
            await work.favorites.insert(markers[name])
            await work.commit()
    yield Servers(engines["primary"], engines["replica_a"], engines["replica_b"], markers)
    for engine in engines.values():
        await engine.dispose()


async def answered_by(factory: SqlUnitOfWorkFactory, servers: Servers, **kwargs: object) -> str:
    async with factory(**kwargs) as work:  # type: ignore[arg-type]
        for name, marker in servers.markers.items():
            if await work.favorites.get(marker.user_id, marker.product_id) is not None:
                return name
    raise AssertionError("no marker visible")


async def test_without_replicas_everything_uses_the_primary_and_tracks_no_writer(
    servers: Servers,
) -> None:
    writers = InProcessRecentWriters(5)
    factory = SqlUnitOfWorkFactory(servers.primary, recent_writers=writers)
    assert await answered_by(factory, servers, readonly=True) == "primary"
    async with factory(user_id=uuid.uuid4()) as work:
        await work.commit()
    assert len(writers) == 0  # nothing to protect against: no lag without replicas
    assert factory.replicas == ()


async def test_reads_use_the_replica_and_a_recent_writer_reads_the_primary(
    servers: Servers,
) -> None:
    clock = FakeClock()
    factory = SqlUnitOfWorkFactory(servers.primary, replicas=[servers.replica_a],
                                   recent_writers=InProcessRecentWriters(5, clock=clock))
    writer, other = uuid.uuid4(), uuid.uuid4()
    assert await answered_by(factory, servers, readonly=True) == "replica_a"
    assert await answered_by(factory, servers, readonly=True, user_id=writer) == "replica_a"
    assert await answered_by(factory, servers) == "primary"  # a write unit of work

    async with factory(user_id=writer) as work:
        await work.favorites.insert(Favorite(writer, uuid.uuid4(), T0))
        await work.commit()
    assert await answered_by(factory, servers, readonly=True, user_id=writer) == "primary"
    assert await answered_by(factory, servers, readonly=True, user_id=other) == "replica_a"
    assert await answered_by(factory, servers, readonly=True) == "replica_a"

    clock.now += 5.01  # the window is over: back to the replica
    assert await answered_by(factory, servers, readonly=True, user_id=writer) == "replica_a"


async def test_a_rolled_back_write_does_not_mark_the_user(servers: Servers) -> None:
    factory = SqlUnitOfWorkFactory(servers.primary, replicas=[servers.replica_a])
    writer = uuid.uuid4()
    async with factory(user_id=writer) as work:
        await work.favorites.insert(Favorite(writer, uuid.uuid4(), T0))
    assert await answered_by(factory, servers, readonly=True, user_id=writer) == "replica_a"


async def test_reads_take_turns_over_the_replicas(servers: Servers) -> None:
    factory = SqlUnitOfWorkFactory(servers.primary,
                                   replicas=[servers.replica_a, servers.replica_b])
    seen = [await answered_by(factory, servers, readonly=True) for _ in range(4)]
    assert seen == ["replica_a", "replica_b", "replica_a", "replica_b"]


async def test_a_replica_that_fails_to_connect_sits_out_and_the_read_uses_the_primary(
    servers: Servers,
) -> None:
    dead = create_engine(f"postgresql://postgres@127.0.0.1:{closed_port()}/gone", POOL,
                         pre_ping=True, connect_timeout=2)
    clock = FakeClock()
    replicas = ReplicaSet([dead, servers.replica_a], retry_after=10, clock=clock)
    factory = SqlUnitOfWorkFactory(servers.primary, replicas=replicas)
    try:
        # dead is first in turn: its connect is refused, this read is served by the primary
        assert await answered_by(factory, servers, readonly=True) == "primary"
        assert replicas.healthy() == [servers.replica_a]
        # while it sits out, every read goes to the healthy replica, none tries the dead one
        assert [await answered_by(factory, servers, readonly=True) for _ in range(3)] == [
            "replica_a"] * 3
        clock.now += 10  # after retry_after it is tried again (and fails again)
        assert replicas.healthy() == [dead, servers.replica_a]
        seen = {await answered_by(factory, servers, readonly=True) for _ in range(2)}
        assert seen == {"primary", "replica_a"}
        assert replicas.healthy() == [servers.replica_a]
    finally:
        await dead.dispose()


async def test_all_replicas_down_means_reads_on_the_primary(servers: Servers) -> None:
    dead = create_engine(f"postgresql://postgres@127.0.0.1:{closed_port()}/gone", POOL,
                         pre_ping=True, connect_timeout=2)
    factory = SqlUnitOfWorkFactory(servers.primary, replicas=[dead])
    try:
        for _ in range(3):
            assert await answered_by(factory, servers, readonly=True) == "primary"
        assert factory.replica_set.healthy() == []
    finally:
        await dead.dispose()


async def test_on_primary_pins_reads_but_still_records_writers(servers: Servers) -> None:
    factory = SqlUnitOfWorkFactory(servers.primary, replicas=[servers.replica_a])
    pinned = factory.on_primary()
    assert await answered_by(pinned, servers, readonly=True) == "primary"
    writer = uuid.uuid4()
    async with pinned(user_id=writer) as work:
        await work.commit()
    assert await answered_by(factory, servers, readonly=True, user_id=writer) == "primary"
    assert pinned.replicas == factory.replicas


async def test_build_database_gives_replicas_the_pool_and_timeout_of_the_primary() -> None:
    settings = Settings(_env_file=None, database_url="postgresql://u@127.0.0.1:5432/db",  # type: ignore[call-arg]
                        database_replica_urls=["postgresql://u@10.0.0.1/db",
                                               "postgresql://u@10.0.0.2/db"])
    assert (settings.database_pool_min, settings.database_pool_max) == (10, 50)
    assert settings.database_statement_timeout_ms == 5000
    assert settings.read_your_writes_seconds == 5
    primary = create_engine(settings.database_url or "", PoolSettings())
    factory = build_database(settings, primary)
    try:
        assert len(factory.replicas) == 2
        for engine in (primary, *factory.replicas):
            pool = engine.pool
            assert pool.size() == 50  # type: ignore[attr-defined]
            assert pool._max_overflow == 0  # type: ignore[attr-defined]
        assert factory.pool_minimum == 10
        assert all(e.pool._pre_ping for e in factory.replicas)
        assert isinstance(factory.recent_writers, InProcessRecentWriters)
        assert factory.recent_writers.window == 5
    finally:
        await factory.dispose()


def test_replicas_need_a_postgresql_primary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("FAVORITES_DATABASE_URL", "FAVORITES_DATABASE_REPLICA_URLS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"^FAVORITES_DATABASE_REPLICA_URLS: "):
        load_settings(database_replica_urls="postgresql://u@10.0.0.1/db")
    with pytest.raises(ConfigError, match=r"^FAVORITES_READ_YOUR_WRITES_SECONDS: "):
        load_settings(read_your_writes_seconds=-1)
