"""The HTTP protocol's own cost per request, in process: for changes to ``entrypoints/http/protocol``.

The HTTP benchmark cannot separate a few microseconds of the protocol from the host's noise (on
a shared 2-core machine hello world moves by 20 % between identical runs). This feeds the same
keep-alive request ``N`` times into one protocol instance (no socket; a transport that counts
bytes; a trivial ASGI app that answers 200), so the parser, uvicorn's request cycle and this
service's protocol are all that run. Count the instructions with callgrind, which gives the same
figure for the same code whatever else the machine is doing, at two request counts, and take the
difference, so start-up cancels out::

    for n in 1000 5000; do PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/cg.$n .venv/bin/python -m bench.protocol --requests $n; done
    # instructions per request = (total at 5000 - total at 1000) / 4000

``--protocol FILE`` measures another version of ``protocol.py`` (from a ``git worktree`` of an
earlier commit, say). Without valgrind it prints the process CPU per request, which is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

# Everything the service imports around the protocol, for every variant alike: a module only one
# variant imported would change the garbage collector's work per request, not the protocol's.
import favorites.entrypoints.http.middleware
import favorites.observability.metrics  # noqa: F401

DEFAULT = Path(__file__).resolve().parents[1] / "src/favorites/entrypoints/http/protocol.py"

#: A list request as the load generator sends it (a token of the usual length).
REQUEST = (b"GET /v1/users/me/favorites HTTP/1.1\r\nHost: 127.0.0.1:18000\r\n"
           b"Authorization: Bearer " + b"x" * 400 + b"\r\nAccept: */*\r\n\r\n")


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"hello":"world"}'})


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.written = 0

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 18000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _protocol_class(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("measured_protocol", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CoalescingHttpToolsProtocol


async def run(protocol_class: Any, requests: int) -> tuple[float, int]:
    """CPU seconds per request, and the bytes answered (a check that every request was)."""
    config = Config(app=_app, lifespan="off", access_log=False, log_level="warning")
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)

    async def one() -> None:
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs
        await asyncio.sleep(0)  # and its response completes

    for _ in range(200):  # warm-up
        await one()
    written, cpu = transport.written, time.process_time()
    for _ in range(requests):
        await one()
    cpu = time.process_time() - cpu
    return cpu / requests, (transport.written - written) // requests


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--protocol", type=Path, default=DEFAULT,
                   help="the protocol.py to measure (default: this tree's)")
    args = p.parse_args()
    per_request, answered = uvloop.run(run(_protocol_class(args.protocol), args.requests))
    print(f"{args.requests} requests, {answered} bytes answered each, "
          f"{per_request * 1e6:.1f} µs CPU per request (noisy; count instructions instead)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
