"""Redis servers the cache tests start themselves, on free loopback ports in 18400-18499.

``RedisServer`` can be killed, paused (SIGSTOP: connections hang, like a Redis that stopped
answering) and restarted from its own snapshot (Redis comes back with its old data).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests import helpers

PORTS = range(18400, 18500)


def free_port(taken: set[int] | None = None) -> int:
    """A free port of this suite's range; with ``taken``, also not in it, and then added to it."""
    port = helpers.free_port(PORTS, avoid=taken or ())
    if taken is not None:
        taken.add(port)
    return port


def _cli(port: int, *args: str, timeout: float = 5) -> str:
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    ).stdout


def _wait_ping(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if _cli(port, "PING", timeout=1).strip() == "PONG":
            return
        time.sleep(0.02)
    raise RuntimeError(f"redis on port {port} did not start")


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, *extra: str):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self._extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.dir), "--dbfilename", "dump.rdb", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
             *self._extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_ping(self.port)
        return self

    def cli(self, *args: str) -> str:
        return _cli(self.port, *args)

    def pause(self) -> None:
        """Stop answering (the kernel still accepts connections): reads time out."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self, *, snapshot: bool = False) -> None:
        """Kill it; with ``snapshot`` first save its data so ``start`` brings it back."""
        if self.process is None:
            return
        if snapshot:
            assert self.cli("SAVE").strip() == "OK"
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.resume()  # a stopped process must run again to die of SIGKILL promptly
            self.kill()


class Cluster:
    """Three masters, no replicas, on loopback."""

    def __init__(self, workdir: Path):
        taken: set[int] = set()
        ports = [free_port(taken) for _ in range(3)]
        # A node also listens on port + 10000 (cluster bus); keep it out of everyone's way by
        # announcing the bus port explicitly inside our range.
        bus = [free_port(taken) for _ in range(3)]
        self.nodes = [
            RedisServer(workdir / f"node-{port}", port, "--cluster-enabled", "yes",
                        "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                        "--cluster-port", str(bus_port), "--cluster-node-timeout", "2000")
            for port, bus_port in zip(ports, bus, strict=True)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{node.port}" for node in self.nodes), "--cluster-yes"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes):
                return self
            time.sleep(0.05)
        raise RuntimeError("cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
