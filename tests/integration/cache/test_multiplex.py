"""The caches' multiplexed Redis connection, against real Redis servers (paused, killed, with a
password). What the circuit breaker relies on: every caller gets its own reply, whatever the
others did, and a hung or lost connection fails fast and is replaced."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from favorites.adapters.cache.multiplex import MultiplexedRedis, Reconnecting
from favorites.adapters.cache.redis_client import build_redis_client
from tests.integration.cache.servers import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path / "redis").start()
    yield started
    started.stop()


def _client(server: RedisServer, db: int = 3, **url: str) -> MultiplexedRedis:
    auth = f"{url['user']}:{url['password']}@" if url else ""
    client = MultiplexedRedis.like(
        build_redis_client(f"redis://{auth}127.0.0.1:{server.port}/{db}"))
    assert client is not None
    return client


async def test_hundreds_of_concurrent_callers_each_get_their_own_reply(
        server: RedisServer) -> None:
    redis = _client(server)
    keys = [f"k{n}" for n in range(300)]

    async def round_trip(key: str) -> tuple[bytes | None, list[bytes | None]]:
        await redis.execute("SET", key, key.upper(), "PX", 60_000)
        return (await redis.execute("GET", key),
                await redis.execute("MGET", key, "absent", key))

    results = await asyncio.gather(*(round_trip(key) for key in keys))
    for key, (got, many) in zip(keys, results, strict=True):
        assert got == key.upper().encode()
        assert many == [key.upper().encode(), None, key.upper().encode()]
    assert server.cli("-n", "3", "GET", "k7").strip() == "K7"  # the URL's database was selected
    await redis.aclose()


async def test_an_error_reply_fails_only_its_own_caller(server: RedisServer) -> None:
    redis = _client(server)
    await redis.execute("SET", "text", "x")
    results = await asyncio.gather(redis.execute("GET", "text"),
                                   redis.execute("INCR", "text"),
                                   redis.execute("GET", "text"), return_exceptions=True)
    assert results[0] == b"x"
    assert isinstance(results[1], ResponseError)
    assert results[2] == b"x"
    await redis.aclose()


async def test_a_caller_that_gives_up_early_leaves_the_replies_in_order(
        server: RedisServer) -> None:
    redis = _client(server)
    await redis.execute("SET", "first", "1")
    await redis.execute("SET", "second", "2")
    server.pause()
    abandoned = asyncio.ensure_future(redis.execute("GET", "first"))
    await asyncio.sleep(0.03)  # well under the read timeout: the connection is kept
    abandoned.cancel()
    waiting = asyncio.ensure_future(redis.execute("GET", "second"))
    await asyncio.sleep(0.01)
    server.resume()
    assert await waiting == b"2"  # not "1", the reply of the abandoned GET
    await redis.aclose()


async def test_a_hung_server_fails_callers_then_the_connection_is_replaced(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    redis = _client(server)
    await redis.execute("SET", "k", "v")
    server.pause()
    others = [asyncio.ensure_future(redis.execute("GET", "k")) for _ in range(5)]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="favorites.cache"), \
            pytest.raises(RedisConnectionError):  # no reply within the 0.1 s read timeout: hung
        await redis.execute("GET", "k")
    assert time.monotonic() - started < 0.5  # bounded with no timeout of the caller's own
    errors = set()
    for other in others:  # closing the hung connection fails everyone still waiting on it
        with pytest.raises(RedisConnectionError) as failed:
            await other
        errors.add(id(failed.value))
    assert len(errors) == 1  # one event, one error (the breaker counts it once)
    closed = [r for r in caplog.records if r.getMessage().startswith("Redis connection closed")]
    assert len(closed) == 1
    assert closed[0].__dict__["inFlight"] == 6
    assert closed[0].__dict__["waitedMs"] >= 100
    server.resume()
    assert await redis.execute("GET", "k") == b"v"
    await redis.aclose()


async def test_a_batch_given_up_leaves_no_failure_unretrieved(server: RedisServer) -> None:
    """A caller stops waiting for a batch (a cancelled request), then the server is found hung:
    closing the connection fails the batch's remaining commands, which nobody waits for. Their
    failures must not reach asyncio's "Future exception was never retrieved" error log (a batch
    is how a cache entry is stored: in a Redis outage under load that was an ERROR line)."""
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        redis = _client(server)
        await redis.execute("SET", "k", "v")
        server.pause()
        batch = asyncio.ensure_future(
            redis.execute_many(("GET", "k"), ("GET", "k"), ("MGET", "k", "x")))
        await asyncio.sleep(0.02)
        batch.cancel()
        await asyncio.wait([batch])
        assert batch.cancelled()
        del batch  # nothing but the connection holds the batch's replies now
        with pytest.raises(RedisConnectionError):  # another caller finds the server hung
            await redis.execute("GET", "k")
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == []
        server.resume()
        assert await redis.execute("GET", "k") == b"v"
        await redis.aclose()
    finally:
        loop.set_exception_handler(None)


async def test_a_restarted_server_is_reconnected_to(server: RedisServer) -> None:
    redis = _client(server)
    await redis.execute("SET", "k", "v")
    server.kill(snapshot=True)
    with pytest.raises(RedisConnectionError):
        await redis.execute("GET", "k")  # refused while it is down
    server.start()
    assert await redis.execute("GET", "k") == b"v"
    await redis.aclose()


async def test_callers_waiting_for_one_failed_connection_attempt_share_its_error(
    server: RedisServer,
) -> None:
    """One attempt failed, one error: the breaker counts it once, not once per waiting caller
    (ten requests waiting for one refused connection are not ten failures of Redis)."""
    redis = _client(server)
    server.kill()
    errors = await asyncio.gather(*(redis.execute("GET", "k") for _ in range(10)),
                                  return_exceptions=True)
    assert all(isinstance(e, RedisConnectionError) for e in errors)
    assert len({id(e) for e in errors}) == 1
    second = await asyncio.gather(redis.execute("GET", "k"), return_exceptions=True)
    assert isinstance(second[0], RedisConnectionError)
    assert second[0] is not errors[0]
    server.start()
    await redis.aclose()


async def test_credentials_from_the_url_are_used(server: RedisServer) -> None:
    password = uuid.uuid4().hex
    server.cli("ACL", "SETUSER", "cache", "on", f">{password}", "~*", "+@all")
    server.cli("CONFIG", "SET", "requirepass", password)
    redis = _client(server, db=0, user="cache", password=password)
    await redis.execute("SET", "k", "v")
    assert await redis.execute("GET", "k") == b"v"
    wrong = _client(server, db=0, user="cache", password="wrong")
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await wrong.execute("GET", "k")
    await redis.aclose()


def test_the_same_on_uvloop_which_uvicorn_serves_on(server: RedisServer) -> None:
    """uvloop's transports are not asyncio's classes; the connection must not care."""
    import uvloop

    async def scenario() -> None:
        redis = _client(server)
        results = await asyncio.gather(*(redis.execute("SET", f"u{n}", n) for n in range(50)),
                                       *(redis.execute("GET", f"u{n}") for n in range(50)))
        assert results[50:] == [str(n).encode() for n in range(50)]
        server.pause()
        with pytest.raises(RedisConnectionError):
            await redis.execute("GET", "u1")
        server.resume()
        assert await redis.execute("GET", "u1") == b"1"
        await redis.aclose()

    uvloop.run(scenario())


def test_urls_map_to_the_same_server_or_stay_on_redis_py() -> None:
    assert repr(MultiplexedRedis.like(build_redis_client("redis://u:p@cache:6380/4"))) == (
        "MultiplexedRedis(cache:6380/4, idle)")
    assert repr(MultiplexedRedis.like(build_redis_client("unix:///run/r.sock?db=2"))) == (
        "MultiplexedRedis(/run/r.sock/2, idle)")
    assert MultiplexedRedis.like(build_redis_client("rediss://cache:6380/0")) is None  # TLS


async def test_a_unix_socket_url_works(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "unix", None, "--unixsocket", str(socket_path),
                         "--unixsocketperm", "700").start()
    try:
        redis = MultiplexedRedis.like(build_redis_client(f"unix://{socket_path}?db=2"))
        assert redis is not None
        await redis.execute("SET", "k", "v")
        assert await redis.execute("GET", "k") == b"v"
        assert server.cli("-n", "2", "GET", "k").strip() == "v"
        await redis.aclose()
    finally:
        server.stop()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_busy_event_loop_is_not_taken_for_a_hung_server(server: RedisServer, loop: str) -> None:
    """The process stalls (a long callback, a full garbage collection, CPU taken by others) while
    the reply is already in the socket. uvloop runs due timers before it reads sockets, so the
    watchdog must not judge the connection before the loop has read what arrived meanwhile: a
    server that answered is not hung, and its callers get their replies."""
    import uvloop

    async def scenario() -> None:
        redis = _client(server)
        await redis.execute("SET", "k", "v")  # connected
        for turns in (1, 2):  # stalled before the commands were written, then after
            pending = [asyncio.ensure_future(redis.execute("GET", "k")) for _ in range(3)]
            for _ in range(turns):
                await asyncio.sleep(0)
            assert not any(future.done() for future in pending)
            time.sleep(0.3)  # noqa: ASYNC251 -- the stall under test: three read timeouts
            assert await asyncio.gather(*pending) == [b"v"] * 3
        assert await redis.execute("GET", "k") == b"v"
        server.pause()  # a server that really does not answer still fails fast
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await redis.execute("GET", "k")
        assert time.monotonic() - started < 0.5
        server.resume()
        await redis.aclose()

    if loop == "uvloop":
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


async def test_callers_waiting_for_a_connection_share_the_attempt_that_failed(
        server: RedisServer) -> None:
    """While the server hangs, each caller queued behind a connection attempt used to make its
    own attempt in turn, so the last of N waited N connect timeouts. An attempt's failure now
    fails everyone who waited for it."""
    redis = _client(server)  # database 3: the SELECT gets no reply from a paused server
    server.pause()
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(redis.execute("GET", "k") for _ in range(20)),
                                       return_exceptions=True)
        waited = time.monotonic() - started
    finally:
        server.resume()
    assert all(isinstance(result, RedisConnectionError) for result in results)
    assert redis._attempts == 1
    assert waited < 1.0  # one 0.1 s connect timeout, not twenty
    assert await redis.execute("GET", "k") is None  # the next caller tries again
    await redis.aclose()


async def test_a_read_does_not_wait_for_another_callers_connection_attempt(
        server: RedisServer) -> None:
    """A hung server takes each connection attempt a connect timeout, and the breaker opens
    only after a few: a read queued behind them made every request of that time slower, where
    the database could answer at once. Only the caller whose attempt it is waits for it."""
    redis = _client(server)  # database 3: the SELECT gets no reply from a paused server
    server.pause()
    try:
        attempt = asyncio.ensure_future(redis.execute("SET", "k", "v"))
        await asyncio.sleep(0.01)  # the attempt is under way, waiting for its SELECT
        started = time.monotonic()
        with pytest.raises(Reconnecting):
            await redis.execute("GET", "k", wait_for_connection=False)
        assert time.monotonic() - started < 0.05
        with pytest.raises(RedisConnectionError) as failed:
            await attempt  # the attempt's own caller learns how it ended
        assert not isinstance(failed.value, Reconnecting)
    finally:
        server.resume()
    # With no attempt under way, a read opens the connection itself and waits for it.
    assert await redis.execute("GET", "k", wait_for_connection=False) is None
    await redis.aclose()


async def test_an_argument_the_encoder_refuses_leaves_no_reply_slot_behind(
        server: RedisServer) -> None:
    """Every later reply would have gone to the caller before it: another user's page."""
    redis = _client(server)
    await redis.execute("SET", "a", "alice")
    await redis.execute("SET", "b", "bob")
    with pytest.raises(TypeError):
        await redis.execute("GET", None)
    assert await redis.execute("GET", "a") == b"alice"
    assert await redis.execute("GET", "b") == b"bob"
    await redis.aclose()


async def test_a_connect_cancelled_midway_leaves_no_connection_open(server: RedisServer) -> None:
    redis = _client(server)  # database 3: cancelled while its SELECT waits
    server.pause()
    try:
        for _ in range(5):
            call = asyncio.ensure_future(redis.execute("GET", "k"))
            await asyncio.sleep(0.02)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
    finally:
        server.resume()
    for _ in range(50):  # the server sees the closed sockets once it runs again
        clients = server.cli("CLIENT", "LIST").strip().splitlines()
        if len(clients) == 1:
            break
        await asyncio.sleep(0.02)
    assert len(clients) == 1  # the CLIENT LIST connection itself
    await redis.aclose()
