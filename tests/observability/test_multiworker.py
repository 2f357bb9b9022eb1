"""`favorites serve --workers 2` for real: /metrics adds up across worker processes, on the app
or (FAVORITES_ENV=production) on the admin port from the serve parent; every line is JSON."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import JWT_SECRET, SERVICE_KEY
from tests.helpers import free_port, token, wait_until_ready

BIN = Path(sys.executable).parent
PORTS = range(18100, 18200)
LIVE_REQUESTS = 120


@dataclass
class Server:
    base: str
    metrics_dir: Path
    log: Path
    process: subprocess.Popen[bytes]
    workers: int
    admin: str | None = None


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAVORITES_", "OTEL_", "PROMETHEUS_"))}
    clients = [{"name": "identity", "key_sha256": hashlib.sha256(SERVICE_KEY.encode()).hexdigest(),
                "cidrs": ["127.0.0.0/8"], "scopes": ["tokens:issue", "users:erase",
                                                     "products:write"]}]
    env.update({
        "FAVORITES_DATA_DIR": str(tmp / "var"),
        "FAVORITES_DATABASE_URL": f"sqlite:///{tmp / 'favorites.db'}",
        "FAVORITES_JWT_SECRET": JWT_SECRET,
        "FAVORITES_SERVICE_CLIENTS": json.dumps(clients),
        "FAVORITES_RATE_LIMIT": "100000/minute",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        "FAVORITES_ENV": "test",  # no demo banner: every line is a log line
    })
    env.update(extra)
    return env


def _serve(tmp: Path, workers: int = 2, **extra: str) -> Iterator[Server]:
    port = free_port(PORTS, shuffle=True)
    admin_port = free_port(PORTS, avoid=(port,), shuffle=True)
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_1.db"  # a previous run's counts must not be added in
    stale.write_bytes(b"\0" * 16)
    log = tmp / "serve.log"
    env = _env(tmp, FAVORITES_METRICS_PORT=str(admin_port), **extra)
    if workers == 1:  # one process needs no multiprocess directory: serve sets none
        del env["PROMETHEUS_MULTIPROC_DIR"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "favorites"), "serve", "--port", str(port), "--workers", str(workers)],
            cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process, log, timeout=60)
        assert workers == 1 or not stale.exists()
        admin = f"http://127.0.0.1:{admin_port}" if extra.get("FAVORITES_ENV") == "production" \
            else None
        yield Server(base, metrics_dir, log, process, workers, admin)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the serve parent and its workers, by our id
        process.wait(timeout=60)


def counts(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(s.labels.items()): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}


def _exercise(server: Server) -> uuid.UUID:
    """Health checks on fresh connections (spread over both workers) and some favorites."""
    def live(_: int) -> int:
        with httpx.Client(base_url=server.base, limits=httpx.Limits(max_keepalive_connections=0)) \
                as client:
            return client.get("/health/live").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(live, range(LIVE_REQUESTS))) == {200}
    user = uuid.uuid4()
    headers = {"Authorization": f"Bearer {token(user)}"}
    with httpx.Client(base_url=server.base) as client:
        for _ in range(3):
            product = uuid.uuid4()
            assert client.put(f"/internal/v1/products/{product}",
                              headers={"X-API-Key": SERVICE_KEY}).status_code == 201
            assert client.put(f"/v1/users/me/favorites/{product}", headers=headers).status_code \
                == 201
    return user


def _workers_that_served(metrics_dir: Path) -> set[int]:
    """Worker pids whose counter file holds http_requests_total samples."""
    pids = set()
    for path in metrics_dir.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        if any('"http_requests_total"' in key and value > 0 for key, value, _, _ in values):
            pids.add(int(path.stem.split("_")[1]))
    return pids


def _scrape(url: str) -> str:
    """A scrape on a fresh connection (any worker may answer), once workers shared their users
    (they do within two seconds of seeing someone new)."""
    deadline = time.monotonic() + 10
    while True:
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            text = client.get(url).text
        if counts(text, "favorites_active_users")[frozenset()] >= 1 or \
                time.monotonic() > deadline:
            return text
        time.sleep(0.25)


def _check_totals(before: str, text: str, workers: int = 2) -> None:
    """What ``_exercise`` did, counted once whichever worker served it."""
    def moved(name: str, **labels: str) -> float:
        key = frozenset(labels.items())
        return counts(text, name).get(key, 0.0) - counts(before, name).get(key, 0.0)

    assert moved("http_requests_total", method="GET", path="/health/live", status="200") \
        == LIVE_REQUESTS
    assert moved("favorites_operations_total", operation="add", status="success") == 3
    assert moved("favorites_operations_total", operation="register_product",
                 status="success") == 3
    assert counts(text, "favorites_active_users")[frozenset()] >= 1
    assert counts(text, "db_connections_max")[frozenset({"pool": "primary"}.items())] \
        == workers * 50


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(tmp_path_factory.mktemp("workers"))


@pytest.fixture(scope="module", params=[2, 1], ids=["2-workers", "1-worker"])
def served_production(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    yield from _serve(tmp_path_factory.mktemp("production"), request.param,
                      FAVORITES_ENV="production")


def test_metrics_add_up_across_two_workers(served: Server) -> None:
    before = httpx.get(f"{served.base}/metrics").text
    _exercise(served)
    assert len(_workers_that_served(served.metrics_dir)) == 2, "both workers took requests"
    # Whichever worker answers the scrape, it reports every worker's counts.
    for _ in range(6):
        _check_totals(before, _scrape(f"{served.base}/metrics"))


def test_every_line_the_server_writes_is_json(served: Server) -> None:
    user = _exercise(served)
    # INFO lines reach the file in batches (at most a quarter of a second later).
    deadline = time.monotonic() + 10
    while True:
        text = served.log.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line]  # all JSON, or this fails
        adds = [line for line in lines
                if line["operation"] == "addFavorite" and line["userId"] == str(user)]
        if len(adds) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(adds) == 3
    assert "uvicorn.error" in {line.get("logger") for line in lines}  # parent's and workers'
    assert {"httpRequest", "registerProduct"} <= {line["operation"] for line in lines}


def test_production_serves_metrics_on_the_admin_port_only(served_production: Server) -> None:
    assert served_production.admin is not None
    before = httpx.get(f"{served_production.admin}/metrics").text
    _exercise(served_production)
    assert httpx.get(f"{served_production.base}/metrics").status_code == 404
    assert httpx.get(f"{served_production.base}/docs").status_code == 404
    assert httpx.get(f"{served_production.admin}/metrics").status_code == 200
    _check_totals(before, _scrape(f"{served_production.admin}/metrics"),
                  served_production.workers)
