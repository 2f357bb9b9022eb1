from __future__ import annotations

import uuid

import httpx

from tests.helpers import bearer, new_product


async def test_add_list_remove_round_trip(client: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    product = await new_product(client)
    put = await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(user))
    assert put.status_code == 201
    listed = await client.get("/v1/users/me/favorites", headers=bearer(user))
    assert [i["product_id"] for i in listed.json()["items"]] == [str(product)]
    gone = await client.delete(f"/v1/users/{user}/favorites/{product}", headers=bearer(user))
    assert gone.status_code == 204
    assert (await client.get("/v1/users/me/favorites", headers=bearer(user))).json()["items"] == []
