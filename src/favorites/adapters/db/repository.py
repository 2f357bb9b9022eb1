"""The repositories in SQLAlchemy Core: parameterised, one statement per call, no N+1.

Every statement of SQLite, and on PostgreSQL the ones ``driver`` does not send on asyncpg itself
(its hand-written, equally parameterised statements answer exactly what these do).

The statements of the hot paths are built once, at import, with bind parameters: building a
``select()`` per call and deriving its cache key was about a tenth of a database read's CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from favorites.adapters.db.tables import (
    ACTED_ELSEWHERE,
    audit_log,
    favorites,
    products,
    refresh_tokens,
    revoked_tokens,
)
from favorites.domain.models import AddOutcome, AuditEntry, Favorite
from favorites.domain.pages import FirstPage
from favorites.service_layer.ports import RefreshTokenRecord

_F = favorites.c
_A = audit_log.c

_USER: sa.BindParameter[UUID] = sa.bindparam("user_id")
_PRODUCT: sa.BindParameter[UUID] = sa.bindparam("product_id")
_ADVISORY_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("key")))
_GET = sa.select(_F.created_at).where(_F.user_id == _USER, _F.product_id == _PRODUCT)
_DELETE = (sa.delete(favorites).where(_F.user_id == _USER, _F.product_id == _PRODUCT)
           .returning(_F.product_id))
#: Ordered exactly like ix_favorites_user_created (created_at DESC, product_id ASC), so PostgreSQL
#: walks the index and never sorts.
_NEWEST_FIRST = (_F.created_at.desc(), _F.product_id.asc())
_FIRST_PAGE = (sa.select(_F.product_id, _F.created_at).where(_F.user_id == _USER)
               .order_by(*_NEWEST_FIRST).limit(sa.bindparam("limit")))
_AFTER: sa.BindParameter[datetime] = sa.bindparam("after_created_at")
_NEXT_PAGE = (
    sa.select(_F.product_id, _F.created_at)
    .where(_F.user_id == _USER, _F.created_at <= _AFTER,
           sa.or_(_F.created_at < _AFTER,
                  sa.and_(_F.created_at == _AFTER, _F.product_id > sa.bindparam("after_product"))))
    .order_by(*_NEWEST_FIRST).limit(sa.bindparam("limit"))
)
#: The first page rendered by PostgreSQL as ``domain.pages.render_items`` renders it (orjson:
#: canonical UUIDs, UTC with ``Z``), except that every time has its six digits of microseconds:
#: ``first_page_from_database`` drops the ``.000000`` orjson leaves out. Building 51 UUID and
#: datetime objects only to render them again was the largest part of a cache miss's CPU. One
#: fixed ``to_char`` format: choosing the format per row (``extract`` of the microseconds is
#: numeric arithmetic) cost the server 90-110 µs more per query than the fixed one (160), alone.
FIRST_PAGE_JSON_SQL = """
SELECT string_agg(
    '{"product_id":"' || product_id::text || '","created_at":"'
    || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    || '"}', ',' ORDER BY created_at DESC, product_id ASC)
FROM (SELECT product_id, created_at FROM favorites WHERE user_id = :user_id
      ORDER BY created_at DESC, product_id ASC LIMIT :limit) AS page
"""
#: A whole second: orjson writes no fraction. Only a time can hold this (ids are hex digits).
_WHOLE_SECOND, _WHOLE_SECOND_AS_ORJSON = b'.000000Z"', b'Z"'


def first_page_from_database(user_id: UUID, rendered: str | None) -> FirstPage:
    """The page ``FIRST_PAGE_JSON_SQL`` rendered, byte for byte as ``render_items`` would."""
    if not rendered:
        return FirstPage.rendered_as(user_id, b"")
    return FirstPage.rendered_as(
        user_id, rendered.encode().replace(_WHOLE_SECOND, _WHOLE_SECOND_AS_ORJSON))


_FIRST_PAGE_JSON = sa.text(FIRST_PAGE_JSON_SQL).bindparams(
    sa.bindparam("user_id", type_=sa.Uuid()), sa.bindparam("limit", type_=sa.Integer()))
_COUNT_FOR_USER = sa.select(sa.func.count()).select_from(favorites).where(_F.user_id == _USER)
_CONTAINS = sa.select(_F.product_id).where(
    _F.user_id == _USER, _F.product_id.in_(sa.bindparam("product_ids", expanding=True)))
_COUNT_FOR_PRODUCT = (sa.select(sa.func.count()).select_from(favorites)
                      .where(_F.product_id == _PRODUCT))
_INSERT = {
    dialect: insert(favorites)
    .values(user_id=_USER, product_id=_PRODUCT, created_at=sa.bindparam("created_at"))
    .on_conflict_do_nothing(index_elements=["user_id", "product_id"])
    .returning(_F.user_id)
    for dialect, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
#: Several rows in one statement (executemany: SQLAlchemy's "insertmanyvalues"), returning the
#: products actually inserted.
_INSERT_MANY = {dialect: statement.returning(_F.product_id) for dialect, statement in (
    (d, insert(favorites).on_conflict_do_nothing(index_elements=["user_id", "product_id"]))
    for d, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert)))}
_DELETE_MANY = (sa.delete(favorites)
                .where(_F.user_id == _USER,
                       _F.product_id.in_(sa.bindparam("product_ids", expanding=True)))
                .returning(_F.product_id))
_EXISTING_PRODUCTS = sa.select(products.c.product_id).where(
    products.c.product_id.in_(sa.bindparam("product_ids", expanding=True)),
    products.c.deleted_at.is_(None),
)
_DELETED_SINCE = sa.select(products.c.product_id).where(
    products.c.product_id.in_(sa.bindparam("product_ids", expanding=True)),
    products.c.deleted_at >= sa.bindparam("since"),
)
#: PostgreSQL only: SQLite has no row locks (and needs none, see ``existing``).
_EXISTING_PRODUCTS_FOR_SHARE = _EXISTING_PRODUCTS.with_for_update(read=True)
_RECORD_AUDIT = sa.insert(audit_log).values(
    {column: sa.bindparam(column) for column in (
        "occurred_at", "actor_id", "actor_type", "action", "subject_user_id", "product_id",
        "request_id", "outcome")}
)


def advisory_key(user_id: UUID) -> int:
    """The user's transaction-level advisory lock: both halves of the id folded into a signed
    64-bit key (time-ordered ids, UUIDv7, share their first bytes)."""
    raw = user_id.bytes
    return int.from_bytes(bytes(a ^ b for a, b in zip(raw[:8], raw[8:], strict=True)),
                          "big", signed=True)


def _audit_row(entry: AuditEntry, at: datetime) -> dict[str, object]:
    return {"occurred_at": at, "actor_id": entry.actor_id, "actor_type": entry.actor_type,
            "action": entry.action.value, "subject_user_id": entry.subject_user_id,
            "product_id": entry.product_id, "request_id": entry.request_id,
            "outcome": entry.outcome}


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Executes(Protocol):
    """What the repositories need of a connection: SQLAlchemy's, or ``driver.InTransaction``."""

    async def execute(self, statement: Any, parameters: Any = None) -> Any: ...


class _Repo:
    def __init__(self, conn: Executes, dialect: str):
        self._conn = conn
        self._pg = dialect == "postgresql"

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self._pg else sqlite.insert(table)


class SqlFavoritesRepository(_Repo):
    async def lock_user(self, user_id: UUID) -> None:
        if self._pg:  # SQLite writers are already serialised by BEGIN IMMEDIATE
            await self._conn.execute(_ADVISORY_LOCK, {"key": advisory_key(user_id)})

    async def insert(self, favorite: Favorite) -> bool:
        result = await self._conn.execute(
            _INSERT["postgresql" if self._pg else "sqlite"],
            {"user_id": favorite.user_id, "product_id": favorite.product_id,
             "created_at": favorite.created_at},
        )
        return result.first() is not None

    async def insert_many(self, user_id: UUID, product_ids: Sequence[UUID],
                          at: datetime) -> set[UUID]:
        if not product_ids:
            return set()
        result = await self._conn.execute(
            _INSERT_MANY["postgresql" if self._pg else "sqlite"],
            [{"user_id": user_id, "product_id": pid, "created_at": at} for pid in product_ids],
        )
        return {row[0] for row in result.all()}

    async def delete_many(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]:
        if not product_ids:
            return set()
        result = await self._conn.execute(
            _DELETE_MANY, {"user_id": user_id, "product_ids": list(product_ids)})
        return {row[0] for row in result.all()}

    async def get(self, user_id: UUID, product_id: UUID) -> Favorite | None:
        params = {"user_id": user_id, "product_id": product_id}
        row = (await self._conn.execute(_GET, params)).first()
        return None if row is None else Favorite(user_id, product_id, _utc(row[0]))

    async def delete(self, user_id: UUID, product_id: UUID) -> bool:
        result = await self._conn.execute(_DELETE, {"user_id": user_id, "product_id": product_id})
        return result.first() is not None

    async def add(self, favorite: Favorite, limit: int, audit: AuditEntry, *,
                  require_product: bool = False,
                  token_id: str | None = None) -> tuple[AddOutcome, Favorite]:
        # The steps of favorites_add() (migration 0007), one statement each. Served on SQLite
        # (PostgreSQL runs the function itself, see ``driver``), whose writing unit of work
        # holds the database's write lock from its start: the product check needs no FOR SHARE.
        if require_product:
            found = await self._conn.execute(
                _EXISTING_PRODUCTS, {"product_ids": [favorite.product_id]})
            if found.first() is None:
                return AddOutcome.NO_PRODUCT, favorite
        await self.lock_user(favorite.user_id)
        if token_id is not None and await _is_revoked(self._conn, token_id):
            return AddOutcome.REVOKED, favorite
        existing = await self.get(favorite.user_id, favorite.product_id)
        if existing is not None:
            return AddOutcome.EXISTS, existing
        if await self.count_for_user(favorite.user_id) >= limit:
            return AddOutcome.FULL, favorite
        await self.insert(favorite)
        await self._conn.execute(_RECORD_AUDIT, _audit_row(audit, favorite.created_at))
        return AddOutcome.CREATED, favorite

    async def remove(self, user_id: UUID, product_id: UUID, audit: AuditEntry,
                     at: datetime) -> bool:
        removed = await self.delete(user_id, product_id)
        if removed:
            await self._conn.execute(_RECORD_AUDIT, _audit_row(audit, at))
        return removed

    async def page(
        self, user_id: UUID, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Favorite]:
        if after is None:
            result = await self._conn.execute(_FIRST_PAGE, {"user_id": user_id, "limit": limit})
        else:
            result = await self._conn.execute(_NEXT_PAGE, {
                "user_id": user_id, "limit": limit, "after_created_at": after[0],
                "after_product": after[1]})
        rows = result.all()
        return [Favorite(user_id, row[0], _utc(row[1])) for row in rows]

    async def first_page(self, user_id: UUID, limit: int) -> FirstPage:
        if not self._pg:
            return FirstPage.of(user_id, await self.page(user_id, limit, None))
        result = await self._conn.execute(_FIRST_PAGE_JSON, {"user_id": user_id, "limit": limit})
        return first_page_from_database(user_id, result.scalar_one())

    async def count_for_user(self, user_id: UUID) -> int:
        return int((await self._conn.execute(_COUNT_FOR_USER, {"user_id": user_id})).scalar_one())

    async def contains(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]:
        result = await self._conn.execute(
            _CONTAINS, {"user_id": user_id, "product_ids": list(product_ids)})
        return set(result.scalars().all())

    async def count_for_product(self, product_id: UUID) -> int:
        result = await self._conn.execute(_COUNT_FOR_PRODUCT, {"product_id": product_id})
        return int(result.scalar_one())

    async def delete_all_for_user(self, user_id: UUID) -> int:
        result = await self._conn.execute(sa.delete(favorites).where(_F.user_id == user_id))
        return int(result.rowcount)

    async def delete_batch_for_product(self, product_id: UUID, batch_size: int) -> list[UUID]:
        """Up to ``batch_size`` favorites of a product marked deleted, deleted; none once it is
        registered again (a purge still running then stops, and spares the favorites added since,
        of a product that exists)."""
        still_deleted = sa.exists().where(products.c.product_id == product_id,
                                          products.c.deleted_at.is_not(None))
        batch = (
            sa.select(_F.user_id, _F.product_id)
            .where(_F.product_id == product_id, still_deleted).limit(batch_size)
        )
        stmt = (
            sa.delete(favorites)
            .where(sa.tuple_(_F.user_id, _F.product_id).in_(batch))
            .returning(_F.user_id)
        )
        return list((await self._conn.execute(stmt)).scalars().all())


class SqlProductsRepository(_Repo):
    async def upsert(self, product_id: UUID) -> bool:
        current = (
            await self._conn.execute(
                sa.select(products.c.deleted_at).where(products.c.product_id == product_id)
            )
        ).first()
        if current is not None and current[0] is None:
            return False
        stmt = self._insert(products).values(product_id=product_id, deleted_at=None)
        stmt = stmt.on_conflict_do_update(
            index_elements=["product_id"], set_={"deleted_at": None}
        )
        await self._conn.execute(stmt)
        return True

    async def deleted_with_favorites(self, limit: int) -> list[UUID]:
        named = sa.exists().where(_F.product_id == products.c.product_id)  # ix_favorites_product_id
        stmt = (sa.select(products.c.product_id)
                .where(products.c.deleted_at.is_not(None), named).limit(limit))
        return list((await self._conn.execute(stmt)).scalars().all())

    async def mark_deleted(self, product_id: UUID, at: datetime) -> bool:
        stmt = self._insert(products).values(product_id=product_id, deleted_at=at)
        stmt = stmt.on_conflict_do_update(
            index_elements=["product_id"],
            set_={"deleted_at": sa.func.coalesce(products.c.deleted_at, at)},
        )
        result = await self._conn.execute(stmt)
        return bool(result.rowcount)

    async def existing(self, product_ids: Sequence[UUID], *,
                       for_share: bool = False) -> set[UUID]:
        # SQLite has no row locks (and needs none: a writing unit of work holds the database's
        # write lock from its start), so FOR SHARE is PostgreSQL's only.
        statement = _EXISTING_PRODUCTS_FOR_SHARE if for_share and self._pg else _EXISTING_PRODUCTS
        result = await self._conn.execute(statement, {"product_ids": list(product_ids)})
        return set(result.scalars().all())

    async def deleted_since(self, product_ids: Sequence[UUID], since: datetime) -> set[UUID]:
        result = await self._conn.execute(_DELETED_SINCE,
                                          {"product_ids": list(product_ids), "since": since})
        return set(result.scalars().all())


class SqlAuditRepository(_Repo):
    async def record(self, entry: AuditEntry, at: datetime) -> None:
        await self._conn.execute(_RECORD_AUDIT, _audit_row(entry, at))

    async def record_many(self, entries: Sequence[AuditEntry], at: datetime) -> None:
        if entries:
            await self._conn.execute(_RECORD_AUDIT, [_audit_row(e, at) for e in entries])

    async def pseudonymise_user(self, user_id: str, pseudonym: str) -> int:
        """Rows changed. Two statements, each on an index: the rows about the user, their own
        actions among them, through the subject's; then the rows in which they acted on someone
        else (or nobody) through migration 0008's partial index, which only holds those."""
        subject = await self._conn.execute(
            sa.update(audit_log)
            .where(audit_log.c.subject_user_id == user_id)
            .values(subject_user_id=pseudonym,
                    actor_id=sa.case((audit_log.c.actor_id == user_id, pseudonym),
                                     else_=audit_log.c.actor_id))
        )
        actor = await self._conn.execute(
            sa.update(audit_log).where(audit_log.c.actor_id == user_id, ACTED_ELSEWHERE)
            .values(actor_id=pseudonym)
        )
        return int(subject.rowcount) + int(actor.rowcount)


async def _is_revoked(conn: Any, jti: str) -> bool:
    found = await conn.execute(sa.select(sa.literal(1)).where(revoked_tokens.c.jti == jti))
    return found.first() is not None


class SqlRefreshTokenRepository(_Repo):
    async def lock_family(self, family_id: UUID) -> None:
        if self._pg:  # SQLite writers are already serialised by BEGIN IMMEDIATE
            await self._conn.execute(_ADVISORY_LOCK, {"key": advisory_key(family_id)})

    async def insert(self, record: RefreshTokenRecord) -> None:
        await self._conn.execute(
            sa.insert(refresh_tokens).values(
                token_id=record.token_id,
                family_id=record.family_id,
                user_id=record.user_id,
                roles=",".join(record.roles),
                token_hash=record.token_hash,
                issued_at=record.issued_at,
                expires_at=record.expires_at,
                access_jti=record.access_jti,
                access_expires_at=record.access_expires_at,
            )
        )

    async def get_by_hash(self, token_hash: str) -> RefreshTokenRecord | None:
        c = refresh_tokens.c
        row = (
            await self._conn.execute(
                sa.select(c.token_id, c.family_id, c.user_id, c.roles, c.token_hash, c.issued_at,
                          c.expires_at, c.used_at, c.revoked_at).where(c.token_hash == token_hash)
            )
        ).first()
        if row is None:
            return None
        return RefreshTokenRecord(
            token_id=row.token_id,
            family_id=row.family_id,
            user_id=row.user_id,
            roles=tuple(row.roles.split(",")),
            token_hash=row.token_hash,
            issued_at=_utc(row.issued_at),
            expires_at=_utc(row.expires_at),
            used_at=None if row.used_at is None else _utc(row.used_at),
            revoked_at=None if row.revoked_at is None else _utc(row.revoked_at),
        )

    async def mark_used(self, token_id: UUID, at: datetime) -> bool:
        c = refresh_tokens.c
        result = await self._conn.execute(
            sa.update(refresh_tokens)
            .where(c.token_id == token_id, c.used_at.is_(None), c.revoked_at.is_(None))
            .values(used_at=at)
        )
        return bool(result.rowcount)

    async def revoke_family(self, family_id: UUID, at: datetime) -> int:
        c = refresh_tokens.c
        result = await self._conn.execute(
            sa.update(refresh_tokens)
            .where(c.family_id == family_id, c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return int(result.rowcount)

    async def live_access_tokens(self, family_id: UUID, expiring_after: datetime
                                 ) -> list[tuple[str, datetime]]:
        return await self._live_access_tokens(refresh_tokens.c.family_id == family_id,
                                              expiring_after)

    async def live_access_tokens_of_user(self, user_id: UUID, expiring_after: datetime
                                         ) -> list[tuple[str, datetime]]:
        return await self._live_access_tokens(refresh_tokens.c.user_id == user_id,
                                              expiring_after)

    async def _live_access_tokens(self, whose: sa.ColumnElement[bool], expiring_after: datetime
                                  ) -> list[tuple[str, datetime]]:
        c = refresh_tokens.c
        rows = await self._conn.execute(
            sa.select(c.access_jti, c.access_expires_at)
            .where(whose, c.access_jti.is_not(None), c.access_expires_at > expiring_after)
        )
        return [(row.access_jti, _utc(row.access_expires_at)) for row in rows]

    async def delete_for_user(self, user_id: UUID) -> int:
        result = await self._conn.execute(
            sa.delete(refresh_tokens).where(refresh_tokens.c.user_id == user_id)
        )
        return int(result.rowcount)


class SqlRevokedTokenRepository(_Repo):
    async def add(self, jti: str, expires_at: datetime, at: datetime) -> None:
        """On PostgreSQL ``revoked_at`` is the database's clock, not ``at``: every instance's sync
        reads its window in that one clock, so an instance whose clock is behind cannot stamp a
        revocation the others' windows have already passed (SQLite: one host, one clock)."""
        revoked_at: datetime | sa.ColumnElement[datetime] = (
            sa.func.clock_timestamp() if self._pg else at)
        stmt = self._insert(revoked_tokens).values(jti=jti, expires_at=expires_at,
                                                   revoked_at=revoked_at)
        await self._conn.execute(stmt.on_conflict_do_nothing(index_elements=["jti"]))

    async def is_revoked(self, jti: str) -> bool:
        return await _is_revoked(self._conn, jti)

    async def active_since(self, since: datetime, now: datetime
                           ) -> list[tuple[str, datetime, datetime]]:
        c = revoked_tokens.c
        rows = await self._conn.execute(
            sa.select(c.jti, c.expires_at, c.revoked_at)
            .where(c.revoked_at >= since, c.expires_at > now)
        )
        return [(row[0], _utc(row[1]), _utc(row[2])) for row in rows]
