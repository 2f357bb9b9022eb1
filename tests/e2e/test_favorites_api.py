"""Every favorites endpoint over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.helpers import assert_problem, bearer, new_product


async def test_put_creates_then_is_idempotent(client: httpx.AsyncClient) -> None:
    owner, product = uuid.uuid4(), await new_product(client)
    first = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    assert first.status_code == 201
    assert first.headers["location"] == f"/v1/users/{owner}/favorites/{product}"
    body = first.json()
    assert body["user_id"] == str(owner)
    assert body["product_id"] == str(product)
    assert body["created_at"].endswith("Z")
    again = await client.put(f"/v1/users/{owner}/favorites/{product}", headers=bearer(owner))
    assert again.status_code == 200
    assert again.json() == body
    assert "location" not in again.headers


async def test_ids_are_normalised(client: httpx.AsyncClient) -> None:
    owner, product = uuid.uuid4(), await new_product(client)
    put = await client.put(f"/v1/users/{owner.hex.upper()}/favorites/{str(product).upper()}",
                           headers=bearer(owner))
    assert put.status_code == 201
    assert put.json()["product_id"] == str(product)
    got = await client.get(f"/v1/users/me/favorites/{product.hex}", headers=bearer(owner))
    assert got.status_code == 200


async def test_unknown_product_is_404(client: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    response = await client.put(f"/v1/users/me/favorites/{uuid.uuid4()}", headers=bearer(owner))
    assert_problem(response, 404, "product-not-found")


async def test_delete_is_idempotent(client: httpx.AsyncClient) -> None:
    owner, product = uuid.uuid4(), await new_product(client)
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    for _ in range(2):
        response = await client.delete(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
        assert response.status_code == 204
        assert response.content == b""
    missing = await client.get(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    assert_problem(missing, 404, "favorite-not-found")


async def test_list_count_contains_and_product_count(client: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    products = [await new_product(client) for _ in range(3)]
    for product in products:
        await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    fan = uuid.uuid4()
    await client.put(f"/v1/users/me/favorites/{products[0]}", headers=bearer(fan))

    listed = (await client.get("/v1/users/me/favorites", headers=bearer(owner))).json()
    assert [i["product_id"] for i in listed["items"]] == [str(p) for p in reversed(products)]
    assert set(listed["items"][0]) == {"product_id", "created_at"}
    assert listed["next_cursor"] is None

    count = await client.get(f"/v1/users/{owner}/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 3}

    stranger = uuid.uuid4()
    asked = f"{products[2]},{stranger},{products[0]}"
    contains = await client.get(f"/v1/users/me/favorites/contains?product_ids={asked}",
                                headers=bearer(owner))
    assert contains.json() == {"product_ids": [str(products[2]), str(products[0])]}

    popular = await client.get(f"/v1/products/{products[0]}/favorites/count",
                               headers=bearer(uuid.uuid4()))
    assert popular.json() == {"count": 2}


async def test_limit_and_cursor_validation(client: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    for bad in ("0", "51", "-1", "abc", "1.5", "%C2%B2", "%D9%A1", "1" * 5000):
        response = await client.get(f"/v1/users/me/favorites?limit={bad}", headers=bearer(owner))
        assert_problem(response, 422, "validation-error")
    response = await client.get("/v1/users/me/favorites?cursor=not-a-cursor",
                                headers=bearer(owner))
    assert_problem(response, 400, "invalid-cursor")


async def test_contains_bounds(client: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    ids = ",".join(str(uuid.uuid4()) for _ in range(101))
    response = await client.get(f"/v1/users/me/favorites/contains?product_ids={ids}",
                                headers=bearer(owner))
    assert_problem(response, 422, "validation-error")
    hundred = ",".join(str(uuid.uuid4()) for _ in range(100))
    ok = await client.get(f"/v1/users/me/favorites/contains?product_ids={hundred}",
                          headers=bearer(owner))
    assert ok.json() == {"product_ids": []}
    for bad in ("", "nope", f"{uuid.uuid4()},x"):
        response = await client.get(f"/v1/users/me/favorites/contains?product_ids={bad}",
                                    headers=bearer(owner))
        assert_problem(response, 422, "validation-error")
    missing = await client.get("/v1/users/me/favorites/contains", headers=bearer(owner))
    assert_problem(missing, 422, "validation-error")


async def test_a_query_parameter_given_twice_is_422(client: httpx.AsyncClient) -> None:
    """Which of two values a client meant is a guess: ``product_ids=a&product_ids=b`` answered
    for ``b`` alone would report a favorited ``a`` as absent."""
    owner = uuid.uuid4()
    product = await new_product(client)
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    for query in (f"/contains?product_ids={product}&product_ids={uuid.uuid4()}",
                  "?limit=1&limit=3", "?cursor=a&cursor=b", "?limit=5&cursor=x&limit=5"):
        response = await client.get(f"/v1/users/me/favorites{query}", headers=bearer(owner))
        detail = assert_problem(response, 422, "validation-error")["detail"]
        assert "given more than once" in detail
    once = await client.get(f"/v1/users/me/favorites/contains?product_ids={product}",
                            headers=bearer(owner))
    assert once.json() == {"product_ids": [str(product)]}


async def test_pagination_across_120_with_inserts_between_pages(
    client: httpx.AsyncClient,
) -> None:
    """Keyset pagination: new favorites added while paging neither repeat nor hide old ones."""
    owner = uuid.uuid4()
    products = [await new_product(client) for _ in range(130)]
    original = products[:120]
    for product in original:
        assert (await client.put(f"/v1/users/me/favorites/{product}",
                                 headers=bearer(owner))).status_code == 201
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "25"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/users/me/favorites", params=params,
                                 headers=bearer(owner))).json()
        seen += [item["product_id"] for item in page["items"]]
        pages += 1
        if pages <= 5:  # newer favorites arrive while the client is paging
            await client.put(f"/v1/users/me/favorites/{products[119 + pages]}",
                             headers=bearer(owner))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 120
    assert seen == [str(p) for p in reversed(original)]
    assert pages == 5


async def test_fifty_parallel_puts_leave_one_row(client: httpx.AsyncClient) -> None:
    owner, product = uuid.uuid4(), await new_product(client)
    headers = bearer(owner)
    responses = await asyncio.gather(*[
        client.put(f"/v1/users/me/favorites/{product}", headers=headers) for _ in range(50)
    ])
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 1
    assert statuses.count(200) == 49
    count = await client.get("/v1/users/me/favorites/count", headers=headers)
    assert count.json() == {"count": 1}


async def test_fifty_parallel_puts_of_different_products_all_land(
    client: httpx.AsyncClient,
) -> None:
    owner = uuid.uuid4()
    products = [await new_product(client) for _ in range(50)]
    responses = await asyncio.gather(*[
        client.put(f"/v1/users/me/favorites/{p}", headers=bearer(owner)) for p in products
    ])
    assert {r.status_code for r in responses} == {201}
    count = await client.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 50}
