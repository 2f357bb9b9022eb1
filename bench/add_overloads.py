"""PostgreSQL's cost of ``favorites_add()``'s revoked-token check: the 12-argument overload
(migration 0005) against the 13-argument one (0007, which looks the token up in
``revoked_tokens`` under the user's lock), interleaved in blocks, each call a new favorite of a
new user, on one connection. Reports the wall time per call and the backend's CPU per call (from
``/proc``, in clock ticks: 10 ms per 1,000 calls is 10 µs per call of resolution)::

    .venv/bin/python -m bench.add_overloads \\
        --database-url postgresql://postgres@127.0.0.1:5432/favorites_bench_1m

Needs the seeded bench database migrated to 0007 (``favorites migrate up``); it adds favorites
(and audit rows) for new random users, which the next seed removes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.common import DEFAULT_DATABASE_URL

OLD = "SELECT result FROM favorites_add($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
NEW = "SELECT result FROM favorites_add($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"


def backend_cpu(pid: int) -> float:
    """utime + stime of a PostgreSQL backend on this machine, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def block(conn: Any, new: bool, calls: int, products: list[uuid.UUID]) -> float:
    started = time.perf_counter()
    for i in range(calls):
        user = uuid.uuid4()
        args: list[Any] = [hash(user) & 0x7FFF_FFFF_FFFF_FFFF, user, products[i % len(products)],
                           datetime.now(UTC), 10_000, str(user), "user", "favorite.added",
                           str(user), "bench", "success", True]
        if new:
            args.append(uuid.uuid4().hex)
        result = await conn.fetchval(NEW if new else OLD, *args)
        assert result == "created", result
    return (time.perf_counter() - started) / calls * 1e6


async def main(args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(args.database_url.replace("postgresql://", "postgres://", 1))
    products = [row[0] for row in await conn.fetch(
        "SELECT product_id FROM products WHERE deleted_at IS NULL LIMIT 1000")]
    revoked = await conn.fetchval("SELECT count(*) FROM revoked_tokens")
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for new in ((False, True) if round_ % 2 == 0 else (True, False)):
            before = backend_cpu(pid)
            wall[new].append(await block(conn, new, args.calls, products))
            cpu[new].append((backend_cpu(pid) - before) / args.calls * 1e6)
    await conn.close()
    print(f"{args.rounds} interleaved blocks of {args.calls} calls each; {revoked} rows in "
          "revoked_tokens")
    for new, name in ((False, "12 arguments (0005)"), (True, "13 arguments (0007)")):
        print(f"{name}: wall {statistics.median(wall[new]):.1f} µs/call (median; "
              f"{min(wall[new]):.0f}-{max(wall[new]):.0f}), backend CPU "
              f"{statistics.median(cpu[new]):.1f} µs/call (median)")
    print(f"ratio 0007/0005: wall {statistics.median(wall[True]) / statistics.median(wall[False]):.3f},"
          f" backend CPU {statistics.median(cpu[True]) / statistics.median(cpu[False]):.3f}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--calls", type=int, default=1000, help="calls per block")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
