"""The micro benchmarks measure what they say: every user is shared, every token verifies."""

from __future__ import annotations

import argparse
import re

import pytest
from bench import micro


def test_active_users_shares_reach_the_other_workers(capsys: pytest.CaptureFixture[str]) -> None:
    micro.active_users(argparse.Namespace(users=500, seen=50, shares=70, random_seed=3))
    out = capsys.readouterr().out
    assert "users in it 500" in out  # read back from the file, as another worker would
    assert re.search(r"on the event loop per share: mean \d+\.\d\d ms", out)


def test_tokens_are_verified_new_then_remembered(capsys: pytest.CaptureFixture[str]) -> None:
    micro.tokens(argparse.Namespace(tokens=20, repeats=2))
    out = capsys.readouterr().out
    assert re.search(r"verify, new token: median \d+\.\d\d µs", out)
    assert re.search(r"verify, remembered token: median \d+\.\d\d µs", out)
