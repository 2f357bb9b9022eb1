"""``MultiplexedRedis``: the caches' commands on one shared, pipelined connection per process.

Why not redis-py here: its asyncio command path (pool checkout, retry wrapper, per-command socket
timeout, argument deprecation wrappers) costs about 115 µs of CPU per command on the 2-core
benchmark machine, a third of a cached read. Writing each command on one shared connection and
matching replies in order (Redis answers in order on a connection; this is how StackExchange.Redis,
Lettuce and ioredis work) costs about 10 µs. Commands sent in one event-loop iteration go out in
one write (ioredis calls it auto-pipelining). redis-py has no multiplexed mode, and the multiplexing
clients for Python (valkey-glide, measured at 50-60 µs with its Rust threads) would replace the
whole Redis layer, so this module does just what the caches need: ``GET``, ``MGET`` and ``SET``
on a single node over TCP or a Unix socket, replies parsed by hiredis (redis-py's own parser).
Redis Cluster, TLS (``rediss://``), the rate limiter and everything else stay on redis-py.

Failure behaviour, which the circuit breaker (``gate``) relies on:

- A caller that stops waiting (the gate's deadline, a cancelled request) leaves its place in the
  queue; its reply is read and dropped when it comes, so later replies still match their callers.
- A command someone still waits for that has no reply after ``read_timeout`` means the connection
  is hung: it is closed, every waiting caller gets ``ConnectionError``, and the next command
  reconnects. One timer per connection watches the oldest such command, so every call is bounded
  (by at most twice ``read_timeout``) without the cost of a timeout per call; the gate relies on
  this instead of wrapping each call in ``asyncio.timeout``.
- A process that was busy is not a hung server. When the timer fires late (a long callback, a
  full garbage collection, the CPU taken by others), the reply may be in the socket unread, or
  the command still unsent: uvloop runs due timers before it reads sockets. Then the oldest
  command gets one more ``read_timeout`` from now, once; a hung server is still found, within
  three ``read_timeout`` plus the stall. Without this, every stall longer than ``read_timeout``
  failed the commands in flight, which the breaker and the cache epoch take for an outage.
- A closed or reset connection fails every waiting caller at once; the next command reconnects
  (within ``connect_timeout``), authenticating and selecting the database as redis-py would.
- A read need not wait for that: ``execute(..., wait_for_connection=False)`` raises
  ``Reconnecting`` at once while another caller's connection attempt is under way (that caller
  learns, and the breaker counts, how it ends). A hung server costs each connection attempt a
  ``connect_timeout``, and the breaker opens after a few; reads queued behind those attempts
  made every request of that time a ``connect_timeout`` slower, where the database could answer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from favorites.transports import CoalescingTransport

#: A watchdog firing this much after it was due found the event loop busy (see the module doc).
_LATE = 0.01

log = logging.getLogger("favorites.cache")


class Reconnecting(RedisConnectionError):
    """No connection, and another caller's attempt to open one is under way: not a call to
    Redis that failed, so not a failure for the breaker (``gate``)."""


class _Connection(asyncio.Protocol):
    def __init__(self, read_timeout: float) -> None:
        self._reader = hiredis.Reader()
        #: (reply future, loop time the command was written), oldest first.
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        #: Commands of one event-loop iteration leave in one write (one system call).
        self._transport: CoalescingTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._read_timeout = read_timeout
        #: One timer for the whole connection, not one per command (see ``_check``).
        self._watchdog: asyncio.TimerHandle | None = None
        self._due = 0.0
        #: The sending time of the command last given more time after a late check.
        self._graced: float | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports (what uvicorn runs us on) do not derive
        # from asyncio.Transport, though they implement it.
        self._transport = CoalescingTransport(cast(asyncio.Transport, transport), self._loop)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future, _ = self._pending.popleft()
                if future.done():
                    continue  # its caller stopped waiting
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(ResponseError(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # garbage, or a reply nobody asked for
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        error = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(error)
                future.exception()  # whoever waits still gets it; nobody waiting is not an error

    def send(self, args: tuple[Any, ...]) -> tuple[asyncio.Future[Any], float]:
        if self.closed or self._transport is None:
            raise RedisConnectionError("connection to Redis closed")
        payload = hiredis.pack_command(args)  # before queueing: an argument it refuses must
        entry = (self._loop.create_future(), self._loop.time())  # leave no reply slot behind
        self._pending.append(entry)
        self._transport.write(payload)
        if self._watchdog is None:
            self._arm(entry[1] + self._read_timeout)
        return entry

    def _arm(self, due: float) -> None:
        self._due = due
        self._watchdog = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        """The oldest command has waited ``read_timeout``: if it is still unanswered the
        connection is hung, and closing it fails every waiting command at once. Callers get
        their deadline from this, within one ``read_timeout``, without a timer per command."""
        self._watchdog = None
        now = self._loop.time()
        # Abandoned commands keep their places (their replies are still to come), but only a
        # command someone waits for decides.
        oldest = next((sent for future, sent in self._pending if not future.done()), None)
        if oldest is None:
            return
        if now - oldest < self._read_timeout:
            self._arm(oldest + self._read_timeout)
        elif now - self._due > _LATE and self._graced != oldest:
            self._graced = oldest  # the loop was busy: let it send and read first (module doc)
            self._arm(now + self._read_timeout)
        else:
            # Rare, and every command in flight fails with it: worth a line that says how long
            # the oldest waited and whether this process, rather than Redis, was the slow one.
            waited, late = round((now - oldest) * 1000, 1), round((now - self._due) * 1000, 1)
            log.warning("Redis connection closed: no reply to a command sent %.0f ms ago "
                        "(%d in flight; this check ran %.0f ms late)", waited,
                        len(self._pending), late,
                        extra={"waitedMs": waited, "inFlight": len(self._pending),
                               "lateMs": late})
            self.close()

    def close(self) -> None:
        if not self.closed and self._transport is not None:
            self._transport.abort()  # connection_lost fails whoever still waits
        self.closed = True


class MultiplexedRedis:
    """``await execute("MGET", k1, k2)``: one connection, opened on first use and after a loss."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None,
                 db: int = 0, username: str | None = None, password: str | None = None,
                 connect_timeout: float = 0.1, read_timeout: float = 0.1):
        self._address = (host, port, path)
        self._db = db
        self._credentials = (username, password)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        #: Connection attempts finished so far, and why the last one failed (None: it did not).
        self._attempts = 0
        self._failure: RedisConnectionError | None = None

    @classmethod
    def like(cls, client: Redis) -> MultiplexedRedis | None:
        """The same server, database and credentials as a redis-py client (from its URL); None
        for ``rediss://``: TLS options (CA files, client certificates, verification modes) are
        many, and those connections stay on redis-py rather than half-supported here."""
        pool = client.connection_pool
        if not issubclass(pool.connection_class, (Connection, UnixDomainSocketConnection)) or \
                issubclass(pool.connection_class, SSLConnection):
            return None
        kwargs = pool.connection_kwargs
        timeout = kwargs.get("socket_timeout") or 0.1
        return cls(host=kwargs.get("host", "127.0.0.1"), port=int(kwargs.get("port", 6379)),
                   path=kwargs.get("path"), db=int(kwargs.get("db", 0)),
                   username=kwargs.get("username"), password=kwargs.get("password"),
                   connect_timeout=kwargs.get("socket_connect_timeout") or timeout,
                   read_timeout=timeout)

    def __repr__(self) -> str:
        host, port, path = self._address
        where = path or f"{host}:{port}"
        state = "connected" if self._connection and not self._connection.closed else "idle"
        return f"MultiplexedRedis({where}/{self._db}, {state})"

    async def execute(self, *args: Any, wait_for_connection: bool = True) -> Any:
        connection = self._connection
        if connection is None or connection.closed:
            if not wait_for_connection and self._connecting is not None \
                    and self._connecting.locked():
                raise Reconnecting("Redis connection being opened by another caller")
            connection = await self._connect()
        future, _ = connection.send(args)
        return await future

    async def execute_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Several commands sent together, their replies in order (one round trip)."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        futures = [connection.send(args)[0] for args in commands]
        try:
            return [await future for future in futures]
        except BaseException:
            # The caller gets the first failure and stops waiting for the rest: their replies
            # are dropped when they come, and their failures (a lost connection fails them all)
            # are not left unretrieved for asyncio to log as errors.
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()
            raise

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        attempts = self._attempts
        async with self._connecting:  # one attempt at a time; the others reuse its result
            if self._connection is not None and not self._connection.closed:
                return self._connection
            if self._attempts != attempts and self._failure is not None:
                # An attempt that ended while this caller waited failed: one more in turn per
                # waiting caller would make the last one wait for all of them in an outage.
                # The same error, not a copy: the breaker counts one failed attempt once,
                # however many callers waited for it (see ``gate``).
                raise self._failure.with_traceback(None)
            loop = asyncio.get_running_loop()
            host, port, path = self._address
            connection: _Connection | None = None
            try:
                async with asyncio.timeout(self._connect_timeout):
                    def factory() -> _Connection:
                        return _Connection(self._read_timeout)

                    if path is not None:
                        _, connection = await loop.create_unix_connection(factory, path)
                    else:
                        _, connection = await loop.create_connection(factory, host, port)
                    username, password = self._credentials
                    if password is not None:
                        auth = (username, password) if username else (password,)
                        await connection.send(("AUTH", *auth))[0]
                    if self._db:
                        await connection.send(("SELECT", self._db))[0]
            except (OSError, TimeoutError, ResponseError) as exc:
                if connection is not None:
                    connection.close()
                self._failure = RedisConnectionError(f"cannot connect to Redis: {exc!r}")
                raise self._failure from None
            except BaseException:  # cancelled: the half-opened connection is nobody's, and
                if connection is not None:  # those waiting make their own attempt
                    connection.close()
                self._failure = None
                raise
            finally:
                self._attempts += 1
            self._failure = None
            self._connection = connection
            return connection

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
