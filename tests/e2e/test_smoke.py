from __future__ import annotations

import gc
import uuid

import httpx

from favorites.entrypoints.http.app import YOUNG_COLLECTION_THRESHOLD
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


async def test_start_up_objects_are_frozen_out_of_the_garbage_collector(
    client: httpx.AsyncClient,
) -> None:
    """A started app has moved its start-up heap out of the collector's reach (``gc.freeze``),
    so full collections under load do not walk it (they took 40-155 ms when they did)."""
    assert (await client.get("/health/live")).status_code == 200
    assert gc.get_freeze_count() > 10_000


async def test_a_started_app_collects_the_young_generation_less_often(
    client: httpx.AsyncClient,
) -> None:
    """At CPython's default threshold (700) the collector took about 5 % of a worker's CPU under
    load, walking the objects of requests still in flight (``settle_garbage_collector``)."""
    assert (await client.get("/health/live")).status_code == 200
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD > 700
