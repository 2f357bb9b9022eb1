"""``make bench``: seed PostgreSQL if needed, start the service, load it, report.

    python -m bench.run [--rate 1000] [--duration 60] [--users 20000] [--per-user 50]
                        [--workers 2] [--skip-seed] [--mode open|closed]
                        [--scenario mixed|list-cached|hello] [--connections 64]

``--rate``, ``--duration`` and ``--connections`` take comma-separated lists: each combination is a
step, run one after the other against the same server, each with its own result files.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import importlib.metadata
import itertools
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.common import (
    DEFAULT_DATABASE_URL,
    JWT_AUDIENCE,
    JWT_ISSUER,
    JWT_SECRET,
    SeedShape,
    check_bench_database,
    database_name,
)
from bench.loadgen import (
    LIST,
    ConnectionPool,
    FavoritesWorkload,
    HelloWorkload,
    Recorder,
    Workload,
    closed_loop,
    mint_tokens,
    open_loop,
)
from bench.procstats import Sampler, background_cpu_pct

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
PORTS = range(18000, 18100)
#: Variables the bench must control (the tokens it mints must verify; the database is its own).
FORCED_UNSET = ("FAVORITES_JWT_ALGORITHM", "FAVORITES_JWT_PRIVATE_KEY_FILE",
                "FAVORITES_JWT_PUBLIC_KEY_FILES", "FAVORITES_JWT_SECRET_FILE",
                "FAVORITES_DATABASE_URL_FILE")


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", choices=("mixed", "list-cached", "hello"), default="mixed",
                   help="mixed: 80%% list, 10%% add, 5%% remove, 5%% contains over all users; "
                        "list-cached: first-page lists over --hot-users users; hello: bare FastAPI")
    p.add_argument("--mode", choices=("open", "closed"), default="open",
                   help="open: fixed rate; closed: --connections connections flat out")
    p.add_argument("--rate", type=_floats, default=[1000.0],
                   help="open loop: requests/s, comma-separated for several steps (default 1000)")
    p.add_argument("--duration", type=_floats, default=[60.0],
                   help="seconds measured per step, comma-separated list allowed (default 60)")
    p.add_argument("--connections", type=_ints, default=[64],
                   help="closed loop: concurrent connections, comma-separated list allowed (64)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open loop: connection cap; requests beyond it wait, and that wait counts")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first (5)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds")
    p.add_argument("--users", type=int, default=20_000, help="seeded users (default 20000)")
    p.add_argument("--active-users", type=int, default=0,
                   help="mixed traffic over the first N seeded users only (default: all); the "
                        "same N on a 1 M and a 10 M seed sends the same requests to both, so "
                        "only the table size differs")
    p.add_argument("--per-user", type=int, default=50, help="favorites per user (default 50)")
    p.add_argument("--products", type=int, default=100_000, help="product pool (default 100000)")
    p.add_argument("--hot-users", type=int, default=100,
                   help="list-cached: how many users the reads repeat over (default 100)")
    p.add_argument("--skip-seed", action="store_true",
                   help="use the data already in the bench database, whatever its shape")
    p.add_argument("--reseed", action="store_true", help="seed even if the shape already matches")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    p.add_argument("--port", type=int, default=18000, help="first port to try (18000-18099)")
    p.add_argument("--database-url",
                   default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
                   help="bench database; its name must contain 'bench'")
    p.add_argument("--results-dir", type=Path, default=RESULTS,
                   help="where result JSON/PNG and latest.md go (default bench/results)")
    p.add_argument("--max-requests", type=int, default=10_000_000,
                   help="closed loop: stop after this many requests even before --duration")
    p.add_argument("--random-seed", type=int, default=None,
                   help="seed of the traffic generator (default: a new one each run, printed and "
                        "recorded; the same seed sends the same requests, and a run that repeats "
                        "an earlier run's adds finds them done: cheaper writes)")
    p.add_argument("--pg-headroom", type=int, default=60,
                   help="PostgreSQL connections the server's pools must leave to other clients "
                        "(default 60; see FAVORITES_DATABASE_POOL_MAX in bench/README.md)")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="SECONDS",
                   help="before starting, wait up to this long (default 60) for the machine's "
                        "other CPU use to drop under --quiet-threshold; 0: just measure it")
    p.add_argument("--cold-cache", action="store_true",
                   help="FLUSHDB the Redis database of FAVORITES_REDIS_URL before each step, so "
                        "runs start equally cold (destructive: use a database of its own)")
    p.add_argument("--prewarm", action="store_true",
                   help="read the bench database's tables and indexes into the operating "
                        "system's page cache before each step (pg_prewarm), as on a database "
                        "server sized for its data; without it, on a host that reclaims the "
                        "page cache, cold reads measure the disk (see bench/README.md)")
    p.add_argument("--redis-outage", type=_floats, default=None, metavar="START,END",
                   help="stop the Redis server of FAVORITES_REDIS_URL (SIGSTOP: it hangs, like "
                        "a frozen host) from START to END seconds into each measured step, then "
                        "resume it (SIGCONT); the result gets latency during and after")
    p.add_argument("--quiet-threshold", type=float, default=30.0,
                   help="%% of one core other processes may use for the machine to count as quiet")
    return p


# --------------------------------------------------------------------------------------------
# Environment facts
# --------------------------------------------------------------------------------------------


def _run_text(args: list[str], cwd: Path = ROOT) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def git_info() -> dict[str, Any]:
    """The commit of the service code under test: where ``favorites`` is imported from, which is
    what the server runs too (``PYTHONPATH`` passes through), e.g. an older release's worktree
    for a before/after comparison."""
    import favorites

    src = Path(favorites.__file__).resolve().parent.parent
    # --no-optional-locks: read-only, never refreshes .git/index.
    commit = _run_text(["git", "--no-optional-locks", "rev-parse", "HEAD"], src) or "unknown"
    status = _run_text(["git", "--no-optional-locks", "status", "--porcelain", "--", "."], src)
    # The generator and its reports are code too: a comparison of two versions of the bench
    # (same service, another load generator) is told apart by this.
    here = Path(__file__).resolve().parent
    bench_status = _run_text(["git", "--no-optional-locks", "status", "--porcelain", "--", "."],
                             here)
    bench = {"commit": _run_text(["git", "--no-optional-locks", "rev-parse", "HEAD"], here)
             or "unknown", "dirty": bool(bench_status)}
    return {"commit": commit, "dirty": bool(status), "dirty_files": status.splitlines()[:20],
            "code": str(src), "bench": bench}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": int(_run_text(["nproc"]) or os.cpu_count() or 0),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    for package in ("fastapi", "uvicorn", "starlette", "sqlalchemy", "asyncpg", "uvloop",
                    "httptools"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    return info


async def database_counters(url: str) -> dict[str, int]:
    """pg_stat_database for the bench database: sessions opened, commits, rollbacks, blocks."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT sessions, xact_commit, xact_rollback, blks_read, blks_hit, tup_returned, "
            "tup_inserted, tup_deleted FROM pg_stat_database WHERE datname = current_database()")
        return {key: int(value) for key, value in dict(row).items()} if row else {}
    finally:
        await conn.close()


async def prewarm(url: str) -> dict[str, Any]:
    """Read every table and index of the bench database into the OS page cache (pg_prewarm's
    ``read`` mode: not into shared_buffers, which are far smaller than a 10 M seed)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    started = time.perf_counter()
    try:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except asyncpg.PostgresError as exc:
            raise SystemExit(f"bench: --prewarm needs the pg_prewarm extension: {exc}") from exc
        blocks = await conn.fetchval(
            "SELECT coalesce(sum(pg_prewarm(c.oid, 'read')), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')")
    finally:
        await conn.close()
    return {"blocks": int(blocks), "seconds": round(time.perf_counter() - started, 2)}


def cache_counters(port: int) -> dict[str, float]:
    """``cache_requests_total`` from the server's own /metrics, as ``"cache_name/result"``.

    The hit ratio decides what a run measures: a list served from the cache costs a fraction of
    one that misses, so two runs are only comparable with their ratios beside them.
    """
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return {}  # production mode serves /metrics on the admin port only
    finally:
        conn.close()
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "cache_requests":
            for sample in family.samples:
                if sample.name == "cache_requests_total":
                    key = f"{sample.labels['cache_name']}/{sample.labels['result']}"
                    counters[key] = counters.get(key, 0) + sample.value
    return counters


def hit_ratios(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per cache: lookups in the step and the share that hit."""
    delta = {key: after[key] - before.get(key, 0) for key in after}
    caches: dict[str, dict[str, float]] = {}
    for key, value in delta.items():
        name, result = key.split("/", 1)
        caches.setdefault(name, {"hit": 0, "miss": 0, "error": 0})[result] = value
    return {name: {"lookups": sum(c.values()),
                   "hit_ratio": round(c["hit"] / sum(c.values()), 3) if sum(c.values()) else 0.0}
            for name, c in caches.items()}


async def connection_budget(url: str) -> tuple[int, int]:
    """(max_connections, connections in use now) of the PostgreSQL server."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
        used = int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                       "WHERE backend_type = 'client backend'"))
        return limit - reserved, used
    finally:
        await conn.close()


def pool_budget(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    """Keep the server's connection pools inside PostgreSQL's max_connections.

    The service's default pool (max 50 per worker) times 2 workers is 100 connections, PostgreSQL's
    default max_connections: an overloaded bench would take every slot and other clients of the
    same server (other people's test suites) would get "too many clients". Unless the caller sets
    FAVORITES_DATABASE_POOL_MAX, cap it so the workers together leave ``--pg-headroom`` slots.
    """
    limit, used = asyncio.run(connection_budget(args.database_url))
    info: dict[str, Any] = {"max_connections_usable": limit, "in_use_before": used,
                            "headroom": args.pg_headroom}
    if "FAVORITES_DATABASE_POOL_MAX" in os.environ:
        info["pool_max"] = os.environ["FAVORITES_DATABASE_POOL_MAX"] + " (from the environment)"
        return info
    service_default = 50
    cap = max(1, (limit - args.pg_headroom) // args.workers)
    if cap < service_default:
        server.extra_env["FAVORITES_DATABASE_POOL_MAX"] = str(cap)
        if "FAVORITES_DATABASE_POOL_MIN" not in os.environ:
            server.extra_env["FAVORITES_DATABASE_POOL_MIN"] = str(min(10, cap))
        print(f"capping each worker's database pool at {cap} connections (service default "
              f"{service_default}) to leave {args.pg_headroom} of PostgreSQL's {limit} "
              f"connections to other clients; set FAVORITES_DATABASE_POOL_MAX to override")
        info["pool_max"] = f"{cap} (capped by the bench; service default {service_default})"
    else:
        info["pool_max"] = f"{service_default} (service default)"
    return info


async def postgres_version(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------------


def free_port(first: int) -> int:
    for port in range(max(first, PORTS.start), PORTS.stop):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is fine
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise SystemExit("bench: no free port in 18000-18099")


class Server:
    """``favorites serve`` (or the hello app through it) as a subprocess in its own session."""

    def __init__(self, scenario: str, workers: int, port: int, database_url: str):
        self.scenario = scenario
        self.workers = workers
        self.port = port
        self.database_url = database_url
        self.tmp = tempfile.TemporaryDirectory(prefix="favorites-bench-")
        self.log_path = Path(self.tmp.name) / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Settings the runner adds unless the caller set them (see ``pool_budget``).
        self.extra_env: dict[str, str] = {}
        bin_dir = Path(sys.executable).parent
        serve_args = ["--host", HOST, "--port", str(port), "--workers", str(workers)]
        if scenario == "hello":
            self.command = [sys.executable, "-m", "bench.hello", *serve_args]
        else:
            self.command = [str(bin_dir / "favorites"), "serve", *serve_args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in FORCED_UNSET}
        env.update(self.extra_env)
        env.update({
            "FAVORITES_DATABASE_URL": self.database_url,
            "FAVORITES_JWT_SECRET": JWT_SECRET,
            "FAVORITES_JWT_ISSUER": JWT_ISSUER,
            "FAVORITES_JWT_AUDIENCE": JWT_AUDIENCE,
            "FAVORITES_RATE_LIMIT": "100000000/minute",
            "FAVORITES_ENV": "test",
            "FAVORITES_DATA_DIR": self.tmp.name,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        })
        return env

    def reported_env(self) -> dict[str, str]:
        """The FAVORITES_* the server got, secrets masked, for the result file."""
        out = {}
        for key, value in sorted(self.environment().items()):
            if key.startswith("FAVORITES_"):
                secret = any(word in key for word in ("SECRET", "KEY", "CLIENTS", "PASSWORD"))
                out[key] = "***" if secret else value
        return out

    def start(self, ready_timeout: float = 60.0) -> None:
        log = self.log_path.open("wb")
        # cwd is the temporary directory: no stray ./var, and no .env from the work tree.
        self.proc = subprocess.Popen(self.command, cwd=self.tmp.name, env=self.environment(),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: the server exited with {self.proc.returncode}:\n"
                                 + self.log_tail())
            if self._ready():
                return
            time.sleep(0.2)
        self.stop()
        raise SystemExit("bench: the server was not ready in time:\n" + self.log_tail())

    def _ready(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", "/health/ready")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(max(0, self.log_size() - 65536))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self, start: int, limit: int = 12) -> dict[str, Any]:
        """Warning/error lines written since byte ``start``: counts by message, and the first
        few distinct ones with the end of their stack trace (where the exception is)."""
        counts: dict[str, int] = {}
        samples: list[dict[str, Any]] = []
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(start)
                for raw in handle:
                    line = raw.decode("utf-8", "replace").rstrip()
                    # The service's own lines say "WARN" (the seed's level names); other
                    # libraries' lines, "WARNING".
                    if not any(mark in line for mark in (
                            '"level":"WARN', '"level":"ERROR"', '"level":"CRITICAL"',
                            "Traceback", "ERROR:", "WARNING:")):
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        record = {"message": line[:500]}
                    key = f"{record.get('level', '?')} {record.get('message', '?')}"[:200]
                    counts[key] = counts.get(key, 0) + 1
                    if counts[key] == 1 and len(samples) < limit:
                        sample = {k: record[k] for k in ("timestamp", "level", "message",
                                                         "operation", "durationMs") if k in record}
                        if record.get("stackTrace"):
                            sample["stackTraceEnd"] = str(record["stackTrace"])[-1500:]
                        samples.append(sample)
        except OSError:
            pass
        return {"counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])), "samples": samples}

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: the server and its workers
                proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        self.tmp.cleanup()


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def wait_quiet(patience: float, threshold: float) -> float:
    """Measure (and optionally wait for) the CPU other processes use before the run."""
    deadline = time.monotonic() + patience
    while True:
        busy = background_cpu_pct(2.0)
        if busy <= threshold or time.monotonic() >= deadline:
            break
        print(f"machine busy ({busy:.0f} % of a core used by other processes); waiting ...")
    note = "" if busy <= threshold else "  <- NOT QUIET: figures will be pessimistic and noisy"
    print(f"CPU used by other processes before the run: {busy:.0f} % of one core{note}")
    return busy


def ensure_seed(args: argparse.Namespace) -> SeedShape:
    from bench import seed

    url = args.database_url
    wanted = SeedShape(args.users, args.per_user, args.products)
    asyncio.run(seed.ensure_database(url))
    seed.migrate(url)
    current = asyncio.run(seed.current_shape(url))
    if args.skip_seed:
        if current is None:
            raise SystemExit("bench: --skip-seed but the bench database holds no complete seed")
        print(f"using the existing seed: {current.users:,} users x {current.per_user} "
              f"({current.favorites:,} favorites, {current.products:,} products)")
        return current
    if current == wanted and not args.reseed:
        print(f"bench database already seeded with {wanted.favorites:,} favorites "
              f"({wanted.users:,} users x {wanted.per_user}); --reseed to load it again")
        return wanted
    seed.seed(url, wanted)
    return wanted


def make_workload(args: argparse.Namespace, shape: SeedShape | None, host: str) -> Workload:
    if args.scenario == "hello":
        return HelloWorkload(host)
    assert shape is not None
    if args.scenario == "list-cached":
        users = range(min(args.hot_users, shape.users))
        mix: tuple[tuple[int, float], ...] = ((LIST, 1.0),)
    else:
        users = range(min(args.active_users or shape.users, shape.users))
        mix = ((LIST, 0.80), (1, 0.10), (2, 0.05), (3, 0.05))
    started = time.perf_counter()
    tokens = mint_tokens(list(users))
    print(f"minted {len(tokens):,} access tokens in {time.perf_counter() - started:.1f} s")
    return FavoritesWorkload(args.scenario, host, shape, users, mix, seed=args.random_seed,
                             tokens=tokens)


def steps(args: argparse.Namespace) -> list[tuple[float, float]]:
    """(rate or connections, duration) for each step."""
    loads: list[float] = list(args.rate) if args.mode == "open" else [float(c) for c in args.connections]
    return list(itertools.product(loads, args.duration))


def command_line() -> str:
    return shlex.join([".venv/bin/python", "-m", "bench.run", *sys.argv[1:]])


async def drive(args: argparse.Namespace, server: Server, shape: SeedShape | None,
                context: dict[str, Any]) -> list[dict[str, Any]]:
    host = f"{HOST}:{server.port}"
    workload = make_workload(args, shape, host)
    plan = steps(args)
    recorder = Recorder()
    pool = ConnectionPool(HOST, server.port, args.max_connections, args.timeout, recorder)
    pool.start()
    results = []
    database = database_name(args.database_url) if args.scenario != "hello" else None
    try:
        # What the server burns with no traffic at all (background tasks, supervisor), so the
        # per-request figures can be read net of it.
        idle = Sampler(server.proc.pid if server.proc else None, database)
        idle.start()
        await asyncio.sleep(3)
        idle_resources = await idle.stop()
        context["server_idle_cpu_pct"] = idle_resources["server_cpu_pct"]
        print(f"server CPU with no traffic: {idle_resources['server_cpu_pct']} % of a core")
        first_load, _ = plan[0]
        if args.warmup > 0:
            print(f"warm-up {args.warmup:g} s ...")
            warm_log_start = server.log_size()
            if args.mode == "open":
                await open_loop(pool, workload, first_load, args.warmup)
            else:
                await closed_loop(pool, workload, int(first_load), args.warmup)
            warm = report.summarize(recorder, mode=args.mode, target_rate=None,
                                    duration=args.warmup)
            print(f"warm-up: {warm['requests']:,} requests, {warm['errors']} errors, "
                  f"p50 {warm['latency'].get('p50_ms', 0):.1f} ms")
            if warm["errors"]:
                print("  first errors: " + "\n  ".join(warm["error_samples"][:3]))
            # What the server warned about while warming up (a breaker that opened, a cache
            # dropped) explains the step that follows, so it is reported, not left unmeasured.
            warm_problems = server.log_problems(warm_log_start)
            context["warmup_server_log_problems"] = warm_problems
            for message, count in warm_problems["counts"].items():
                print(f"  server during warm-up: {count} x {message}")
        for load, duration in plan:
            if args.mode == "closed":
                await pool.close()
                pool = ConnectionPool(HOST, server.port, int(load), args.timeout, Recorder())
                pool.start()
                await pool.open(int(load))
            pool.recorder = Recorder()
            if args.cold_cache:
                flush_redis(os.environ["FAVORITES_REDIS_URL"])
            warmed = await prewarm(args.database_url) if args.prewarm and database else None
            if warmed:
                print(f"prewarmed the page cache: {warmed['blocks'] * 8 / 1024:,.0f} MiB "
                      f"in {warmed['seconds']} s")
            label = (f"{load:g} req/s" if args.mode == "open" else f"{int(load)} connections")
            print(f"measuring {args.scenario}, {args.mode} loop, {label}, {duration:g} s ...")
            gc.collect()
            gc.freeze()
            sampler = Sampler(server.proc.pid if server.proc else None, database)
            counters0 = await database_counters(args.database_url) if database else {}
            cache0 = cache_counters(server.port) if database else {}
            log_start = server.log_size()
            started_at = datetime.now(UTC)
            sampler.start()
            outage = None
            if args.redis_outage:
                outage = asyncio.create_task(redis_outage(redis_pid(
                    os.environ["FAVORITES_REDIS_URL"]), *args.redis_outage))
            try:
                if args.mode == "open":
                    rec = await open_loop(pool, workload, load, duration)
                else:
                    rec = await closed_loop(pool, workload, int(load), duration,
                                            args.max_requests)
            finally:
                if outage is not None:
                    outage.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await outage
            resources = await sampler.stop()
            gc.unfreeze()
            log_bytes = server.log_size() - log_start
            counters1 = await database_counters(args.database_url) if database else {}
            cache1 = cache_counters(server.port) if database else {}
            # Our own two counter reads add one session each side; the rest is the server's.
            db_delta = {k: counters1[k] - counters0.get(k, 0) for k in counters1}
            summary = report.summarize(rec, mode=args.mode,
                                       target_rate=load if args.mode == "open" else None,
                                       duration=duration)
            n = max(1, summary["requests"])
            result = {
                **context,
                "scenario": args.scenario,
                "started_at": started_at.isoformat(timespec="seconds"),
                "config": {**context["config"],
                           "rate": load if args.mode == "open" else None,
                           "connections": int(load) if args.mode == "closed" else None,
                           "max_connections": args.max_connections if args.mode == "open" else None,
                           "duration": duration},
                "prewarm": warmed,
                "summary": summary,
                "resources": resources,
                "cpu_ms_per_request": {
                    "server": round(resources["server_cpu_seconds"] * 1000 / n, 3),
                    "postgres": round(resources["postgres_cpu_seconds"] * 1000 / n, 3),
                    "generator": round(resources["generator_cpu_seconds"] * 1000 / n, 3),
                },
            }
            result["postgres_stats"] = {
                **db_delta,
                "sessions_per_1000_requests": round(1000 * db_delta.get("sessions", 0) / n, 2),
                "commits_per_request": round(db_delta.get("xact_commit", 0) / n, 3),
            }
            if cache1:
                result["cache"] = hit_ratios(cache0, cache1)
            result["server_log"] = {
                "bytes": log_bytes,
                "bytes_per_request": round(log_bytes / n, 1),
                "problems": server.log_problems(log_start),
            }
            if args.redis_outage:
                start, end = args.redis_outage
                result["redis_outage"] = {"signal": "SIGSTOP then SIGCONT",
                                          **report.during(rec, start, end)}
            if summary["errors"]:
                result["server_log"]["tail"] = server.log_tail(20).splitlines()
            stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
            tag = f"{load:g}" if args.mode == "open" else f"c{int(load)}"
            json_path, png_path = report.write(result, args.results_dir,
                                               f"{stamp}-{args.scenario}-{args.mode}-{tag}")
            print("\n".join(report.headline(result)))
            print(f"wrote {_rel(json_path)} and {_rel(png_path)}\n")
            results.append(result)
    finally:
        await pool.close()
    return results


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


def redis_pid(url: str) -> int:
    """The pid of the (loopback) Redis server behind ``url``, to stop and resume it."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        info = client.info("server")
    finally:
        client.close()
    host = client.connection_pool.connection_kwargs.get("host", "127.0.0.1")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("bench: --redis-outage only stops a Redis on this machine")
    return int(info["process_id"])


async def redis_outage(pid: int, start: float, end: float) -> None:
    """SIGSTOP ``pid`` at ``start`` s, SIGCONT at ``end`` s; always resumes it if cancelled."""
    try:
        await asyncio.sleep(start)
        os.kill(pid, signal.SIGSTOP)
        print(f"  Redis (pid {pid}) stopped at {start:g} s")
        await asyncio.sleep(end - start)
    finally:
        os.kill(pid, signal.SIGCONT)
    print(f"  Redis resumed at {end:g} s")


def fresh_seed() -> int:
    """A traffic seed no earlier run is likely to have used: a run that repeats another's adds
    finds them already done (200, nothing inserted, nothing invalidated) and measures cheaper
    writes than real traffic has."""
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"traffic seed: {seed} (--random-seed {seed} sends the same requests again)")
    return seed


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options that shape the traffic, for the result's JSON. ``active_users`` is the mixed
    traffic's (None: all seeded users), the one that tells a 1 M against 10 M pair's runs apart."""
    return {"mode": args.mode, "workers": args.workers, "warmup": args.warmup,
            "timeout": args.timeout,
            "hot_users": args.hot_users,
            "active_users": (args.active_users or None) if args.scenario == "mixed" else None,
            "random_seed": args.random_seed}


def check_redis_options(args: argparse.Namespace) -> None:
    """Refuse before seeding, starting and warming a server what would only fail after."""
    if (args.cold_cache or args.redis_outage) and "FAVORITES_REDIS_URL" not in os.environ:
        raise SystemExit("bench: --cold-cache and --redis-outage need FAVORITES_REDIS_URL")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_redis_options(args)
    check_bench_database(args.database_url)
    if args.random_seed is None:
        args.random_seed = fresh_seed()
    if args.workers < 1 or args.max_connections < 1 or min(args.connections) < 1:
        raise SystemExit("bench: --workers, --connections and --max-connections must be >= 1")
    if min(args.rate) <= 0 or min(args.duration) <= 0:
        raise SystemExit("bench: --rate and --duration must be positive")
    print(f"$ {command_line()}")
    shape: SeedShape | None = None
    seed_info = None
    if args.scenario != "hello":
        shape = ensure_seed(args)
        seed_info = (f"{shape.favorites:,} favorites ({shape.users:,} users x {shape.per_user}), "
                     f"{shape.products:,} products")
    machine = machine_info()
    machine["background_cpu_pct_before"] = wait_quiet(args.wait_quiet, args.quiet_threshold)
    machine["postgres"] = asyncio.run(postgres_version(args.database_url)) if shape else None
    server = Server(args.scenario, args.workers, free_port(args.port), args.database_url)
    database_pool = pool_budget(args, server) if shape else None
    context: dict[str, Any] = {
        "command": command_line(),
        "git": git_info(),
        "machine": machine,
        "seed": seed_info,
        "server": {"command": shlex.join(server.command), "env": server.reported_env(),
                   "database_pool": database_pool},
        "config": run_config(args),
    }
    import uvloop

    try:
        print(f"starting {server.command[0] if args.scenario != 'hello' else 'bench.hello'} "
              f"on {HOST}:{server.port} with {args.workers} workers")
        server.start()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(drive(args, server, shape, context))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
