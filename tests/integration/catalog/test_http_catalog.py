"""HttpCatalog against a real HTTP product service: the contract, every way it fails, the breaker."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from favorites.adapters.catalog.breaker import BreakerState, CircuitBreaker
from favorites.adapters.catalog.http import HttpCatalog
from favorites.domain.errors import DependencyUnavailable
from tests.integration.catalog.conftest import CONNECT_TIMEOUT, READ_TIMEOUT
from tests.integration.catalog.fake_product_service import MALFORMED, FakeProductService

BREAKER_LOG = "favorites.breaker"


async def _unavailable(catalog: HttpCatalog, ids: list[uuid.UUID]) -> DependencyUnavailable:
    with pytest.raises(DependencyUnavailable) as caught:
        await catalog.existing(ids)
    retry_after = caught.value.headers["Retry-After"]
    assert int(retry_after) >= 1
    return caught.value


async def test_single_lookup_asks_for_one_product(
    catalog: HttpCatalog, product_service: FakeProductService
) -> None:
    known, unknown = uuid.uuid4(), uuid.uuid4()
    product_service.known.add(known)
    assert await catalog.existing([known]) == {known}
    assert await catalog.existing([unknown]) == set()
    assert [seen.path for seen in product_service.requests] == [f"/products/{known}",
                                                                 f"/products/{unknown}"]
    assert catalog.outcomes["exists"] == 1
    assert catalog.outcomes["not_found"] == 1
    assert await catalog.existing([]) == set()
    assert len(product_service.requests) == 2


async def test_batch_lookup_goes_in_chunks_of_100(
    catalog: HttpCatalog, product_service: FakeProductService
) -> None:
    ids = [uuid.uuid4() for _ in range(250)]
    product_service.known.update(ids[::2])
    found = await catalog.existing(ids + ids[:10])  # duplicates are asked once
    assert found == set(ids[::2])
    batches = [seen.query.removeprefix("ids=").split(",") for seen in product_service.requests]
    assert all(seen.path == "/products" for seen in product_service.requests)
    assert sorted(len(batch) for batch in batches) == [50, 100, 100]
    assert sorted(pid for batch in batches for pid in batch) == sorted(str(pid) for pid in ids)
    assert catalog.outcomes["batch_ok"] == 3


async def test_batch_ignores_products_it_did_not_ask_about(
    catalog: HttpCatalog, product_service: FakeProductService
) -> None:
    asked = [uuid.uuid4(), uuid.uuid4()]
    product_service.known.add(asked[0])
    product_service.extra_listed.add(uuid.uuid4())
    assert await catalog.existing(asked) == {asked[0]}


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("slow", "timeout"),
        ("drip", "timeout"),
        ("error", "server_error"),
        ("unavailable", "server_error"),
        ("teapot", "unexpected_status"),
        ("redirect", "redirect"),
        ("oversized", "oversized"),
        ("oversized-streamed", "oversized"),
    ],
)
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
async def test_each_failure_mode_is_unavailable(
    catalog: HttpCatalog, product_service: FakeProductService, mode: str, reason: str,
    batch: bool,
) -> None:
    ids = [uuid.uuid4() for _ in range(3 if batch else 1)]
    product_service.known.update(ids)
    product_service.mode = mode
    product_service.delay = READ_TIMEOUT + 0.3
    started = time.monotonic()
    error = await _unavailable(catalog, ids)
    elapsed = time.monotonic() - started
    assert catalog.outcomes[reason] == 1, catalog.outcomes
    assert error.status == 503
    # Bounded by the timeouts even when the answer trickles in (a drip would last 10 s); the
    # margin is for a loaded test machine.
    assert elapsed < CONNECT_TIMEOUT + READ_TIMEOUT + 1.0


@pytest.mark.parametrize("body", sorted(MALFORMED))
async def test_malformed_batch_answers_are_unavailable(
    catalog: HttpCatalog, product_service: FakeProductService, body: str
) -> None:
    product_service.mode, product_service.malformed = "malformed", body
    await _unavailable(catalog, [uuid.uuid4(), uuid.uuid4()])
    assert catalog.outcomes["malformed"] == 1


async def test_a_single_200_that_is_not_a_product_is_unavailable(
    catalog: HttpCatalog, product_service: FakeProductService
) -> None:
    product_service.mode, product_service.malformed = "malformed", "not-json"
    await _unavailable(catalog, [uuid.uuid4()])
    assert catalog.outcomes["malformed"] == 1


async def test_redirects_are_never_followed(
    catalog: HttpCatalog, product_service: FakeProductService
) -> None:
    product_service.mode = "redirect"
    await _unavailable(catalog, [uuid.uuid4()])
    await _unavailable(catalog, [uuid.uuid4(), uuid.uuid4()])
    assert product_service.hits("/products") == 2
    assert product_service.hits("/moved") == 0


async def test_a_stopped_service_is_unavailable(
    catalog: HttpCatalog, product_service: FakeProductService
) -> None:
    product_service.stop()
    started = time.monotonic()
    await _unavailable(catalog, [uuid.uuid4()])
    assert time.monotonic() - started < CONNECT_TIMEOUT + 0.2
    assert catalog.outcomes["transport_error"] == 1


async def test_breaker_opens_fails_fast_and_closes_when_the_service_is_back(
    catalog: HttpCatalog, product_service: FakeProductService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOG)
    product = uuid.uuid4()
    product_service.known.add(product)
    product_service.mode = "error"
    for _ in range(2):
        assert int((await _unavailable(catalog, [product])).headers["Retry-After"]) == 1
    opening = await _unavailable(catalog, [product])  # the third failure opens the breaker
    assert catalog.breaker.state is BreakerState.OPEN
    assert opening.headers["Retry-After"] == "1"  # remaining cool-down (0.5 s), at least 1
    assert product_service.hits() == 3

    product_service.stop()  # down for good now; the breaker keeps us from even trying
    for _ in range(20):
        rejected = await _unavailable(catalog, [product])
        assert "circuit open" in rejected.detail
    assert catalog.outcomes["circuit_open"] == 20
    assert catalog.outcomes["transport_error"] == 0
    assert await catalog.readiness() == "degraded: circuit open"

    product_service.requests.clear()
    product_service.mode = "ok"
    product_service.start()
    await asyncio.sleep(catalog.breaker.reset_timeout + 0.05)
    assert await catalog.existing([product]) == {product}  # the half-open probe
    assert catalog.breaker.state is BreakerState.CLOSED
    assert await catalog.readiness() == "ok"
    assert product_service.hits() == 1  # the restarted server saw only the probe

    transitions = [r.getMessage() for r in caplog.records if r.name == BREAKER_LOG]
    assert transitions == [
        "circuit breaker product_service: closed -> open",
        "circuit breaker product_service: open -> half-open",
        "circuit breaker product_service: half-open -> closed",
    ]
    # One WARN per outage, when it begins; its probes and the recovery are INFO.
    assert [r.levelname for r in caplog.records if r.name == BREAKER_LOG] == [
        "WARNING", "INFO", "INFO"]
    # The line that opens it says what failed last.
    opened = next(r for r in caplog.records if r.name == BREAKER_LOG)
    assert opened.__dict__["lastFailure"] == "server_error"  # mode "error": a 500


async def test_half_open_lets_one_probe_through_and_a_failed_probe_reopens(
    product_service: FakeProductService,
) -> None:
    breaker = CircuitBreaker("product_service", failure_threshold=1, reset_timeout=0.3)
    catalog = HttpCatalog(product_service.url, connect_timeout=CONNECT_TIMEOUT,
                          read_timeout=READ_TIMEOUT, breaker=breaker)
    try:
        product_service.mode = "error"
        await _unavailable(catalog, [uuid.uuid4()])
        assert breaker.state is BreakerState.OPEN
        await asyncio.sleep(0.35)
        product_service.mode, product_service.delay = "slow", 0.1  # the probe takes a while
        product_service.known.add(probe := uuid.uuid4())
        results = await asyncio.gather(*(catalog.existing([probe]) for _ in range(5)),
                                       return_exceptions=True)
        assert sum(1 for r in results if r == {probe}) == 1
        assert sum(1 for r in results if isinstance(r, DependencyUnavailable)) == 4
        assert product_service.hits() == 2  # the first failure and the one probe
        assert breaker.state is BreakerState.CLOSED

        product_service.mode = "error"
        await _unavailable(catalog, [probe])
        await asyncio.sleep(0.35)
        failed_probe = await _unavailable(catalog, [probe])
        assert breaker.state is BreakerState.OPEN  # a fresh cool-down
        assert "server_error" in failed_probe.detail
        await _unavailable(catalog, [probe])
        assert product_service.hits() == 4
    finally:
        await catalog.aclose()


async def test_retry_after_is_the_remaining_cool_down(product_service: FakeProductService) -> None:
    breaker = CircuitBreaker("product_service", failure_threshold=1, reset_timeout=30)
    catalog = HttpCatalog(product_service.url, breaker=breaker)
    try:
        product_service.mode = "error"
        assert (await _unavailable(catalog, [uuid.uuid4()])).headers["Retry-After"] == "30"
        later = int((await _unavailable(catalog, [uuid.uuid4()])).headers["Retry-After"])
        assert 29 <= later <= 30
    finally:
        await catalog.aclose()


async def test_trace_context_travels_with_every_request(product_service: FakeProductService) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    def inject(headers: dict[str, str]) -> None:
        headers["traceparent"] = traceparent

    catalog = HttpCatalog(product_service.url, inject_headers=inject)
    try:
        await catalog.existing([uuid.uuid4()])
        await catalog.existing([uuid.uuid4(), uuid.uuid4()])
    finally:
        await catalog.aclose()
    assert [seen.headers.get("traceparent") for seen in product_service.requests] == [
        traceparent, traceparent]
    assert all(seen.headers["accept"] == "application/json" for seen in product_service.requests)


async def test_the_connection_pool_is_shared_and_closed(
    product_service: FakeProductService,
) -> None:
    catalog = HttpCatalog(product_service.url)
    await catalog.start()
    client = catalog._client
    await catalog.existing([uuid.uuid4()])
    await catalog.existing([uuid.uuid4(), uuid.uuid4()])
    assert catalog._client is client
    await catalog.aclose()
    assert client is not None
    assert client.is_closed
    assert catalog._client is None


async def test_every_call_is_logged_with_its_outcome_and_duration(
    catalog: HttpCatalog, product_service: FakeProductService, caplog: pytest.LogCaptureFixture
) -> None:
    """Seed Step 10, "what to log": external service calls, success or failure, and duration.
    A failure is a WARN (unexpected but handled: the add answers 503); a refused call is none."""
    caplog.set_level(logging.INFO, logger="favorites.catalog")
    known = uuid.uuid4()
    product_service.known.add(known)
    assert await catalog.existing([known, uuid.uuid4()]) == {known}
    product_service.mode = "error"
    await _unavailable(catalog, [known])
    calls = [r for r in caplog.records if r.name == "favorites.catalog"]
    assert [(r.levelname, r.outcome, r.products) for r in calls] == [  # type: ignore[attr-defined]
        ("INFO", "success", 2), ("WARNING", "failure", 1)]
    assert all(r.operation == "productServiceCall" for r in calls)  # type: ignore[attr-defined]
    assert all(r.durationMs >= 0 for r in calls)  # type: ignore[attr-defined]
    assert calls[1].reason == "server_error"  # type: ignore[attr-defined]
