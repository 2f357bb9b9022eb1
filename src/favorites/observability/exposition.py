"""``/metrics``: the catalogue in Prometheus text format, one worker or many.

Without ``PROMETHEUS_MULTIPROC_DIR`` the process's own registry is served. With it (``favorites
serve`` always sets it), every scrape aggregates all workers' files with ``MultiProcessCollector``,
so whichever worker (or the ``serve`` parent on the admin port) answers, the counts add up.
Two gauges are computed at scrape time: ``cache_hit_ratio`` from ``cache_requests_total`` over
the last five minutes, and ``favorites_active_users`` from the workers' recent users. Families
without samples are still announced (HELP/TYPE), so dashboards and alert rules can be loaded
before the first cache lookup or rate-limited request.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from favorites.observability import metrics
from favorites.observability.active_users import ActiveUsers, tracker
from favorites.observability.multiproc import directory as multiprocess_dir

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
RATIO_WINDOW_SECONDS = 300.0
_LIVE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_workers(directory: Path) -> None:
    """Drop the live gauges of workers that died without their shutdown (a crash, a kill -9)."""
    me = os.getpid()
    dead: set[int] = set()
    for entry in directory.iterdir():
        match = _LIVE_FILE.match(entry.name)
        if match and int(match.group(1)) != me and not _pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class _HitRatio:
    """hits / lookups over about the last ``window`` seconds, from snapshots taken at scrapes."""

    def __init__(self, window: float = RATIO_WINDOW_SECONDS):
        self.window = window
        self._history: dict[str, deque[tuple[float, float, float]]] = {}
        self._lock = threading.Lock()

    def ratio(self, cache_name: str, hits: float, total: float) -> float | None:
        now = time.monotonic()
        with self._lock:
            history = self._history.setdefault(cache_name, deque())
            if history and total < history[-1][2]:
                history.clear()  # the counters were reset
            history.append((now, hits, total))
            # Keep exactly one snapshot older than the window as the baseline.
            while len(history) > 2 and history[1][0] <= now - self.window:
                history.popleft()
            base_hits, base_total = (0.0, 0.0) if len(history) == 1 else history[0][1:]
        lookups = total - base_total
        return None if lookups <= 0 else (hits - base_hits) / lookups


class _Exposition(Collector):
    """Everything a scrape returns: the source families plus the computed gauges."""

    def __init__(self, source: Callable[[], Iterable[Metric]], active_users: ActiveUsers,
                 directory: Path | None):
        self._source = source
        self._active_users = active_users
        self._directory = directory
        self._ratio = _HitRatio()

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self._directory is not None:
            with contextlib.suppress(OSError):
                _forget_dead_workers(self._directory)
        families = list(self._source())
        present = {family.name for family in families}
        yield from families
        for metric in metrics.CATALOGUE:
            for family in metric.describe():
                if family.name not in present:
                    yield family
        yield self._hit_ratio(families)
        yield GaugeMetricFamily(metrics.ACTIVE_USERS,
                                "Distinct users seen in the last 5 minutes by this instance.",
                                value=self._active_users.count())

    def _hit_ratio(self, families: list[Metric]) -> GaugeMetricFamily:
        counts: dict[str, list[float]] = {}
        for family in families:
            if family.name != "cache_requests":
                continue
            for sample in family.samples:
                if sample.name != "cache_requests_total":
                    continue
                hits_total = counts.setdefault(sample.labels["cache_name"], [0.0, 0.0])
                hits_total[1] += sample.value
                if sample.labels["result"] == "hit":
                    hits_total[0] += sample.value
        gauge = GaugeMetricFamily(
            metrics.CACHE_HIT_RATIO, "Cache hits / lookups over about the last 5 minutes.",
            labels=["cache_name"],
        )
        for name in sorted(counts):
            ratio = self._ratio.ratio(name, *counts[name])
            if ratio is not None:
                gauge.add_metric([name], ratio)
        return gauge


def scrape_registry(active_users: ActiveUsers) -> CollectorRegistry:
    """The registry a scrape reads: this process's, or every worker's in multiprocess mode."""
    directory = multiprocess_dir()
    source: Callable[[], Iterable[Metric]]
    if directory is None:
        source = REGISTRY.collect
    else:
        collector = multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            None, str(directory))
        source = collector.collect
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Exposition(source, active_users, directory))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def start_admin_server(port: int, host: str) -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` (all workers aggregated) on the admin port from this process."""
    from prometheus_client import make_wsgi_app, start_http_server

    registry = scrape_registry(tracker())
    server, thread = start_http_server(port, addr=host, registry=registry)
    server.set_app(metrics_only(make_wsgi_app(registry)))
    return server, thread


def metrics_only(app: WSGIApplication) -> WSGIApplication:
    """prometheus-client's server answers every path with the metrics; the admin port answers
    ``/metrics`` only, so a mistyped scrape path or a probe pointed at the wrong port fails
    visibly (404) instead of looking healthy."""

    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            body = b"Not Found: this port serves /metrics only\n"
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return serve
