"""An add that races its product's deletion, with an external product service.

The product service answers "exists" to the add; the deletion (the product service telling us the
product is gone) marks the product and purges its favorites; only then does the add's insert
reach the database. The purge never saw that row. Without a check after the commit, the favorite
of a deleted product stayed in the user's list, count and hearts until an instance next started
(each start resumes unfinished purges)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from favorites.adapters.db.tables import favorites, products
from favorites.bootstrap import Container
from favorites.domain.models import Principal, PrincipalKind
from favorites.entrypoints.http.app import create_app
from tests.conftest import make_settings, started
from tests.flagfiles import rollout, write
from tests.helpers import bearer
from tests.integration.catalog.conftest import READ_TIMEOUT
from tests.integration.catalog.fake_product_service import FakeProductService

CATALOG_SERVICE = Principal(PrincipalKind.SERVICE, "catalog", scopes=frozenset({"products:write"}))


@pytest.fixture
async def client(database_url: str, tmp_path: Path, product_service: FakeProductService
                 ) -> AsyncIterator[httpx.AsyncClient]:
    """Bulk changes on (``enable_favorites_v2`` for everyone) for the bulk case."""
    settings = make_settings(database_url, tmp_path, product_service_url=product_service.url,
                             product_service_read_timeout=READ_TIMEOUT,
                             flags_file=write(tmp_path / "flags.json", rollout(100)))
    app = create_app(settings)
    async for c in started(app):
        c.app = app  # type: ignore[attr-defined]
        yield c


def _deleted_right_after_the_check(container: Container, monkeypatch: pytest.MonkeyPatch,
                                   product: uuid.UUID) -> None:
    """The product service answers, then the deletion and its whole purge run, then the add
    goes on to its insert."""
    catalog = container.favorites._catalog
    ask = catalog.existing

    async def existing_then_deleted(product_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        found = await ask(product_ids)
        if product in product_ids:
            await container.products.delete(CATALOG_SERVICE, product)
            await container.products.purge_favorites(product)
        return found

    monkeypatch.setattr(catalog, "existing", existing_then_deleted)


async def _stored(container: Container, owner: uuid.UUID) -> set[str]:
    """The user's favorites in the database itself, past every cache."""
    async with container.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(favorites.c.product_id).where(favorites.c.user_id == owner))
        return {str(product_id) for product_id in rows.scalars()}


async def _listed(client: httpx.AsyncClient, owner: uuid.UUID) -> list[str]:
    page = await client.get("/v1/users/me/favorites", headers=bearer(owner))
    assert page.status_code == 200
    return [item["product_id"] for item in page.json()["items"]]


@pytest.fixture
def race(client: httpx.AsyncClient, product_service: FakeProductService,
         monkeypatch: pytest.MonkeyPatch) -> tuple[Container, uuid.UUID, uuid.UUID, uuid.UUID]:
    """The container, a user, the product deleted in the middle of their add, and one kept."""
    owner, product, kept = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    product_service.known.update({product, kept})
    container: Container = client.app.state.container  # type: ignore[attr-defined]
    _deleted_right_after_the_check(container, monkeypatch, product)
    return container, owner, product, kept


async def test_an_add_that_commits_after_the_purge_is_removed_again(
    client: httpx.AsyncClient, race: tuple[Container, uuid.UUID, uuid.UUID, uuid.UUID],
    caplog: pytest.LogCaptureFixture,
) -> None:
    container, owner, product, kept = race
    caplog.set_level(logging.INFO, logger="favorites.favorites")
    assert (await client.put(f"/v1/users/me/favorites/{kept}", headers=bearer(owner))
            ).status_code == 201

    added = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    # Answered as an add that came just before the deletion: it was made, and the deletion's
    # purge removed it.
    assert added.status_code == 201, added.text
    got = await client.get(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    assert got.status_code == 404
    assert await _listed(client, owner) == [str(kept)]
    count = await client.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 1}
    assert await _stored(container, owner) == {str(kept)}
    purged = [r for r in caplog.records if r.name == "favorites.favorites"]
    assert [(r.getMessage(), getattr(r, "productId", None)) for r in purged] == [
        ("a favorite added as its product was deleted was purged", str(product))]


async def test_a_bulk_add_that_commits_after_the_purge_keeps_only_the_live_products(
    client: httpx.AsyncClient, race: tuple[Container, uuid.UUID, uuid.UUID, uuid.UUID],
) -> None:
    container, owner, product, kept = race
    bulk = await client.post("/v1/users/me/favorites/bulk", headers=bearer(owner),
                             json={"add": [str(product), str(kept)]})
    assert bulk.status_code == 200, bulk.text
    assert await _listed(client, owner) == [str(kept)]
    assert await _stored(container, owner) == {str(kept)}


async def test_a_product_the_service_brought_back_keeps_its_new_favorites(
    client: httpx.AsyncClient, product_service: FakeProductService,
) -> None:
    """Deleted an hour ago, and the product service answers "exists" again: the add is kept,
    as before. Only a deletion stamped after the service's answer is a race."""
    owner, product = uuid.uuid4(), uuid.uuid4()
    product_service.known.add(product)
    container: Container = client.app.state.container  # type: ignore[attr-defined]
    async with container.engine.begin() as conn:
        await conn.execute(sa.insert(products).values(
            product_id=product, deleted_at=datetime.now(UTC) - timedelta(hours=1)))

    added = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    assert added.status_code == 201, added.text
    assert await _listed(client, owner) == [str(product)]
    assert await _stored(container, owner) == {str(product)}
