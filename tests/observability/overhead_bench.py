"""What observability costs in throughput: the same app with and without it, closed loop.

Not a test (pytest does not collect it): run it by hand, it needs ``wrk`` (Debian: ``apt-get
install -y wrk``) and two free ports in 18100-18199::

    .venv/bin/python -m tests.observability.overhead_bench --seconds 15 --rounds 2

It serves the embedded default (SQLite) with one worker, twice: ``favorites serve`` as shipped
(JSON logs to stdout piped to ``cat > /dev/null``, or straight to /dev/null with
``BENCH_LOG_SINK=devnull``; metrics; trace ids, no exporter unless OTEL_* is set) and the same
app factory with the observability middleware, the operation wrappers, the engine hooks and the
logging setup removed. Both get ``GET /v1/users/me/favorites`` (10 favorites) with one token
from ``wrk -t1 -c16``, rounds alternating; the medians and each round's ratio are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from starlette.responses import Response

ROOT = Path(__file__).resolve().parents[2]
FAVORITES = str(ROOT / ".venv" / "bin" / "favorites")
PYTHON = sys.executable


class _Absent:
    """A middleware class that adds no layer: Starlette gets the inner app back."""

    def __new__(cls, app: Any, *args: Any, **kwargs: Any) -> Any:
        return app


class _NoObservability:
    def instrument_services(self, container: object) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def metrics_endpoint(self, _request: Any) -> Response:
        return Response(b"")


def create_app_without_observability() -> Any:
    """The production app factory minus every observability hook (for the comparison only)."""
    import favorites.bootstrap as bootstrap
    import favorites.entrypoints.http.app as app_module

    app_module.setup_observability = lambda settings: _NoObservability()  # type: ignore[assignment]
    app_module.ObservabilityMiddleware = _Absent  # type: ignore[assignment,misc]
    bootstrap.instrument_engine = lambda *args, **kwargs: None  # type: ignore[assignment]
    return app_module.create_app()


def _serve_without(port: int) -> None:
    import uvicorn

    uvicorn.run(f"{__name__}:create_app_without_observability", factory=True, host="127.0.0.1",
                port=port, workers=1, loop="uvloop", http="httptools", access_log=False,
                log_level="info", timeout_graceful_shutdown=5, server_header=False,
                proxy_headers=False)


def _wait(port: int) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on {port} did not start")


def _start(mode: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    if mode == "on":
        command = [FAVORITES, "serve", "--port", str(port), "--workers", "1"]
    else:
        command = [PYTHON, "-m", "tests.observability.overhead_bench", "--serve-without",
                   str(port)]
    sink = open(os.devnull, "wb")  # noqa: SIM115 -- lives as long as the server
    cat = None
    output: Any = sink
    if os.environ.get("BENCH_LOG_SINK", "pipe") == "pipe":
        # The log lines go through a pipe to another process, as to a container's log collector.
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=sink)
        output = cat.stdin
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output,
                              stderr=subprocess.STDOUT, start_new_session=True)
    server.cat = cat  # type: ignore[attr-defined]
    _wait(port)
    return server


def _stop(server: subprocess.Popen[bytes]) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    cat = server.cat  # type: ignore[attr-defined]
    if cat is not None:
        cat.stdin.close()
        cat.wait(timeout=10)


def _wrk(port: int, token: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "-H", f"Authorization: Bearer {token}",
         f"http://127.0.0.1:{port}/v1/users/me/favorites"],
        check=True, capture_output=True, text=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"{non_2xx.group(1)} failed responses:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=18150)
    parser.add_argument("--log-level", default="INFO",
                        help="FAVORITES_LOG_LEVEL of the server with observability (INFO)")
    parser.add_argument("--otlp", action="store_true",
                        help="export spans over OTLP/HTTP to a local sink that answers 200")
    parser.add_argument("--serve-without", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_without:
        _serve_without(args.serve_without)
        return 0
    data = Path(tempfile.mkdtemp(prefix="favorites-bench-"))
    env = {**os.environ, "FAVORITES_DATA_DIR": str(data), "FAVORITES_ENV": "test",
           "FAVORITES_RATE_LIMIT": "100000000/minute", "FAVORITES_LOG_LEVEL": args.log_level}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = str(ROOT)
    otlp = None
    if args.otlp:
        otlp = _otlp_sink(args.port + 2)
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{args.port + 2}/v1/traces"
    user = uuid.uuid4()
    try:
        subprocess.run([FAVORITES, "migrate"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        products = [str(uuid.uuid4()) for _ in range(10)]
        subprocess.run([FAVORITES, "products", "add", *products], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        token = subprocess.run([FAVORITES, "token", "--user", str(user)], cwd=ROOT, env=env,
                               check=True, capture_output=True, text=True).stdout.strip()
        server = _start("on", args.port, env)
        try:
            for product in products:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{args.port}/v1/users/me/favorites/{product}",
                    method="PUT", headers={"Authorization": f"Bearer {token}"})
                urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 -- local
        finally:
            _stop(server)
        results: dict[str, list[float]] = {"off": [], "on": []}
        for round_ in range(args.rounds):
            for mode in ("off", "on"):
                server = _start(mode, args.port + (mode == "on"), env)
                try:
                    port = args.port + (mode == "on")
                    _wrk(port, token, 5)  # warm-up
                    rps = _wrk(port, token, args.seconds)
                finally:
                    _stop(server)
                results[mode].append(rps)
                print(f"round {round_ + 1} observability {mode:>3}: {rps:8.1f} req/s", flush=True)
        off = statistics.median(results["off"])
        on = statistics.median(results["on"])
        ratios = sorted(b / a for a, b in zip(results["off"], results["on"], strict=True))
        print(f"median without: {off:.1f} req/s, with: {on:.1f} req/s, ratio {on / off:.3f} "
              f"(cost {100 * (1 - on / off):.1f} %); per-round ratios "
              f"{', '.join(f'{r:.3f}' for r in ratios)}")
    finally:
        shutil.rmtree(data, ignore_errors=True)
        if otlp is not None:
            print(f"OTLP sink received {otlp.requests} export requests", flush=True)
            otlp.shutdown()
    return 0


class _Sink(ThreadingHTTPServer):
    requests = 0


def _otlp_sink(port: int) -> _Sink:
    """Accepts OTLP/HTTP exports and throws them away (what a collector costs is not ours)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            server.requests += 1
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = _Sink(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    raise SystemExit(main())
