"""The same contract for every backend: SQLite (embedded default) and the real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from favorites.adapters.db.driver import DriverFavoritesRepository
from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.adapters.db.repository import SqlFavoritesRepository
from favorites.adapters.db.tables import audit_log
from favorites.adapters.db.uow import SqlUnitOfWorkFactory
from favorites.domain.models import AddOutcome, AuditAction, AuditEntry, Favorite
from favorites.domain.pages import FirstPage
from favorites.service_layer.ports import RefreshTokenRecord

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
async def uow(database_url: str) -> AsyncIterator[SqlUnitOfWorkFactory]:
    engine = create_engine(database_url, PoolSettings(2, 10, 5000))
    yield SqlUnitOfWorkFactory(engine)
    await engine.dispose()


async def _add(uow: SqlUnitOfWorkFactory, *favorites: Favorite) -> None:
    async with uow() as work:
        for favorite in favorites:
            await work.favorites.insert(favorite)
        await work.commit()


async def test_insert_is_unique_and_get_returns_utc(uow: SqlUnitOfWorkFactory) -> None:
    fav = Favorite(uuid.uuid4(), uuid.uuid4(), T0 + timedelta(microseconds=7))
    async with uow() as work:
        assert await work.favorites.insert(fav) is True
        assert await work.favorites.insert(fav) is False
        await work.commit()
    async with uow(readonly=True) as work:
        got = await work.favorites.get(fav.user_id, fav.product_id)
    assert got == fav
    assert got is not None
    assert got.created_at.tzinfo is not None


async def test_insert_many_and_delete_many_report_only_what_changed(
        uow: SqlUnitOfWorkFactory) -> None:
    user, held, new, absent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with uow() as work:
        assert await work.favorites.insert(Favorite(user, held, T0)) is True
        assert await work.favorites.insert_many(user, [held, new], T0 + timedelta(seconds=1)) == {
            new}
        assert await work.favorites.insert_many(user, [], T0) == set()
        assert await work.favorites.delete_many(user, [held, absent]) == {held}
        assert await work.favorites.delete_many(user, []) == set()
        await work.commit()
    async with uow(readonly=True) as work:
        assert await work.favorites.page(user, 10, None) == [
            Favorite(user, new, T0 + timedelta(seconds=1))]


async def test_uncommitted_work_is_rolled_back(uow: SqlUnitOfWorkFactory) -> None:
    fav = Favorite(uuid.uuid4(), uuid.uuid4(), T0)
    async with uow() as work:
        await work.favorites.insert(fav)
    async with uow(readonly=True) as work:
        assert await work.favorites.get(fav.user_id, fav.product_id) is None


async def test_page_orders_newest_first_with_product_tiebreak(uow: SqlUnitOfWorkFactory) -> None:
    owner = uuid.uuid4()
    same_time = sorted(uuid.uuid4() for _ in range(3))
    older, newer = uuid.uuid4(), uuid.uuid4()
    await _add(uow, Favorite(owner, older, T0 - timedelta(seconds=1)),
               *[Favorite(owner, p, T0) for p in same_time],
               Favorite(owner, newer, T0 + timedelta(seconds=1)),
               Favorite(uuid.uuid4(), uuid.uuid4(), T0))  # someone else's
    async with uow(readonly=True) as work:
        full = await work.favorites.page(owner, 10, None)
        assert [f.product_id for f in full] == [newer, *same_time, older]
        first_two = await work.favorites.page(owner, 2, None)
        last = first_two[-1]
        rest = await work.favorites.page(owner, 10, (last.created_at, last.product_id))
    assert [f.product_id for f in first_two + rest] == [f.product_id for f in full]


async def test_first_page_is_rendered_exactly_like_the_page_objects(
    uow: SqlUnitOfWorkFactory,
) -> None:
    """On PostgreSQL the database renders the first page's JSON: byte for byte what orjson makes
    of the objects, for times with and without microseconds (whole seconds, trailing zeros),
    before 1970, and ties; on the driver and through SQLAlchemy alike."""
    owner = uuid.uuid4()
    ties = sorted(uuid.uuid4() for _ in range(2))
    times = [T0 + timedelta(microseconds=1), T0, T0 - timedelta(microseconds=999_999),
             datetime(1969, 12, 31, 23, 59, 59, 5, UTC), datetime(1969, 12, 31, 23, 59, 59, 0, UTC),
             datetime(2026, 1, 2, 3, 4, 5, 120000, UTC), datetime(2026, 1, 2, 3, 4, 6, 100000, UTC),
             datetime(2026, 1, 2, 3, 4, 7, 10, UTC)]
    await _add(uow, *[Favorite(owner, uuid.uuid4(), at) for at in times],
               *[Favorite(owner, p, T0 + timedelta(days=1)) for p in ties])
    async with uow(readonly=True) as work:
        for limit in (1, 3, 7, 51):
            objects = await work.favorites.page(owner, limit, None)
            expected = FirstPage.of(owner, objects).payload
            first = await work.favorites.first_page(owner, limit)
            assert first.payload == expected
            assert first.favorites(limit) == objects
            if isinstance(work.favorites, DriverFavoritesRepository):  # PostgreSQL
                through_sqlalchemy = await SqlFavoritesRepository.first_page(
                    work.favorites, owner, limit)
                assert through_sqlalchemy.payload == expected
        empty = await work.favorites.first_page(uuid.uuid4(), 51)
    assert len(empty) == 0
    assert empty.rendered(51) == b""


async def test_counts_and_contains(uow: SqlUnitOfWorkFactory) -> None:
    owner, product = uuid.uuid4(), uuid.uuid4()
    others = [uuid.uuid4() for _ in range(3)]
    await _add(uow, Favorite(owner, product, T0),
               *[Favorite(u, product, T0) for u in others],
               Favorite(owner, uuid.uuid4(), T0))
    async with uow(readonly=True) as work:
        assert await work.favorites.count_for_user(owner) == 2
        assert await work.favorites.count_for_product(product) == 4
        assert await work.favorites.contains(owner, [product, uuid.uuid4()]) == {product}


async def test_delete_all_and_batches(uow: SqlUnitOfWorkFactory) -> None:
    owner, product = uuid.uuid4(), uuid.uuid4()
    fans = [uuid.uuid4() for _ in range(5)]
    await _add(uow, *[Favorite(u, product, T0) for u in fans],
               *[Favorite(owner, uuid.uuid4(), T0) for _ in range(3)])
    async with uow() as work:
        # Only the favorites of a product marked deleted: none while it is live.
        assert await work.favorites.delete_batch_for_product(product, 3) == []
        await work.products.mark_deleted(product, T0)
        first = await work.favorites.delete_batch_for_product(product, 3)
        second = await work.favorites.delete_batch_for_product(product, 3)
        assert await work.favorites.delete_all_for_user(owner) == 3
        assert await work.favorites.delete(owner, uuid.uuid4()) is False
        await work.commit()
    assert len(first) == 3
    assert len(second) == 2
    assert sorted(first + second) == sorted(fans)


async def test_products_register_delete_revive(uow: SqlUnitOfWorkFactory) -> None:
    product = uuid.uuid4()
    async with uow() as work:
        assert await work.products.upsert(product) is True
        assert await work.products.upsert(product) is False
        assert await work.products.existing([product, uuid.uuid4()]) == {product}
        await work.products.mark_deleted(product, T0)
        assert await work.products.existing([product]) == set()
        assert await work.products.upsert(product) is True
        await work.commit()


async def test_refresh_tokens_spend_once(uow: SqlUnitOfWorkFactory) -> None:
    record = RefreshTokenRecord(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), ("user",),
                                uuid.uuid4().hex + uuid.uuid4().hex, T0, T0 + timedelta(days=1))
    async with uow() as work:
        await work.refresh_tokens.insert(record)
        got = await work.refresh_tokens.get_by_hash(record.token_hash)
        assert got == record
        assert await work.refresh_tokens.mark_used(record.token_id, T0) is True
        assert await work.refresh_tokens.mark_used(record.token_id, T0) is False
        assert await work.refresh_tokens.revoke_family(record.family_id, T0) == 1
        assert await work.refresh_tokens.delete_for_user(record.user_id) == 1
        await work.commit()


async def test_revoked_tokens_window(uow: SqlUnitOfWorkFactory) -> None:
    jti = uuid.uuid4().hex
    now = datetime.now(UTC)
    async with uow() as work:
        await work.revoked_tokens.add(jti, now + timedelta(hours=1), now)
        await work.revoked_tokens.add(jti, now + timedelta(hours=1), now)  # idempotent
        await work.commit()
    async with uow(readonly=True) as work:
        active = await work.revoked_tokens.active_since(now - timedelta(seconds=1), now)
        expired = await work.revoked_tokens.active_since(now - timedelta(seconds=1),
                                                         now + timedelta(hours=2))
    assert jti in {j for j, _, _ in active}
    assert jti not in {j for j, _, _ in expired}


async def test_audit_pseudonymisation(uow: SqlUnitOfWorkFactory) -> None:
    """Every row naming the user, as subject or as actor: their own actions, an admin's reads
    of their list, their reads (as an admin) of someone else's, an action on nobody."""
    owner, admin, other = (str(uuid.uuid4()) for _ in range(3))
    request = uuid.uuid4().hex
    rows_in = [(owner, owner, "favorite.added"), (admin, owner, "favorites.viewed_by_admin"),
               (owner, other, "favorites.viewed_by_admin"), (owner, None, "product.deleted"),
               (other, other, "favorite.added")]
    async with uow() as work:
        for actor, subject, action in rows_in:
            await work.audit.record(AuditEntry(AuditAction(action), actor, "user", subject,
                                               uuid.uuid4(), request), T0)
        assert await work.audit.pseudonymise_user(owner, "erased:abc") == 4  # rows changed
        await work.commit()
    async with uow(readonly=True) as work:
        conn = work._conn
        assert conn is not None
        rows = (await conn.sqlalchemy().execute(
            sa.select(audit_log.c.actor_id, audit_log.c.subject_user_id)
            .where(audit_log.c.request_id == request).order_by(audit_log.c.id)
        )).all()
    assert [tuple(row) for row in rows] == [
        ("erased:abc", "erased:abc"), (admin, "erased:abc"), ("erased:abc", other),
        ("erased:abc", None), (other, other)]


async def _favorites_of(uow: SqlUnitOfWorkFactory, user: uuid.UUID) -> set[uuid.UUID]:
    async with uow(readonly=True) as work:
        return {f.product_id for f in await work.favorites.page(user, 100, None)}


async def test_a_unit_of_work_is_all_or_nothing_whichever_path_its_statements_take(
    uow: SqlUnitOfWorkFactory,
) -> None:
    """On PostgreSQL single adds, removes and audit rows go on the driver and bulk changes through
    SQLAlchemy Core (nested in the driver's transaction): one commit keeps both, one failure
    loses both, and the connection goes back to the pool clean (the next unit of work sees no
    leftover transaction)."""
    user, kept, one, many = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), [uuid.uuid4() for _ in "ab"]
    await _add(uow, Favorite(user, kept, T0))

    async def change_then_fail() -> None:
        async with uow(user_id=user) as work:
            await work.favorites.lock_user(user)
            assert await work.favorites.insert(Favorite(user, one, T0))
            assert await work.favorites.insert_many(user, many, T0) == set(many)
            assert await work.favorites.delete(user, kept)
            await work.audit.record(AuditEntry(AuditAction.FAVORITE_ADDED, str(user), "user",
                                               str(user), one, "req-rolled-back"), T0)
            assert await work.favorites.count_for_user(user) == 3
            raise RuntimeError("after both")

    with pytest.raises(RuntimeError, match="after both"):
        await change_then_fail()
    assert await _favorites_of(uow, user) == {kept}
    async with uow(user_id=user) as work:
        await work.favorites.lock_user(user)
        assert await work.favorites.insert(Favorite(user, one, T0))
        assert await work.favorites.insert_many(user, many, T0) == set(many)
        assert await work.favorites.delete_many(user, [kept]) == {kept}
        await work.audit.record(AuditEntry(AuditAction.FAVORITE_ADDED, str(user), "user",
                                           str(user), one, "req-committed"), T0)
        await work.commit()
    assert await _favorites_of(uow, user) == {one, *many}
    async with uow(readonly=True) as work:
        rows = (await work.audit._conn.execute(
            sa.select(audit_log.c.request_id).where(audit_log.c.subject_user_id == str(user))
        )).scalars().all()
    assert rows == ["req-committed"]


async def _audit_rows(uow: SqlUnitOfWorkFactory,
                      user: uuid.UUID) -> list[tuple[str, uuid.UUID | None, str | None, datetime]]:
    async with uow(readonly=True) as work:
        rows = (await work.audit._conn.execute(
            sa.select(audit_log.c.action, audit_log.c.product_id, audit_log.c.request_id,
                      audit_log.c.occurred_at)
            .where(audit_log.c.subject_user_id == str(user)).order_by(audit_log.c.id)
        )).all()
    return [(action, product, request, at.replace(tzinfo=UTC) if at.tzinfo is None else at)
            for action, product, request, at in rows]


async def test_add_is_idempotent_capped_and_audited_with_the_row(
    uow: SqlUnitOfWorkFactory,
) -> None:
    user, first, second, third = (uuid.uuid4() for _ in range(4))

    def entry(product: uuid.UUID, request: str) -> AuditEntry:
        return AuditEntry(AuditAction.FAVORITE_ADDED, str(user), "user", str(user), product,
                          request)

    async def add(product: uuid.UUID, at: datetime, request: str) -> tuple[AddOutcome, Favorite]:
        async with uow(user_id=user) as work:
            result = await work.favorites.add(Favorite(user, product, at), 2,
                                              entry(product, request))
            await work.commit()
        return result

    later = T0 + timedelta(seconds=1)
    assert await add(first, T0, "r1") == (AddOutcome.CREATED, Favorite(user, first, T0))
    assert await add(first, later, "r2") == (AddOutcome.EXISTS, Favorite(user, first, T0))
    assert await add(second, later, "r3") == (AddOutcome.CREATED, Favorite(user, second, later))
    assert await add(third, later, "r4") == (AddOutcome.FULL, Favorite(user, third, later))
    assert await _favorites_of(uow, user) == {first, second}
    assert await _audit_rows(uow, user) == [("favorite.added", first, "r1", T0),
                                            ("favorite.added", second, "r3", later)]


async def test_add_that_requires_the_product_refuses_unknown_and_deleted_ones(
    uow: SqlUnitOfWorkFactory,
) -> None:
    """The local catalog checked in the add itself: nothing is written for a product that is
    not in the table or was deleted, and the check comes before "already held"."""
    user, known, unknown, deleted = (uuid.uuid4() for _ in range(4))
    async with uow() as work:
        for product in (known, deleted):
            await work.products.upsert(product)
        await work.commit()

    async def add(product: uuid.UUID, request: str) -> AddOutcome:
        async with uow(user_id=user) as work:
            outcome, _ = await work.favorites.add(
                Favorite(user, product, T0), 10,
                AuditEntry(AuditAction.FAVORITE_ADDED, str(user), "user", str(user), product,
                           request), require_product=True)
            await work.commit()
        return outcome

    assert await add(known, "r1") is AddOutcome.CREATED
    assert await add(deleted, "r2") is AddOutcome.CREATED
    async with uow() as work:
        await work.products.mark_deleted(deleted, T0)
        await work.commit()
    assert await add(unknown, "r3") is AddOutcome.NO_PRODUCT
    assert await add(deleted, "r4") is AddOutcome.NO_PRODUCT  # held, but deleted since
    assert await add(known, "r5") is AddOutcome.EXISTS
    assert await _favorites_of(uow, user) == {known, deleted}
    assert await _audit_rows(uow, user) == [("favorite.added", known, "r1", T0),
                                            ("favorite.added", deleted, "r2", T0)]


async def test_remove_deletes_and_audits_only_what_was_there(uow: SqlUnitOfWorkFactory) -> None:
    user, held, absent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await _add(uow, Favorite(user, held, T0))
    removed_at = T0 + timedelta(minutes=1)
    outcomes = []
    for product, request in ((held, "r1"), (held, "r2"), (absent, "r3")):
        async with uow(user_id=user) as work:
            outcomes.append(await work.favorites.remove(
                user, product, AuditEntry(AuditAction.FAVORITE_REMOVED, str(user), "user",
                                          str(user), product, request), removed_at))
            await work.commit()
    assert outcomes == [True, False, False]
    assert await _favorites_of(uow, user) == set()
    assert await _audit_rows(uow, user) == [("favorite.removed", held, "r1", removed_at)]


async def test_revocations_are_stamped_with_the_database_clock_on_postgresql(
    uow: SqlUnitOfWorkFactory,
) -> None:
    """An instance whose clock is 10 minutes behind stamps a revocation the other instances'
    windows (newest stamp seen minus the overlap) would have passed: on PostgreSQL the stamp is
    the database's clock, one clock for every instance."""
    jti, skewed = uuid.uuid4().hex, datetime.now(UTC) - timedelta(minutes=10)
    async with uow() as work:
        await work.revoked_tokens.add(jti, datetime.now(UTC) + timedelta(hours=1), skewed)
        await work.commit()
    async with uow(readonly=True) as work:
        rows = await work.revoked_tokens.active_since(skewed - timedelta(minutes=1),
                                                      datetime.now(UTC))
    [(_, _, stamped)] = [row for row in rows if row[0] == jti]
    if uow.primary.dialect.name == "postgresql":
        assert abs(stamped - datetime.now(UTC)) < timedelta(seconds=30)
    else:  # one host: the clock of the process that wrote it
        assert stamped == skewed
