"""Fixtures: one fake product service per session, reset (and running) for every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from favorites.adapters.catalog.breaker import CircuitBreaker
from favorites.adapters.catalog.http import HttpCatalog
from tests.integration.catalog.fake_product_service import FakeProductService, free_port

#: Tight timeouts keep the slow cases quick; the defaults (0.5 s / 1 s) are the same code path.
CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 0.3


@pytest.fixture(scope="session")
def product_service_server() -> Iterator[FakeProductService]:
    server = FakeProductService(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def product_service(product_service_server: FakeProductService) -> Iterator[FakeProductService]:
    server = product_service_server
    if not server.running:
        server.start()
    server.reset()
    yield server
    if not server.running:  # a test stopped it: bring it back for the next one
        server.start()
    server.reset()


@pytest.fixture
async def catalog(product_service: FakeProductService) -> AsyncIterator[HttpCatalog]:
    http = HttpCatalog(
        product_service.url,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        breaker=CircuitBreaker("product_service", failure_threshold=3, reset_timeout=0.5),
    )
    await http.start()
    yield http
    await http.aclose()
