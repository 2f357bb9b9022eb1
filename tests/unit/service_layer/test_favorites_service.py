from __future__ import annotations

import uuid

import pytest

from favorites.domain.cursor import CursorCodec
from favorites.domain.errors import (
    FavoriteNotFound,
    FavoritesLimitReached,
    Forbidden,
    InvalidCursor,
    ProductNotFound,
)
from favorites.domain.models import AuditAction
from favorites.service_layer import favorites as favorites_module
from favorites.service_layer.favorites import FavoritesService
from favorites.service_layer.products import ProductsService
from tests.unit.fakes import FakeDatabase, RecordingCache
from tests.unit.service_layer.conftest import service_client, user


async def _products(products: ProductsService, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    await products.register_many(ids)
    return ids


async def test_add_is_idempotent_and_audited_once(
    service: FavoritesService, products: ProductsService, db: FakeDatabase, cache: RecordingCache
) -> None:
    owner = uuid.uuid4()
    [product] = await _products(products, 1)
    first, created = await service.add(user(owner), owner, product, "req-1")
    again, created_again = await service.add(user(owner), owner, product, "req-2")
    assert (created, created_again) == (True, False)
    assert again.created_at == first.created_at
    actions = [e.action for e, _ in db.state.audit]
    assert actions == [AuditAction.FAVORITE_ADDED]
    assert db.state.audit[0][0].request_id == "req-1"
    # The repeat invalidates as well: it may be the retry of an add whose reply was lost after
    # its commit, the only chance left to invalidate (tests/integration/test_write_races.py).
    assert cache.invalidated == [owner, owner]


async def test_add_unknown_or_deleted_product_is_404(
    service: FavoritesService, products: ProductsService
) -> None:
    owner = uuid.uuid4()
    with pytest.raises(ProductNotFound):
        await service.add(user(owner), owner, uuid.uuid4())
    [product] = await _products(products, 1)
    await products.delete(service_client("products:write"), product)
    with pytest.raises(ProductNotFound):
        await service.add(user(owner), owner, product)


async def test_limit_per_user_rolls_back_the_extra_favorite(
    service: FavoritesService, products: ProductsService, db: FakeDatabase
) -> None:
    owner = uuid.uuid4()
    ids = await _products(products, 6)
    for product in ids[:5]:
        await service.add(user(owner), owner, product)
    with pytest.raises(FavoritesLimitReached):
        await service.add(user(owner), owner, ids[5])
    assert await service.count(user(owner), owner) == 5
    assert sum(1 for e, _ in db.state.audit if e.action is AuditAction.FAVORITE_ADDED) == 5


async def test_only_the_owner_writes_admin_included(
    service: FavoritesService, products: ProductsService
) -> None:
    owner, other = uuid.uuid4(), uuid.uuid4()
    [product] = await _products(products, 1)
    with pytest.raises(Forbidden):
        await service.add(user(other), owner, product)
    with pytest.raises(Forbidden):
        await service.add(user(other, "admin"), owner, product)
    with pytest.raises(Forbidden):
        await service.remove(user(other, "admin"), owner, product)
    # SPEC §4: admin may read anyone's, never write, its own list included.
    with pytest.raises(Forbidden, match="read-only"):
        await service.add(user(other, "admin"), other, product)
    with pytest.raises(Forbidden, match="read-only"):
        await service.remove(user(other, "admin"), other, product)
    with pytest.raises(Forbidden, match="read-only"):
        await service.bulk(user(other, "admin"), other, [product], [], "r-admin")
    assert await service.count(user(other), other) == 0


async def test_admin_reads_are_audited_owner_reads_are_not(
    service: FavoritesService, products: ProductsService, db: FakeDatabase
) -> None:
    owner, admin = uuid.uuid4(), uuid.uuid4()
    [product] = await _products(products, 1)
    await service.add(user(owner), owner, product)
    await service.list_page(user(owner), owner)
    await service.list_page(user(admin, "admin"), owner, request_id="r-admin")
    await service.count(user(admin, "admin"), owner)
    await service.get(user(admin, "admin"), owner, product)
    viewed = [e for e, _ in db.state.audit if e.action is AuditAction.FAVORITES_VIEWED_BY_ADMIN]
    assert len(viewed) == 3
    assert viewed[0].actor_type == "admin"
    assert viewed[0].subject_user_id == str(owner)
    assert viewed[0].request_id == "r-admin"
    with pytest.raises(Forbidden):
        await service.list_page(user(uuid.uuid4()), owner)


async def test_contains_is_owner_only_and_keeps_request_order(
    service: FavoritesService, products: ProductsService
) -> None:
    owner = uuid.uuid4()
    a, b, c = await _products(products, 3)
    await service.add(user(owner), owner, a)
    await service.add(user(owner), owner, c)
    assert await service.contains(user(owner), owner, [c, b, a, c]) == [c, a]
    with pytest.raises(Forbidden):
        await service.contains(user(uuid.uuid4(), "admin"), owner, [a])


async def test_pages_walk_newest_first_without_gaps(
    service: FavoritesService, products: ProductsService
) -> None:
    owner = uuid.uuid4()
    ids = await _products(products, 5)
    for product in ids:
        await service.add(user(owner), owner, product)
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = await service.list_page(user(owner), owner, limit=2, cursor=cursor)
        seen += [f.product_id for f in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))


async def test_cursor_is_bound_to_its_user_and_tamper_evident(
    service: FavoritesService, products: ProductsService
) -> None:
    owner, other = uuid.uuid4(), uuid.uuid4()
    ids = await _products(products, 3)
    for product in ids:
        await service.add(user(owner), owner, product)
    page = await service.list_page(user(owner), owner, limit=1)
    assert page.next_cursor is not None
    with pytest.raises(InvalidCursor):
        await service.list_page(user(other), other, cursor=page.next_cursor)
    tampered = page.next_cursor[:-2] + ("AA" if page.next_cursor[-2:] != "AA" else "BB")
    with pytest.raises(InvalidCursor):
        await service.list_page(user(owner), owner, cursor=tampered)


async def test_remove_is_idempotent_and_audits_only_real_removals(
    service: FavoritesService, products: ProductsService, db: FakeDatabase
) -> None:
    owner = uuid.uuid4()
    [product] = await _products(products, 1)
    await service.add(user(owner), owner, product)
    assert await service.remove(user(owner), owner, product) is True
    assert await service.remove(user(owner), owner, product) is False
    removed = [e for e, _ in db.state.audit if e.action is AuditAction.FAVORITE_REMOVED]
    assert len(removed) == 1
    with pytest.raises(FavoriteNotFound):
        await service.get(user(owner), owner, product)


async def test_product_counts_need_a_user(service: FavoritesService) -> None:
    with pytest.raises(Forbidden):
        await service.count_for_product(service_client("products:write"), uuid.uuid4())


async def test_a_first_page_cursor_is_signed_once_and_follows_the_page(
    service: FavoritesService, products: ProductsService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reads of an unchanged first page reuse its next cursor; a page that changed gets the
    cursor after the favorite it now ends with, and following it never skips or repeats."""
    signed: list[uuid.UUID] = []
    encode = CursorCodec.encode

    def counting(self: CursorCodec, user_id: uuid.UUID, *args: object) -> str:
        signed.append(user_id)
        return encode(self, user_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(CursorCodec, "encode", counting)
    owner = uuid.uuid4()
    a, b, c, d = await _products(products, 4)
    for product in (a, b, c):
        await service.add(user(owner), owner, product)

    async def walk() -> tuple[str | None, list[uuid.UUID]]:
        page = await service.list_page(user(owner), owner, limit=1)
        first_cursor, seen = page.next_cursor, [f.product_id for f in page.items]
        cursor = first_cursor
        while cursor is not None:
            page = await service.list_page(user(owner), owner, limit=1, cursor=cursor)
            seen += [f.product_id for f in page.items]
            cursor = page.next_cursor
        return first_cursor, seen

    first = await service.list_page(user(owner), owner, limit=1)
    signs = len(signed)
    again = await service.list_page(user(owner), owner, limit=1)
    assert again.next_cursor == first.next_cursor
    assert len(signed) == signs  # the same page: not signed again
    assert await walk() == (first.next_cursor, [c, b, a])

    await service.add(user(owner), owner, d)
    changed, seen = await walk()
    assert changed != first.next_cursor
    assert seen == [d, c, b, a]

    await service.remove(user(owner), owner, d)
    assert await walk() == (first.next_cursor, [c, b, a])  # ends with c again: the same cursor


async def test_built_first_page_cursors_are_bounded(
    service: FavoritesService, products: ProductsService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(favorites_module, "FIRST_PAGE_CURSORS", 2)
    a, b = await _products(products, 2)
    for _ in range(5):
        owner = uuid.uuid4()
        for product in (a, b):
            await service.add(user(owner), owner, product)
        page = await service.list_page(user(owner), owner, limit=1)
        assert page.next_cursor is not None
        assert [f.product_id for f in (await service.list_page(
            user(owner), owner, limit=1, cursor=page.next_cursor)).items] == [a]
        assert len(service._first_cursors) <= 2
