"""Reads on a real streaming replica, writes on the primary, read-your-writes, replica down.

The suite starts its own primary cluster and a standby made with ``pg_basebackup -R`` (see
cluster.py). Pausing WAL replay on the standby freezes what it shows, so whether a read was served
by the replica or by the primary is visible in its result.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from favorites import bootstrap
from favorites.adapters.db import migrate
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.recent_writers import RedisRecentWriters
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.domain.models import Favorite, Principal, PrincipalKind
from tests.conftest import make_settings
from tests.integration.db.cluster import StreamingCluster, available
from tests.integration.db.helpers import free_ports, user
from tests.integration.db.test_recent_writers import REDIS_URL

pytestmark = pytest.mark.postgres
WINDOW = 1.0  # read-your-writes window used here (default 5 s), so its end is quick to reach


@pytest.fixture(scope="module")
def cluster() -> Iterator[StreamingCluster]:
    reason = available()
    if reason:
        pytest.skip(reason)
    for attempt in range(3):  # another test run may grab a port between our check and bind
        cluster = StreamingCluster(*free_ports(2))
        try:
            cluster.start()
            break
        except RuntimeError:
            cluster.stop()
            if attempt == 2:
                raise
    try:
        migrate.upgrade(cluster.primary_url)
        cluster.wait_for_replay()
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.root.exists()


@pytest.fixture
async def container(
    cluster: StreamingCluster, tmp_path: Path
) -> AsyncIterator[bootstrap.Container]:
    """The application's own wiring, pointed at the primary with the standby as its replica."""
    settings = make_settings(cluster.primary_url, tmp_path,
                             database_replica_urls=[cluster.standby_url],
                             read_your_writes_seconds=WINDOW)
    container = bootstrap.build(settings)
    await container.start()
    yield container
    await container.close()


async def served_by(factory: SqlUnitOfWorkFactory, **kwargs: object) -> str:
    async with factory(**kwargs) as work:  # type: ignore[arg-type]
        conn = work._conn
        assert conn is not None
        in_recovery = (await conn.sqlalchemy().execute(
            sa.text("SELECT pg_is_in_recovery()"))).scalar_one()
    return "replica" if in_recovery else "primary"


def primary_count(cluster: StreamingCluster, product_id: uuid.UUID) -> int:
    with psycopg.connect(cluster.primary_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM favorites WHERE product_id = %s",
                           (product_id,)).fetchone()
    assert row is not None
    return int(row[0])


async def settled_favorite(
    cluster: StreamingCluster, container: bootstrap.Container, owner: Principal
) -> uuid.UUID:
    """A new product favorited by ``owner``, replayed on the replica, and the owner's
    read-your-writes window over: their reads go to the replica again."""
    assert owner.user_id is not None
    product = uuid.uuid4()
    await container.products.register_many([product])
    await container.favorites.add(owner, owner.user_id, product)
    cluster.wait_for_replay()
    await asyncio.sleep(WINDOW + 0.1)
    return product


async def test_the_replica_is_a_streaming_standby_and_reads_go_to_it(
    cluster: StreamingCluster, container: bootstrap.Container
) -> None:
    factory = container.database
    assert factory is not None
    assert len(factory.replicas) == 1
    assert await served_by(factory, readonly=True) == "replica"
    assert await served_by(factory, readonly=True, user_id=uuid.uuid4()) == "replica"
    assert await served_by(factory) == "primary"  # writes
    assert await served_by(factory.on_primary(), readonly=True) == "primary"
    with psycopg.connect(cluster.primary_url, autocommit=True) as conn:
        senders = conn.execute("SELECT state FROM pg_stat_replication").fetchall()
    assert senders == [("streaming",)]
    # the pool minimum was opened at start on both servers (make_settings: min 2)
    assert factory.primary.pool.checkedin() >= 2  # type: ignore[attr-defined]
    assert factory.replicas[0].pool.checkedin() >= 2  # type: ignore[attr-defined]


async def test_paused_replay_shows_reads_on_the_replica_and_read_your_writes_on_the_primary(
    cluster: StreamingCluster, container: bootstrap.Container
) -> None:
    alice, bob = user(), user()
    assert alice.user_id is not None
    product = uuid.uuid4()
    cluster.pause_replay()
    try:
        # registered while replay is paused: the add's existence check must read the primary
        await container.products.register_many([product])
        saved, created = await container.favorites.add(alice, alice.user_id, product)
        assert created
        assert primary_count(cluster, product) == 1

        # another user, no recent write: served by the frozen replica, which lacks the row
        assert await container.favorites.count_for_product(bob, product) == 0
        # alice wrote within the window: her reads go to the primary and see her write
        page = await container.favorites.list_page(alice, alice.user_id)
        assert [f.product_id for f in page.items] == [product]
        assert await container.favorites.count(alice, alice.user_id) == 1
        assert await container.favorites.get(alice, alice.user_id, product) == saved

        # once the window is over alice's reads go back to the (still frozen) replica
        await asyncio.sleep(WINDOW + 0.1)
        assert (await container.favorites.list_page(alice, alice.user_id)).items == []
    finally:
        cluster.resume_replay()
    cluster.wait_for_replay()
    assert await container.favorites.count_for_product(bob, product) == 1
    assert [f.product_id for f in (await container.favorites.list_page(
        alice, alice.user_id)).items] == [product]


async def test_a_removal_marks_the_user_too(
    cluster: StreamingCluster, container: bootstrap.Container
) -> None:
    carol = user()
    assert carol.user_id is not None
    product = await settled_favorite(cluster, container, carol)
    cluster.pause_replay()
    try:
        assert await container.favorites.remove(carol, carol.user_id, product)
        assert (await container.favorites.list_page(carol, carol.user_id)).items == []
        assert await container.favorites.count_for_product(user(), product) == 1  # replica
    finally:
        cluster.resume_replay()


async def test_a_product_purge_marks_every_user_it_removed_a_favorite_of(
    cluster: StreamingCluster, container: bootstrap.Container
) -> None:
    """The purge writes other users' favorites: each of them must not find the deleted product
    still listed by a lagging replica, as if their own removal had not happened."""
    dave, erin = user(), user()
    assert dave.user_id is not None
    product = await settled_favorite(cluster, container, dave)
    catalog = Principal(PrincipalKind.SERVICE, "catalog", scopes=frozenset({"products:write"}))
    cluster.pause_replay()
    try:
        await container.products.delete(catalog, product)
        assert await container.products.purge_favorites(product) == 1
        assert primary_count(cluster, product) == 0
        assert (await container.favorites.list_page(dave, dave.user_id)).items == []
        assert await container.favorites.count(dave, dave.user_id) == 0
        # a user the purge did not touch still reads the frozen replica
        assert await container.favorites.count_for_product(erin, product) == 1
    finally:
        cluster.resume_replay()


async def test_read_your_writes_holds_across_instances_through_redis(
    cluster: StreamingCluster,
) -> None:
    redis = Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    pool = PoolSettings(1, 4, 5000)
    instances = [
        SqlUnitOfWorkFactory(create_engine(cluster.primary_url, pool),
                             replicas=[create_engine(cluster.standby_url, pool, pre_ping=True)],
                             recent_writers=RedisRecentWriters(redis, 5))
        for _ in range(2)
    ]
    writer = uuid.uuid4()
    try:
        async with instances[0](user_id=writer) as work:
            await work.favorites.insert(Favorite(writer, uuid.uuid4(), datetime.now(UTC)))
            await work.commit()
        # the writer's next read lands on the other instance: Redis tells it to use the primary
        assert await served_by(instances[1], readonly=True, user_id=writer) == "primary"
        assert await served_by(instances[1], readonly=True, user_id=uuid.uuid4()) == "replica"
    finally:
        for factory in instances:
            await factory.dispose()
        await redis.delete(RedisRecentWriters.key(writer))
        await redis.aclose()


async def test_a_replica_that_is_down_is_skipped_and_reads_use_the_primary(
    cluster: StreamingCluster, container: bootstrap.Container
) -> None:
    factory = container.database
    assert factory is not None
    dave = user()
    assert dave.user_id is not None
    product = uuid.uuid4()
    await container.products.register_many([product])
    await container.favorites.add(dave, dave.user_id, product)
    assert await served_by(factory, readonly=True) == "replica"  # pooled replica connections
    cluster.stop_standby()
    try:
        started = time.monotonic()
        # pooled connections to the dead replica fail their pre-ping, a new one is refused:
        # the read is served by the primary, no error reaches the caller
        assert await container.favorites.count_for_product(user(), product) == 1
        assert factory.replica_set.healthy() == []
        for _ in range(5):  # skipped while it sits out: no new connection attempts
            assert await served_by(factory, readonly=True) == "primary"
        assert time.monotonic() - started < 3
    finally:
        cluster.start_standby()
    cluster.wait_for_replay()
