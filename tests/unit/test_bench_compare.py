"""The side-by-side comparison's arithmetic: per-round ratios, medians and target verdicts."""

from __future__ import annotations

from typing import Any

from bench.compare import summarize_rounds, table


def _slice(rate: float, hits: float | None = None, errors: int = 0) -> dict[str, Any]:
    return {"rate": rate, "errors": errors, "page_hit_ratio": hits,
            "cpu_ms_per_request": {"server": 0.1, "postgres": 0.0, "generator": 0.01}}


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
