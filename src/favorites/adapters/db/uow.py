"""Unit of work over one pooled connection: commit on ``commit()``, roll back otherwise."""

from __future__ import annotations

from types import TracebackType
from typing import Self
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from favorites.adapters.db.repository import (
    SqlAuditRepository,
    SqlFavoritesRepository,
    SqlProductsRepository,
    SqlRefreshTokenRepository,
    SqlRevokedTokenRepository,
)


class SqlUnitOfWork:
    favorites: SqlFavoritesRepository
    products: SqlProductsRepository
    audit: SqlAuditRepository
    refresh_tokens: SqlRefreshTokenRepository
    revoked_tokens: SqlRevokedTokenRepository

    def __init__(self, engine: AsyncEngine, *, readonly: bool):
        self._engine = engine
        self._readonly = readonly
        self._conn: AsyncConnection | None = None
        self._committed = False

    async def __aenter__(self) -> Self:
        conn = await self._engine.connect()
        dialect = self._engine.dialect.name
        if dialect == "postgresql" and self._readonly:
            # One round trip per read instead of BEGIN / query / ROLLBACK.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        elif dialect == "sqlite" and not self._readonly:
            await conn.execution_options(sqlite_immediate=True)
        self._conn = conn
        self.favorites = SqlFavoritesRepository(conn, dialect)
        self.products = SqlProductsRepository(conn, dialect)
        self.audit = SqlAuditRepository(conn, dialect)
        self.refresh_tokens = SqlRefreshTokenRepository(conn, dialect)
        self.revoked_tokens = SqlRevokedTokenRepository(conn, dialect)
        return self

    async def commit(self) -> None:
        assert self._conn is not None
        await self._conn.commit()
        self._committed = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self._committed and conn.in_transaction():
                await conn.rollback()
        finally:
            await conn.close()


class SqlUnitOfWorkFactory:
    """Picks the engine per call; replicas and read-your-writes routing plug in here."""

    def __init__(self, primary: AsyncEngine):
        self.primary = primary

    def __call__(self, *, readonly: bool = False, user_id: UUID | None = None) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.primary, readonly=readonly)

