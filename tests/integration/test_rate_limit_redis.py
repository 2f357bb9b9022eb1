"""Rate limiting shared through a real Redis by two service instances, and what happens without it.

Anchors: OWASP API4:2023 Unrestricted Resource Consumption; OWASP ASVS 4.0.3 11.1.4
(anti-automation) and 1.11.3/11.1.x availability under a failing dependency; SPEC §4 ("rate
limiting degrades to a per-instance in-process limiter while Redis is down").

The shared Redis (127.0.0.1:6379) is only written in database 13, under fresh users and addresses;
it is never stopped. Outages are played with a closed port, a socket that never answers, and a
``redis-server`` this module starts and kills itself (ports 18300-18399).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from limits.aio.storage import RedisClusterStorage, RedisStorage
from prometheus_client import REGISTRY

from favorites.adapters.ratelimit import RateLimit, RedisRateLimiter, build_storage, storage_uri
from favorites.config import ConfigError, load_settings
from favorites.entrypoints.http.app import create_app
from tests.conftest import JWT_SECRET, make_settings
from tests.e2e.test_served import BIN, clean_env
from tests.helpers import assert_problem, bearer
from tests.security.test_rate_limit import (
    BOGUS_REFRESH,
    clear_of_window_edge,
    client_from,
    fresh_address,
    rate_headers,
)

SHARED_REDIS = "redis://127.0.0.1:6379/13"
CLOSED_PORT = 18399
HUNG_PORT = 18398
OWN_REDIS_PORT = 18379
SERVED_PORTS = (18310, 18311)
LIMIT = 5


def breaker_state() -> float | None:
    """The ``circuit_breaker_state{dependency="ratelimit_redis"}`` gauge: 0 closed, 2 open."""
    return REGISTRY.get_sample_value("circuit_breaker_state", {"dependency": "ratelimit_redis"})


def redis_answers(url: str) -> bool:
    """A blocking PING (fine in a test, also inside the event loop: it takes at most 0.5 s)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (OSError, redis.RedisError):
        return False
    finally:
        client.close()


@pytest.fixture(scope="module")
def shared_redis() -> str:
    if not redis_answers(SHARED_REDIS):
        pytest.skip("needs the Redis server on 127.0.0.1:6379")
    return SHARED_REDIS


@asynccontextmanager
async def instances(sqlite_url: str, tmp: Path, redis_url: str, count: int = 2
                    ) -> AsyncIterator[list[FastAPI]]:
    """``count`` separate apps (own container, limiter, Redis pool) on one database and Redis."""
    apps = [create_app(make_settings(sqlite_url, tmp, redis_url=redis_url,
                                     rate_limit=f"{LIMIT}/minute")) for _ in range(count)]
    contexts = [app.router.lifespan_context(app) for app in apps]
    for context in contexts:
        await context.__aenter__()
    try:
        yield apps
    finally:
        for context in reversed(contexts):
            await context.__aexit__(None, None, None)


def limiter_of(app: FastAPI) -> RedisRateLimiter:
    limiter = app.state.container.rate_limiter
    assert isinstance(limiter, RedisRateLimiter)
    return limiter


async def count_once(app: FastAPI, headers: dict[str, str]) -> httpx.Response:
    async with client_from(app, "127.0.0.1") as client:
        return await client.get("/v1/users/me/favorites/count", headers=headers)


@pytest.mark.redis
async def test_two_instances_share_one_limit(
    shared_redis: str, sqlite_url: str, tmp_path: Path
) -> None:
    """API4:2023; SPEC §4: the limit is shared by every instance through Redis: requests split
    across two instances count together and the limit+1-th is refused on either."""
    await clear_of_window_edge()
    user = uuid.uuid4()
    headers = bearer(user)
    address = fresh_address()
    async with instances(sqlite_url, tmp_path, shared_redis) as (first, second):
        answers = [await count_once(app, headers) for app in (first, second) * 3]
        assert [r.status_code for r in answers] == [200] * LIMIT + [429]
        assert [rate_headers(r)[1] for r in answers] == [4, 3, 2, 1, 0, 0]
        assert_problem(answers[-1], 429, "rate-limited")
        assert (await count_once(first, headers)).status_code == 429
        # Before sign-in too: the client address is counted across both instances.
        refreshes = []
        for app in (first, second) * 3:
            async with client_from(app, address) as client:
                refreshes.append(await client.post("/v1/auth/refresh", json=BOGUS_REFRESH))
        assert [r.status_code for r in refreshes] == [401] * LIMIT + [429]
        assert limiter_of(first).failures == limiter_of(second).failures == 0
    redis = aioredis.Redis.from_url(shared_redis)
    try:
        keys = [key async for key in redis.scan_iter(f"favorites:ratelimit:user:{user}:*")]
        assert len(keys) == 1
        assert 0 < await redis.ttl(keys[0]) <= 60
    finally:
        await redis.aclose()


async def test_redis_down_requests_are_served_and_limited_per_instance(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC §4 (degrade to a per-instance limiter while Redis is down); ASVS 11.1.4: with Redis
    unreachable no request fails with 5xx, each instance still enforces the limit on its own,
    one WARNING per outage and instance, readiness says degraded, every failure is counted."""
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", CLOSED_PORT)) != 0, "the port must be closed"
    await clear_of_window_edge()
    headers = bearer(uuid.uuid4())
    with caplog.at_level(logging.INFO, logger="favorites.ratelimit"):
        async with instances(sqlite_url, tmp_path,
                             f"redis://127.0.0.1:{CLOSED_PORT}/0") as (first, second):
            on_first = [await count_once(first, headers) for _ in range(LIMIT + 1)]
            on_second = [await count_once(second, headers) for _ in range(LIMIT + 1)]
            async with client_from(first, "127.0.0.1") as client:
                ready = await client.get("/health/ready")
            assert breaker_state() == 2
            failures = [limiter_of(app).failures for app in (first, second)]
    for answers in (on_first, on_second):
        assert [r.status_code for r in answers] == [200] * LIMIT + [429]
        assert [rate_headers(r)[1] for r in answers] == [4, 3, 2, 1, 0, 0]
    assert ready.status_code == 200
    assert ready.json()["checks"]["rate_limiter"].startswith("degraded")
    assert ready.json()["status"] == "degraded"
    assert failures == [1, 1], "one failed call per cooldown, not one per request"
    warnings = [r for r in caplog.records
                if r.name == "favorites.ratelimit" and r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per instance


async def test_a_hung_redis_costs_one_short_timeout_per_cooldown(
    sqlite_url: str, tmp_path: Path
) -> None:
    """ASVS 11.1.x availability; SPEC §4: a Redis that accepts connections but never answers
    costs one short timeout (about 100 ms), then the breaker keeps it off the request path."""
    silent: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", HUNG_PORT)
    try:
        headers = bearer(uuid.uuid4())
        async with instances(sqlite_url, tmp_path, f"redis://127.0.0.1:{HUNG_PORT}/0",
                             count=1) as (app,):
            await clear_of_window_edge()
            started = time.perf_counter()
            statuses = [(await count_once(app, headers)).status_code for _ in range(30)]
            elapsed = time.perf_counter() - started
            assert statuses == [200] * LIMIT + [429] * (30 - LIMIT)
            assert limiter_of(app).failures == 1
            assert limiter_of(app).fallback_hits == 30
            assert elapsed < 1.0, f"30 requests took {elapsed:.2f}s"
    finally:
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH")
    server = OwnRedis(OWN_REDIS_PORT, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class OwnRedis:
    """A throw-away ``redis-server`` without persistence, started and killed by this test only."""

    def __init__(self, port: int, workdir: Path):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not redis_answers(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None


async def test_back_to_the_shared_limit_when_redis_returns(
    own_redis: OwnRedis, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC §4; ASVS 11.1.x: Redis dies mid-traffic (requests keep being served, limited per
    instance), comes back, and after the breaker's cooldown both instances share the limit
    again, with one INFO line saying so."""
    async with instances(sqlite_url, tmp_path, own_redis.url) as (first, second):

        async def split_three() -> list[int]:
            """Fresh user, requests on first, second, first: the remaining counts seen."""
            await clear_of_window_edge(margin=0.5)
            headers = bearer(uuid.uuid4())
            return [rate_headers(await count_once(app, headers))[1]
                    for app in (first, second, first)]

        assert await split_three() == [4, 3, 2]  # shared
        own_redis.stop()
        with caplog.at_level(logging.INFO, logger="favorites.ratelimit"):
            await clear_of_window_edge(margin=0.5)
            headers = bearer(uuid.uuid4())
            during = [await count_once(app, headers) for app in (first, second, first)]
            assert [r.status_code for r in during] == [200, 200, 200]
            assert [rate_headers(r)[1] for r in during] == [4, 4, 3]  # each instance alone
            assert breaker_state() == 2
            own_redis.start()
            deadline = time.monotonic() + 10
            while (seen := await split_three()) != [4, 3, 2]:
                assert time.monotonic() < deadline, f"still per instance: {seen}"
                await asyncio.sleep(0.25)
        recovered = [r for r in caplog.records
                     if r.name == "favorites.ratelimit" and "answers again" in r.getMessage()]
        assert len(recovered) == 2
        assert [limiter_of(app).outages for app in (first, second)] == [1, 1]
        assert breaker_state() == 0


@contextmanager
def served(cwd: Path, port: int, env: dict[str, str]) -> Iterator[str]:
    """``favorites serve`` on ``port`` (in 18300-18399); terminated (our pid only) on the way out."""
    log = cwd / f"serve-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(BIN / "favorites"), "serve", "--port", str(port)],
                                   cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "not serving:\n" + log.read_text()
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.redis
def test_two_served_processes_share_one_limit(shared_redis: str, tmp_path: Path) -> None:
    """API4:2023; SPEC §4: two real ``favorites serve`` processes with one FAVORITES_REDIS_URL
    count a user's requests together, over real sockets."""
    env = clean_env(FAVORITES_ENV="test", FAVORITES_DATA_DIR=str(tmp_path / "var"),
                    FAVORITES_DATABASE_URL=f"sqlite:///{tmp_path / 'favorites.db'}",
                    FAVORITES_JWT_SECRET=JWT_SECRET, FAVORITES_REDIS_URL=shared_redis,
                    FAVORITES_RATE_LIMIT=f"{LIMIT}/minute")
    with served(tmp_path, SERVED_PORTS[0], env) as first, \
            served(tmp_path, SERVED_PORTS[1], env) as second:
        left = 60 - time.time() % 60
        if left < 3:
            time.sleep(left + 0.05)
        headers = bearer(uuid.uuid4())
        answers = [httpx.get(f"{base}/v1/users/me/favorites/count", headers=headers, timeout=5)
                   for base in (first, second) * 3]
    assert [r.status_code for r in answers] == [200] * LIMIT + [429]
    assert [r.headers["ratelimit-remaining"] for r in answers] == ["4", "3", "2", "1", "0", "0"]
    assert "retry-after" in answers[-1].headers


def test_storage_uri_for_single_node_and_cluster() -> None:
    """SPEC §7 (FAVORITES_REDIS_CLUSTER): a cluster gets limits' redis+cluster storage over its
    host list (no database number); a single node keeps its URL, database and TLS included."""
    assert storage_uri("redis://h:6379/2", False) == ("async+redis://h:6379/2", {})
    assert storage_uri("rediss://:pw@h:6380/0", False) == ("async+rediss://:pw@h:6380/0", {})
    assert storage_uri("unix:///run/redis.sock?db=1", False) == (
        "async+redis+unix:///run/redis.sock?db=1", {})
    assert storage_uri("redis://a:7000,b:7001/0", True) == ("async+redis+cluster://a:7000,b:7001",
                                                           {})
    assert storage_uri("rediss://:pw@a:7000", True) == ("async+redis+cluster://:pw@a:7000",
                                                        {"ssl": True})
    assert type(build_storage("redis://127.0.0.1:6379/0", False)) is RedisStorage
    assert isinstance(build_storage("redis://127.0.0.1:7000", True), RedisClusterStorage)
    with pytest.raises(ConfigError, match="FAVORITES_REDIS_CLUSTER"):
        load_settings(_env_file=None, redis_url="unix:///run/redis.sock", redis_cluster=True)


def batching_limiter(url: str, clock: list[float]) -> RedisRateLimiter:
    """100/minute (large enough to batch), flushed only when the test says so."""
    return RedisRateLimiter(build_storage(url, False), {"user": RateLimit(100, 60)},
                            clock=lambda: clock[0], flush_interval=3600)


@pytest.mark.redis
@pytest.mark.parametrize("flush_interval", [3600, 0.001], ids=["no flush", "flushing"])
async def test_concurrent_requests_of_one_identity_never_pass_the_limit(
    shared_redis: str, flush_interval: float,
) -> None:
    """SPEC §4: 100/minute is 100, even when the requests arrive at once. While one request's
    count (or a flush) was on its way to Redis, the others saw neither it nor a new total, took
    the count for far below the limit and were allowed locally: 95 of 100 concurrent requests
    passed a limit of 30 on one instance."""
    clock = [60.0 * (int(time.time() // 60) + 2000) + 1]  # a window no other test uses
    limiter = RedisRateLimiter(build_storage(shared_redis, False), {"user": RateLimit(30, 60)},
                               clock=lambda: clock[0], flush_interval=flush_interval)
    user = str(uuid.uuid4())
    raw = aioredis.Redis.from_url(shared_redis)
    try:
        for burst in (100, 40):  # a second burst after the first has been counted
            decisions = await asyncio.gather(*(limiter.hit("user", user) for _ in range(burst)))
            allowed = sum(d.allowed for d in decisions)
            assert allowed <= 30, f"{allowed} of {burst} allowed at once"
        await limiter.flush()
        assert sum(d.allowed for d in decisions) == 0  # the second burst: all over the limit
        key = f"favorites:ratelimit:user:{user}:{int(clock[0] // 60)}"
        assert int(await raw.get(key)) >= 30  # every allowed request reached the shared count
        assert limiter.failures == 0
    finally:
        await limiter.close()
        await raw.delete(f"favorites:ratelimit:user:{user}:{int(clock[0] // 60)}")
        await raw.aclose()


@pytest.mark.redis
async def test_far_below_the_limit_counts_are_batched_and_the_shared_limit_still_holds(
    shared_redis: str,
) -> None:
    """SPEC §4 with batched counting: far below the limit no request waits for Redis, local counts
    reach Redis in one flush, and near the limit both instances count the shared total exactly:
    exactly 100 requests of 100/minute are allowed across the two."""
    clock = [60.0 * (int(time.time() // 60) + 1000) + 1]  # a window no other test uses
    first, second = batching_limiter(shared_redis, clock), batching_limiter(shared_redis, clock)
    user = str(uuid.uuid4())
    key = f"favorites:ratelimit:user:{user}:{int(clock[0] // 60)}"
    raw = aioredis.Redis.from_url(shared_redis)
    try:
        decisions = [await first.hit("user", user) for _ in range(50)]
        assert all(d.allowed for d in decisions)
        assert [d.remaining for d in decisions[:3]] == [99, 98, 97]
        assert await raw.get(key) is None, "no round trip far below the limit"
        await first.flush()
        assert int(await raw.get(key)) == 50
        assert 0 < await raw.ttl(key) <= 60
        assert (await second.hit("user", user)).allowed  # knows nothing yet: batched
        await second.flush()
        assert int(await raw.get(key)) == 51
        # Both now know the shared total is past half the limit: every hit goes to Redis.
        allowed = 0
        for limiter in (first, second) * 30:
            allowed += (await limiter.hit("user", user)).allowed
        assert allowed == 100 - 51
        assert not (await first.hit("user", user)).allowed
        assert first.failures == second.failures == 0
    finally:
        for limiter in (first, second):
            await limiter.close()
        await raw.delete(key)
        await raw.aclose()


@pytest.mark.redis
async def test_the_counts_of_many_identities_give_the_garbage_collector_nothing_to_walk(
    shared_redis: str,
) -> None:
    """Every full collection walks every tracked object: an object per identity and window made
    the pauses of a busy instance milliseconds longer. 2,000 users, counted and flushed, leave
    only plain string-to-integer maps behind."""
    clock = [60.0 * (int(time.time() // 60) + 2000) + 1]
    limiter = batching_limiter(shared_redis, clock)
    users = [str(uuid.uuid4()) for _ in range(2000)]
    raw = aioredis.Redis.from_url(shared_redis)
    try:
        await limiter.hit("user", str(uuid.uuid4()))  # first use: connections, scripts, task
        await limiter.flush()
        gc.collect()
        before = len(gc.get_objects())
        for user in users:
            assert (await limiter.hit("user", user)).remaining == 99
        await limiter.flush()
        assert (await limiter.hit("user", users[0])).remaining == 98  # the totals read back
        gc.collect()
        # An object per identity before; a few hundred allowed for what else the process does.
        assert len(gc.get_objects()) - before < len(users) / 4
    finally:
        await limiter.close()
        window = int(clock[0] // 60)
        await raw.delete(*(f"favorites:ratelimit:user:{u}:{window}" for u in users))
        await raw.aclose()


async def test_a_failed_flush_falls_back_to_limiting_in_process() -> None:
    """SPEC §4: with Redis unreachable the batched counts are dropped (those requests were
    answered), the breaker opens once, and requests go on being served and limited in process."""
    clock = [time.time()]
    limiter = batching_limiter(f"redis://127.0.0.1:{CLOSED_PORT}/0", clock)
    try:
        assert all([(await limiter.hit("user", "u")).allowed for _ in range(10)])
        assert limiter.failures == 0
        await limiter.flush()
        assert limiter.failures == 1
        assert await limiter.readiness() != "ok"
        decisions = [await limiter.hit("user", "u") for _ in range(101)]
        assert [d.allowed for d in decisions] == [True] * 100 + [False]
        assert limiter.fallback_hits == 101
        assert limiter.failures == 1
    finally:
        await limiter.close()


@pytest.mark.redis
async def test_a_flush_is_one_command_and_keeps_the_expiry_a_key_already_has(
    own_redis: OwnRedis,
) -> None:
    """On a single node a flush of many identities is one script call (its own Redis, so the
    server's command counts are this test's), the totals come back, a key the flush creates
    expires with its window and a key counted exactly before keeps the expiry it had."""
    clock = [60.0 * (int(time.time() // 60) + 3000) + 1]
    limiter = batching_limiter(own_redis.url, clock)
    raw = aioredis.Redis.from_url(own_redis.url)
    window = int(clock[0] // 60)
    users = [str(uuid.uuid4()) for _ in range(300)]
    old = f"favorites:ratelimit:user:{users[0]}:{window}"
    try:
        await limiter.hit("user", str(uuid.uuid4()))
        await limiter.flush()  # first use: the server learns the script
        await raw.set(old, 10, ex=7)
        before = await raw.info("commandstats")
        for user in users:
            assert (await limiter.hit("user", user)).allowed
        await limiter.flush()
        after = await raw.info("commandstats")

        def calls(command: str) -> int:
            def count(stats: dict[str, dict[str, int]]) -> int:
                return stats.get(f"cmdstat_{command}", {}).get("calls", 0)
            return count(after) - count(before)

        assert calls("evalsha") == 1
        assert calls("incrby") == len(users)  # from inside the script
        assert calls("expire") == len(users) - 1
        assert int(await raw.get(old)) == 11
        assert 0 < await raw.ttl(old) <= 7
        assert 0 < await raw.ttl(f"favorites:ratelimit:user:{users[1]}:{window}") <= 60
        assert (await limiter.hit("user", users[0])).remaining == 100 - 12  # total read back
    finally:
        await limiter.close()
        await raw.aclose()
