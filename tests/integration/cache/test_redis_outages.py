"""Redis failing under the caches, on a Redis server of the test's own (killed, paused, restarted
from its snapshot). The production timings are kept, except a 0.3 s breaker cool-down and a 0.2 s
epoch poll, so the whole file runs in a few seconds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.cache import codec, policy
from favorites.adapters.cache.epoch import CacheEpoch
from favorites.adapters.cache.gate import SKIPPED, RedisGate
from favorites.adapters.cache.redis import RedisFavoritesCache
from favorites.adapters.cache.redis_client import build_redis_client, server_identity
from favorites.adapters.catalog.breaker import BreakerState
from favorites.domain.pages import FirstPage
from tests.integration.cache.conftest import FAST, Instance, new_product, redis_instance, user
from tests.integration.cache.servers import RedisServer
from tests.integration.cache.test_epoch import SlowStore
from tests.integration.cache.test_read_your_writes import add, listed


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path / "redis").start()
    yield started
    started.stop()


@asynccontextmanager
async def running(engine: AsyncEngine, server: RedisServer,
                  **options: float) -> AsyncIterator[Instance]:
    instance = redis_instance(engine, build_redis_client(server.url), **{**FAST, **options})
    await instance.caches.start()
    try:
        yield instance
    finally:
        server.resume() if server.process is not None else None
        await instance.close()


async def eventually_cached(instance: Instance, user_id: uuid.UUID,
                            expected: set[uuid.UUID]) -> None:
    """Read until the page is served by Redis again; every read must show ``expected``."""
    hits = instance.lookups[policy.FAVORITES_PAGE, "hit"]
    deadline = time.monotonic() + 5
    while instance.lookups[policy.FAVORITES_PAGE, "hit"] == hits:
        assert time.monotonic() < deadline, "the cache never came back"
        assert await listed(instance, user_id) == expected
        await asyncio.sleep(0.05)
    assert await listed(instance, user_id) == expected


async def reconnected(instance: Instance) -> None:
    """Until the instance's client answers a PING (its pooled connections died with Redis)."""
    assert instance.caches.gate is not None
    client = instance.caches.gate.client
    for _ in range(50):
        try:
            await client.ping()
            return
        except Exception:
            await asyncio.sleep(0.02)
    raise AssertionError("Redis did not come back")


async def old_entry(server: RedisServer, cache: RedisFavoritesCache, user_id: uuid.UUID,
                    epoch: int) -> set[uuid.UUID] | None:
    """What the page entry of ``epoch`` would serve, read straight from Redis."""
    raw = Redis.from_url(server.url)
    try:
        entry, version = await raw.mget([f"{cache._user(user_id)}:{epoch}:p",
                                         f"{cache._user(user_id)}:v"])
    finally:
        await raw.aclose()
    payload = codec.untag(entry, version)
    page = None if payload is None else FirstPage.decode(user_id, payload)
    return None if page is None else {f.product_id for f in page.favorites(51)}


@pytest.mark.parametrize("outage", ["killed-then-restarted-from-snapshot", "paused-then-resumed"])
async def test_an_invalidation_lost_while_redis_was_down_never_serves_the_old_entry(
    pg_engine: AsyncEngine, server: RedisServer, outage: str,
) -> None:
    async with running(pg_engine, server) as instance:
        gate = instance.caches.gate
        assert gate is not None
        cache = instance.caches.favorites
        assert isinstance(cache, RedisFavoritesCache)
        user_id, p1, p2 = uuid.uuid4(), await new_product(instance), await new_product(instance)
        await add(instance, user_id, p1)
        assert await listed(instance, user_id) == {p1}
        await eventually_cached(instance, user_id, {p1})
        epoch = gate.epoch.current

        if outage.startswith("killed"):
            server.kill(snapshot=True)  # the add below tries Redis and fails
        else:
            server.pause()
            for _ in range(3):  # reads time out and open the breaker: the add skips Redis
                assert await listed(instance, user_id) == {p1}
            assert gate.breaker.state is BreakerState.OPEN
        await add(instance, user_id, p2)
        assert gate.epoch.bumps == 1
        assert gate.epoch.current > epoch
        assert await listed(instance, user_id) == {p1, p2}  # from the database meanwhile

        if outage.startswith("killed"):
            server.start()  # loads dump.rdb: the pre-write page and version are back
        else:
            server.resume()
        assert await old_entry(server, cache, user_id, epoch) == {p1}, "Redis lost its data"
        await eventually_cached(instance, user_id, {p1, p2})
        assert await instance.favorites.count(user(user_id), user_id) == 2


async def test_another_instance_moves_to_the_new_epoch_within_one_poll(
    pg_engine: AsyncEngine, server: RedisServer,
) -> None:
    """B cached the page and saw no outage; A's invalidation was lost. Once Redis is back with
    its old data, B must not serve the old page: it polled the epoch A bumped."""
    async with running(pg_engine, server) as a, running(pg_engine, server) as b:
        user_id, p1, p2 = uuid.uuid4(), await new_product(a), await new_product(a)
        await add(a, user_id, p1)
        await eventually_cached(b, user_id, {p1})
        server.kill(snapshot=True)
        await add(a, user_id, p2)
        assert a.caches.gate is not None
        assert b.caches.gate is not None
        assert a.caches.gate.epoch.bumps == 1
        await asyncio.sleep(FAST["epoch_interval"] * 2.5)
        assert b.caches.gate.epoch.current == a.caches.gate.epoch.current
        server.start()
        await reconnected(b)  # B's next read really reaches Redis and its old data
        assert await listed(b, user_id) == {p1, p2}
        await eventually_cached(b, user_id, {p1, p2})


async def test_redis_restarted_from_an_older_snapshot_is_noticed_within_one_poll(
    pg_engine: AsyncEngine, server: RedisServer,
) -> None:
    """No instance saw an outage or lost an invalidation: Redis was snapshotted, a later write's
    invalidation was delivered, then Redis restarted from the snapshot, bringing back the older
    page and the version key it was tagged with, both looking current. The new server's identity
    (its run_id) makes the instance bump the epoch at its next poll."""
    async with running(pg_engine, server) as a:
        assert a.caches.gate is not None
        user_id, p1, p2 = uuid.uuid4(), await new_product(a), await new_product(a)
        await add(a, user_id, p1)
        await eventually_cached(a, user_id, {p1})
        assert server.cli("SAVE").strip() == "OK"  # the snapshot holds the page {p1}
        await add(a, user_id, p2)  # invalidated in Redis, after the snapshot
        await eventually_cached(a, user_id, {p1, p2})
        assert a.caches.gate.epoch.bumps == 0
        server.kill()  # not saved again: it restarts with the snapshot's data
        server.start()
        await reconnected(a)
        await asyncio.sleep(FAST["epoch_interval"] * 2.5)
        assert await listed(a, user_id) == {p1, p2}, "the snapshot's older page was served"
        assert a.caches.gate.epoch.bumps == 1
        await eventually_cached(a, user_id, {p1, p2})
        await asyncio.sleep(FAST["epoch_interval"] * 2.5)
        assert a.caches.gate.epoch.bumps == 1, "the same server again is not a new one"


async def test_an_instance_whose_breaker_closes_rereads_the_epoch_before_using_redis(
    pg_engine: AsyncEngine, server: RedisServer,
) -> None:
    """B noticed the outage (its breaker opened) but would not poll the epoch for a minute; A's
    invalidation was lost. When B's breaker closes, B must re-read the epoch before serving."""
    async with running(pg_engine, server) as a, \
            running(pg_engine, server, epoch_interval=60) as b:
        assert b.caches.gate is not None
        user_id, p1, p2 = uuid.uuid4(), await new_product(a), await new_product(a)
        await add(a, user_id, p1)
        await eventually_cached(b, user_id, {p1})
        server.kill(snapshot=True)
        for _ in range(3):
            assert await listed(b, user_id) == {p1}
        assert b.caches.gate.breaker.state is BreakerState.OPEN
        await add(a, user_id, p2)
        server.start()
        await reconnected(b)
        await asyncio.sleep(FAST["reset_timeout"])
        await eventually_cached(b, user_id, {p1, p2})


async def test_a_slow_redis_is_skipped_then_used_again_when_it_recovers(
    pg_engine: AsyncEngine, server: RedisServer,
) -> None:
    async with running(pg_engine, server) as instance:
        gate = instance.caches.gate
        assert gate is not None
        user_id, product = uuid.uuid4(), await new_product(instance)
        await add(instance, user_id, product)
        await eventually_cached(instance, user_id, {product})
        assert await instance.caches.readiness() == "ok"  # type: ignore[misc]

        server.pause()  # accepts connections, answers nothing: every call would hang
        started = time.monotonic()
        for _ in range(3):
            assert await listed(instance, user_id) == {product}
        assert gate.breaker.state is BreakerState.OPEN
        assert time.monotonic() - started < 3 * 2 * gate.deadline + 0.5  # one deadline each

        started = time.monotonic()
        for _ in range(30):  # breaker open: straight to PostgreSQL, no Redis timeout
            assert await listed(instance, user_id) == {product}
            assert await instance.favorites.count(user(user_id), user_id) == 1
        assert time.monotonic() - started < 1.0
        assert (await instance.caches.readiness()).startswith("degraded")  # type: ignore[misc]

        server.resume()
        await eventually_cached(instance, user_id, {product})
        assert gate.breaker.state is BreakerState.CLOSED
        assert instance.breaker_states == ["closed", "open", "half-open", "closed"]
        assert await instance.caches.readiness() == "ok"  # type: ignore[misc]


async def test_redis_down_at_start_up_serves_from_the_database_then_caches(
    pg_engine: AsyncEngine, tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "late")  # not started yet: connection refused
    async with running(pg_engine, server) as instance:
        user_id, product = uuid.uuid4(), await new_product(instance)
        await add(instance, user_id, product)
        for _ in range(5):
            assert await listed(instance, user_id) == {product}
        assert (await instance.caches.readiness()).startswith("degraded")  # type: ignore[misc]
        server.start()
        try:
            await eventually_cached(instance, user_id, {product})
        finally:
            server.stop()


async def test_a_cluster_of_one_primary_has_an_identity(tmp_path: Path) -> None:
    """A one-shard cluster (common on managed Redis): redis-py answers INFO of a single target
    node as that node's reply, not keyed by node."""
    node = RedisServer(tmp_path / "one", None, "--cluster-enabled", "yes",
                       "--cluster-config-file", str(tmp_path / "one.conf")).start()
    try:
        assert node.cli("CLUSTER", "ADDSLOTSRANGE", "0", "16383").strip() == "OK"
        deadline = time.monotonic() + 10
        while "cluster_state:ok" not in node.cli("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster never became ready"
            await asyncio.sleep(0.05)
        client = build_redis_client(f"redis://127.0.0.1:{node.port}", cluster=True)
        try:
            identity = await server_identity(client)
            assert identity == node.cli("INFO", "server").split("run_id:")[1].split()[0]
            node.kill()  # an outage of the cluster is no answer, every time
            assert [await server_identity(client) for _ in range(3)] == [None, None, None]
        finally:
            await client.aclose()
    finally:
        node.stop()


async def test_an_unreachable_redis_has_no_identity_rather_than_an_error(
        server: RedisServer) -> None:
    """An outage is the breaker's: the identity check neither raises nor logs for it."""
    client = build_redis_client(server.url)
    try:
        assert await server_identity(client) is not None
        server.pause()
        assert await server_identity(client) is None  # hung: read timeout
        server.resume()
        server.kill()
        assert await server_identity(client) is None  # refused
    finally:
        await client.aclose()


async def test_one_event_failing_every_call_in_flight_counts_once_for_the_breaker() -> None:
    """A lost connection fails all its commands with one error: thirty requests in flight when
    a busy worker's watchdog closed it opened the breaker (three failures), and every write
    then retired the whole cache. Distinct failures (Redis refusing each new connection) still
    open it at the threshold."""
    store = SlowStore()
    store.release.set()
    client = Redis.from_url("redis://127.0.0.1:9")
    gate = RedisGate(client, CacheEpoch(store))
    lost = RedisConnectionError("connection to Redis lost: closed")

    async def fails(error: Exception) -> None:
        raise error

    try:
        for _ in range(30):
            assert await gate.call(lambda: fails(lost)) is SKIPPED
        assert (gate.failures, gate.breaker.state) == (30, BreakerState.CLOSED)
        assert await gate.call(lambda: fails(RedisConnectionError("refused"))) is SKIPPED
        assert gate.breaker.state is BreakerState.CLOSED
        assert await gate.call(lambda: fails(RedisConnectionError("refused"))) is SKIPPED
        assert gate.breaker.state is BreakerState.OPEN
    finally:
        await gate.close()
        await client.aclose()


async def test_reads_skip_redis_while_a_connection_attempt_to_a_hung_server_is_under_way(
        server: RedisServer) -> None:
    """When Redis hangs, the breaker opens only after a few failed attempts to reconnect, each
    a connect timeout long. Reads meanwhile go to the database at once instead of queueing
    behind them (in a 1,000 req/s run with Redis paused, p99 while it was down was 193 ms when
    they queued), and they are not failures of their own: the attempt counts once."""
    client = build_redis_client(server.url.rsplit("/", 1)[0] + "/3")  # SELECT: no reply
    store = SlowStore()
    store.release.set()
    gate = RedisGate(client, CacheEpoch(store))
    fast = gate.fast
    assert fast is not None
    try:
        server.pause()
        write = asyncio.ensure_future(gate.call(lambda: fast.execute("SET", "k", "v"),
                                                bounded=True))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        reads = await asyncio.gather(*(gate.call(
            lambda: fast.execute("GET", "k", wait_for_connection=False), read=True,
            bounded=True) for _ in range(20)))
        assert time.monotonic() - started < 0.05
        assert reads == [SKIPPED] * 20
        assert await write is SKIPPED
        assert (gate.failures, gate.breaker.state) == (1, BreakerState.CLOSED)
    finally:
        server.resume()
        await gate.close()
        await client.aclose()
