"""EXPLAIN the exact statement a repository call issues (captured as sent, not retyped).

Both repositories of the favorites table on PostgreSQL: SQLAlchemy Core's (writes, and every
statement on SQLite) and the driver's (read-only units of work, ``adapters.db.driver``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from favorites.adapters.db.checkout import Checkout
from favorites.adapters.db.driver import DriverConnection, DriverFavoritesRepository
from favorites.adapters.db.repository import SqlFavoritesRepository

USERS, PER_USER = 400, 50


def populate(url: str) -> list[uuid.UUID]:
    """20,000 favorites over 400 users, then VACUUM ANALYZE so the planner has real statistics."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO favorites (user_id, product_id, created_at)"
            " SELECT md5('user' || u)::uuid, gen_random_uuid(),"
            "        timestamptz '2026-01-01' + ((u * 7 + f * 13) %% 600) * interval '1 minute'"
            " FROM generate_series(1, %s) u, generate_series(1, %s) f",
            (USERS, PER_USER),
        )
        conn.execute("VACUUM ANALYZE favorites")
        rows = conn.execute("SELECT DISTINCT user_id FROM favorites ORDER BY 1").fetchall()
    return [row[0] for row in rows]


async def explain(
    conn: AsyncConnection,
    call: Callable[[SqlFavoritesRepository], Awaitable[Any]],
    *,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run ``call`` on a repository, capture the one statement it sent with its parameters,
    and return ``EXPLAIN (FORMAT JSON)`` of exactly that statement and those parameters."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(conn.sync_connection, "before_cursor_execute", capture)  # type: ignore[arg-type]
    try:
        await call(SqlFavoritesRepository(conn, conn.dialect.name))
    finally:
        event.remove(conn.sync_connection, "before_cursor_execute", capture)  # type: ignore[arg-type]
    assert len(captured) == 1, captured  # one statement per call: no N+1
    statement, parameters = captured[0]
    options = "FORMAT JSON, VERBOSE" if verbose else "FORMAT JSON"
    result = await conn.exec_driver_sql(f"EXPLAIN ({options}) {statement}", parameters)
    plan = result.scalar_one()
    return dict(plan[0]["Plan"])


async def explain_driver(
    conn: AsyncConnection,
    call: Callable[[SqlFavoritesRepository], Awaitable[Any]],
    *,
    verbose: bool = False,
) -> dict[str, Any]:
    """``explain`` for the driver's repository: the statement captured on its way to asyncpg."""
    driver = DriverConnection.of(Checkout.of(conn.engine, conn))
    captured: list[tuple[str, tuple[Any, ...]]] = []
    fetch, fetchval = driver.fetch, driver.fetchval

    async def capture_fetch(statement: str, *args: Any) -> Any:
        captured.append((statement, args))
        return await fetch(statement, *args)

    async def capture_fetchval(statement: str, *args: Any) -> Any:
        captured.append((statement, args))
        return await fetchval(statement, *args)

    driver.fetch, driver.fetchval = capture_fetch, capture_fetchval  # type: ignore[method-assign]
    await call(DriverFavoritesRepository(conn, driver))
    assert len(captured) == 1, captured  # one statement per call: no N+1
    statement, args = captured[0]
    options = "FORMAT JSON, VERBOSE" if verbose else "FORMAT JSON"
    plan = await fetchval(f"EXPLAIN ({options}) {statement}", *args)
    if isinstance(plan, str):  # without the json codec SQLAlchemy sets on its connections
        plan = json.loads(plan)
    return dict(plan[0]["Plan"])


EXPLAINERS = {"sqlalchemy": explain, "driver": explain_driver}


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def describe(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(n["Node Type"], n.get("Index Name")) for n in nodes(plan)]
