"""The v2 additions behind ``enable_favorites_v2``: bulk add/remove and export.

The flag comes from a real flagd file (FAVORITES_FLAGS_FILE); the rollout itself (percentages,
stickiness, reload) is tested in tests/unit/adapters/test_flags.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from favorites.adapters.db.tables import audit_log
from favorites.bootstrap import build
from favorites.config import ConfigError
from favorites.entrypoints.http.app import create_app
from tests.conftest import make_settings, started
from tests.flagfiles import rollout, write
from tests.helpers import SERVICE, assert_problem, bearer, new_product


@pytest.fixture
async def v2(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Every user in the rollout, and a cap of 5 favorites to reach it quickly."""
    flags = write(tmp_path / "flags.json", rollout(100))
    app = create_app(make_settings(database_url, tmp_path, flags_file=flags,
                                   max_favorites_per_user=5))
    async for c in started(app):
        c.app = app  # type: ignore[attr-defined]
        yield c


async def _bulk(c: httpx.AsyncClient, owner: uuid.UUID, **body: Any) -> httpx.Response:
    return await c.post("/v1/users/me/favorites/bulk", json=body, headers=bearer(owner))


async def _listed(c: httpx.AsyncClient, owner: uuid.UUID) -> list[str]:
    page = (await c.get("/v1/users/me/favorites", headers=bearer(owner))).json()
    return [item["product_id"] for item in page["items"]]


async def test_off_by_default_answers_404(client: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    bulk = await _bulk(client, owner, add=[str(await new_product(client))])
    assert_problem(bulk, 404, "feature-not-enabled")
    export = await client.get("/v1/users/me/favorites/export", headers=bearer(owner))
    assert_problem(export, 404, "feature-not-enabled")
    assert await _listed(client, owner) == []


async def test_bulk_adds_and_removes_in_one_request(v2: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    a, b, c = [str(await new_product(v2)) for _ in range(3)]
    await v2.get("/v1/users/me/favorites", headers=bearer(owner))  # a cached (empty) first page
    first = await _bulk(v2, owner, add=[a, b, a])
    assert first.status_code == 200
    assert first.json() == {"added": [a, b], "removed": []}
    assert sorted(await _listed(v2, owner)) == sorted([a, b])  # the cache was invalidated
    second = await _bulk(v2, owner, add=[b, c], remove=[a, str(uuid.uuid4())])
    assert second.json() == {"added": [c], "removed": [a]}  # only what changed
    assert sorted(await _listed(v2, owner)) == sorted([b, c])
    count = await v2.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 2}


async def test_bulk_writes_one_audit_row_per_change(v2: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    a, b = [str(await new_product(v2)) for _ in range(2)]
    await _bulk(v2, owner, add=[a, b])
    response = await _bulk(v2, owner, add=[a], remove=[b])
    engine = v2.app.state.container.engine  # type: ignore[attr-defined]
    async with engine.connect() as conn:
        rows = (await conn.execute(
            sa.select(audit_log.c.action, audit_log.c.product_id, audit_log.c.request_id)
            .where(audit_log.c.subject_user_id == str(owner)).order_by(audit_log.c.id)
        )).all()
    assert [(r.action, str(r.product_id)) for r in rows] == [
        ("favorite.added", a), ("favorite.added", b), ("favorite.removed", b)]
    assert rows[-1].request_id == response.headers["x-request-id"]


async def test_bulk_is_all_or_nothing(v2: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    known = [str(await new_product(v2)) for _ in range(6)]
    unknown = str(uuid.uuid4())
    missing = await _bulk(v2, owner, add=[known[0], unknown])
    body = assert_problem(missing, 404, "product-not-found")
    assert unknown in body["detail"]
    over_cap = await _bulk(v2, owner, add=known)  # 6 with a cap of 5
    assert_problem(over_cap, 409, "favorites-limit-reached")
    assert await _listed(v2, owner) == []


@pytest.mark.parametrize(("body", "detail"), [
    ({}, "at least one"),
    ({"add": ["not-a-uuid"]}, "add"),
    ({"add": [str(uuid.UUID(int=1))], "remove": [str(uuid.UUID(int=1))]}, "both"),
    # Hyphen-less ids, so 26 of them fit in the 1 KB body limit.
    ({"add": [uuid.UUID(int=n).hex for n in range(13)],
      "remove": [uuid.UUID(int=n).hex for n in range(100, 113)]}, "at most 25"),
    ({"add": [uuid.UUID(int=n).hex for n in range(26)]}, "at most 25"),
    ({"add": [], "move": []}, "unknown field"),
])
async def test_bad_bulk_requests_are_422(v2: httpx.AsyncClient, body: dict[str, Any],
                                         detail: str) -> None:
    response = await v2.post("/v1/users/me/favorites/bulk", content=httpx.Request(
        "POST", "/", json=body).content, headers={**bearer(uuid.uuid4()),
                                                    "Content-Type": "application/json"})
    if len(response.content) and response.status_code == 413:
        pytest.fail("the body limit was hit before validation")
    assert detail in assert_problem(response, 422, "validation-error")["detail"]


async def test_bulk_only_for_the_owner(v2: httpx.AsyncClient) -> None:
    owner, product = uuid.uuid4(), str(await new_product(v2))
    response = await v2.post(f"/v1/users/{owner}/favorites/bulk", json={"add": [product]},
                             headers=bearer(uuid.uuid4(), ("admin",)))
    assert_problem(response, 403, "forbidden")


async def test_export_is_every_favorite_newest_first(v2: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    products = [str(await new_product(v2)) for _ in range(5)]
    for product in products:
        await v2.put(f"/v1/users/me/favorites/{product}", headers=bearer(owner))
    response = await v2.get(f"/v1/users/{owner}/favorites/export", headers=bearer(owner))
    assert response.status_code == 200
    assert response.headers["content-disposition"] == (
        f'attachment; filename="favorites-{owner}.json"')
    assert response.headers["cache-control"] == "no-store"
    document = response.json()
    assert document["user_id"] == str(owner)
    assert document["count"] == 5
    assert document["exported_at"].endswith("Z")
    assert [item["product_id"] for item in document["items"]] == list(reversed(products))
    assert all(item["created_at"].endswith("Z") for item in document["items"])
    other = await v2.get(f"/v1/users/{owner}/favorites/export",
                         headers=bearer(uuid.uuid4(), ("admin",)))
    assert_problem(other, 403, "forbidden")


async def test_export_reads_past_one_batch(database_url: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyset batches join without a gap or a repeat (batch size lowered to 2 for the test)."""
    from favorites.service_layer import favorites as service

    monkeypatch.setattr(service, "EXPORT_BATCH", 2)
    flags = write(tmp_path / "flags.json", rollout(100))
    app = create_app(make_settings(database_url, tmp_path, flags_file=flags))
    async for c in started(app):
        owner = uuid.uuid4()
        products = [str(await new_product(c)) for _ in range(5)]
        added = await c.post("/v1/users/me/favorites/bulk", json={"add": products},
                             headers=bearer(owner))  # one timestamp: ties broken by id
        assert added.status_code == 200
        document = (await c.get("/v1/users/me/favorites/export", headers=bearer(owner))).json()
        assert [i["product_id"] for i in document["items"]] == sorted(products)  # ties: by id


async def test_a_bad_flag_file_is_a_configuration_error(database_url: str,
                                                        tmp_path: Path) -> None:
    path = write(tmp_path / "flags.json", '{"flags": {"enable_favorites_v2": {}}}')
    with pytest.raises(ConfigError, match=r"FAVORITES_FLAGS_FILE: .*variants"):
        build(make_settings(database_url, tmp_path, flags_file=path))


async def test_readiness_reports_the_flag_file(v2: httpx.AsyncClient) -> None:
    ready = await v2.get("/health/ready")
    assert ready.json()["checks"]["flags"] == "ok"


async def test_without_a_token_is_401_and_an_oversized_body_413(v2: httpx.AsyncClient) -> None:
    bulk = await v2.post("/v1/users/me/favorites/bulk", json={"add": []})
    assert_problem(bulk, 401, "invalid-token")
    export = await v2.get("/v1/users/me/favorites/export")
    assert_problem(export, 401, "invalid-token")
    big = await _bulk(v2, uuid.uuid4(), add=[str(uuid.UUID(int=n)) for n in range(40)])
    assert_problem(big, 413, "payload-too-large")


async def test_bulk_and_export_are_counted_and_logged_as_operations(
        v2: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.observability.test_metrics import operations_moved, samples, scrape

    owner, product = uuid.uuid4(), str(await new_product(v2))
    before = samples(await scrape(v2))
    capsys.readouterr()
    await _bulk(v2, owner, add=[product])
    await _bulk(v2, owner, add=[str(uuid.uuid4())])  # unknown product: the caller's fault
    await v2.get("/v1/users/me/favorites/export", headers=bearer(owner))
    logged = capsys.readouterr().out
    after = samples(await scrape(v2))

    def moved(operation: str, status: str) -> float:
        return operations_moved(before, after, operation, status)

    assert moved("bulk", "success") == 1
    assert moved("bulk", "client_error") == 1
    assert moved("export", "success") == 1
    assert '"operation":"bulkFavorites"' in logged
    assert '"operation":"exportFavorites"' in logged


async def test_bulk_adds_nothing_with_a_token_an_erasure_revoked_elsewhere(
    v2: httpx.AsyncClient, database_url: str, tmp_path: Path,
) -> None:
    """As for a single add: the instance has not pulled the erasure's revocations (its pull is
    stopped), and the bulk add still asks the database, under the user's lock."""
    app = v2.app  # type: ignore[attr-defined]
    await app.state.container.revocations.stop()
    owner = uuid.uuid4()
    issued = await v2.post("/v1/auth/tokens", headers=SERVICE,
                           json={"user_id": str(owner), "roles": ["user"]})
    auth = {"Authorization": f"Bearer {issued.json()['access_token']}"}
    products = [str(await new_product(v2)) for _ in range(2)]
    async for elsewhere in started(create_app(make_settings(database_url, tmp_path / "a"))):
        erased = await elsewhere.delete(f"/internal/v1/users/{owner}", headers=SERVICE)
        assert erased.status_code == 200
    refused = await v2.post("/v1/users/me/favorites/bulk", json={"add": products}, headers=auth)
    assert "revoked" in assert_problem(refused, 401, "invalid-token")["detail"]
    count = await v2.get("/v1/users/me/favorites/count", headers=bearer(owner))
    assert count.json() == {"count": 0}
