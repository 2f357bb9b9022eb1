"""The app with FAVORITES_PRODUCT_SERVICE_URL set, over HTTP, against a real product service.

Adds ask the product service; while it is down they answer 503 problem+json with Retry-After, and
every read and remove keeps working without ever calling it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from favorites.bootstrap import Container
from favorites.entrypoints import cli
from favorites.entrypoints.http.app import create_app
from tests.conftest import make_settings, started
from tests.helpers import SERVICE, assert_problem, bearer
from tests.integration.catalog.conftest import READ_TIMEOUT
from tests.integration.catalog.fake_product_service import FakeProductService


@pytest.fixture
async def client(
    sqlite_url: str, tmp_path: Path, product_service: FakeProductService
) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app (so a fresh circuit breaker) per test, on the session's SQLite database."""
    settings = make_settings(sqlite_url, tmp_path, product_service_url=product_service.url,
                             product_service_read_timeout=READ_TIMEOUT)
    app = create_app(settings)
    async for c in started(app):
        c.app = app  # type: ignore[attr-defined]
        yield c


def _container(client: httpx.AsyncClient) -> Container:
    container: Container = client.app.state.container  # type: ignore[attr-defined]
    return container


async def _favorite(
    client: httpx.AsyncClient, service: FakeProductService, owner: uuid.UUID
) -> uuid.UUID:
    product = uuid.uuid4()
    service.known.add(product)
    response = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    assert response.status_code == 201, response.text
    return product


async def test_adds_ask_the_product_service(
    client: httpx.AsyncClient, product_service: FakeProductService
) -> None:
    owner = uuid.uuid4()
    product = await _favorite(client, product_service, owner)
    assert [seen.path for seen in product_service.requests] == [f"/products/{product}"]
    unknown = await client.put(f"/v1/users/me/favorites/{uuid.uuid4()}", headers=bearer(owner))
    assert_problem(unknown, 404, "product-not-found")
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["product_service"] == "ok"


async def test_the_trace_context_reaches_the_product_service(
    client: httpx.AsyncClient, product_service: FakeProductService
) -> None:
    trace_id = uuid.uuid4().hex
    product = uuid.uuid4()
    product_service.known.add(product)
    headers = {**bearer(uuid.uuid4()), "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    response = await client.put(f"/v1/users/me/favorites/{product}", headers=headers)
    assert response.status_code == 201
    (seen,) = product_service.requests
    version, sent_trace, parent_span, flags = seen.headers["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01")
    assert parent_span != "00f067aa0ba902b7"  # our span, a child of the caller's


@pytest.mark.parametrize(
    "mode", ["slow", "error", "unavailable", "teapot", "redirect", "oversized", "malformed",
             "stopped"],
)
async def test_adds_answer_503_with_retry_after_while_the_product_service_fails(
    client: httpx.AsyncClient, product_service: FakeProductService, mode: str
) -> None:
    owner, product = uuid.uuid4(), uuid.uuid4()
    product_service.known.add(product)
    if mode == "stopped":
        product_service.stop()
    else:
        product_service.mode = mode
        product_service.delay = READ_TIMEOUT + 0.3
    response = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    body = assert_problem(response, 503, "dependency-unavailable")
    assert "product service" in body["detail"]
    assert int(response.headers["retry-after"]) >= 1
    assert product_service.hits("/moved") == 0  # a redirect is never followed
    missing = await client.get(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    assert_problem(missing, 404, "favorite-not-found")


async def test_the_breaker_opens_and_adds_fail_fast(
    client: httpx.AsyncClient, product_service: FakeProductService
) -> None:
    owner = uuid.uuid4()
    product_service.mode = "error"
    threshold = _container(client).http_catalog.breaker.failure_threshold  # type: ignore[union-attr]
    retry_afters = []
    for _ in range(threshold):
        response = await client.put(f"/v1/users/me/favorites/{uuid.uuid4()}",
                                    headers=bearer(owner))
        assert_problem(response, 503, "dependency-unavailable")
        retry_afters.append(int(response.headers["retry-after"]))
    assert retry_afters[:-1] == [1] * (threshold - 1)
    assert retry_afters[-1] == 10  # the failure that opened it tells the whole cool-down
    assert product_service.hits() == threshold

    for _ in range(10):
        fast = await client.put(f"/v1/users/me/favorites/{uuid.uuid4()}", headers=bearer(owner))
        body = assert_problem(fast, 503, "dependency-unavailable")
        assert "circuit open" in body["detail"]
        assert 1 <= int(fast.headers["retry-after"]) <= 10
    assert product_service.hits() == threshold  # nothing more reached the service

    ready = await client.get("/health/ready")
    assert ready.status_code == 200  # not fatal: reads and removes still work
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["product_service"] == "degraded: circuit open"
    gauge = REGISTRY.get_sample_value("circuit_breaker_state", {"dependency": "product_service"})
    assert gauge == 2  # open


async def test_reads_and_removes_never_ask_the_product_service_and_survive_its_outage(
    client: httpx.AsyncClient, product_service: FakeProductService
) -> None:
    owner = uuid.uuid4()
    kept, removed_up, removed_down = [
        await _favorite(client, product_service, owner) for _ in range(3)
    ]
    asked_before = product_service.hits()

    async def reads_and_a_remove(product: uuid.UUID) -> None:
        auth = bearer(owner)
        listed = await client.get("/v1/users/me/favorites", headers=auth)
        assert listed.status_code == 200
        assert str(kept) in [item["product_id"] for item in listed.json()["items"]]
        got = await client.get(f"/v1/users/me/favorites/{kept}", headers=auth)
        assert got.status_code == 200
        count = await client.get(f"/v1/users/{owner}/favorites/count", headers=auth)
        assert count.status_code == 200
        contains = await client.get(
            f"/v1/users/me/favorites/contains?product_ids={kept},{uuid.uuid4()}", headers=auth)
        assert contains.json() == {"product_ids": [str(kept)]}
        popular = await client.get(f"/v1/products/{kept}/favorites/count", headers=auth)
        assert popular.json() == {"count": 1}
        gone = await client.delete(f"/v1/users/me/favorites/{product}", headers=auth)
        assert gone.status_code == 204
        again = await client.delete(f"/v1/users/me/favorites/{product}", headers=auth)
        assert again.status_code == 204

    await reads_and_a_remove(removed_up)
    assert product_service.hits() == asked_before  # while it is up: never asked

    product_service.stop()
    await reads_and_a_remove(removed_down)
    count = await client.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 1}
    add = await client.put(f"/v1/users/me/favorites/{uuid.uuid4()}", headers=bearer(owner))
    assert_problem(add, 503, "dependency-unavailable")


async def test_internal_product_endpoints_with_an_external_catalog(
    client: httpx.AsyncClient, product_service: FakeProductService
) -> None:
    register = await client.put(f"/internal/v1/products/{uuid.uuid4()}", headers=SERVICE)
    assert_problem(register, 409, "catalog-is-external")

    # A deletion is still how the product service tells us a product is gone: its favorites go.
    owner = uuid.uuid4()
    product = await _favorite(client, product_service, owner)
    deleted = await client.delete(f"/internal/v1/products/{product}", headers=SERVICE)
    assert deleted.status_code == 202
    for _ in range(100):
        got = await client.get(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
        if got.status_code == 404:
            break
        await asyncio.sleep(0.02)
    assert_problem(got, 404, "favorite-not-found")


async def test_the_client_opens_at_start_up_and_closes_at_shutdown(
    sqlite_url: str, tmp_path: Path, product_service: FakeProductService
) -> None:
    app = create_app(make_settings(sqlite_url, tmp_path, product_service_url=product_service.url))
    catalog = app.state.container.http_catalog
    assert catalog is not None
    async for _ in started(app):
        pool = catalog._client
        assert pool is not None
        assert not pool.is_closed
    assert pool.is_closed
    assert catalog._client is None


def test_the_cli_refuses_to_fill_a_local_catalog_nobody_reads(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    product_service: FakeProductService,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAVORITES_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("FAVORITES_JWT_SECRET", "cli-secret-" + "y" * 40)
    monkeypatch.setenv("FAVORITES_PRODUCT_SERVICE_URL", product_service.url)
    with pytest.raises(SystemExit) as exited:
        cli.main(["products", "add", str(uuid.uuid4())])
    assert "product service" in str(exited.value.code)
    assert product_service.requests == []
