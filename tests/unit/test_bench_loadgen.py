"""The load generator's schedule and requests, without a server."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from bench import loadgen
from bench.common import SeedShape, product_id
from bench.loadgen import (
    ADD,
    CONTAINS,
    LIST,
    MIN_SLEEP,
    REMOVE,
    FavoritesWorkload,
    Recorder,
    open_loop,
)
from bench.report import headline, plot, summarize


class _Pool:
    """Takes what the open loop hands over and answers nothing; drains at once."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.on_idle = None
        self.timeout = 1.0
        self.handed: list[tuple[float, float]] = []  # (due, when handed over)

    def submit(self, kind: int, raw: bytes, due: float) -> None:
        self.handed.append((due, loadgen.now()))

    async def drain(self, deadline: float) -> None:
        return None


class _Workload:
    def next(self) -> tuple[int, bytes]:
        return LIST, b"GET / HTTP/1.1\r\n\r\n"


async def test_the_open_loop_waits_whole_timer_ticks_and_never_sends_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(loadgen.asyncio, "sleep", sleep)
    pool = _Pool()
    rate, duration = 2000.0, 0.25

    recorder = await open_loop(pool, _Workload(), rate, duration)  # type: ignore[arg-type]

    total = round(rate * duration)
    assert [due for due, _ in pool.handed] == [recorder.t0 + i / rate for i in range(total)]
    # A wait shorter than a timer tick would end at the next turn of the loop: a spin.
    assert waits
    assert min(waits) >= MIN_SLEEP
    # At 2 requests per millisecond, each wait covers several due times: far fewer waits.
    assert len(waits) < total
    assert all(handed >= due for due, handed in pool.handed)
    assert len(recorder.handed_late) == total
    assert min(recorder.handed_late) >= 0


def test_the_report_gives_the_generators_lateness_and_counts_it_in_latency() -> None:
    recorder = Recorder(t0=100.0)
    for i, late in enumerate((0.0002, 0.0004, 0.0009)):
        due = 100.0 + i / 1000
        recorder.handed_late.append(late)
        recorder.add(due, due + 0.005, 200, LIST)
    summary = summarize(recorder, mode="open", target_rate=1000.0, duration=1.0)

    assert summary["generator_lateness"]["p50_ms"] == pytest.approx(0.4)
    assert summary["generator_lateness"]["max_ms"] == pytest.approx(0.9)
    lines = headline({"scenario": "mixed", "summary": summary, "config": {"workers": 2}})
    assert "generator: each request handed over p50 0.40, p99 0.90, max 0.90 ms" in "\n".join(lines)


def test_an_open_loop_result_with_lateness_is_plotted(tmp_path: Path) -> None:
    recorder = Recorder(t0=0.0)
    for i in range(200):
        recorder.handed_late.append(0.0003)
        recorder.add(i / 100, i / 100 + 0.004, 200, LIST)
    summary = summarize(recorder, mode="open", target_rate=100.0, duration=2.0)

    plot({"scenario": "mixed", "summary": summary, "config": {"workers": 2}},
         tmp_path / "run.png")

    assert (tmp_path / "run.png").read_bytes().startswith(b"\x89PNG")


def test_a_closed_loop_result_has_no_generator_lateness() -> None:
    recorder = Recorder(t0=0.0)
    recorder.add(0.0, 0.004, 200, LIST)

    summary = summarize(recorder, mode="closed", target_rate=None, duration=1.0)

    assert "generator_lateness" not in summary


def test_every_request_names_products_of_the_seeded_pool() -> None:
    shape = SeedShape(users=50, per_user=5, products=300)
    workload = FavoritesWorkload("mixed", "bench", shape, range(shape.users),
                                 tokens={u: b"t" for u in range(shape.users)})
    pool = {str(product_id(i)) for i in range(shape.products)}
    kinds = set()
    uuid = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

    for _ in range(2000):
        kind, raw = workload.next()
        kinds.add(kind)
        named = [m.decode() for m in uuid.findall(raw.split(b"\r\n", 1)[0])][1:]  # after the user
        if kind == LIST:
            assert named == []
        else:
            assert named
            assert set(named) <= pool
            if kind in (ADD, REMOVE):
                assert len(named) == 1
            else:
                assert len(named) == 20

    assert kinds == {LIST, ADD, REMOVE, CONTAINS}
