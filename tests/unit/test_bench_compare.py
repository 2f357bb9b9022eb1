"""The side-by-side comparison: per-round ratios, medians, target verdicts, and the order of
slices, flushes and warm-ups in each cache mode."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import bench.compare as compare_module
import pytest
from bench.common import SeedShape
from bench.compare import summarize_rounds, table


def _slice(rate: float, hits: float | None = None, errors: int = 0) -> dict[str, Any]:
    return {"rate": rate, "requests": int(rate * 10), "errors": errors, "page_hit_ratio": hits,
            "cpu_ms_per_request": {"server": 0.1, "postgres": 0.0, "generator": 0.01},
            "peak_worker_rss_mib": None}


def _round(hello: float, listed: float, mixed: float, hits: float = 0.5,
           errors: int = 0) -> dict[str, dict[str, Any]]:
    return {"hello": _slice(hello), "list-cached": _slice(listed, 1.0),
            "mixed": _slice(mixed, hits, errors)}


def test_each_round_divides_its_own_slices_and_the_verdict_is_on_the_median() -> None:
    rounds = [_round(10_000, 3_900, 2_900), _round(20_000, 8_200, 3_100),
              _round(12_000, 5_400, 3_050, errors=2)]

    summary = summarize_rounds(rounds)

    assert summary["list_to_hello"] == [0.39, 0.41, 0.45]
    assert summary["list_to_hello_median"] == 0.41
    assert summary["mixed_rate_median"] == 3_050
    assert summary["errors"] == 2
    assert summary["targets"]["list_to_hello_met"] is True
    assert summary["targets"]["list_to_hello_rounds_met"] == 2
    assert summary["targets"]["mixed_rate_met"] is True
    assert summary["targets"]["mixed_rate_rounds_met"] == 2


def test_a_median_below_the_targets_is_reported_as_not_met() -> None:
    rounds = [_round(10_000, 3_000, 1_800, hits=0.04), _round(10_000, 4_100, 3_200, hits=0.05),
              _round(10_000, 3_500, 2_000, hits=0.04)]

    summary = summarize_rounds(rounds)
    lines = table({"rounds": rounds, "summary": summary, "config": {"mixed_cache": "cold"}})

    assert summary["targets"]["list_to_hello_met"] is False
    assert summary["targets"]["mixed_rate_met"] is False
    assert summary["mixed_page_hit_ratio"] == [0.04, 0.05, 0.04]
    assert "| 2 | 10,000 | 4,100 | 41.0 % | 3,200 | 5.0 % | 0.100 · 0.100 · 0.100 | 0 |" in lines
    assert any("median **35.0 %**" in line and "not met, 1 of 3 rounds" in line for line in lines)
    assert any("median **2,000 req/s**" in line and "not met, 1 of 3 rounds" in line
               for line in lines)


class _Slices:
    """Stands in for the measuring and flushing, recording what ``compare`` asks for in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, float, bool]] = []
        monkeypatch.setattr(compare_module, "measure", self.measure)
        monkeypatch.setattr(compare_module.run, "flush_redis", self.flush)

    async def measure(self, server: Any, workload: Any, connections: int, seconds: float,
                      request_timeout: float, database: str | None) -> dict[str, Any]:
        self.calls.append((workload.name, seconds, database is not None))
        return _slice(1000.0, 0.5)

    def flush(self, url: str) -> None:
        self.calls.append(("flush", 0.0, False))


def _args(mode: str) -> argparse.Namespace:
    return argparse.Namespace(
        rounds=2, slice=10.0, connections=4, mixed_cache=mode, steady_warmup=600.0,
        steady_window=250.0, steady_topup=60.0, warmup=3.0, hot_users=2, timeout=5.0, random_seed=1,
        database_url="postgresql://postgres@127.0.0.1:5432/favorites_bench")


_WARM_UPS = [("hello", 3.0, False), ("list-cached", 3.0, False), ("mixed", 3.0, False)]
_HELLO_AND_LIST = [("hello", 10.0, False), ("list-cached", 10.0, True)]
#: cold: Redis emptied before every mixed slice.
_COLD = _WARM_UPS + 2 * [*_HELLO_AND_LIST, ("flush", 0.0, False), ("mixed", 10.0, True)]
#: steady: emptied once, 600 s of mixed traffic measured in windows of 250 s (the last one
#: shorter), then 60 s before each later mixed slice.
_STEADY = [*_WARM_UPS, ("flush", 0.0, False),
           ("mixed", 250.0, True), ("mixed", 250.0, True), ("mixed", 100.0, True),
           *_HELLO_AND_LIST, ("mixed", 10.0, True),
           *_HELLO_AND_LIST, ("mixed", 60.0, False), ("mixed", 10.0, True)]


@pytest.mark.parametrize(("mode", "expected"), [("cold", _COLD), ("steady", _STEADY)])
async def test_each_mode_sends_its_slices_flushes_and_warm_ups_in_order(
        monkeypatch: pytest.MonkeyPatch, mode: str, expected: list[tuple[str, float, bool]]
) -> None:
    slices = _Slices(monkeypatch)
    server = SimpleNamespace(port=18000)

    result = await compare_module.compare(_args(mode), server, server,  # type: ignore[arg-type]
                                          SeedShape(5, 3, 20), {})

    assert slices.calls == expected
    assert len(result["rounds"]) == 2


async def test_the_steady_warm_up_is_reported_window_by_window_and_in_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rates = iter([1_000.0, 2_000.0, 3_000.0])

    async def measure(server: Any, workload: Any, connections: int, seconds: float,
                      request_timeout: float, database: str | None) -> dict[str, Any]:
        if workload.name != "mixed" or seconds < 100:
            return _slice(500.0, 0.5)
        rate = next(rates)
        return {**_slice(rate, rate / 4_000), "requests": int(rate * seconds),
                "cpu_ms_per_request": {"server": 1_000 / rate, "postgres": 0.1,
                                       "generator": 0.01},
                "peak_worker_rss_mib": rate / 10}

    monkeypatch.setattr(compare_module, "measure", measure)
    monkeypatch.setattr(compare_module.run, "flush_redis", lambda url: None)
    server = SimpleNamespace(port=18000)
    args = _args("steady")
    args.rounds = 1

    result = await compare_module.compare(args, server, server,  # type: ignore[arg-type]
                                          SeedShape(5, 3, 20), {})

    windows = result["steady_warmup_windows"]
    assert [(w["from_s"], w["to_s"], w["rate"]) for w in windows] == [
        (0.0, 250.0, 1_000.0), (250.0, 500.0, 2_000.0), (500.0, 600.0, 3_000.0)]
    warm = result["steady_warmup_result"]
    # 250,000 + 500,000 + 300,000 requests in 600 s
    assert warm["requests"] == 1_050_000
    assert warm["rate"] == 1_750.0
    assert warm["page_hit_ratio"] == round((0.25 * 250_000 + 0.5 * 500_000 + 0.75 * 300_000)
                                           / 1_050_000, 3)
    # 1.0 ms x 250,000 + 0.5 ms x 500,000 + 0.333 ms x 300,000
    assert warm["cpu_ms_per_request"]["server"] == round(600_000 / 1_050_000, 3)
    assert warm["peak_worker_rss_mib"] == 300.0
    lines = table({**result, "config": {"mixed_cache": "steady"}})
    assert "| 250-500 | 2,000 | 50.0 % | 0.500 |" in lines
