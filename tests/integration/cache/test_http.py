"""Through HTTP, with the app built by ``bootstrap`` from Settings: Redis, Redis Cluster, and
which cache each configuration gets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from favorites.adapters.cache.memory import InProcessFavoritesCache
from favorites.adapters.cache.null import NullFavoritesCache
from favorites.adapters.cache.redis_client import RedisClient
from favorites.adapters.cache.setup import build_caches
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.entrypoints.http.app import create_app
from tests.conftest import make_settings, started
from tests.helpers import SERVICE, bearer, new_product
from tests.integration.cache.conftest import SHARED_REDIS_URL
from tests.integration.cache.servers import Cluster


@pytest.fixture(params=["redis", "cluster"])
def redis_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    if request.param == "redis":
        yield {"redis_url": SHARED_REDIS_URL}
    else:
        cluster: Cluster = request.getfixturevalue("cluster")
        yield {"redis_url": cluster.url, "redis_cluster": True}


@pytest.fixture
async def client(postgres_url: str, tmp_path: Path,
                 redis_settings: dict[str, object]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(postgres_url, tmp_path, **redis_settings))
    async for c in started(app):
        c.app = app  # type: ignore[attr-defined]
        yield c


def page_hits() -> float:
    return REGISTRY.get_sample_value(
        "cache_requests_total", {"cache_name": "favorites_page", "result": "hit"}) or 0.0


async def product_ids(client: httpx.AsyncClient, user_id: uuid.UUID) -> list[str]:
    response = await client.get(f"/v1/users/{user_id}/favorites", headers=bearer(user_id))
    assert response.status_code == 200, response.text
    return [item["product_id"] for item in response.json()["items"]]


async def count(client: httpx.AsyncClient, user_id: uuid.UUID) -> int:
    response = await client.get(f"/v1/users/{user_id}/favorites/count", headers=bearer(user_id))
    assert response.status_code == 200, response.text
    return int(response.json()["count"])


async def test_a_write_is_read_back_at_once_with_redis_on(client: httpx.AsyncClient) -> None:
    container = client.app.state.container  # type: ignore[attr-defined]
    assert container.caches.kind == "redis"
    ready = await client.get("/health/ready")
    assert ready.json()["checks"]["cache"] == "ok", ready.text

    user_id = uuid.uuid4()
    headers = bearer(user_id)
    first, second = await new_product(client), await new_product(client)
    assert await product_ids(client, user_id) == []
    assert await count(client, user_id) == 0
    hits = page_hits()
    assert await product_ids(client, user_id) == []  # cached (empty lists are cached too)
    assert page_hits() == hits + 1

    put = await client.put(f"/v1/users/{user_id}/favorites/{first}", headers=headers)
    assert put.status_code == 201
    assert await product_ids(client, user_id) == [str(first)]
    assert await count(client, user_id) == 1
    put = await client.put(f"/v1/users/{user_id}/favorites/{second}", headers=headers)
    assert put.status_code == 201
    assert await product_ids(client, user_id) == [str(second), str(first)]
    assert await count(client, user_id) == 2

    deleted = await client.delete(f"/v1/users/{user_id}/favorites/{second}", headers=headers)
    assert deleted.status_code == 204
    assert await product_ids(client, user_id) == [str(first)]
    assert await count(client, user_id) == 1

    gone = await client.delete(f"/internal/v1/products/{first}", headers=SERVICE)
    assert gone.status_code == 202
    await asyncio.gather(*container._tasks)  # the purge runs after the response
    assert await product_ids(client, user_id) == []
    assert await count(client, user_id) == 0
    again = await client.put(f"/v1/users/{user_id}/favorites/{first}", headers=headers)
    assert again.status_code == 404, "the cached existence of a deleted product was served"

    put = await client.put(f"/v1/users/{user_id}/favorites/{second}", headers=headers)
    assert put.status_code == 201
    assert await product_ids(client, user_id) == [str(second)]
    erased = await client.delete(f"/internal/v1/users/{user_id}", headers=SERVICE)
    assert erased.json() == {"deleted_favorites": 1}
    assert await product_ids(client, user_id) == []
    assert await count(client, user_id) == 0
    assert REGISTRY.get_sample_value("circuit_breaker_state", {"dependency": "redis"}) == 0

    redis = container.caches.gate.client  # the app's keys (prefix "fav") go now, not by TTL
    for pattern in (f"fav:{{u:{user_id}}}*", f"fav:{{p:{first}}}*", f"fav:{{p:{second}}}*"):
        keys = [key async for key in redis.scan_iter(match=pattern)]
        for key in keys:
            await redis.delete(key)


async def test_the_local_catalog_writes_nothing_to_redis(
    postgres_url: str, tmp_path: Path, shared_redis: RedisClient,
) -> None:
    """Adds check the local table in their own statement: registering, favoriting and deleting a
    product leaves no existence entry (nor a version of one) in Redis."""
    app = create_app(make_settings(postgres_url, tmp_path, redis_url=SHARED_REDIS_URL))
    async for client in started(app):
        product, user_id = await new_product(client), uuid.uuid4()
        put = await client.put(f"/v1/users/{user_id}/favorites/{product}",
                               headers=bearer(user_id))
        assert put.status_code == 201, put.text
        assert await product_ids(client, user_id) == [str(product)]
        gone = await client.delete(f"/internal/v1/products/{product}", headers=SERVICE)
        assert gone.status_code == 202
        await asyncio.gather(*app.state.container._tasks)
        assert await product_ids(client, user_id) == []
    assert [key async for key in shared_redis.scan_iter(match=f"*{{p:{product}}}*")] == []


@pytest.mark.parametrize(("database", "workers", "expected"), [
    ("sqlite", 1, InProcessFavoritesCache),
    ("sqlite", 2, NullFavoritesCache),
    ("postgres", 1, NullFavoritesCache),
])
async def test_which_cache_each_configuration_gets_without_redis(
    database: str, workers: int, expected: type, tmp_path: Path,
) -> None:
    url = (f"sqlite:///{tmp_path / 'x.db'}" if database == "sqlite"
           else "postgresql://nobody@127.0.0.1:9/none")  # never connected to
    engine = create_engine(url, PoolSettings(1, 2, 1000))
    try:
        caches = build_caches(redis=None, primary=engine, workers=workers)
        assert isinstance(caches.favorites, expected)
        assert (caches.products is None) == (expected is NullFavoritesCache)
        assert caches.readiness is None
    finally:
        await engine.dispose()
