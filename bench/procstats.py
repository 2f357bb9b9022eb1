"""CPU and memory of the processes in a run, from /proc (Linux only).

- the server: the process we started and every descendant (uvicorn's supervisor and workers)
- PostgreSQL: the backends serving the bench database, found by their process title
  (``postgres: 15/main: postgres favorites_bench 127.0.0.1(…) idle``)
- the generator: this process, through ``resource.getrusage``
- the machine: /proc/stat, so CPU taken by anything else on the box (other people's builds) shows
- the disk: reads and writes completed on the machine's disks (/proc/diskstats), and the time some
  process waited for I/O (pressure stall information, /proc/pressure/io). On a virtual machine
  whose host reclaims the page cache, or whose disk stalls on a flush, a run's tail latency is
  the disk's; these figures show when that happened, second by second
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, or None when it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def status_kib(pid: int, *names: str) -> dict[str, int]:
    """Fields such as VmRSS / VmHWM from /proc/<pid>/status, in KiB."""
    out: dict[str, int] = {}
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in names:
            out[key] = int(value.split()[0])
    return out


def parent_pid(pid: int) -> int | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2:].split()[1])


def reaped_children_cpu(pid: int) -> float:
    """cutime + cstime: CPU of children ``pid`` has already waited for (exited backends)."""
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) / _TICK


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def find_postmaster(database: str) -> int | None:
    """The PostgreSQL server process: the parent of any backend (found by process title)."""
    for pid in postgres_backends(database):
        parent = parent_pid(pid)
        if parent:
            return parent
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and "postgres" in cmdline(int(entry.name)).split(" ")[0] \
                and " -D " in cmdline(int(entry.name)):
            return int(entry.name)
    return None


def cmdline(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children of all its threads, recursively)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = list((_PROC / str(parent) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                stack.append(int(child))
    return found


def postgres_backends(database: str) -> list[int]:
    """Backends connected to ``database``, by process title."""
    marker = f" {database} "
    pids = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        title = cmdline(int(entry.name))
        if title.startswith("postgres: ") and marker in title:
            pids.append(int(entry.name))
    return pids


def machine_cpu() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs since boot."""
    with (_PROC / "stat").open() as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _TICK, total / _TICK


def background_cpu_pct(seconds: float = 2.0) -> float:
    """Machine CPU busy over ``seconds`` (in % of one core), measured before a run starts."""
    busy0, _ = machine_cpu()
    t0 = time.perf_counter()
    time.sleep(seconds)
    busy1, _ = machine_cpu()
    return round(100 * (busy1 - busy0) / (time.perf_counter() - t0), 1)


def io_stall_us() -> int | None:
    """Microseconds since boot in which at least one task waited for I/O (PSI ``some``); None
    on a kernel without pressure stall information."""
    try:
        text = (_PROC / "pressure" / "io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("some "):
            return int(line.rpartition("total=")[2])
    return None


#: Block devices that are not disks: loop mounts, RAM and compressed-RAM devices.
_NOT_DISKS = ("loop", "ram", "zram")


def disk_ops() -> tuple[int, int]:
    """(reads, writes) completed since boot on the machine's whole disks (partitions are in
    /proc/diskstats too; only whole disks appear in /sys/block, so nothing counts twice)."""
    try:
        disks = {d.name for d in Path("/sys/block").iterdir() if not d.name.startswith(_NOT_DISKS)}
        text = (_PROC / "diskstats").read_text()
    except OSError:
        return 0, 0
    reads = writes = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 7 and fields[2] in disks:
            reads += int(fields[3])
            writes += int(fields[7])
    return reads, writes


def generator_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _role(pid: int, server_pid: int | None) -> str:
    if pid == server_pid:
        return "supervisor"
    return "resource_tracker" if "resource_tracker" in cmdline(pid) else "worker"


@dataclass
class _Group:
    """CPU of a changing set of processes: a pid first seen after the start counts from zero."""

    baseline: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)

    def observe(self, pids: list[int], first: bool) -> float:
        """Record current CPU of ``pids``; return CPU seconds used since the previous call."""
        delta = 0.0
        for pid in pids:
            value = cpu_seconds(pid)
            if value is None:
                continue
            if pid not in self.last:
                self.baseline[pid] = value if first else 0.0
                self.last[pid] = self.baseline[pid]
            delta += value - self.last[pid]
            self.last[pid] = value
        return delta

    def total(self) -> float:
        return sum(self.last[pid] - self.baseline[pid] for pid in self.last)


class Sampler:
    """Samples once a second while a phase runs: CPU per group and the server's RSS.

    PostgreSQL is measured whole: the postmaster, every live child and (through the postmaster's
    cutime/cstime) every backend that exited meanwhile, because a connection pool that churns
    opens and closes backends faster than a once-a-second sample could see them. That figure
    includes other databases' backends (other people's tests on a shared machine); the live
    backends of the bench database alone are reported as ``postgres_bench_backends_cpu_*``.
    """

    def __init__(self, server_pid: int | None, database: str | None, interval: float = 1.0):
        self.server_pid = server_pid
        self.database = database
        self.interval = interval
        self._server = _Group()
        self._pg = _Group()
        self._pg_all = _Group()
        self._postmaster = find_postmaster(database) if database else None
        self._reaped0 = 0.0
        self._reaped_last = 0.0
        self.series: list[dict[str, float | None]] = []
        self.peak_rss_kib: dict[int, int] = {}
        self.peak_server_rss_sum_kib = 0
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._gen0 = 0.0
        self._machine0 = (0.0, 0.0)
        self._io0: tuple[int | None, tuple[int, int]] = (None, (0, 0))

    def _server_pids(self) -> list[int]:
        if self.server_pid is None:
            return []
        return [self.server_pid, *descendants(self.server_pid)]

    def _pg_pids(self) -> list[int]:
        return postgres_backends(self.database) if self.database else []

    def _postgres_all(self, first: bool) -> float:
        if self._postmaster is None:
            return 0.0
        pids = [self._postmaster, *children(self._postmaster)]
        live = self._pg_all.observe(pids, first)
        reaped = reaped_children_cpu(self._postmaster)
        if first:
            self._reaped0 = self._reaped_last = reaped
        delta = reaped - self._reaped_last
        self._reaped_last = reaped
        return live + delta

    def _sample(self, first: bool) -> dict[str, float]:
        server_pids = self._server_pids()
        server = self._server.observe(server_pids, first)
        pg = self._postgres_all(first)
        self._pg.observe(self._pg_pids(), first)
        rss_sum = 0
        for pid in server_pids:
            rss = status_kib(pid, "VmRSS").get("VmRSS", 0)
            rss_sum += rss
            self.peak_rss_kib[pid] = max(self.peak_rss_kib.get(pid, 0), rss)
        self.peak_server_rss_sum_kib = max(self.peak_server_rss_sum_kib, rss_sum)
        return {"server": server, "postgres": pg, "server_rss_kib": float(rss_sum)}

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._gen0 = generator_cpu()
        self._machine0 = machine_cpu()
        self._io0 = (io_stall_us(), disk_ops())
        self._sample(first=True)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last_t, last_gen, last_machine = self._t0, self._gen0, self._machine0
        last_stall, last_disk = self._io0
        while True:
            await asyncio.sleep(self.interval)
            t = time.perf_counter()
            sample = self._sample(first=False)
            gen = generator_cpu()
            machine = machine_cpu()
            span = t - last_t
            busy = machine[0] - last_machine[0]
            ours = sample["server"] + sample["postgres"] + (gen - last_gen)
            stall, disk = io_stall_us(), disk_ops()
            self.series.append({
                "t": round(t - self._t0, 3),
                "server_cpu_pct": round(100 * sample["server"] / span, 1),
                "postgres_cpu_pct": round(100 * sample["postgres"] / span, 1),
                "generator_cpu_pct": round(100 * (gen - last_gen) / span, 1),
                "machine_cpu_pct": round(100 * busy / span, 1),
                "other_cpu_pct": round(100 * max(0.0, busy - ours) / span, 1),
                "server_rss_mib": round(sample["server_rss_kib"] / 1024, 1),
                "io_stall_ms": (round((stall - last_stall) / 1000 / span, 1)
                                if stall is not None and last_stall is not None else None),
                "disk_reads_per_s": round((disk[0] - last_disk[0]) / span, 1),
                "disk_writes_per_s": round((disk[1] - last_disk[1]) / span, 1),
            })
            last_t, last_gen, last_machine = t, gen, machine
            last_stall, last_disk = stall, disk

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        wall = time.perf_counter() - self._t0
        self._sample(first=False)
        generator = generator_cpu() - self._gen0
        machine = machine_cpu()
        machine_busy = machine[0] - self._machine0[0]
        server = self._server.total()
        pg_bench = self._pg.total()
        pg = self._pg_all.total() + (self._reaped_last - self._reaped0)
        other = max(0.0, machine_busy - server - pg - generator)
        stall0, disk0 = self._io0
        stall, disk = io_stall_us(), disk_ops()
        stalls = [p["io_stall_ms"] for p in self.series if p["io_stall_ms"] is not None]
        processes: list[dict[str, Any]] = []
        for pid in self._server_pids():
            status = status_kib(pid, "VmHWM", "VmRSS")
            processes.append({
                "pid": pid,
                "role": _role(pid, self.server_pid),
                "cmd": cmdline(pid)[:120],
                "cpu_pct": round(100 * (self._server.last.get(pid, 0.0)
                                        - self._server.baseline.get(pid, 0.0)) / wall, 1),
                "vm_hwm_mib": round(status.get("VmHWM", 0) / 1024, 1),
                "peak_rss_sampled_mib": round(self.peak_rss_kib.get(pid, 0) / 1024, 1),
            })
        # With --workers 1 uvicorn serves in the supervisor process itself.
        workers = [p for p in processes if p["role"] == "worker"] or processes[:1]
        return {
            "wall_seconds": round(wall, 3),
            "server_cpu_seconds": round(server, 3),
            "postgres_cpu_seconds": round(pg, 3),
            "generator_cpu_seconds": round(generator, 3),
            "machine_busy_cpu_seconds": round(machine_busy, 3),
            "server_cpu_pct": round(100 * server / wall, 1),
            "postgres_cpu_pct": round(100 * pg / wall, 1),
            "postgres_bench_backends_cpu_seconds": round(pg_bench, 3),
            "postgres_bench_backends_cpu_pct": round(100 * pg_bench / wall, 1),
            "generator_cpu_pct": round(100 * generator / wall, 1),
            "other_cpu_seconds": round(other, 3),
            "other_cpu_pct": round(100 * other / wall, 1),
            "machine_cpu_pct": round(100 * machine_busy / wall, 1),
            "machine_cpu_capacity_pct": 100 * (os.cpu_count() or 1),
            "server_processes": processes,
            "peak_worker_rss_mib": max((float(p["vm_hwm_mib"]) for p in workers), default=0.0),
            "worker_cpu_pct": [p["cpu_pct"] for p in workers],
            "peak_server_rss_sum_mib": round(self.peak_server_rss_sum_kib / 1024, 1),
            "disk_reads_per_s": round((disk[0] - disk0[0]) / wall, 1),
            "disk_writes_per_s": round((disk[1] - disk0[1]) / wall, 1),
            # Milliseconds per second in which some process waited for the disk (PSI "some").
            "io_stall_ms_per_s": (round((stall - stall0) / 1000 / wall, 1)
                                  if stall is not None and stall0 is not None else None),
            "io_stall_worst_second_ms": max(stalls, default=None),
            "series": self.series,
        }
