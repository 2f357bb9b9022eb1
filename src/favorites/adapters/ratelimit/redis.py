"""The limiter shared by every instance through Redis, with an explicit failure policy.

Counting uses ``limits``' async Redis storage (redis-py underneath): one ``INCRBY`` + ``EXPIRE``
Lua script per request on the key ``<scope>:<identity>:<window>``. ``limits``' strategies are not
used as such because ``FixedWindowRateLimiter.hit`` returns only a bool, and its
``get_window_stats`` costs two more round trips for the headers; the storage's ``incr`` returns the
count, and the clock-aligned window gives the reset without asking Redis.

Failure policy (fail open to per-instance limiting, never to a 5xx): a Redis error or a call slower
than ``deadline`` opens a circuit breaker; for ``cooldown`` seconds every request is counted by the
in-process limiter, then one request probes Redis again (the others stay in process while it does).
So a dead Redis costs at most one timeout per cooldown, not one per request. One WARNING per outage,
one INFO when Redis answers again; every failed call is counted (``failures``) and the breaker's
state is reported through ``on_state`` (the ``circuit_breaker_state`` gauge, wired in bootstrap).
An identity found over its limit is remembered until its window ends and refused without a round
trip, so a client hammering past its limit costs Redis nothing.

Batched counting far below the limit: a round trip per request was a tenth of a cached read's CPU,
spent confirming that a user at 3 requests of 100 may go on. So while an identity's count, as last
read from Redis plus what this instance has allowed since, stays at or under ``BATCH_FRACTION`` of a
limit of at least ``BATCH_MIN_LIMIT``, the request is allowed and counted locally; every
``FLUSH_INTERVAL`` seconds one round trip (a script on one node, a pipeline on a cluster) adds the
local counts to Redis and reads the shared totals back. Above that fraction every request is counted
in Redis before it is answered (together with its instance's unflushed count), so the limit itself
is enforced on the shared count. The price: ``RateLimit-Remaining`` far below the limit can lag
other instances by one flush interval, and in the worst case N instances each allow
``BATCH_FRACTION`` of the limit before their first flush (N x 50 for 100/minute), once per window.
Small limits (tests, tight abuse limits) are always counted exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from favorites.adapters.ratelimit.memory import InProcessRateLimiter
from favorites.adapters.ratelimit.port import Decision, RateLimit, Scope
from favorites.deadlines import deadline
from favorites.tasks import cancel_and_wait, stop_if_cancelled

log = logging.getLogger("favorites.ratelimit")

KEY_PREFIX = "favorites:ratelimit"
#: Socket timeouts for connecting and reading; the whole call also has a deadline (DNS included).
SOCKET_TIMEOUT = 0.1
DEADLINE = 0.15
COOLDOWN = 5.0
#: Batched counting (see the module doc): only for limits this large, while the count is at most
#: this fraction of the limit; local counts reach Redis this often.
BATCH_MIN_LIMIT = 20
BATCH_FRACTION = 0.5
FLUSH_INTERVAL = 0.1
#: A flush on a single node: every key's count added, its expiry set when this created it (as
#: ``limits``' own increment does), and the totals returned, in one command. The same as a pipeline
#: of ``INCRBY`` and ``EXPIRE`` per key, at a fifth of the client's CPU (measured: 20 -> 4 µs per
#: counted identity), which a request of a user seen once paid. A cluster spreads the keys over
#: slots one script may not cross, so it keeps the pipeline.
FLUSH_SCRIPT = """
local totals = {}
for i, key in ipairs(KEYS) do
    local amount = tonumber(ARGV[2 * i - 1])
    local total = redis.call('INCRBY', key, amount)
    if total == amount then
        redis.call('EXPIRE', key, ARGV[2 * i])
    end
    totals[i] = total
end
return totals
"""


def storage_uri(redis_url: str, cluster: bool) -> tuple[str, dict[str, Any]]:
    """The ``limits`` storage URI (and extra client options) for ``FAVORITES_REDIS_URL``.

    ``redis://`` / ``rediss://`` / ``unix://`` map to ``async+redis[s]://`` / ``async+redis+unix://``.
    With ``FAVORITES_REDIS_CLUSTER=true`` the hosts map to ``async+redis+cluster://h:p[,h:p]`` (a
    cluster has no database number, so the path is dropped; ``rediss`` becomes ``ssl=True``).
    """
    scheme, sep, rest = redis_url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError("FAVORITES_REDIS_URL must start with redis://, rediss:// or unix://")
    if not cluster:
        return ("async+redis+unix://" + rest if scheme == "unix" else "async+" + redis_url), {}
    if scheme == "unix":
        raise ValueError("FAVORITES_REDIS_CLUSTER=true needs redis:// or rediss:// host:port URLs")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    return "async+redis+cluster://" + netloc, ({"ssl": True} if scheme == "rediss" else {})


def build_storage(redis_url: str, cluster: bool, *, timeout: float = SOCKET_TIMEOUT) -> RedisStorage:
    """A ``limits`` storage with short timeouts and no client-side retries (the breaker decides)."""
    uri, extra = storage_uri(redis_url, cluster)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # redis-py retries 10 times with backoff by default: seconds per request when Redis is dead.
        "retry": Retry(NoBackoff(), 0),
        **extra,
    }
    storage_class = RedisClusterStorage if cluster else RedisStorage
    return storage_class(uri, implementation="redispy", key_prefix=KEY_PREFIX, **options)


def _unreported(state: str) -> None:
    return None


class _Counts:
    """One scope's counts in one window: per identity, the shared total last read, what is not
    sent yet, and what is on its way to Redis (sent, total not read back yet: without it, the
    requests arriving during that round trip saw neither, took the count for far below the
    limit and were allowed locally, 95 of 100 concurrent requests against a limit of 30).
    Plain ``str -> int`` maps on purpose: the garbage collector stops tracking a dict that holds
    only strings and integers, where an object per identity was one more object for every full
    collection to walk (tens of thousands under load: milliseconds per pause)."""

    __slots__ = ("in_flight", "known", "pending", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.known: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}

    def send(self, identity: str, amount: int) -> None:
        self.in_flight[identity] = self.in_flight.get(identity, 0) + amount

    def sent(self, identity: str, amount: int, total: int | None) -> None:
        """The round trip is over: ``total`` read back, or None when it failed."""
        left = self.in_flight.get(identity, 0) - amount
        if left > 0:
            self.in_flight[identity] = left
        else:
            self.in_flight.pop(identity, None)
        if total is not None:
            self.known[identity] = max(self.known.get(identity, 0), total)


class _Serial:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class RedisRateLimiter:
    """Counts in Redis; falls back to ``InProcessRateLimiter`` while Redis fails (see module doc)."""

    def __init__(
        self,
        storage: RedisStorage,
        rates: Mapping[Scope, RateLimit],
        *,
        deadline: float = DEADLINE,
        cooldown: float = COOLDOWN,
        on_state: Callable[[str], None] = _unreported,
        clock: Callable[[], float] = time.time,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self._storage = storage
        self._rates = dict(rates)
        self._fallback = InProcessRateLimiter(rates, clock)
        self._deadline = deadline
        self._cooldown = cooldown
        self._on_state = on_state
        self._clock = clock
        self._errors: tuple[type[BaseException], ...] = (
            *_as_tuple(storage.base_exceptions), OSError, TimeoutError)
        #: 0 while Redis answers (breaker closed); else the monotonic time of the next probe.
        self._open_until = 0.0
        self._probing = False
        self._outage_started = 0.0
        #: scope -> (window, identities already over the limit): denied here without a round trip,
        #: so a client hammering past its limit costs Redis nothing until the window ends.
        self._exhausted: dict[Scope, tuple[int, set[str]]] = {}
        #: scope -> its counts in the current window (dropped when the window ends).
        self._counts: dict[Scope, _Counts] = {}
        #: Redis key -> (counts, identity, period) of counts not yet sent.
        self._unsent: dict[str, tuple[_Counts, str, int]] = {}
        #: Redis key -> the queue of its exact counts, while one is on its way.
        self._serial: dict[str, _Serial] = {}
        self._flush_interval = flush_interval
        self._flusher: asyncio.Task[None] | None = None
        self._flush_script: Any = None
        if not isinstance(storage, RedisClusterStorage):
            # A ``Script`` sends EVALSHA, and the script itself once if Redis does not know it.
            bridge: Any = storage.bridge
            self._flush_script = bridge.get_connection().register_script(FLUSH_SCRIPT)
        #: Counted for metrics and tests: failed Redis calls, requests counted in process, outages.
        self.failures = 0
        self.fallback_hits = 0
        self.outages = 0
        on_state("closed")

    async def hit(self, scope: Scope, identity: str) -> Decision:
        rate = self._rates[scope]
        window, reset_after = rate.window(self._clock())
        exhausted = self._exhausted.get(scope)
        if exhausted is not None and exhausted[0] == window and identity in exhausted[1]:
            return Decision(False, rate.amount, 0, reset_after)
        probe = False
        if self._open_until:
            if self._probing or time.monotonic() < self._open_until:
                return self._in_process(scope, identity)
            self._probing = probe = True
            self._on_state("half_open")
        key = f"{scope}:{identity}:{window}"
        counts = self._counts_in(scope, window)
        pending = counts.pending.get(identity, 0)
        estimate = (counts.known.get(identity, 0) + counts.in_flight.get(identity, 0)
                    + pending + 1)
        if (not probe and rate.amount >= BATCH_MIN_LIMIT
                and estimate <= rate.amount * BATCH_FRACTION):
            counts.pending[identity] = pending + 1
            self._unsent[key] = (counts, identity, rate.period)
            self._start_flusher()
            return Decision.of(rate, estimate, reset_after)
        # One exact count per identity at a time: a burst of one client's requests then costs
        # one Redis connection, not one each (a hundred connecting at once outlasted the
        # deadline, tripped the breaker, and the in-process fallback allowed its own limit).
        serial = self._serial.get(key)
        if serial is None:
            serial = self._serial[key] = _Serial()
        serial.users += 1
        try:
            async with serial.lock:
                return await self._count_exactly(scope, identity, key, rate, window,
                                                 reset_after, counts, probe)
        finally:
            serial.users -= 1
            if not serial.users:
                del self._serial[key]

    async def _count_exactly(self, scope: Scope, identity: str, key: str, rate: RateLimit,
                             window: int, reset_after: int, counts: _Counts,
                             probe: bool) -> Decision:
        exhausted = self._exhausted.get(scope)
        if exhausted is not None and exhausted[0] == window and identity in exhausted[1]:
            return Decision(False, rate.amount, 0, reset_after)  # the one before found it so
        amount = counts.pending.pop(identity, 0) + 1
        self._unsent.pop(key, None)
        counts.send(identity, amount)
        count: int | None = None
        try:
            async with deadline(self._deadline):
                count = await self._storage.incr(key, rate.period, amount=amount)
        except self._errors as exc:
            self._trip(exc)
            return self._in_process(scope, identity)
        finally:
            counts.sent(identity, amount, count)
            if probe:
                self._probing = False
        if probe:
            self._recover()
        decision = Decision.of(rate, count, reset_after)
        if not decision.allowed:
            if exhausted is None or exhausted[0] != window:
                exhausted = (window, set())
                self._exhausted[scope] = exhausted
            exhausted[1].add(identity)
        return decision

    def _counts_in(self, scope: Scope, window: int) -> _Counts:
        counts = self._counts.get(scope)
        if counts is None or counts.window != window:
            counts = self._counts[scope] = _Counts(window)
        return counts

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name="ratelimit-flush")

    async def _flush_forever(self) -> None:
        while True:
            stop_if_cancelled()
            await asyncio.sleep(self._flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Send every local count to Redis in one round trip; read the totals back.

        While Redis is failing the counts are dropped: those requests were already answered, and
        the in-process fallback counts from then on.
        """
        if not self._unsent:
            return
        batch, self._unsent = list(self._unsent.items()), {}
        if self._open_until:
            return
        sent = [(key, counts, identity, counts.pending.pop(identity, 0), period)
                for key, (counts, identity, period) in batch]
        for _, counts, identity, amount, _ in sent:
            counts.send(identity, amount)
        bridge: Any = self._storage.bridge
        client = bridge.get_connection()
        keys = [bridge.prefixed_key(key) for key, *_ in sent]
        try:
            async with deadline(self._deadline):
                if self._flush_script is not None:
                    args = [value for _, _, _, amount, period in sent for value in (amount, period)]
                    totals = await self._flush_script(keys=keys, args=args, client=client)
                else:
                    pipe = client.pipeline(transaction=False)
                    for full_key, (_, _, _, amount, period) in zip(keys, sent, strict=True):
                        pipe.incrby(full_key, amount)
                        pipe.expire(full_key, period)
                    totals = (await pipe.execute())[::2]
        except BaseException as exc:
            for _, counts, identity, amount, _ in sent:
                counts.sent(identity, amount, None)
            if isinstance(exc, self._errors):
                self._trip(exc)
                return
            raise
        for (_, counts, identity, amount, _), total in zip(sent, totals, strict=True):
            counts.sent(identity, amount, int(total))

    def _in_process(self, scope: Scope, identity: str) -> Decision:
        self.fallback_hits += 1
        return self._fallback.count(scope, identity)

    def _trip(self, exc: BaseException) -> None:
        self.failures += 1
        reason = type(exc).__name__
        now = time.monotonic()
        if not self._open_until:
            self.outages += 1
            self._outage_started = now
            log.warning(
                "rate limiter: Redis unavailable (%s: %s); limiting per instance in process, "
                "probing Redis every %.0fs", reason, str(exc)[:200], self._cooldown)
        self._open_until = now + self._cooldown
        self._on_state("open")

    def _recover(self) -> None:
        log.info("rate limiter: Redis answers again after %.1fs; back to the shared limit",
                 time.monotonic() - self._outage_started)
        self._open_until = 0.0
        self._on_state("closed")

    async def readiness(self) -> str:
        if self._open_until:
            return "degraded: redis unavailable, limiting per instance"
        return "ok"

    async def close(self) -> None:
        await cancel_and_wait(self._flusher)
        self._flusher = None
        with contextlib.suppress(*self._errors):
            await self.flush()
        bridge = self._storage.bridge
        if isinstance(bridge, RedispyBridge):
            client: Any = bridge.get_connection()
            await client.aclose()
        await self._fallback.close()


def _as_tuple(
    exceptions: type[Exception] | tuple[type[Exception], ...],
) -> tuple[type[Exception], ...]:
    return exceptions if isinstance(exceptions, tuple) else (exceptions,)
