"""The external product service as the catalog (``FAVORITES_PRODUCT_SERVICE_URL``).

The contract (SPEC §5): ``GET {url}/products/{id}`` answers 200 (exists) or 404 (unknown or
deleted); ``GET {url}/products?ids=a,b,…`` (at most 100) answers 200
``{"items": [{"product_id": "…"}, …]}`` listing those that exist. Anything else — a redirect (never
followed), a 5xx or other status, a body over 256 KiB or malformed, no answer within the timeouts —
means "cannot tell": ``existing`` raises DependencyUnavailable (503 + Retry-After upstream). A
single product's 200 must be empty or a JSON object (for that product), so an HTML page served with
200 by a misrouted ingress does not make every id exist.

Every call passes a circuit breaker: after consecutive failures the service is not asked at all
for a cool-down, so a dead product service costs adds a fast 503 instead of a timeout each.
Only adds ask the catalog; reads and removes never do. Positive answers are cached by a decorator
around this class (adapters/cache), so adds of products known from the cache keep working while
the service is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

import httpx
import orjson

from favorites.adapters.catalog.breaker import BreakerState, CircuitBreaker, CircuitOpen
from favorites.deadlines import deadline
from favorites.domain.errors import DependencyUnavailable

log = logging.getLogger("favorites.catalog")

#: Larger answers are not read past this point and count as unavailable.
MAX_BODY_BYTES = 256 * 1024
#: Ids per batch request, the contract's limit.
BATCH_SIZE = 100

#: Adds W3C trace context (``traceparent``) to outgoing headers; wired from observability.
HeaderInjector = Callable[[dict[str, str]], None]


class _Unavailable(Exception):
    """The answer does not tell which products exist; ``reason`` names the outcome counter."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HttpCatalog:
    """Catalog port over HTTP, with one shared connection pool per process.

    ``start()`` opens the client (lifespan start-up), ``aclose()`` closes it. ``outcomes`` counts
    every call by result (``exists``, ``not_found``, ``batch_ok``, ``circuit_open`` and one key per
    reason of unavailability) for tests and debugging; the exported metric is the breaker state
    (``circuit_breaker_state{dependency="product_service"}``, wired in bootstrap).
    """

    #: Products live in another service: an add asks it (through the existence cache) first.
    in_store = False

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 0.5,
        read_timeout: float = 1.0,
        breaker: CircuitBreaker | None = None,
        max_connections: int = 50,
        inject_headers: HeaderInjector | None = None,
    ):
        self._base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout,
                                      write=read_timeout, pool=connect_timeout)
        # httpx's read timeout is per network read; this bounds a whole call, so a server that
        # trickles its answer byte by byte cannot hold an add for longer than the timeouts.
        self._deadline = connect_timeout + read_timeout
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=min(20, max_connections),
                                    keepalive_expiry=30.0)
        self.breaker = breaker or CircuitBreaker("product_service")
        self._inject_headers = inject_headers
        self._client: httpx.AsyncClient | None = None
        self.outcomes: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"HttpCatalog(base_url={self._base_url!r}, breaker={self.breaker.state.value})"

    async def start(self) -> None:
        self._http()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def readiness(self) -> str:
        """For /health/ready: never fatal, and never a request of its own."""
        return "ok" if self.breaker.state is BreakerState.CLOSED else "degraded: circuit open"

    async def existing(self, product_ids: Sequence[UUID]) -> set[UUID]:
        """The subset of ``product_ids`` that exist; DependencyUnavailable when it cannot tell."""
        wanted = list(dict.fromkeys(product_ids))
        if not wanted:
            return set()
        if len(wanted) == 1:
            return await self._guarded(self._lookup_one, wanted)
        chunks = [wanted[start:start + BATCH_SIZE] for start in range(0, len(wanted), BATCH_SIZE)]
        results = await asyncio.gather(
            *(self._guarded(self._lookup_batch, chunk) for chunk in chunks),
            return_exceptions=True,
        )
        found: set[UUID] = set()
        for result in results:
            if isinstance(result, BaseException):
                raise result
            found |= result
        return found

    async def forget(self, product_id: UUID) -> None:
        """Nothing is remembered here; the caching decorator around this class forgets."""

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._base_url,
                timeout=self._timeout,
                limits=self._limits,
                follow_redirects=False,
                # The product service is an internal peer: no proxy or .netrc from the environment.
                trust_env=False,
                headers={"Accept": "application/json", "User-Agent": "favorites-service"},
            )
        return self._client

    async def _guarded(
        self, lookup: Callable[[list[UUID]], Awaitable[set[UUID]]], ids: list[UUID]
    ) -> set[UUID]:
        try:
            self.breaker.allow()
        except CircuitOpen as exc:
            self.outcomes["circuit_open"] += 1
            raise DependencyUnavailable("the product service is unavailable (circuit open)",
                                        retry_after=exc.retry_after) from None
        started = time.perf_counter()
        try:
            async with deadline(self._deadline):
                found = await lookup(ids)
        except _Unavailable as exc:
            raise self._failed(exc.reason, ids, started) from None
        except httpx.PoolTimeout:
            # Our own pool is exhausted (local overload), which says nothing about the service.
            self.breaker.release()
            self.outcomes["pool_timeout"] += 1
            raise DependencyUnavailable("the product service is busy", retry_after=1) from None
        except (TimeoutError, httpx.TimeoutException):
            raise self._failed("timeout", ids, started) from None
        except httpx.HTTPError:
            raise self._failed("transport_error", ids, started) from None
        except BaseException:
            self.breaker.release()  # cancelled, or a bug of ours: no verdict on the service
            raise
        self.breaker.success()
        # Only adds of products the existence cache does not know call out (an hour per
        # product), so one line per call stays cheap; a call the breaker refused is no call.
        log.info("product service answered", extra=_call(ids, started, "success"))
        return found

    def _failed(self, reason: str, ids: list[UUID], started: float) -> DependencyUnavailable:
        self.outcomes[reason] += 1
        self.breaker.failure(reason)
        log.warning("product service unavailable: %s", reason,
                    extra={**_call(ids, started, "failure"), "reason": reason})
        # The call that opens the breaker already tells its caller the whole cool-down.
        retry_after = self.breaker.retry_after() if self.breaker.state is BreakerState.OPEN else 1
        return DependencyUnavailable(f"the product service is unavailable ({reason})",
                                     retry_after=retry_after)

    async def _lookup_one(self, ids: list[UUID]) -> set[UUID]:
        (product_id,) = ids
        status, body = await self._get(f"/products/{product_id}", accept=(200, 404))
        if status == 200:
            _check_product(body, product_id)
            self.outcomes["exists"] += 1
            return {product_id}
        self.outcomes["not_found"] += 1
        return set()

    async def _lookup_batch(self, ids: list[UUID]) -> set[UUID]:
        _, body = await self._get("/products?ids=" + ",".join(str(pid) for pid in ids),
                                  accept=(200,))
        listed = _parse_items(body)
        self.outcomes["batch_ok"] += 1
        # Ids we did not ask about are ignored rather than trusted.
        return listed.intersection(ids)

    async def _get(self, path: str, *, accept: tuple[int, ...]) -> tuple[int, bytes]:
        headers: dict[str, str] = {}
        if self._inject_headers is not None:
            self._inject_headers(headers)
        async with self._http().stream("GET", path, headers=headers) as response:
            status = response.status_code
            if 300 <= status < 400:
                raise _Unavailable("redirect")
            if status >= 500:
                raise _Unavailable("server_error")
            if status not in accept:
                raise _Unavailable("unexpected_status")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise _Unavailable("oversized")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise _Unavailable("oversized")
            return status, bytes(body)


def _call(ids: list[UUID], started: float, outcome: str) -> dict[str, object]:
    """The log fields of one call to the product service (seed Step 10: external calls are
    logged with their outcome and duration)."""
    return {"operation": "productServiceCall", "outcome": outcome, "products": len(ids),
            "durationMs": round((time.perf_counter() - started) * 1000, 1)}


def _check_product(body: bytes, product_id: UUID) -> None:
    """A 200 for one product: empty, or a JSON object whose ``product_id`` (if any) is the one asked.

    The contract only promises the status, but a 200 HTML page (a misrouted ingress, a captive
    proxy) must not make every id "exist".
    """
    if not body.strip():
        return
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Unavailable("malformed") from None
    if not isinstance(document, dict):
        raise _Unavailable("malformed")
    if "product_id" in document and _as_uuid(document["product_id"]) != product_id:
        raise _Unavailable("malformed")


def _as_uuid(value: object) -> UUID:
    if not isinstance(value, str) or len(value) not in (32, 36):
        raise _Unavailable("malformed")
    try:
        return UUID(value)
    except ValueError:
        raise _Unavailable("malformed") from None


def _parse_items(body: bytes) -> set[UUID]:
    """``{"items": [{"product_id": "<uuid>"}, …]}`` strictly; anything else is malformed."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Unavailable("malformed") from None
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise _Unavailable("malformed")
    found: set[UUID] = set()
    for item in items:
        if not isinstance(item, dict):
            raise _Unavailable("malformed")
        found.add(_as_uuid(item.get("product_id")))
    return found
