"""The closed-loop comparison of the performance targets, side by side in one run.

    python -m bench.compare [--rounds 5] [--slice 10] [--mixed-cache cold|steady]

Starts a bare hello world (``bench.hello``) and the service, both through ``favorites serve``'s
own uvicorn settings and worker count, side by side on two ports, then measures in turn, round
after round: hello world, cached list reads (first pages of ``--hot-users`` users) and the mixed
traffic (80 % list, 10 % add, 5 % remove, 5 % contains over every seeded user), each for
``--slice`` seconds with ``--connections`` connections flat out.

Why interleaved slices rather than one long run per scenario: on a shared machine the same hello
world varies by up to 1.7x within the hour, so a ratio of two runs minutes apart measures the
host as much as the service. Each round's ratio here divides two slices seconds apart, and the
spread of the per-round figures says how far to trust their median.

``--mixed-cache cold`` empties the Redis database of ``FAVORITES_REDIS_URL`` before every mixed
slice (nearly every list of 200,000 users then misses: the worst case, right after a flush);
``steady`` empties it once, sends the mixed traffic for ``--steady-warmup`` seconds (600: a page
lives 300 s ± 10 % from its load, and until the first ones expire the hit ratio is higher than the
traffic can keep) so the cache holds what this traffic keeps in it, and never empties it again
(the state of a service that has been up for a while). That warm-up is reported window by window
(``--steady-window``), outside the rounds: how its rate and hit ratio settle says whether it was
long enough, and its last windows are the same traffic without interleaving. The hello and cached-list slices
between two mixed slices would let entries expire that continuous mixed traffic renews: in steady
mode every mixed slice after the first follows ``--steady-topup`` seconds of unmeasured mixed
traffic. The hit ratio of every slice is reported beside its throughput.

Writes ``<stamp>-compare-<mixed-cache>.json`` and ``.md`` under ``--results-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, run
from bench.common import DEFAULT_DATABASE_URL, check_bench_database, database_name
from bench.loadgen import (
    DEFAULT_MIX,
    LIST,
    ConnectionPool,
    FavoritesWorkload,
    HelloWorkload,
    Recorder,
    Workload,
    closed_loop,
    mint_tokens,
)
from bench.procstats import Sampler

SCENARIOS = ("hello", "list-cached", "mixed")
#: The issue's targets, checked against the medians.
TARGET_LIST_RATIO = 0.40
TARGET_MIXED_RATE = 3000.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compare",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds of the three slices (5)")
    p.add_argument("--slice", type=float, default=10.0, help="measured seconds per slice (10)")
    p.add_argument("--connections", type=int, default=64, help="connections per slice (64)")
    p.add_argument("--mixed-cache", choices=("cold", "steady"), default="cold",
                   help="cold: empty Redis before every mixed slice; steady: once, then "
                        "--steady-warmup s of unmeasured mixed traffic")
    p.add_argument("--steady-warmup", type=float, default=600.0,
                   help="steady: seconds of mixed traffic before the first round (600: two "
                        "lives of a cached page, so that some have expired and been reloaded)")
    p.add_argument("--steady-window", type=float, default=60.0,
                   help="steady: the warm-up is measured in windows this long, each reported "
                        "(60): whether the rate still climbs at its end says whether the "
                        "warm-up was long enough")
    p.add_argument("--steady-topup", type=float, default=60.0,
                   help="steady: seconds of unmeasured mixed traffic before every mixed slice "
                        "after the first (60)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="unmeasured seconds of each scenario before the first round (3)")
    p.add_argument("--hot-users", type=int, default=100,
                   help="users the cached list reads repeat over (100)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers of each server (2)")
    p.add_argument("--port", type=int, default=18000, help="first port tried (18000-18099)")
    p.add_argument("--database-url",
                   default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
                   help="bench database, already seeded (python -m bench.seed)")
    p.add_argument("--reseed", action="store_true",
                   help="load the bench database's seed again first, so that the run starts "
                        "from the seeded data (the mixed traffic adds more than it removes; the "
                        "data at the start is recorded either way)")
    p.add_argument("--results-dir", type=Path, default=run.RESULTS)
    p.add_argument("--random-seed", type=int, default=None,
                   help="seed of the traffic generator (default: a new one each run; see "
                        "bench.run --help)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds")
    p.add_argument("--pg-headroom", type=int, default=60,
                   help="PostgreSQL connections the service's pools must leave to others (60)")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="SECONDS",
                   help="wait up to this long for the machine to be quiet first (60)")
    p.add_argument("--quiet-threshold", type=float, default=30.0)
    return p


async def measure(server: run.Server, workload: Workload, connections: int, seconds: float,
                  request_timeout: float, database: str | None) -> dict[str, Any]:
    """One closed-loop slice against ``server``: throughput, latency, CPU and cache hits."""
    pool = ConnectionPool(run.HOST, server.port, connections, request_timeout, Recorder())
    pool.start()
    try:
        await pool.open(connections)
        gc.collect()
        gc.freeze()  # the generator's own collector pauses are not the server's latency
        cache0 = run.cache_counters(server.port) if database else {}
        sampler = Sampler(server.proc.pid if server.proc else None, database)
        sampler.start()
        try:
            recorder = await closed_loop(pool, workload, connections, seconds)
        finally:
            resources = await sampler.stop()
            gc.unfreeze()
        cache1 = run.cache_counters(server.port) if database else {}
    finally:
        await pool.close()
    summary = report.summarize(recorder, mode="closed", target_rate=None, duration=seconds)
    n = max(1, summary["requests"])
    hits = run.hit_ratios(cache0, cache1).get("favorites_page") if cache1 else None
    return {
        "rate": summary["achieved_rate"],
        "requests": summary["requests"],
        "errors": summary["errors"],
        "errors_by_kind": summary["errors_by_kind"],
        "statuses": summary["statuses"],
        "repeated_adds": report.repeated_adds(summary["statuses"]),
        "p50_ms": summary["latency"].get("p50_ms"),
        "p99_ms": summary["latency"].get("p99_ms"),
        "page_hit_ratio": hits["hit_ratio"] if hits else None,
        "cpu_ms_per_request": {
            "server": round(resources["server_cpu_seconds"] * 1000 / n, 3),
            "postgres": round(resources["postgres_cpu_seconds"] * 1000 / n, 3),
            "generator": round(resources["generator_cpu_seconds"] * 1000 / n, 3),
        },
        "cpu_pct": {key: resources[f"{key}_cpu_pct"]
                    for key in ("server", "postgres", "generator", "other", "machine")},
        "peak_worker_rss_mib": resources["peak_worker_rss_mib"],
    }


def combine(windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Consecutive windows of one closed loop as one: rates over the whole time; the page hit
    ratio and CPU per request weighted by each window's requests (the traffic's mix is the same
    in each, so its share of lists is too)."""
    requests = sum(w["requests"] for w in windows)
    seconds = sum(w["to_s"] - w["from_s"] for w in windows)
    weight = max(1, requests)
    hits = [(w["page_hit_ratio"], w["requests"]) for w in windows
            if w["page_hit_ratio"] is not None]
    rss = [w["peak_worker_rss_mib"] for w in windows if w["peak_worker_rss_mib"] is not None]
    return {
        "rate": round(requests / seconds, 1) if seconds else 0.0,
        "requests": requests,
        "errors": sum(w["errors"] for w in windows),
        "page_hit_ratio": round(sum(h * n for h, n in hits) / max(1, sum(n for _, n in hits)), 3)
        if hits else None,
        "cpu_ms_per_request": {
            key: round(sum(w["cpu_ms_per_request"][key] * w["requests"] for w in windows)
                       / weight, 3)
            for key in ("server", "postgres", "generator")},
        "peak_worker_rss_mib": max(rss) if rss else None,
    }


def summarize_rounds(rounds: Sequence[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-round ratios and the medians, with the targets' verdicts."""
    ratios = [r["list-cached"]["rate"] / r["hello"]["rate"] for r in rounds
              if r["hello"]["rate"]]
    mixed = [r["mixed"]["rate"] for r in rounds]
    hits = [r["mixed"]["page_hit_ratio"] for r in rounds
            if r["mixed"]["page_hit_ratio"] is not None]
    errors = sum(r[s]["errors"] for r in rounds for s in SCENARIOS)
    median_ratio = statistics.median(ratios) if ratios else 0.0
    median_mixed = statistics.median(mixed) if mixed else 0.0
    return {
        "list_to_hello": [round(x, 3) for x in ratios],
        "list_to_hello_median": round(median_ratio, 3),
        "mixed_rate": mixed,
        "mixed_rate_median": round(median_mixed, 1),
        "mixed_page_hit_ratio": hits,
        "errors": errors,
        "targets": {
            "list_to_hello_at_least": TARGET_LIST_RATIO,
            "list_to_hello_met": median_ratio >= TARGET_LIST_RATIO,
            "list_to_hello_rounds_met": sum(x >= TARGET_LIST_RATIO for x in ratios),
            "mixed_rate_at_least": TARGET_MIXED_RATE,
            "mixed_rate_met": median_mixed >= TARGET_MIXED_RATE,
            "mixed_rate_rounds_met": sum(x >= TARGET_MIXED_RATE for x in mixed),
        },
    }


def table(result: dict[str, Any]) -> list[str]:
    """The per-round figures and the medians, as Markdown."""
    lines = [
        "| round | hello req/s | cached list req/s | list / hello | mixed req/s | "
        "mixed page hits | server CPU ms per request (hello · list · mixed) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result["rounds"], 1):
        h, li, m = r["hello"], r["list-cached"], r["mixed"]
        hit = f"{100 * m['page_hit_ratio']:.1f} %" if m["page_hit_ratio"] is not None else "?"
        cpu = " · ".join(f"{x['cpu_ms_per_request']['server']:.3f}" for x in (h, li, m))
        errors = h["errors"] + li["errors"] + m["errors"]
        lines.append(f"| {i} | {h['rate']:,.0f} | {li['rate']:,.0f} | "
                     f"{100 * li['rate'] / h['rate'] if h['rate'] else 0:.1f} % | "
                     f"{m['rate']:,.0f} | {hit} | {cpu} | {errors} |")
    s = result["summary"]
    t = s["targets"]
    n = len(result["rounds"])
    lines += [
        "",
        f"- cached list / hello world: median **{100 * s['list_to_hello_median']:.1f} %** "
        f"(target ≥ {100 * TARGET_LIST_RATIO:.0f} %: "
        f"{'met' if t['list_to_hello_met'] else 'not met'}, {t['list_to_hello_rounds_met']} of "
        f"{n} rounds)",
        f"- mixed traffic ({result['config']['mixed_cache']} cache): median "
        f"**{s['mixed_rate_median']:,.0f} req/s** (target ≥ {TARGET_MIXED_RATE:,.0f}: "
        f"{'met' if t['mixed_rate_met'] else 'not met'}, {t['mixed_rate_rounds_met']} of {n} "
        f"rounds)",
        f"- errors: {s['errors']}",
    ]
    windows = result.get("steady_warmup_windows")
    if windows:
        lines += ["", "The steady state's warm-up (mixed traffic from an emptied Redis, not "
                  "interleaved), window by window:", "",
                  "| seconds | mixed req/s | page hits | server CPU ms per request |",
                  "|---|---|---|---|"]
        lines += [f"| {w['from_s']:g}-{w['to_s']:g} | {w['rate']:,.0f} | "
                  + (f"{100 * w['page_hit_ratio']:.1f} %" if w["page_hit_ratio"] is not None
                     else "?")
                  + f" | {w['cpu_ms_per_request']['server']:.3f} |" for w in windows]
    repeated = [r["mixed"].get("repeated_adds") for r in result["rounds"]]
    if any(x is not None and x > report.REPEATED_ADDS for x in repeated):
        lines.append("- REPEATED WRITES: adds found their favorite already there in "
                     + ", ".join(f"{100 * x:.0f} %" for x in repeated if x is not None)
                     + " of the mixed slices' adds: cheaper writes than new traffic's")
    return lines


async def compare(args: argparse.Namespace, hello: run.Server, service: run.Server,
                  shape: Any, context: dict[str, Any]) -> dict[str, Any]:
    database = database_name(args.database_url)
    redis_url = os.environ.get("FAVORITES_REDIS_URL")
    started = time.perf_counter()
    tokens = mint_tokens(list(range(shape.users)))
    print(f"minted {len(tokens):,} access tokens in {time.perf_counter() - started:.1f} s")
    service_host = f"{run.HOST}:{service.port}"
    hot = range(min(args.hot_users, shape.users))
    workloads: dict[str, tuple[run.Server, Workload, str | None]] = {
        "hello": (hello, HelloWorkload(f"{run.HOST}:{hello.port}"), None),
        "list-cached": (service, FavoritesWorkload(
            "list-cached", service_host, shape, hot, ((LIST, 1.0),), seed=args.random_seed,
            tokens={u: tokens[u] for u in hot}), database),
        "mixed": (service, FavoritesWorkload(
            "mixed", service_host, shape, range(shape.users), DEFAULT_MIX,
            seed=args.random_seed, tokens=tokens), database),
    }
    for name in SCENARIOS:
        server, workload, _ = workloads[name]
        print(f"warm-up: {name} {args.warmup:g} s")
        await measure(server, workload, args.connections, args.warmup, args.timeout, None)
    if args.mixed_cache == "steady":
        run.flush_redis(redis_url or "")
        print(f"steady state: Redis emptied, {args.steady_warmup:g} s of mixed traffic ...")
        server, workload, _ = workloads["mixed"]
        windows = []
        elapsed = 0.0
        while elapsed < args.steady_warmup:
            seconds = min(args.steady_window, args.steady_warmup - elapsed)
            window = await measure(server, workload, args.connections, seconds, args.timeout,
                                   database)
            window["from_s"], window["to_s"] = elapsed, elapsed + seconds
            elapsed += seconds
            print(f"  {window['from_s']:g}-{window['to_s']:g} s: {window['rate']:,.0f} req/s, "
                  f"page hits {window['page_hit_ratio']}")
            windows.append(window)
        warm = combine(windows)
        print(f"  in all: {warm['rate']:,.0f} req/s, page hits {warm['page_hit_ratio']}")
        context["steady_warmup_result"] = warm
        context["steady_warmup_windows"] = windows
    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(args.rounds):
        current: dict[str, dict[str, Any]] = {}
        for name in SCENARIOS:
            server, workload, db = workloads[name]
            if name == "mixed" and args.mixed_cache == "cold":
                run.flush_redis(redis_url or "")
            elif name == "mixed" and i > 0:
                # The hello and cached-list slices since the last mixed slice let entries
                # expire that continuous mixed traffic would have renewed.
                await measure(server, workload, args.connections, args.steady_topup,
                              args.timeout, None)
            current[name] = await measure(server, workload, args.connections, args.slice,
                                          args.timeout, db)
        h, li, m = current["hello"], current["list-cached"], current["mixed"]
        print(f"round {i + 1}: hello {h['rate']:,.0f} · cached list {li['rate']:,.0f} "
              f"({100 * li['rate'] / h['rate'] if h['rate'] else 0:.1f} %) · mixed "
              f"{m['rate']:,.0f} req/s (page hits {m['page_hit_ratio']}), errors "
              f"{h['errors'] + li['errors'] + m['errors']}")
        rounds.append(current)
    return {**context, "rounds": rounds, "summary": summarize_rounds(rounds)}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_bench_database(args.database_url)
    if args.random_seed is None:
        args.random_seed = run.fresh_seed()
    if args.rounds < 1 or args.slice <= 0 or args.connections < 1:
        raise SystemExit("bench.compare: --rounds, --slice and --connections must be positive")
    if "FAVORITES_REDIS_URL" not in os.environ:
        raise SystemExit("bench.compare: set FAVORITES_REDIS_URL to a Redis database of the "
                         "bench's own (the cold and steady states empty it)")
    command = shlex.join([".venv/bin/python", "-m", "bench.compare",
                          *(sys.argv[1:] if argv is None else argv)])
    print(f"$ {command}")
    from bench import seed

    shape = asyncio.run(seed.current_shape(args.database_url))
    if shape is None:
        raise SystemExit("bench.compare: the bench database holds no complete seed; run "
                         "python -m bench.seed --users 200000 --per-user 50 first")
    print(f"seed: {shape.users:,} users x {shape.per_user} ({shape.favorites:,} favorites)")
    if args.reseed:
        seed.seed(args.database_url, shape)
    data = asyncio.run(seed.data_state(args.database_url))
    print(f"data at the start: {data['favorites']:,} favorites, "
          f"{data['users_over_a_page']:,} users holding more than a page")
    machine = run.machine_info()
    machine["background_cpu_pct_before"] = run.wait_quiet(args.wait_quiet,
                                                          args.quiet_threshold)
    hello = run.Server("hello", args.workers, run.free_port(args.port), args.database_url)
    hello_port = hello.port
    service = run.Server("mixed", args.workers,
                         run.free_port(hello_port + 1), args.database_url)
    try:
        return _run(args, command, shape, data, machine, hello, service)
    finally:
        try:
            hello.cleanup()
        finally:
            service.cleanup()


def _run(args: argparse.Namespace, command: str, shape: Any, data: dict[str, int],
         machine: dict[str, Any], hello: run.Server, service: run.Server) -> int:
    budget = argparse.Namespace(database_url=args.database_url, pg_headroom=args.pg_headroom,
                                workers=args.workers)
    database_pool = run.pool_budget(budget, service)
    started_at = datetime.now(UTC)
    context: dict[str, Any] = {
        "command": command,
        "git": run.git_info(),
        "machine": machine,
        "started_at": started_at.isoformat(timespec="seconds"),
        "seed": f"{shape.favorites:,} favorites ({shape.users:,} users x {shape.per_user}), "
                f"{shape.products:,} products",
        "data_at_start": data,
        "servers": {"hello": shlex.join(hello.command), "service": shlex.join(service.command),
                    "service_env": service.reported_env(), "database_pool": database_pool},
        "config": {"rounds": args.rounds, "slice_s": args.slice,
                   "connections": args.connections, "mixed_cache": args.mixed_cache,
                   "steady_warmup_s": args.steady_warmup if args.mixed_cache == "steady"
                   else None,
                   "steady_window_s": args.steady_window if args.mixed_cache == "steady"
                   else None,
                   "steady_topup_s": args.steady_topup if args.mixed_cache == "steady" else None,
                   "hot_users": args.hot_users, "workers": args.workers,
                   "random_seed": args.random_seed, "reseeded": args.reseed},
    }
    import uvloop

    print(f"starting bench.hello on {run.HOST}:{hello.port} and favorites on "
          f"{run.HOST}:{service.port}, {args.workers} workers each")
    hello.start()
    service.start()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(compare(args, hello, service, shape, context))
    hello.stop()
    service.stop()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{started_at.strftime('%Y%m%dT%H%M%SZ')}-compare-{args.mixed_cache}"
    json_path = args.results_dir / f"{stem}.json"
    committed = report.relative_paths(result, report.repository_roots(result))
    json_path.write_text(json.dumps(committed, indent=1) + "\n", encoding="utf-8")
    lines = table(result)
    md_path = args.results_dir / f"{stem}.md"
    md_path.write_text("\n".join([
        f"# Closed-loop comparison, {args.mixed_cache} cache", "", f"`{command}`", "",
        f"- when: {result['started_at']} (git {result['git']['commit'][:12]}"
        f"{', uncommitted changes' if result['git'].get('dirty') else ''})",
        f"- machine: {machine['nproc']} cores, {machine.get('cpu_model', '?')}, kernel "
        f"{machine['kernel']}",
        f"- data: {result['seed']}; {args.connections} connections, {args.slice:g} s slices, "
        f"{args.workers} workers per server",
        f"- data at the start: {data['favorites']:,} favorites, "
        f"{data['users_over_a_page']:,} users holding more than a page"
        f"{' (reseeded first)' if args.reseed else ''}", "", *lines, ""]), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
