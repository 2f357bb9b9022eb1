from __future__ import annotations

import uuid

import pytest

from favorites.domain.cursor import CursorCodec
from favorites.domain.models import Principal, PrincipalKind
from favorites.service_layer.favorites import FavoritesService
from favorites.service_layer.products import ProductsService
from tests.unit.fakes import FakeCatalog, FakeClock, FakeDatabase, RecordingCache


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache() -> RecordingCache:
    return RecordingCache()


@pytest.fixture(params=[True, False], ids=["local-catalog", "product-service"])
def service(request: pytest.FixtureRequest, db: FakeDatabase, clock: FakeClock,
            cache: RecordingCache) -> FavoritesService:
    """Each use case with the local catalog (checked by the add itself) and with a product
    service (asked before the add)."""
    return FavoritesService(db, FakeCatalog(db, in_store=request.param), cache,
                            CursorCodec(b"k" * 32), clock, max_per_user=5)


@pytest.fixture
def products(db: FakeDatabase, clock: FakeClock, cache: RecordingCache) -> ProductsService:
    return ProductsService(db, FakeCatalog(db), cache, clock)


def user(user_id: uuid.UUID, *roles: str) -> Principal:
    return Principal(kind=PrincipalKind.USER, subject=str(user_id), user_id=user_id,
                     roles=frozenset(roles or ("user",)), token_id=uuid.uuid4().hex,
                     token_expires_at=2_000_000_000)


def service_client(*scopes: str) -> Principal:
    return Principal(kind=PrincipalKind.SERVICE, subject="service:test", scopes=frozenset(scopes))
