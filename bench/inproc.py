"""CPU per request of the app itself, in process: for before/after comparisons on a noisy machine.

The HTTP benchmark (``bench.run``) measures what a client sees, but on a shared 2-core machine its
throughput moves by 30 % between identical runs. This drives the ASGI app directly (no sockets,
no uvicorn, no load generator competing for the CPU) with the same requests the benchmark sends,
``K`` at a time, and reports the process CPU time per request: the app's middleware, routing,
handlers, and the client side of its PostgreSQL and Redis calls. Run it once per variant,
alternating, and compare the medians::

    FAVORITES_REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python -m bench.inproc \\
        --scenario list-cached --requests 20000 --rounds 5 > /dev/null

The service's JSON logs go to standard output as in production (send them to /dev/null); the
figures go to standard error. Uses the seeded bench database (``bench.seed``); writes no files.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import DEFAULT_DATABASE_URL, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, SeedShape
from bench.loadgen import ADD, CONTAINS, DEFAULT_MIX, LIST, REMOVE, FavoritesWorkload, mint_tokens

KINDS = {"list": LIST, "add": ADD, "remove": REMOVE, "contains": CONTAINS}

Message = MutableMapping[str, Any]


def scope_of(raw: bytes) -> dict[str, Any]:
    """An ASGI HTTP scope from the raw request bytes the load generator would send."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    method, target, _ = head[0].split(b" ")
    parts = urlsplit(target.decode())
    headers = [(name.strip().lower(), value.strip())
               for name, value in (line.split(b":", 1) for line in head[1:])]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method.decode(), "scheme": "http", "path": parts.path,
            "raw_path": parts.path.encode(), "query_string": parts.query.encode(),
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000)}


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def call(app: Callable[..., Awaitable[None]], scope: dict[str, Any]) -> int:
    status = 0

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), _receive, send)
    return status


async def run(args: argparse.Namespace) -> list[float]:
    from favorites.config import Settings
    from favorites.entrypoints.http.app import create_app

    shape = SeedShape(users=args.users, per_user=50, products=100_000)
    users = range(min(args.hot_users, shape.users)) if args.scenario == "list-cached" \
        else range(shape.users)
    mix: tuple[tuple[int, float], ...] = DEFAULT_MIX
    if args.scenario == "list-cached":
        mix = ((LIST, 1.0),)
    elif args.only:
        mix = ((KINDS[args.only], 1.0),)
    workload = FavoritesWorkload(args.scenario, "bench", shape, users, mix,
                                 tokens=mint_tokens(list(users)))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, env="test", database_url=args.database_url, jwt_secret=JWT_SECRET,
        jwt_issuer=JWT_ISSUER, jwt_audience=JWT_AUDIENCE, rate_limit="100000000/minute",
        data_dir=Path(tempfile.mkdtemp(prefix="favorites-inproc-")),
        redis_url=os.environ.get("FAVORITES_REDIS_URL"), database_pool_max=args.concurrency,
    )
    app = create_app(settings)
    per_request: list[float] = []
    profiler = cProfile.Profile() if args.profile else None
    async with app.router.lifespan_context(app):
        scopes = [scope_of(workload.next()[1]) for _ in range(args.requests)]
        failures = 0

        async def worker(queue: Iterator[dict[str, Any]]) -> None:
            nonlocal failures
            for scope in queue:  # shared: each request is taken by one worker
                if await call(app, scope) >= 500:
                    failures += 1

        for round_ in range(args.rounds + 1):  # the first round warms caches and pools
            if args.fresh and round_:
                scopes = [scope_of(workload.next()[1]) for _ in range(args.requests)]
            queue, failures = iter(scopes), 0
            gc.collect()
            if profiler is not None and round_ == 1:
                profiler.enable()
            cpu, wall = time.process_time(), time.perf_counter()
            workers = asyncio.gather(*(worker(queue) for _ in range(args.concurrency)))
            try:
                await asyncio.wait_for(asyncio.shield(workers), args.round_timeout)
            except TimeoutError:
                for task in asyncio.all_tasks():  # where the stuck requests wait
                    task.print_stack(limit=12, file=sys.stderr)
                raise SystemExit(
                    f"round {round_} did not finish in {args.round_timeout:g} s") from None
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if profiler is not None and round_ == args.rounds:
                profiler.disable()
                profiler.dump_stats(args.profile)
            if round_ == 0:
                continue
            per_request.append(cpu / args.requests * 1e6)
            print(f"round {round_}: {per_request[-1]:.0f} µs CPU per request, "
                  f"{args.requests / wall:,.0f} req/s in one process, {failures} failures",
                  file=sys.stderr)
    return per_request


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=["list-cached", "mixed"], default="list-cached")
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    p.add_argument("--users", type=int, default=200_000, help="users in the seed")
    p.add_argument("--hot-users", type=int, default=100)
    p.add_argument("--requests", type=int, default=10_000, help="per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--fresh", action="store_true",
                   help="new requests every round (mixed: mostly cache misses, as over HTTP with "
                        "200,000 users) instead of the same ones again (then cached)")
    p.add_argument("--only", choices=sorted(KINDS),
                   help="mixed: send only this kind of request, for its own CPU per request")
    p.add_argument("--profile", metavar="FILE",
                   help="write cProfile statistics of the measured rounds to FILE (inflates the "
                        "CPU figures; its call counts per request are exact)")
    p.add_argument("--round-timeout", type=float, default=120,
                   help="a round still running after this long is a hang: print where every "
                        "task waits and stop")
    args = p.parse_args()
    results = asyncio.run(run(args))
    # The minimum is the round least disturbed by other tenants of the machine.
    print(f"median {statistics.median(results):.0f}, min {min(results):.0f} µs CPU per request "
          f"({args.scenario}, {args.rounds} rounds of {args.requests:,})", file=sys.stderr)


if __name__ == "__main__":
    main()
