"""Figures from a Recorder, the JSON/PNG files under bench/results/ and ``latest.md``."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import KIND_NAMES, PSEUDO_STATUS, Recorder

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (the value at least p % of samples reach)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_s: list[float]) -> dict[str, float]:
    values = sorted(latencies_s)
    if not values:
        return {"count": 0}
    out: dict[str, float] = {"count": len(values)}
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = round(percentile(values, p) * 1000, 3)
    out["max_ms"] = round(values[-1] * 1000, 3)
    out["mean_ms"] = round(sum(values) / len(values) * 1000, 3)
    return out


def during(rec: Recorder, start: float, end: float) -> dict[str, Any]:
    """Latency and errors of the requests due in ``[start, end)`` seconds of the step (e.g. while
    Redis was stopped), and of the same length of time right after it (the recovery)."""
    def summary(lo: float, hi: float) -> dict[str, Any]:
        picked = [(lat, status) for due, lat, status in zip(rec.due, rec.latency, rec.status,
                                                              strict=True) if lo <= due < hi]
        return {"window_s": [lo, hi],
                "errors": sum(1 for _, status in picked if not 200 <= status < 300),
                "latency": latency_summary([lat for lat, _ in picked])}
    return {"during": summary(start, end), "after": summary(end, 2 * end - start)}


def status_name(status: int) -> str:
    return PSEUDO_STATUS.get(status, str(status))


def summarize(rec: Recorder, *, mode: str, target_rate: float | None,
              duration: float) -> dict[str, Any]:
    n = len(rec.latency)
    ok = [200 <= s < 300 for s in rec.status]
    ok_count = sum(ok)
    done = [d + lat for d, lat in zip(rec.due, rec.latency, strict=True)]
    span = max(duration, max(done, default=0.0))
    errors: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    by_kind: dict[int, list[float]] = defaultdict(list)
    for kind, status, lat, good in zip(rec.kind, rec.status, rec.latency, ok, strict=True):
        statuses[f"{KIND_NAMES[kind]} {status_name(status)}"] += 1
        by_kind[kind].append(lat)
        if not good:
            errors[f"{KIND_NAMES[kind]} {status_name(status)}"] += 1
    summary: dict[str, Any] = {
        "mode": mode,
        "target_rate": target_rate,
        "duration_s": duration,
        "requests": n,
        "sent": rec.sent,
        "ok": ok_count,
        "errors": n - ok_count,
        "error_rate_pct": round(100 * (n - ok_count) / n, 4) if n else 0.0,
        "errors_by_kind": dict(errors.most_common()),
        "statuses": dict(sorted(statuses.items())),
        "achieved_rate": round(ok_count / span, 1) if span else 0.0,
        "answered_rate": round(sum(1 for s in rec.status if s > 0) / span, 1) if span else 0.0,
        "span_s": round(span, 3),
        "latency": latency_summary(list(rec.latency)),
        "latency_by_kind": {KIND_NAMES[k]: latency_summary(v) for k, v in sorted(by_kind.items())},
        "connections_opened": rec.connections_opened,
        "max_queue": rec.max_queue,
        "error_samples": rec.error_samples,
    }
    if rec.handed_late:  # open loop
        summary["generator_lateness"] = latency_summary(list(rec.handed_late))
    summary["windows"] = windows(rec, done)
    return summary


def windows(rec: Recorder, done: list[float], width: float = 1.0) -> list[dict[str, float | None]]:
    """Per ``width`` seconds: latency percentiles by due time, answers by completion time."""
    by_due: dict[int, list[float]] = defaultdict(list)
    answered: Counter[int] = Counter()
    errors: Counter[int] = Counter()
    for due, lat, status, end in zip(rec.due, rec.latency, rec.status, done, strict=True):
        by_due[int(due // width)].append(lat)
        if not 200 <= status < 300:
            errors[int(due // width)] += 1
        else:
            answered[int(end // width)] += 1
    last = max([*by_due, *answered], default=-1)
    out = []
    for w in range(last + 1):
        values = sorted(by_due.get(w, []))
        out.append({
            "t": w * width,
            "sent": len(values),
            "ok_per_s": answered.get(w, 0) / width,
            "errors": errors.get(w, 0),
            "p50_ms": round(percentile(values, 50) * 1000, 3) if values else None,
            "p99_ms": round(percentile(values, 99) * 1000, 3) if values else None,
            "max_ms": round(values[-1] * 1000, 3) if values else None,
        })
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    s = result["summary"]
    wins = s["windows"]
    series = result.get("resources", {}).get("series", [])
    io_series = [p for p in series if p.get("io_stall_ms") is not None]
    panels = 4 if io_series else 3 if series else 2
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), sharex=True)
    ax = axes[0]
    t = [w["t"] + 0.5 for w in wins]
    for key, label, style in (("p50_ms", "p50", "-"), ("p99_ms", "p99", "-"),
                              ("max_ms", "max", ":")):
        ys = [w[key] if w[key] is not None else math.nan for w in wins]
        ax.plot(t, ys, style, label=label)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("latency per 1 s window (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    rate = "closed loop" if s["mode"] == "closed" else f"{s['target_rate']:g} req/s offered"
    lat = s["latency"]
    ax.set_title(
        f"{result['scenario']} / {rate} / {result['config']['workers']} workers: "
        f"p50 {lat.get('p50_ms', math.nan):.1f} p99 {lat.get('p99_ms', math.nan):.1f} "
        f"max {lat.get('max_ms', math.nan):.0f} ms, {s['errors']} errors", fontsize=10)
    ax = axes[1]
    ax.plot(t, [w["ok_per_s"] for w in wins], label="2xx answers/s")
    if s["target_rate"]:
        ax.axhline(s["target_rate"], color="grey", linestyle="--", label="target")
    errs = [w["errors"] for w in wins]
    if any(errs):
        ax.bar(t, errs, width=0.8, color="red", alpha=0.5, label="errors (by due time)")
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    if series:
        ax = axes[2]
        ts = [p["t"] for p in series]
        for key, label in (("server_cpu_pct", "server"), ("postgres_cpu_pct", "postgres"),
                           ("generator_cpu_pct", "generator"), ("other_cpu_pct", "other"),
                           ("machine_cpu_pct", "machine")):
            ax.plot(ts, [p[key] for p in series], label=label)
        ax.set_ylabel("CPU % (100 = one core)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", ncol=5, fontsize=8)
    if io_series:
        ax = axes[3]
        ts = [p["t"] for p in io_series]
        ax.plot(ts, [p["io_stall_ms"] for p in io_series], label="I/O wait, ms per s (PSI some)")
        ax.plot(ts, [p["disk_reads_per_s"] for p in io_series], label="disk reads/s")
        ax.axhline(IO_STALL_MS, color="grey", linestyle=":", linewidth=0.8)
        ax.set_ylabel("disk")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    outage = result.get("redis_outage")
    if outage:
        lo, hi = outage["during"]["window_s"]
        for each in axes:
            each.axvspan(lo, hi, color="orange", alpha=0.15, label="_Redis stopped")
        axes[0].text(lo, 0.98, " Redis stopped", transform=axes[0].get_xaxis_transform(),
                     va="top", fontsize=8)
    axes[-1].set_xlabel("seconds since t0 (latency by due time)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


REPO = Path(__file__).resolve().parents[1]


def repository_roots(result: dict[str, Any]) -> tuple[str, ...]:
    """This repository's root, and that of the service code the run served when it is another
    tree (a before/after run serves an older commit from a ``git worktree``), longest first."""
    roots = {str(REPO)}
    code = result.get("git", {}).get("code")
    if isinstance(code, str) and Path(code).is_absolute():
        roots.add(str(Path(code).parent))
    return tuple(sorted(roots, key=len, reverse=True))


def relative_paths(value: Any, roots: Sequence[str] = (str(REPO),)) -> Any:
    """Results are committed: paths are written relative to the repository (or to the tree of
    the code served, see ``repository_roots``), not to this machine."""
    if isinstance(value, str):
        for root in roots:
            value = value.replace(f"{root}/", "").replace(root, ".")
        return value
    if isinstance(value, dict):
        return {k: relative_paths(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, roots) for v in value]
    return value


def write(result: dict[str, Any], results_dir: Path, stem: str) -> tuple[Path, Path]:
    result = relative_paths(result, repository_roots(result))
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{stem}.json"
    png_path = results_dir / f"{stem}.png"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    tmp.replace(json_path)
    plot(result, png_path)
    write_latest(result, results_dir / "latest.md", json_path.name, png_path.name)
    return json_path, png_path


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def headline(result: dict[str, Any]) -> list[str]:
    """The summary lines printed after a run (also the core of latest.md)."""
    s = result["summary"]
    r = result.get("resources", {})
    lat = s["latency"]
    offered = ("closed loop, " + f"{result['config']['connections']} connections"
               if s["mode"] == "closed" else f"{s['target_rate']:g} req/s offered")
    lines = [
        f"scenario {result['scenario']}, {offered}, {s['duration_s']:g} s, "
        f"{result['config']['workers']} server workers",
        f"achieved {s['achieved_rate']:,.1f} req/s (2xx), {s['requests']:,} requests, "
        f"{s['errors']:,} errors ({s['error_rate_pct']:g} %)",
        "latency ms: " + "  ".join(
            f"{k.removesuffix('_ms')} {_fmt(lat.get(k))}"
            for k in ("p50_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms")),
    ]
    for kind, kl in s["latency_by_kind"].items():
        lines.append(f"  {kind:<9} n={kl['count']:<7,} p50 {_fmt(kl.get('p50_ms'))}  "
                     f"p95 {_fmt(kl.get('p95_ms'))}  p99 {_fmt(kl.get('p99_ms'))}  "
                     f"max {_fmt(kl.get('max_ms'))}")
    late = s.get("generator_lateness")
    if late:
        lines.append(f"generator: each request handed over p50 {late['p50_ms']:.2f}, p99 "
                     f"{late['p99_ms']:.2f}, max {late['max_ms']:,.2f} ms after it was due "
                     "(included in the latencies above)")
    outage = result.get("redis_outage")
    if outage:
        for phase in ("during", "after"):
            part = outage[phase]
            lo, hi = part["window_s"]
            pl = part["latency"]
            label = "Redis stopped" if phase == "during" else "Redis back"
            lines.append(f"{label} {lo:g}-{hi:g} s: {pl.get('count', 0):,} requests,"
                         f" {part['errors']} errors, p50 {_fmt(pl.get('p50_ms'))}  p99 "
                         f"{_fmt(pl.get('p99_ms'))}  max {_fmt(pl.get('max_ms'))}")
    caches = result.get("cache")
    if caches:
        lines.append("cache hit ratio: " + ", ".join(
            f"{name} {c['hit_ratio'] * 100:.1f} % of {int(c['lookups']):,}"
            for name, c in sorted(caches.items()) if c["lookups"]))
    if s["errors_by_kind"]:
        lines.append("errors: " + ", ".join(f"{k} x{v}" for k, v in s["errors_by_kind"].items()))
    if r:
        per_req = result.get("cpu_ms_per_request", {})
        lines.append(
            f"CPU (% of one core, {r['machine_cpu_capacity_pct']} = whole machine): server "
            f"{r['server_cpu_pct']} %, postgres {r['postgres_cpu_pct']} %, generator "
            f"{r['generator_cpu_pct']} %, other processes {r['other_cpu_pct']} %, "
            f"machine {r['machine_cpu_pct']} %")
        shares = r.get("worker_cpu_pct") or []
        if len(shares) > 1:
            line = "worker CPU (% of one core): " + ", ".join(f"{x:g}" for x in shares)
            if min(shares) < 0.5 * max(shares):
                # The workers share one listening socket; a burst of new connections can all
                # land on one of them, and then the run measures one core, not the machine.
                line += "  UNBALANCED: one worker took most connections; repeat the run"
            lines.append(line)
        if per_req:
            idle = result.get("server_idle_cpu_pct")
            lines.append("CPU ms per request: " + ", ".join(f"{k} {v}" for k, v in per_req.items())
                         + (f" (server idle: {idle} % of a core)" if idle is not None else ""))
        if r.get("server_processes"):
            lines.append(f"server peak RSS: worker VmHWM max {r['peak_worker_rss_mib']} MiB, "
                         f"all server processes together {r['peak_server_rss_sum_mib']} MiB")
        lines += _disk_lines(r, s.get("windows") or [])
        warmed = result.get("prewarm")
        if warmed:
            lines.append(f"page cache prewarmed before the step (--prewarm): "
                         f"{warmed['blocks'] * 8 / 1024:,.0f} MiB in {warmed['seconds']} s")
    repeated = repeated_adds(s.get("statuses", {}))
    if repeated is not None and repeated > REPEATED_ADDS:
        lines.append(f"REPEATED WRITES: {100 * repeated:.0f} % of adds found their favorite "
                     "already there (200): this traffic was sent before, and its writes cost less "
                     "than new ones (no insert, no invalidation); use a new --random-seed or "
                     "--reseed")
    pg = result.get("postgres_stats")
    if pg:
        lines.append(f"postgres: about {pg.get('sessions', 0):,} new connections "
                     f"({pg['sessions_per_1000_requests']} per 1000 requests)")
    log = result.get("server_log")
    if log:
        problems = log["problems"]["counts"]
        lines.append(f"server log: {log['bytes_per_request']} bytes per request, "
                     f"{sum(problems.values())} warning/error lines")
        for message, count in list(problems.items())[:5]:
            lines.append(f"  {count:>6} x {message[:110]}")
    return lines


#: Above this share of adds answered 200 (already a favorite), a run repeated an earlier one's
#: writes: the mixed traffic adds products users almost never hold, so a new run answers 201.
REPEATED_ADDS = 0.05


def repeated_adds(statuses: dict[str, int]) -> float | None:
    """The share of adds that found their favorite already there; None without adds."""
    done = statuses.get("add 200", 0)
    total = done + statuses.get("add 201", 0)
    return done / total if total else None


#: A second in which processes waited this long for the disk was the disk's, not the server's.
IO_STALL_MS = 100.0


def _io_stall_near(series: list[dict[str, Any]], t: float) -> float | None:
    """The longest I/O wait in the sample covering the window at ``t`` or the next one: a stall
    holds up the requests due in it, and those due just before that are still in flight."""
    near = [p["io_stall_ms"] for p in series
            if t < p["t"] <= t + 2 and p.get("io_stall_ms") is not None]
    return max(near, default=None)


def _disk_lines(r: dict[str, Any], wins: list[dict[str, Any]]) -> list[str]:
    if "disk_reads_per_s" not in r:
        return []  # a result from before these figures were recorded
    stall, worst = r.get("io_stall_ms_per_s"), r.get("io_stall_worst_second_ms")
    line = (f"disk: {r['disk_reads_per_s']:,.1f} reads/s, {r['disk_writes_per_s']:,.1f} writes/s"
            + (f"; processes waited for I/O {stall} ms per s (PSI some), worst second {worst} ms"
               if stall is not None else "; no pressure stall information on this kernel"))
    if worst is not None and worst >= IO_STALL_MS:
        line += "  I/O STALLS: the disk held processes up; see the slowest seconds"
    lines = [line]
    timed = [w for w in wins if w.get("p99_ms") is not None]
    if timed and stall is not None:
        slowest = sorted(timed, key=lambda w: w["p99_ms"], reverse=True)[:5]
        lines.append("slowest seconds (p99 ms / longest I/O wait ms then): " + ", ".join(
            f"t={w['t']:g} {w['p99_ms']:,.1f} / {_fmt(_io_stall_near(r['series'], w['t']))}"
            for w in slowest))
    return lines


def write_latest(result: dict[str, Any], path: Path, json_name: str, png_name: str) -> None:
    s = result["summary"]
    lat = s["latency"]
    lines = [
        "# Latest benchmark run",
        "",
        f"`{result['command']}`",
        "",
        f"- when: {result['started_at']} (git {result['git']['commit'][:12]}"
        f"{', uncommitted changes' if result['git'].get('dirty') else ''})",
        f"- machine: {result['machine']['nproc']} cores, {result['machine'].get('cpu_model', '?')}, "
        f"load average before the run {result['machine'].get('loadavg_before', '?')}",
        f"- data: {result.get('seed') or 'n/a'}",
        f"- files: [{json_name}]({json_name}), [{png_name}]({png_name})",
        "",
        "| figure | value |",
        "|---|---|",
        f"| mode | {s['mode']} |",
        f"| offered rate | {_fmt(s['target_rate'], ' req/s') if s['target_rate'] else 'closed loop'} |",
        f"| achieved rate (2xx) | {_fmt(s['achieved_rate'], ' req/s')} |",
        f"| requests / errors | {s['requests']:,} / {s['errors']:,} ({s['error_rate_pct']:g} %) |",
    ]
    for key in ("p50_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms"):
        lines.append(f"| {key.removesuffix('_ms')} | {_fmt(lat.get(key), ' ms')} |")
    r = result.get("resources", {})
    if r:
        lines += [
            f"| server CPU | {r['server_cpu_pct']} % of a core ({r['server_cpu_seconds']} s) |",
            f"| PostgreSQL CPU | {r['postgres_cpu_pct']} % of a core |",
            f"| generator CPU | {r['generator_cpu_pct']} % of a core |",
            f"| other processes' CPU | {r['other_cpu_pct']} % of a core |",
            f"| machine CPU | {r['machine_cpu_pct']} % of {r['machine_cpu_capacity_pct']} % |",
        ]
        if r.get("server_processes"):
            lines.append(f"| peak worker RSS (VmHWM) | {r['peak_worker_rss_mib']} MiB |")
    if s["errors_by_kind"]:
        lines.append(f"| errors by kind | {', '.join(f'{k} x{v}' for k, v in s['errors_by_kind'].items())} |")
    lines += ["", "```", *headline(result), "```", "", f"![latency over time]({png_name})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
