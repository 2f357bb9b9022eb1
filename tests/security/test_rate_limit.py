"""Rate limiting with the in-process limiter (no FAVORITES_REDIS_URL): who is counted, and how.

Anchors: OWASP API4:2023 Unrestricted Resource Consumption; OWASP ASVS 4.0.3 11.1.4 (anti-automation
against excessive calls) and 2.2.1 (anti-automation against credential guessing); the
``RateLimit-*`` fields of draft-ietf-httpapi-ratelimit-headers. Sharing the limit through Redis,
and Redis going away, are in tests/integration/test_rate_limit_redis.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from favorites.entrypoints.http.app import create_app
from tests.conftest import NARROW_KEY, SERVICE_KEY, make_settings
from tests.helpers import assert_problem, bearer

LIMIT = 5
TRUSTED_PROXY = "10.99.0.1"
BOGUS_REFRESH = {"refresh_token": "not-a-refresh-token-" + "x" * 20}


@pytest.fixture(scope="module")
async def app(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    """One app for the module, 5/minute for users and addresses, 3/minute for service clients.

    Tests stay apart by using their own users and client addresses.
    """
    settings = make_settings(sqlite_url, tmp_path_factory.mktemp("ratelimit"),
                             rate_limit=f"{LIMIT}/minute", service_rate_limit="3/minute",
                             trusted_proxies=["10.99.0.0/16"])
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def client_from(app: FastAPI, address: str) -> httpx.AsyncClient:
    """An HTTP client whose requests arrive from ``address`` (the socket peer)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://favorites.test")


#: The next of the 131,072 addresses of 198.18.0.0/15, from a random start: drawn at random, two
#: draws in one test run met once in a while (a 429 one request early); in order, they never do,
#: and another run sharing Redis starts elsewhere.
_ADDRESSES = itertools.count(uuid.uuid4().int % 2**17)


def fresh_address() -> str:
    """An address from the benchmarking range 198.18.0.0/15 that no other test of this run uses."""
    value = next(_ADDRESSES) % 2**17
    return f"198.{18 + (value >> 16)}.{value >> 8 & 255}.{value & 255}"


async def clear_of_window_edge(period: int = 60, margin: float = 3.0) -> None:
    """Windows are aligned to the clock; start a sequence where no window ends in the middle."""
    left = period - time.time() % period
    if left < margin:
        await asyncio.sleep(left + 0.05)


def refusals(scope: str) -> float:
    """``rate_limited_requests_total{scope=...}`` as exported."""
    return REGISTRY.get_sample_value("rate_limited_requests_total", {"scope": scope}) or 0.0


def rate_headers(response: httpx.Response) -> tuple[int, int, int]:
    return (int(response.headers["ratelimit-limit"]), int(response.headers["ratelimit-remaining"]),
            int(response.headers["ratelimit-reset"]))


async def test_the_request_past_the_limit_is_429_problem_with_retry_after(app: FastAPI) -> None:
    """API4:2023; ASVS 11.1.4: past the per-user limit the request is refused with 429
    problem+json (rate-limited) and Retry-After, before any work is done, and counted."""
    await clear_of_window_edge()
    headers = bearer(uuid.uuid4())
    counted_before = refusals("user")
    async with client_from(app, fresh_address()) as client:
        for _ in range(LIMIT):
            assert (await client.get("/v1/users/me/favorites/count", headers=headers)
                    ).status_code == 200
        refused = await client.get("/v1/users/me/favorites/count", headers=headers)
    assert_problem(refused, 429, "rate-limited")
    retry_after = int(refused.headers["retry-after"])
    limit, remaining, reset = rate_headers(refused)
    assert (limit, remaining) == (LIMIT, 0)
    assert 1 <= retry_after <= 60
    assert retry_after == reset
    assert refusals("user") == counted_before + 1


async def test_the_101st_request_in_a_minute_is_refused_by_default(
    sqlite_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """API4:2023; SPEC §4: the embedded default is 100 requests per minute per user."""
    settings = make_settings(sqlite_url, tmp_path_factory.mktemp("default-limit"),
                             rate_limit="100/minute")
    application = create_app(settings)
    headers = bearer(uuid.uuid4())
    async with application.router.lifespan_context(application):
        await clear_of_window_edge()
        async with client_from(application, fresh_address()) as client:
            statuses = [(await client.get("/v1/users/me/favorites/count", headers=headers)
                         ).status_code for _ in range(101)]
    assert statuses == [200] * 100 + [429]


async def test_ratelimit_headers_on_every_response_errors_included(app: FastAPI) -> None:
    """draft-ietf-httpapi-ratelimit-headers: RateLimit-Limit, -Remaining (decreasing by one per
    request) and -Reset (seconds) on every counted response, 403/404/422 included."""
    await clear_of_window_edge()
    user, other = uuid.uuid4(), uuid.uuid4()
    headers = bearer(user)
    async with client_from(app, fresh_address()) as client:
        responses = [
            await client.get("/v1/users/me/favorites/count", headers=headers),
            await client.get(f"/v1/users/me/favorites/{uuid.uuid4()}", headers=headers),
            await client.get(f"/v1/users/{other}/favorites", headers=headers),
            await client.get("/v1/users/me/favorites/not-a-uuid", headers=headers),
            await client.put(f"/v1/users/me/favorites/{uuid.uuid4()}", headers=headers),
        ]
    assert [r.status_code for r in responses] == [200, 404, 403, 422, 404]
    seen = [rate_headers(r) for r in responses]
    assert [remaining for _, remaining, _ in seen] == [4, 3, 2, 1, 0]
    assert all(limit == LIMIT and 1 <= reset <= 60 for limit, _, reset in seen)


async def test_one_exhausted_user_does_not_limit_another(app: FastAPI) -> None:
    """API4:2023: the limit is per user; one user at the limit leaves others untouched, even
    from the same address."""
    await clear_of_window_edge()
    greedy, bystander = bearer(uuid.uuid4()), bearer(uuid.uuid4())
    async with client_from(app, fresh_address()) as client:
        for _ in range(LIMIT):
            await client.get("/v1/users/me/favorites/count", headers=greedy)
        assert (await client.get("/v1/users/me/favorites/count", headers=greedy)
                ).status_code == 429
        answer = await client.get("/v1/users/me/favorites/count", headers=bystander)
    assert answer.status_code == 200
    assert rate_headers(answer)[1] == LIMIT - 1


async def test_before_sign_in_the_client_address_is_limited(app: FastAPI) -> None:
    """API4:2023; ASVS 11.1.4: without credentials (token refresh) the client address is counted;
    other addresses, and signed-in users at the same address, keep their own budgets."""
    await clear_of_window_edge()
    address = fresh_address()
    async with client_from(app, address) as client:
        first = [await client.post("/v1/auth/refresh", json=BOGUS_REFRESH) for _ in range(LIMIT)]
        assert [r.status_code for r in first] == [401] * LIMIT
        assert [rate_headers(r)[1] for r in first] == [4, 3, 2, 1, 0]
        assert_problem(await client.post("/v1/auth/refresh", json=BOGUS_REFRESH), 429,
                       "rate-limited")
        assert_problem(await client.get("/.well-known/jwks.json"), 429, "rate-limited")
        signed_in = await client.get("/v1/users/me/favorites/count", headers=bearer(uuid.uuid4()))
        assert signed_in.status_code == 200
    async with client_from(app, fresh_address()) as elsewhere:
        assert (await elsewhere.post("/v1/auth/refresh", json=BOGUS_REFRESH)).status_code == 401


async def test_guessing_tokens_is_limited_per_address(app: FastAPI) -> None:
    """ASVS 2.2.1 (anti-automation against credential guessing); API2:2023: failed bearer-token
    and API-key authentications count against the address, then 429 replaces the 401."""
    await clear_of_window_edge()
    async with client_from(app, fresh_address()) as client:
        for attempt in range(LIMIT):
            guess = {"Authorization": f"Bearer guess-{attempt}"}
            failed = await client.get("/v1/users/me/favorites", headers=guess)
            assert_problem(failed, 401, "invalid-token")
            assert rate_headers(failed)[1] == LIMIT - 1 - attempt
        refused = await client.get("/v1/users/me/favorites", headers={"Authorization": "Bearer g"})
        assert_problem(refused, 429, "rate-limited")
        assert "retry-after" in refused.headers
    # The same for API keys: service clients must call from 127.0.0.0/8.
    async with client_from(app, f"127.7.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}") as c:
        for attempt in range(LIMIT):
            failed = await c.put(f"/internal/v1/products/{uuid.uuid4()}",
                                 headers={"X-API-Key": f"guess-{attempt}"})
            assert_problem(failed, 401, "invalid-api-key")
        assert_problem(await c.put(f"/internal/v1/products/{uuid.uuid4()}",
                                   headers={"X-API-Key": "guess"}), 429, "rate-limited")


async def test_service_clients_are_limited_per_client(app: FastAPI) -> None:
    """API4:2023: each service client has its own budget (FAVORITES_SERVICE_RATE_LIMIT, here
    3/minute); one client at its limit does not stop another."""
    await clear_of_window_edge()
    identity, catalog = {"X-API-Key": SERVICE_KEY}, {"X-API-Key": NARROW_KEY}
    async with client_from(app, "127.0.0.1") as client:
        statuses = [(await client.put(f"/internal/v1/products/{uuid.uuid4()}", headers=identity)
                     ).status_code for _ in range(4)]
        other = await client.put(f"/internal/v1/products/{uuid.uuid4()}", headers=catalog)
    assert statuses == [201, 201, 201, 429]
    assert other.status_code == 201
    assert rate_headers(other)[:2] == (3, 2)


async def test_health_endpoints_are_never_limited(app: FastAPI) -> None:
    """SPEC §3 (probes: no auth, no rate limit): an address over its limit still gets its
    health answers, and they carry no RateLimit-* headers."""
    await clear_of_window_edge()
    async with client_from(app, fresh_address()) as client:
        for _ in range(LIMIT + 1):
            await client.post("/v1/auth/refresh", json=BOGUS_REFRESH)
        assert (await client.post("/v1/auth/refresh", json=BOGUS_REFRESH)).status_code == 429
        probes = [await client.get(path) for path in ("/health/live", "/health/ready") * 10]
    assert [r.status_code for r in probes] == [200] * 20
    assert not any("ratelimit-limit" in r.headers for r in probes)


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(app: FastAPI) -> None:
    """ASVS 11.1.4; SPEC §4 (client address): a caller cannot escape its limit by sending
    X-Forwarded-For; behind a trusted proxy each forwarded client has its own budget."""
    await clear_of_window_edge()
    async with client_from(app, fresh_address()) as direct:
        spoofed = [await direct.post("/v1/auth/refresh", json=BOGUS_REFRESH,
                                     headers={"X-Forwarded-For": fresh_address()})
                   for _ in range(LIMIT + 1)]
    assert [r.status_code for r in spoofed] == [401] * LIMIT + [429]
    async with client_from(app, TRUSTED_PROXY) as proxy:
        distinct = [await proxy.post("/v1/auth/refresh", json=BOGUS_REFRESH,
                                     headers={"X-Forwarded-For": fresh_address()})
                    for _ in range(LIMIT + 1)]
        one = fresh_address()
        same = [await proxy.post("/v1/auth/refresh", json=BOGUS_REFRESH,
                                 headers={"X-Forwarded-For": one}) for _ in range(LIMIT + 1)]
    assert [r.status_code for r in distinct] == [401] * (LIMIT + 1)
    assert [r.status_code for r in same] == [401] * LIMIT + [429]


async def test_every_forwarded_for_line_counts(app: FastAPI) -> None:
    """A proxy may append its own X-Forwarded-For line after one the client sent: the lines
    are one list, so the client's own line does not become its address."""
    await clear_of_window_edge()
    one = fresh_address()
    async with client_from(app, TRUSTED_PROXY) as proxy:
        statuses = [(await proxy.post(
            "/v1/auth/refresh", json=BOGUS_REFRESH,
            headers=[("X-Forwarded-For", fresh_address()), ("X-Forwarded-For", one)],
        )).status_code for _ in range(LIMIT + 1)]
    assert statuses == [401] * LIMIT + [429]


async def test_ipv4_addresses_written_as_ipv6_by_a_proxy_are_counted_as_ipv4(
        app: FastAPI) -> None:
    """``::ffff:a.b.c.d`` from a dual-stack proxy is that IPv4 client, not the /64 that every
    such address shares: one client's failures do not use up everyone's budget."""
    await clear_of_window_edge()
    async with client_from(app, TRUSTED_PROXY) as proxy:
        noisy = [(await proxy.post("/v1/auth/refresh", json=BOGUS_REFRESH,
                                   headers={"X-Forwarded-For": f"::ffff:{fresh_address()}"}
                                   )).status_code for _ in range(LIMIT + 1)]
        other = await proxy.post("/v1/auth/refresh", json=BOGUS_REFRESH,
                                 headers={"X-Forwarded-For": f"::ffff:{fresh_address()}"})
    assert noisy == [401] * (LIMIT + 1)
    assert other.status_code == 401


async def test_ipv6_callers_are_counted_per_64(app: FastAPI) -> None:
    """API4:2023: an IPv6 subscriber holds a whole /64, so rotating addresses inside it does not
    reset the limit; another /64 has its own budget."""
    await clear_of_window_edge()
    prefix = f"2001:db8:{uuid.uuid4().int % 65536:x}:{uuid.uuid4().int % 65536:x}"
    statuses = []
    for host in range(1, LIMIT + 2):
        async with client_from(app, f"{prefix}::{host:x}") as client:
            statuses.append((await client.post("/v1/auth/refresh", json=BOGUS_REFRESH)
                             ).status_code)
    assert statuses == [401] * LIMIT + [429]
    async with client_from(app, f"2001:db8:ffff:{uuid.uuid4().int % 65536:x}::1") as other:
        assert (await other.post("/v1/auth/refresh", json=BOGUS_REFRESH)).status_code == 401
