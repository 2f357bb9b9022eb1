"""The bench's seeder on a real PostgreSQL: what it records, and how a run tells that the data has
grown since (``bench.seed.data_state``, recorded by ``bench.compare`` at its start)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import pytest
from bench.common import SeedShape, product_id, user_id
from bench.seed import current_shape, data_state, seed

from tests.conftest import drop_postgres, fresh_postgres_url

pytestmark = pytest.mark.postgres

SHAPE = SeedShape(users=4, per_user=50, products=200)


@pytest.fixture(scope="module")
def seeded() -> Iterator[str]:
    name, url = fresh_postgres_url("favorites_bench_seedtest")
    try:
        seed(url, SHAPE, echo=lambda _line: None)
        yield url
    finally:
        drop_postgres(name)


async def _add(url: str, user: int, products: range) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO favorites (user_id, product_id, created_at) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            [(user_id(user), product_id(p), datetime.now(UTC)) for p in products])
    finally:
        await conn.close()


def test_a_fresh_seed_is_recorded_and_no_user_holds_more_than_a_page(seeded: str) -> None:
    assert asyncio.run(current_shape(seeded)) == SHAPE
    assert asyncio.run(data_state(seeded)) == {
        "favorites": 200, "users_with_favorites": 4, "users_over_a_page": 0}


def test_favorites_added_after_the_seed_show_in_the_data_state(seeded: str) -> None:
    before = asyncio.run(data_state(seeded))["favorites"]
    # Every product, so at least 150 of the 200 are new to user 1, and some to user 2.
    asyncio.run(_add(seeded, 1, range(SHAPE.products)))
    asyncio.run(_add(seeded, 2, range(SHAPE.products)))
    state = asyncio.run(data_state(seeded))
    assert state["favorites"] == before + 2 * (SHAPE.products - SHAPE.per_user)
    assert state["users_over_a_page"] == 2
    assert state["users_with_favorites"] == 4
    # The seed's own record does not change: only the data does.
    assert asyncio.run(current_shape(seeded)) == SHAPE
