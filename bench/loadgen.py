"""An open-loop (fixed rate) and closed-loop (N connections flat out) HTTP/1.1 load generator.

Built on asyncio protocols and httptools' C parser (already a uvicorn dependency) instead of an
HTTP client library: a request is pre-encoded bytes written to a keep-alive connection, a response
is counted when the parser reports the message complete. It shares the machine with the server,
so what it costs is reported with every run ("generator" CPU per request): on the 2-core Intel Xeon
bench host in a slow spell, 0.04-0.07 ms per request in a closed loop and 0.14-0.15 ms in the open
loop at 1,000 req/s (which wakes for its due times; see ``MIN_SLEEP``).

Open loop: request ``i`` is due at ``t0 + i / rate`` whatever happened before (no coordinated
omission). Its latency is ``completion - due time``: time spent waiting for a free connection (all
``max_connections`` busy) or behind a late generator counts against the server, as a user would
see it. Closed loop: each of N connections sends its next request as soon as the previous answer
arrives, for D seconds; latency is ``completion - send``.

Only loopback targets are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httptools

from bench.common import (
    JWT_AUDIENCE,
    JWT_ISSUER,
    JWT_SECRET,
    SeedShape,
    product_id,
    user_id,
    user_product_indices,
)

# Request kinds (indices into KIND_NAMES).
LIST, ADD, REMOVE, CONTAINS, HELLO = range(5)
KIND_NAMES = ("list", "add", "remove", "contains", "hello")

# Pseudo status codes for requests that got no HTTP answer.
TIMEOUT = -1
TRANSPORT = -2
CONNECT = -3
UNFINISHED = -4
PSEUDO_STATUS = {TIMEOUT: "timeout", TRANSPORT: "transport", CONNECT: "connect",
                 UNFINISHED: "unfinished"}

#: The shortest wait of the open loop. uvloop's timers (libuv's) count whole milliseconds, so a
#: shorter ``sleep`` ends at the next turn of the loop: waiting for a request due in 0.7 ms that way
#: turned the loop 14 times per request at 1,000 req/s and 55 times at 3,000, about 110 and 330 µs
#: of the generator's CPU per request, taken from the server on a 2-core machine. Requests that
#: fall due during the millisecond are sent together when it ends, each late by less than a
#: millisecond or so; that lateness counts in their latency, and the report gives it.
MIN_SLEEP = 0.001

#: The issue's traffic mix: 80 % list, 10 % add, 5 % remove, 5 % contains.
DEFAULT_MIX = ((LIST, 0.80), (ADD, 0.10), (REMOVE, 0.05), (CONTAINS, 0.05))


def now() -> float:
    """Wall-clock-free monotonic seconds with sub-microsecond resolution (uvloop's
    ``loop.time()`` is cached per loop iteration in whole milliseconds, too coarse here)."""
    return time.perf_counter()


def check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise SystemExit(f"bench: refusing to send load to {host!r}: loopback addresses only")


# --------------------------------------------------------------------------------------------
# Workloads: what to send. Each returns (kind, request bytes); all cost is paid before t0 where
# it can be (tokens minted, headers encoded), the rest is a few string joins per request.
# --------------------------------------------------------------------------------------------


class Workload(Protocol):
    name: str

    def next(self) -> tuple[int, bytes]: ...


def mint_tokens(users: Sequence[int]) -> dict[int, bytes]:
    """One HS256 access token per user, minted with the service's own codec and bench secret."""
    from favorites.adapters.tokens.jwt import JwtCodec

    codec = JwtCodec(algorithm="HS256", issuer=JWT_ISSUER, audience=JWT_AUDIENCE,
                     ttl_seconds=3600, leeway_seconds=30, secret=JWT_SECRET.encode())
    return {u: codec.mint(user_id(u), ("user",))[0].encode() for u in users}


class FavoritesWorkload:
    """Mixed favorites traffic over a pool of seeded users.

    - list: ``GET /v1/users/{u}/favorites`` first page (limit 50, one in five with ``limit=20``)
    - add: ``PUT .../favorites/{p}`` with a random pool product (almost never already held: 201)
    - remove: ``DELETE .../favorites/{p}`` of a product the user was seeded with (204, idempotent)
    - contains: ``GET .../favorites/contains?product_ids=`` 5 held + 15 random products
    """

    def __init__(self, name: str, host: str, shape: SeedShape, users: Sequence[int],
                 mix: Sequence[tuple[int, float]] = DEFAULT_MIX, seed: int = 1,
                 tokens: dict[int, bytes] | None = None):
        self.name = name
        self._shape = shape
        self._users = list(users)
        self._rng = random.Random(seed)
        self._kinds = [kind for kind, _ in mix]
        total = sum(weight for _, weight in mix)
        self._cumulative: list[float] = []
        acc = 0.0
        for _, weight in mix:
            acc += weight / total
            self._cumulative.append(acc)
        self._cumulative[-1] = 1.0
        tokens = tokens if tokens is not None else mint_tokens(self._users)
        self._host = f"Host: {host}\r\n".encode()
        self._user_path = {u: f"/v1/users/{user_id(u)}/favorites".encode() for u in self._users}
        self._auth = {u: b"Authorization: Bearer " + tokens[u] + b"\r\n" for u in self._users}
        # Every product id's text before the clock starts, like the tokens: a UUIDv5 is a SHA-1,
        # about 20 µs of the generator's CPU per request while the first ones were being made.
        self._product_text = [str(product_id(i)).encode() for i in range(shape.products)]

    def _product(self, index: int) -> bytes:
        return self._product_text[index]

    def _held(self, user: int, count: int) -> list[int]:
        held = user_product_indices(user, self._shape.per_user, self._shape.products)
        return self._rng.sample(held, min(count, len(held)))

    def next(self) -> tuple[int, bytes]:
        rng = self._rng
        r = rng.random()
        kind = self._kinds[-1]
        for k, edge in zip(self._kinds, self._cumulative, strict=True):
            if r < edge:
                kind = k
                break
        user = self._users[rng.randrange(len(self._users))]
        path = self._user_path[user]
        head = self._host + self._auth[user]
        if kind == LIST:
            query = b"?limit=20" if rng.random() < 0.2 else b""
            return kind, b"GET " + path + query + b" HTTP/1.1\r\n" + head + b"\r\n"
        if kind == ADD:
            product = self._product(rng.randrange(self._shape.products))
            return kind, (b"PUT " + path + b"/" + product + b" HTTP/1.1\r\n" + head
                          + b"Content-Length: 0\r\n\r\n")
        if kind == REMOVE:
            product = self._product(self._held(user, 1)[0])
            return kind, b"DELETE " + path + b"/" + product + b" HTTP/1.1\r\n" + head + b"\r\n"
        ids = self._held(user, 5) + [rng.randrange(self._shape.products) for _ in range(15)]
        query = b",".join(self._product(i) for i in ids)
        return kind, (b"GET " + path + b"/contains?product_ids=" + query + b" HTTP/1.1\r\n" + head
                      + b"\r\n")


class HelloWorkload:
    """``GET /hello`` on the bare FastAPI app (bench/hello.py): the framework's floor."""

    name = "hello"

    def __init__(self, host: str):
        self._raw = b"GET /hello HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"

    def next(self) -> tuple[int, bytes]:
        return HELLO, self._raw


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Per request: due (or send) time relative to t0, latency, status, kind. Plain arrays."""

    t0: float = 0.0
    due: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    latency: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    status: array = field(default_factory=lambda: array("h"))  # type: ignore[type-arg]
    kind: array = field(default_factory=lambda: array("b"))  # type: ignore[type-arg]
    #: A few bodies of error answers, as evidence for the report.
    error_samples: list[str] = field(default_factory=list)
    #: Open loop: how long after its due time the generator handed each request over (to an
    #: idle connection, or to the queue for one). Part of its latency; the generator's own share.
    handed_late: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    sent: int = 0
    connections_opened: int = 0
    max_queue: int = 0

    def add(self, due: float, done: float, status: int, kind: int) -> None:
        self.due.append(due - self.t0)
        self.latency.append(done - due)
        self.status.append(status)
        self.kind.append(kind)

    def sample_error(self, text: str) -> None:
        if len(self.error_samples) < 10:
            self.error_samples.append(text[:500])


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    __slots__ = ("_body", "_pool", "_status", "busy", "due", "kind", "last_used", "parser",
                 "sent_at", "transport")

    def __init__(self, pool: ConnectionPool):
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.due = 0.0
        self.sent_at = 0.0
        self.last_used = now()
        self.kind = 0
        self._status = 0
        self._body: list[bytes] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._pool.failed(self, TRANSPORT, f"bad response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.lost(self, exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self._body = [] if self._status >= 400 else None

    def on_body(self, body: bytes) -> None:
        if self._body is not None:
            self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body) if self._body else b""
        self._body = None
        self._pool.completed(self, self._status, self.parser.should_keep_alive(), body)

    def send(self, kind: int, raw: bytes, due: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.kind = kind
        self.due = due
        self.sent_at = now()
        self.transport.write(raw)


class ConnectionPool:
    """Up to ``max_connections`` keep-alive connections; requests beyond them wait in a FIFO.

    ``on_idle`` (closed loop) is called whenever a connection becomes free with nothing queued.
    """

    #: Close connections idle this long: under uvicorn's 5 s keep-alive timeout, so the server
    #: never closes one just as a request is written to it (a reset no real client would see).
    IDLE_CLOSE = 4.0

    def __init__(self, host: str, port: int, max_connections: int, timeout: float,
                 recorder: Recorder):
        check_loopback(host)
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.timeout = timeout
        self.recorder = recorder
        self.on_idle: Callable[[_Connection], None] | None = None
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._opening = 0
        self._queue: deque[tuple[int, bytes, float]] = deque()
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._settled: asyncio.Event | None = None
        self.closed = False

    @property
    def outstanding(self) -> int:
        return len(self._queue) + sum(1 for c in self._all if c.busy)

    @property
    def size(self) -> int:
        return len(self._all)

    def start(self) -> None:
        self._watchdog = asyncio.create_task(self._watch())

    async def open(self, count: int, spacing: float = 0.005) -> None:
        """Open ``count`` connections (closed loop, or to pre-warm an open-loop pool), one every
        ``spacing`` seconds: the server's workers share one listening socket, and a burst of
        connections tends to be accepted by whichever worker wakes first, all of them, so
        the run would measure one core."""
        for _ in range(count):
            await self._connect()
            await asyncio.sleep(spacing)

    def submit(self, kind: int, raw: bytes, due: float) -> None:
        self.recorder.sent += 1
        if self._idle:
            self._idle.pop().send(kind, raw, due)
            return
        self._queue.append((kind, raw, due))
        if len(self._queue) > self.recorder.max_queue:
            self.recorder.max_queue = len(self._queue)
        if len(self._all) + self._opening < self.max_connections:
            self._spawn_connect()

    def _spawn_connect(self) -> None:
        task = asyncio.create_task(self._connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        self._opening += 1
        try:
            _, conn = await asyncio.wait_for(
                self._loop.create_connection(lambda: _Connection(self), self.host, self.port),
                self.timeout)
        except (OSError, TimeoutError) as exc:
            self._opening -= 1
            if self._queue:  # the request that wanted this connection fails with it
                kind, _, due = self._queue.popleft()
                self.recorder.add(due, now(), CONNECT, kind)
                self.recorder.sample_error(f"connect: {exc!r}")
            return
        self._opening -= 1
        self.recorder.connections_opened += 1
        if self.closed:
            assert conn.transport is not None
            conn.transport.close()
            return
        self._all.add(conn)
        self._release(conn)

    def _release(self, conn: _Connection) -> None:
        conn.busy = False
        conn.last_used = now()
        if self._queue:
            kind, raw, due = self._queue.popleft()
            conn.send(kind, raw, due)
        elif self.on_idle is not None and not self.closed:
            self._idle.append(conn)
            self.on_idle(conn)
        else:
            self._idle.append(conn)

    def take_idle(self, conn: _Connection) -> bool:
        """For ``on_idle``: claim ``conn`` back from the idle list to send on it directly."""
        if self._idle and self._idle[-1] is conn:
            self._idle.pop()
            return True
        return False

    def completed(self, conn: _Connection, status: int, keep_alive: bool, body: bytes) -> None:
        if not conn.busy:  # timed out already, answer arrived late
            return
        self.recorder.add(conn.due, now(), status, conn.kind)
        if status >= 400:
            self.recorder.sample_error(f"{KIND_NAMES[conn.kind]} {status}: "
                                       f"{body.decode('utf-8', 'replace')}")
        conn.busy = False
        if keep_alive and conn.transport is not None and not conn.transport.is_closing():
            self._release(conn)
        else:
            self._drop(conn)
            if self._queue and not self.closed:
                self._spawn_connect()
        if self._settled is not None:
            self._check_settled()

    def failed(self, conn: _Connection, status: int, reason: str) -> None:
        if conn.busy:
            conn.busy = False
            self.recorder.add(conn.due, now(), status, conn.kind)
            self.recorder.sample_error(f"{KIND_NAMES[conn.kind]} {PSEUDO_STATUS[status]}: {reason}")
        self._drop(conn)
        if conn.transport is not None:
            conn.transport.abort()
        if self._queue and not self.closed:
            self._spawn_connect()
        if self._settled is not None:
            self._check_settled()

    def lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn in self._all:
            self.failed(conn, TRANSPORT, f"connection lost: {exc!r}")

    def _drop(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def _watch(self) -> None:
        while not self.closed:
            await asyncio.sleep(0.2)
            current = now()
            limit = current - self.timeout
            for conn in [c for c in self._all if c.busy and c.sent_at < limit]:
                self.failed(conn, TIMEOUT, f"no answer within {self.timeout} s")
            stale = current - self.IDLE_CLOSE
            for conn in [c for c in self._idle if c.last_used < stale]:
                self._drop(conn)
                if conn.transport is not None:
                    conn.transport.close()

    def _check_settled(self) -> None:
        if self._settled is not None and not self.outstanding:
            self._settled.set()

    async def drain(self, deadline: float) -> None:
        """Wait for every queued and in-flight request until ``deadline``; the rest count as
        ``unfinished``."""
        self._settled = asyncio.Event()
        self._check_settled()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), max(0.0, deadline - now()))
        self._settled = None
        t = now()
        while self._queue:
            kind, _, due = self._queue.popleft()
            self.recorder.add(due, t, UNFINISHED, kind)
        for conn in [c for c in self._all if c.busy]:
            self.failed(conn, UNFINISHED, "still running at the end of the run")

    async def close(self) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------


async def open_loop(pool: ConnectionPool, workload: Workload, rate: float, duration: float,
                    *, drain_timeout: float | None = None) -> Recorder:
    """Send ``rate * duration`` requests, request i due at t0 + i / rate; wait for the answers."""
    recorder = pool.recorder
    total = round(rate * duration)
    interval = 1.0 / rate
    t0 = now() + 0.02
    recorder.t0 = t0
    pool.on_idle = None
    i = 0
    while i < total:
        current = now()
        due = t0 + i * interval
        if due > current:
            await asyncio.sleep(max(due - current, MIN_SLEEP))
            continue
        # Everything due by now: what fell due during the sleep, or while the machine was busy.
        while i < total and due <= current:
            kind, raw = workload.next()
            pool.submit(kind, raw, due)
            recorder.handed_late.append(current - due)
            i += 1
            due = t0 + i * interval
    await pool.drain(now() + (drain_timeout if drain_timeout is not None else pool.timeout + 1))
    return recorder


async def closed_loop(pool: ConnectionPool, workload: Workload, connections: int,
                      duration: float, max_requests: int = 10_000_000) -> Recorder:
    """``connections`` connections each send the next request as soon as an answer arrives."""
    recorder = pool.recorder
    if pool.size < connections:
        await pool.open(connections - pool.size)
    t0 = now()
    recorder.t0 = t0
    deadline = t0 + duration
    budget = [max_requests]
    spent = asyncio.Event()

    def refill(conn: _Connection) -> None:
        if budget[0] > 0 and now() < deadline and pool.take_idle(conn):
            budget[0] -= 1
            kind, raw = workload.next()
            recorder.sent += 1
            conn.send(kind, raw, now())
        elif budget[0] <= 0:
            spent.set()

    pool.on_idle = refill
    for _ in range(connections):
        if budget[0] <= 0:
            break
        budget[0] -= 1
        kind, raw = workload.next()
        pool.submit(kind, raw, now())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(spent.wait(), max(0.0, deadline - now()))
    pool.on_idle = None
    await pool.drain(now() + pool.timeout + 1)
    return recorder
