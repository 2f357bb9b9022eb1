"""The cache epoch's two statements (table ``cache_epoch``, migration 0002).

Always on the primary: a replica lagging behind a bump would hand back the epoch the bump was
meant to retire.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from favorites.adapters.db.tables import cache_epoch

_ROW = 1


class CacheEpochRepository:
    def __init__(self, primary: AsyncEngine):
        self._engine = primary

    async def read(self) -> int:
        async with self._engine.connect() as conn:
            value = (
                await conn.execute(sa.select(cache_epoch.c.epoch).where(cache_epoch.c.id == _ROW))
            ).scalar()
        return int(value or 0)

    async def bump(self, floor: int = 0) -> int:
        """Increment and return the new epoch, above ``floor`` (the caller's current epoch)
        whatever the row holds: a row deleted and recreated, or a database restored from a
        backup or failed over to a replica that missed the last bumps, would otherwise count from
        an epoch below the one entries are stored under, and a bump would retire nothing."""
        pg = self._engine.dialect.name == "postgresql"
        insert = (postgresql.insert if pg else sqlite.insert)(cache_epoch)
        higher = sa.func.greatest if pg else sa.func.max  # SQLite's two-argument max() is scalar
        stmt = (
            insert.values(id=_ROW, epoch=floor + 1)
            .on_conflict_do_update(index_elements=["id"],
                                   set_={"epoch": higher(cache_epoch.c.epoch, floor) + 1})
            .returning(cache_epoch.c.epoch)
        )
        async with self._engine.connect() as conn:
            if self._engine.dialect.name == "sqlite":
                await conn.execution_options(sqlite_immediate=True)
            async with conn.begin():
                return int((await conn.execute(stmt)).scalar_one())
