"""/metrics: the agreed catalogue (names, types, labels), counts that move, bounded labels."""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from favorites.adapters.db.engine import PoolSettings, create_engine
from favorites.entrypoints.http.app import create_app
from favorites.observability import active_users, metrics
from favorites.observability.active_users import ActiveUsers, Share, _chunk
from favorites.observability.db import instrument_engine
from favorites.observability.exposition import _HitRatio
from tests.conftest import make_settings, started
from tests.helpers import bearer, new_product
from tests.observability.conftest import Observed, observed_app

# family -> (type, label names); counters are named without ``_total`` by the parser.
CATALOGUE = {
    "http_requests": ("counter", {"method", "path", "status"}),
    "http_request_duration_seconds": ("histogram", {"method", "path"}),
    "favorites_operations": ("counter", {"operation", "status"}),
    "db_connections_active": ("gauge", {"pool"}),
    "db_connections_max": ("gauge", {"pool"}),
    "db_query_duration_seconds": ("histogram", {"operation"}),
    "cache_hit_ratio": ("gauge", {"cache_name"}),
    "cache_requests": ("counter", {"cache_name", "result"}),
    "rate_limited_requests": ("counter", {"scope"}),
    "circuit_breaker_state": ("gauge", {"dependency"}),
    "favorites_active_users": ("gauge", set()),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(all_samples: Samples, name: str, **labels: str) -> float:
    return all_samples.get((name, frozenset(labels.items())), 0.0)


def operations_moved(before: Samples, after: Samples, operation: str, status: str) -> float:
    """How much ``favorites_operations_total{operation, status}`` grew between two scrapes."""
    labels = {"operation": operation, "status": status}
    return (value(after, "favorites_operations_total", **labels)
            - value(before, "favorites_operations_total", **labels))


@pytest.fixture
async def db_observed(database_url: str, session_tmp: Path) -> AsyncIterator[Observed]:
    """SQLite and PostgreSQL."""
    async for item in observed_app(database_url, session_tmp):
        yield item


async def test_every_catalogue_family_is_exported_with_its_type_and_labels(
    observed: Observed
) -> None:
    product = await new_product(observed.client)
    await observed.client.put(f"/v1/users/me/favorites/{product}", headers=bearer(uuid.uuid4()))
    metrics.record_cache_request("favorites_page", "hit")
    metrics.set_circuit_breaker_state("product_service", "closed")
    families = {family.name: family for family in
                text_string_to_metric_families(await scrape(observed.client))}
    for name, (kind, labels) in CATALOGUE.items():
        assert name in families, name
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
        assert families[name].samples, name


async def test_request_counts_and_durations_move_by_route_template(observed: Observed) -> None:
    user = uuid.uuid4()
    before = samples(await scrape(observed.client))
    for _ in range(3):
        assert (await observed.client.get("/v1/users/me/favorites", headers=bearer(user))).is_success
    await observed.client.get(f"/v1/users/{uuid.uuid4()}/favorites", headers=bearer(user))  # 403
    after = samples(await scrape(observed.client))
    route = "/v1/users/{user_id}/favorites"

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("http_requests_total", method="GET", path=route, status="200") == 3
    assert moved("http_requests_total", method="GET", path=route, status="403") == 1
    assert moved("http_request_duration_seconds_count", method="GET", path=route) == 4
    assert moved("http_request_duration_seconds_bucket", method="GET", path=route, le="+Inf") == 4
    assert moved("favorites_operations_total", operation="list", status="success") == 3
    assert moved("favorites_operations_total", operation="list", status="client_error") == 1
    assert moved("db_query_duration_seconds_count", operation="select") >= 1


async def test_histogram_buckets_are_the_agreed_ones(observed: Observed) -> None:
    await observed.client.get("/health/live")
    text = await scrape(observed.client)
    buckets = sorted(
        float(dict(labels)["le"]) for (name, labels) in samples(text)
        if name == "http_request_duration_seconds_bucket"
        and dict(labels).get("path") == "/health/live"
    )
    assert buckets == [*metrics.HTTP_BUCKETS, float("inf")]


async def test_unknown_paths_and_methods_do_not_grow_the_label_sets(observed: Observed) -> None:
    before = samples(await scrape(observed.client))
    for _ in range(5):
        await observed.client.get(f"/random/{uuid.uuid4()}")
    await observed.client.request("BREW", f"/coffee/{uuid.uuid4()}")
    after = samples(await scrape(observed.client))
    assert value(after, "http_requests_total", method="GET", path="unmatched", status="404") - \
        value(before, "http_requests_total", method="GET", path="unmatched", status="404") == 5
    assert value(after, "http_requests_total", method="OTHER", path="unmatched", status="404") >= 1
    paths = {dict(labels)["path"] for (name, labels) in after if name == "http_requests_total"}
    assert not [path for path in paths if "random" in path or "coffee" in path]


async def test_every_operation_and_outcome_is_announced_at_zero(observed: Observed) -> None:
    all_samples = samples(await scrape(observed.client))
    for operation in metrics.OPERATIONS:
        for status in metrics.OPERATION_STATUSES:
            key = ("favorites_operations_total",
                   frozenset({"operation": operation, "status": status}.items()))
            assert key in all_samples, key


async def test_operations_outcomes_are_counted(observed: Observed) -> None:
    client = observed.client
    user = uuid.uuid4()
    before = samples(await scrape(client))
    product = await new_product(client)
    await client.put(f"/v1/users/me/favorites/{product}", headers=bearer(user))
    await client.put(f"/v1/users/me/favorites/{uuid.uuid4()}", headers=bearer(user))  # 404
    await client.delete(f"/v1/users/me/favorites/{product}", headers=bearer(user))
    await client.get(f"/v1/users/me/favorites/{product}", headers=bearer(user))  # 404
    await client.get("/v1/users/me/favorites/count", headers=bearer(user))
    await client.get("/v1/users/me/favorites/contains", params={"product_ids": str(product)},
                     headers=bearer(user))
    await client.get(f"/v1/products/{product}/favorites/count", headers=bearer(user))
    after = samples(await scrape(client))

    def moved(operation: str, status: str) -> float:
        return operations_moved(before, after, operation, status)

    assert moved("register_product", "success") == 1
    assert moved("add", "success") == 1
    assert moved("add", "client_error") == 1
    assert moved("remove", "success") == 1
    assert moved("get", "client_error") == 1
    assert moved("count", "success") == 1
    assert moved("contains", "success") == 1
    assert moved("product_count", "success") == 1


async def test_database_pool_and_statement_metrics(db_observed: Observed) -> None:
    client = db_observed.client
    user = uuid.uuid4()
    before = samples(await scrape(client))
    for _ in range(3):  # a single favorite is read from the database, not from a cache
        await client.get(f"/v1/users/me/favorites/{uuid.uuid4()}", headers=bearer(user))
    after = samples(await scrape(client))
    settings = db_observed.app.state.container.settings
    # Every engine of this process adds up (the tests keep several apps alive).
    assert value(after, "db_connections_max", pool="primary") >= settings.database_pool_max
    assert ("db_connections_active", frozenset({("pool", "primary")})) in after
    assert value(after, "db_connections_active", pool="primary") >= 0
    assert value(after, "db_query_duration_seconds_count", operation="select") - \
        value(before, "db_query_duration_seconds_count", operation="select") >= 3
    operations = {dict(labels)["operation"] for (name, labels) in after
                  if name == "db_query_duration_seconds_count"}
    assert operations <= set(metrics.DB_OPERATIONS)


async def test_pool_gauges_follow_checkouts_and_add_up_per_pool(tmp_path: Path) -> None:
    def gauge(name: str) -> float:
        return metrics.__dict__[name].labels("replica")._value.get()  # type: ignore[no-any-return]

    engines = [create_engine(f"sqlite:///{tmp_path / f'r{i}.db'}", PoolSettings(1, size))
               for i, size in enumerate((3, 4))]
    base_max, base_active = gauge("db_connections_max"), gauge("db_connections_active")
    for engine in engines:
        instrument_engine(engine, "replica", 0)  # 0: read the capacity from the pool
    assert gauge("db_connections_max") - base_max == 7
    async with engines[0].connect() as first, engines[1].connect() as second:
        for conn in (first, second):
            await conn.execute(sa.text("SELECT 1"))
        assert gauge("db_connections_active") - base_active == 2
    assert gauge("db_connections_active") - base_active == 0
    await engines[0].dispose()
    assert gauge("db_connections_max") - base_max == 4
    await engines[1].dispose()
    with pytest.raises(ValueError, match="pool"):
        instrument_engine(engines[0], "secondary")


async def test_pool_gauges_drop_an_engine_collected_without_dispose(tmp_path: Path) -> None:
    def gauge(name: str) -> float:
        return metrics.__dict__[name].labels("replica")._value.get()  # type: ignore[no-any-return]

    base_max = gauge("db_connections_max")
    engine = create_engine(f"sqlite:///{tmp_path / 'gone.db'}", PoolSettings(1, 5))
    instrument_engine(engine, "replica", 0)
    assert gauge("db_connections_max") - base_max == 5
    del engine
    gc.collect()
    assert gauge("db_connections_max") - base_max == 0


async def test_helpers_for_rate_limiting_caches_and_breakers(observed: Observed) -> None:
    before = samples(await scrape(observed.client))
    metrics.record_rate_limited("user")
    metrics.record_rate_limited("ip")
    metrics.record_cache_request("product_exists", "miss")
    metrics.set_circuit_breaker_state("product_service", "open")
    after = samples(await scrape(observed.client))
    for scope, moved in (("user", 1), ("ip", 1), ("service", 0)):
        assert value(after, "rate_limited_requests_total", scope=scope) - \
            value(before, "rate_limited_requests_total", scope=scope) == moved
    assert value(after, "cache_requests_total", cache_name="product_exists", result="miss") - \
        value(before, "cache_requests_total", cache_name="product_exists", result="miss") == 1
    assert value(after, "circuit_breaker_state", dependency="product_service") == 2
    metrics.set_circuit_breaker_state("product_service", "half_open")
    assert value(samples(await scrape(observed.client)), "circuit_breaker_state",
                 dependency="product_service") == 1
    metrics.set_circuit_breaker_state("product_service", 0)
    with pytest.raises(ValueError, match="rate-limit scope"):
        metrics.record_rate_limited("everyone")
    with pytest.raises(ValueError, match="cache/result"):
        metrics.record_cache_request("favorites_page", "maybe")
    with pytest.raises(ValueError, match="circuit breaker state"):
        metrics.set_circuit_breaker_state("product_service", "ajar")


async def test_cache_hit_ratio_is_exported_per_cache(observed: Observed) -> None:
    for _ in range(3):
        metrics.record_cache_request("favorites_count", "hit")
    all_samples = samples(await scrape(observed.client))
    ratio = value(all_samples, "cache_hit_ratio", cache_name="favorites_count")
    assert 0 < ratio <= 1


def test_cache_hit_ratio_covers_the_last_five_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    ratio = _HitRatio(window=300)
    assert ratio.ratio("c", 0, 0) is None  # no lookups yet
    assert ratio.ratio("c", 90, 100) == 0.9  # first scrape: since start
    now[0] += 60
    assert ratio.ratio("c", 90, 200) == pytest.approx(0.45)  # 0 hits of the last 100: since 0
    now[0] += 400
    assert ratio.ratio("c", 190, 300) == 1.0  # only the last window: 100 hits of 100
    now[0] += 30
    assert ratio.ratio("c", 190, 300) == 1.0  # the baseline is the newest scrape before the window
    now[0] += 400
    assert ratio.ratio("c", 190, 300) is None  # no lookups in the window
    assert ratio.ratio("c", 5, 10) == 0.5  # counters reset (restart): start over


async def test_active_users_counts_distinct_users_of_the_last_five_minutes(
    observed: Observed
) -> None:
    before = value(samples(await scrape(observed.client)), "favorites_active_users")
    users = [uuid.uuid4() for _ in range(3)]
    for user in [*users, *users]:
        await observed.client.get("/v1/users/me/favorites/count", headers=bearer(user))
    after = value(samples(await scrape(observed.client)), "favorites_active_users")
    assert after - before == 3


def test_active_users_are_a_union_across_workers(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [10_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    shared, mine, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    monkeypatch.setattr(os, "getpid", lambda: 1)
    other = ActiveUsers(tmp_path)
    other.seen(gone)
    other.write(share_of(other))
    clock[0] += 10
    other.seen(shared)
    other.write(share_of(other))  # appended: the file now holds two chunks
    clock[0] += 295  # gone was seen 305 s ago, shared 295 s ago
    monkeypatch.setattr(os, "getpid", lambda: 2)
    me = ActiveUsers(tmp_path)
    me.seen(shared)
    me.seen(mine)
    assert me.count() == 2  # shared once, gone forgotten
    me.write(share_of(me))
    monkeypatch.setattr(os, "getpid", lambda: 3)
    assert ActiveUsers(tmp_path).count() == 2  # the serve parent: files only
    monkeypatch.setattr(os, "getpid", lambda: 2)
    me.remove_file()  # a worker that stops
    monkeypatch.setattr(os, "getpid", lambda: 3)
    assert ActiveUsers(tmp_path).count() == 1


def share_of(users: ActiveUsers) -> Share:
    share = users.share()
    assert share is not None, "nothing to share"
    return share


def test_active_users_forget_only_who_was_not_seen_within_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user seen again stays, however long ago they were first seen; pruning visits only the
    users who left the window (kept in the order last seen), and the file written from the
    share says the same to the other workers."""
    clock = [10_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    early, middle, late = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    mine = ActiveUsers(tmp_path)
    mine.seen(early)
    clock[0] += 100
    mine.seen(middle)
    clock[0] += 150
    mine.seen(early)  # seen again: now the most recent
    mine.seen(late)
    clock[0] += 200  # middle (seen 350 s ago) has left the window, early (200 s) has not
    mine.prune()
    assert list(mine._seen) == [early.bytes, late.bytes]
    assert mine.count() == 2
    monkeypatch.setattr(os, "getpid", lambda: 4)
    mine.write(share_of(mine))
    monkeypatch.setattr(os, "getpid", lambda: 5)
    assert ActiveUsers(tmp_path).count() == 2
    clock[0] += 250  # early and late both 450 s ago
    assert ActiveUsers(tmp_path).count() == 0


def test_active_users_share_only_who_was_seen_since_the_last_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing every user of the window every two seconds stalled the event loop for tens of
    milliseconds with 200,000 of them: after the first (full) write, a share appends only the
    users seen since the previous one, new or returning, and nothing when nobody was seen."""
    clock = [10_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(os, "getpid", lambda: 6)
    users = [uuid.uuid4() for _ in range(1000)]
    worker = ActiveUsers(tmp_path)
    for user in users:
        worker.seen(user)
    clock[0] += 1
    share = share_of(worker)
    assert share[0]
    assert len(share[1]) == 1000
    worker.write(share)
    clock[0] += 2
    newcomer = uuid.uuid4()
    for user in (users[0], newcomer, users[500]):
        worker.seen(user)
    clock[0] += 1
    replace, keys, times = share_of(worker)
    assert not replace
    assert set(keys) == {users[0].bytes, newcomer.bytes, users[500].bytes}
    assert times == [clock[0] - 1] * 3
    worker.write((replace, keys, times))
    clock[0] += 2
    assert worker.share() is None  # nobody seen since
    file = tmp_path / "active_users_6.bin"
    assert file.stat().st_size == 8 + 24 * 1000 + 8 + 24 * 3
    monkeypatch.setattr(os, "getpid", lambda: 7)
    assert ActiveUsers(tmp_path).count() == 1001


def test_active_users_file_is_rewritten_once_mostly_superseded_or_after_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [10_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(os, "getpid", lambda: 8)
    monkeypatch.setattr(active_users, "SLACK_RECORDS", 10)
    file = tmp_path / "active_users_8.bin"
    users = [uuid.uuid4() for _ in range(5)]
    worker = ActiveUsers(tmp_path)
    kinds, sizes = [], []
    for _ in range(20):  # the same five users, seen again before every share
        for user in users:
            worker.seen(user)
        share = share_of(worker)
        worker.write(share)
        kinds.append(share[0])
        sizes.append(file.stat().st_size)
        clock[0] += 1
    # Full, then appends of 5 until more than 2 x 5 + 10 records, then full again.
    assert kinds[:6] == [True, False, False, False, False, True]
    assert max(sizes) <= 5 * (8 + 24 * 5)
    monkeypatch.setattr(os, "getpid", lambda: 9)
    assert ActiveUsers(tmp_path).count() == 5
    monkeypatch.setattr(os, "getpid", lambda: 12)
    worker = ActiveUsers(tmp_path)
    for user in users:
        worker.seen(user)
    assert share_of(worker)[0]
    clock[0] += active_users.FULL_WRITE_SECONDS - 1
    worker.seen(users[0])
    assert not share_of(worker)[0]
    clock[0] += 1
    worker.seen(users[0])
    assert share_of(worker)[0], "a minute after the last full write, however small the file"


def test_active_users_file_read_skips_a_chunk_still_being_appended_and_starts_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader may see an append half done: the complete chunks count, the rest waits. A file
    left by a dead process with the same pid is replaced by the first share, and a share that
    could not be written makes the next one a full write."""
    monkeypatch.setattr(os, "getpid", lambda: 10)
    file = tmp_path / "active_users_10.bin"
    stale = ActiveUsers(tmp_path)
    stale.seen(uuid.uuid4())
    stale.write(share_of(stale))  # a dead process's file
    worker = ActiveUsers(tmp_path)
    first, second = uuid.uuid4(), uuid.uuid4()
    worker.seen(first)
    worker.write(share_of(worker))  # replaces the stale file
    worker.seen(second)
    replace, keys, times = share_of(worker)
    assert not replace
    chunk = _chunk(keys, times)
    with file.open("ab") as f:
        f.write(chunk[:len(chunk) - 3])
    monkeypatch.setattr(os, "getpid", lambda: 11)
    assert ActiveUsers(tmp_path).count() == 1  # first only
    monkeypatch.setattr(os, "getpid", lambda: 10)
    file.unlink()
    file.mkdir()  # the next append cannot be written
    worker.seen(second)
    with pytest.raises(IsADirectoryError):
        worker.write(share_of(worker))
    file.rmdir()
    share = share_of(worker)
    assert share[0], "after a failed write, everything is written again"
    worker.write(share)
    monkeypatch.setattr(os, "getpid", lambda: 11)
    assert ActiveUsers(tmp_path).count() == 2


async def test_metrics_are_not_in_the_api_schema_and_move_off_the_app_in_production(
    sqlite_url: str, session_tmp: Path
) -> None:
    app = create_app(make_settings(sqlite_url, session_tmp))
    async for client in started(app):
        schema = (await client.get("/openapi.json")).json()
        assert "/metrics" not in schema["paths"]
    production = create_app(make_settings(sqlite_url, session_tmp, env="production"))
    async for client in started(production):
        assert (await client.get("/metrics")).status_code == 404


def test_a_single_process_only_prunes_its_active_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the multiprocess directory there is no file and no other worker: a share builds
    nothing, but still forgets who left the window (the memory bound)."""
    clock = [10_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    alone = ActiveUsers(None)
    gone, here = uuid.uuid4(), uuid.uuid4()
    alone.seen(gone)
    clock[0] += 200
    alone.seen(here)
    clock[0] += 200
    assert alone.share() is None
    assert list(alone._seen) == [here.bytes]
    assert alone.count() == 1
