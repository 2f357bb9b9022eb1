"""All SQL lives here. Parameterised SQLAlchemy Core only, one statement per call, no N+1."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from favorites.adapters.db.tables import (
    audit_log,
    favorites,
    products,
    refresh_tokens,
    revoked_tokens,
)
from favorites.domain.models import AuditEntry, Favorite
from favorites.service_layer.ports import RefreshTokenRecord

_F = favorites.c


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _Repo:
    def __init__(self, conn: AsyncConnection, dialect: str):
        self._conn = conn
        self._pg = dialect == "postgresql"

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self._pg else sqlite.insert(table)


class SqlFavoritesRepository(_Repo):
    async def lock_user(self, user_id: UUID) -> None:
        if self._pg:  # SQLite writers are already serialised by BEGIN IMMEDIATE
            # Both halves folded: time-ordered ids (UUIDv7) share their first bytes.
            raw = user_id.bytes
            key = int.from_bytes(bytes(a ^ b for a, b in zip(raw[:8], raw[8:], strict=True)),
                                 "big", signed=True)
            await self._conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))

    async def insert(self, favorite: Favorite) -> bool:
        stmt = (
            self._insert(favorites)
            .values(user_id=favorite.user_id, product_id=favorite.product_id,
                    created_at=favorite.created_at)
            .on_conflict_do_nothing(index_elements=["user_id", "product_id"])
            .returning(_F.user_id)
        )
        return (await self._conn.execute(stmt)).first() is not None

    async def get(self, user_id: UUID, product_id: UUID) -> Favorite | None:
        row = (
            await self._conn.execute(
                sa.select(_F.created_at).where(_F.user_id == user_id, _F.product_id == product_id)
            )
        ).first()
        return None if row is None else Favorite(user_id, product_id, _utc(row[0]))

    async def delete(self, user_id: UUID, product_id: UUID) -> bool:
        result = await self._conn.execute(
            sa.delete(favorites)
            .where(_F.user_id == user_id, _F.product_id == product_id)
            .returning(_F.product_id)
        )
        return result.first() is not None

    async def page(
        self, user_id: UUID, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Favorite]:
        # Order matches ix_favorites_user_created exactly (created_at DESC, product_id ASC), so
        # PostgreSQL walks the index and never sorts.
        stmt = sa.select(_F.product_id, _F.created_at).where(_F.user_id == user_id)
        if after is not None:
            at, product = after
            stmt = stmt.where(
                _F.created_at <= at,
                sa.or_(_F.created_at < at, sa.and_(_F.created_at == at, _F.product_id > product)),
            )
        stmt = stmt.order_by(_F.created_at.desc(), _F.product_id.asc()).limit(limit)
        rows = (await self._conn.execute(stmt)).all()
        return [Favorite(user_id, row[0], _utc(row[1])) for row in rows]

    async def count_for_user(self, user_id: UUID) -> int:
        stmt = sa.select(sa.func.count()).select_from(favorites).where(_F.user_id == user_id)
        return int((await self._conn.execute(stmt)).scalar_one())

    async def contains(self, user_id: UUID, product_ids: Sequence[UUID]) -> set[UUID]:
        stmt = sa.select(_F.product_id).where(
            _F.user_id == user_id, _F.product_id.in_(list(product_ids))
        )
        return set((await self._conn.execute(stmt)).scalars().all())

    async def count_for_product(self, product_id: UUID) -> int:
        stmt = sa.select(sa.func.count()).select_from(favorites).where(_F.product_id == product_id)
        return int((await self._conn.execute(stmt)).scalar_one())

    async def delete_all_for_user(self, user_id: UUID) -> int:
        result = await self._conn.execute(sa.delete(favorites).where(_F.user_id == user_id))
        return int(result.rowcount)

    async def delete_batch_for_product(self, product_id: UUID, batch_size: int) -> list[UUID]:
        batch = (
            sa.select(_F.user_id, _F.product_id).where(_F.product_id == product_id).limit(batch_size)
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

    async def mark_deleted(self, product_id: UUID, at: datetime) -> bool:
        stmt = self._insert(products).values(product_id=product_id, deleted_at=at)
        stmt = stmt.on_conflict_do_update(
            index_elements=["product_id"],
            set_={"deleted_at": sa.func.coalesce(products.c.deleted_at, at)},
        )
        result = await self._conn.execute(stmt)
        return bool(result.rowcount)

    async def existing(self, product_ids: Sequence[UUID]) -> set[UUID]:
        stmt = sa.select(products.c.product_id).where(
            products.c.product_id.in_(list(product_ids)), products.c.deleted_at.is_(None)
        )
        return set((await self._conn.execute(stmt)).scalars().all())


class SqlAuditRepository(_Repo):
    async def record(self, entry: AuditEntry, at: datetime) -> None:
        await self._conn.execute(
            sa.insert(audit_log).values(
                occurred_at=at,
                actor_id=entry.actor_id,
                actor_type=entry.actor_type,
                action=entry.action.value,
                subject_user_id=entry.subject_user_id,
                product_id=entry.product_id,
                request_id=entry.request_id,
                outcome=entry.outcome,
            )
        )

    async def pseudonymise_user(self, user_id: str, pseudonym: str) -> int:
        subject = await self._conn.execute(
            sa.update(audit_log)
            .where(audit_log.c.subject_user_id == user_id)
            .values(subject_user_id=pseudonym)
        )
        actor = await self._conn.execute(
            sa.update(audit_log).where(audit_log.c.actor_id == user_id).values(actor_id=pseudonym)
        )
        return int(subject.rowcount) + int(actor.rowcount)


class SqlRefreshTokenRepository(_Repo):
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

    async def delete_for_user(self, user_id: UUID) -> int:
        result = await self._conn.execute(
            sa.delete(refresh_tokens).where(refresh_tokens.c.user_id == user_id)
        )
        return int(result.rowcount)


class SqlRevokedTokenRepository(_Repo):
    async def add(self, jti: str, expires_at: datetime, at: datetime) -> None:
        stmt = self._insert(revoked_tokens).values(jti=jti, expires_at=expires_at, revoked_at=at)
        await self._conn.execute(stmt.on_conflict_do_nothing(index_elements=["jti"]))

    async def active_since(self, since: datetime, now: datetime) -> list[tuple[str, datetime]]:
        c = revoked_tokens.c
        rows = await self._conn.execute(
            sa.select(c.jti, c.expires_at).where(c.revoked_at >= since, c.expires_at > now)
        )
        return [(row[0], _utc(row[1])) for row in rows]
