"""What the benchmark reports of a run (the server's log, its options) and refuses up front."""

from __future__ import annotations

import re

import pytest
from bench.report import REPO, relative_paths, repeated_adds, repository_roots
from bench.run import Server, check_redis_options, fresh_seed, git_info, main, parser, run_config


def test_the_services_warn_lines_are_counted_as_problems() -> None:
    server = Server("mixed", 1, 18000, "postgresql://postgres@127.0.0.1:5432/favorites_bench")
    try:
        server.log_path.write_text(
            '{"level":"INFO","message":"GET /v1/users/{user_id}/favorites 200"}\n'
            '{"level":"WARN","message":"circuit redis opened"}\n'
            '{"level":"WARN","message":"circuit redis opened"}\n'
            '{"level":"WARNING","message":"from a library"}\n'
            '{"level":"ERROR","message":"unhandled error"}\n', encoding="utf-8")

        counts = server.log_problems(0)["counts"]
    finally:
        server.cleanup()

    assert counts == {"WARN circuit redis opened": 2, "WARNING from a library": 1,
                      "ERROR unhandled error": 1}


def test_a_run_that_repeats_earlier_adds_is_flagged() -> None:
    assert repeated_adds({"add 200": 5989, "list 200": 48082}) == 1.0
    assert repeated_adds({"add 200": 3, "add 201": 6550}) == pytest.approx(0.000458, abs=1e-6)
    assert repeated_adds({"list 200": 10}) is None


def test_each_run_gets_a_traffic_seed_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    seeds = {fresh_seed() for _ in range(5)}

    assert len(seeds) == 5
    assert "--random-seed" in capsys.readouterr().out


def test_committed_results_name_paths_relative_to_the_repository() -> None:
    result = {"git": {"code": f"{REPO}/src"}, "servers": [f"{REPO}/.venv/bin/favorites serve"],
              "root": str(REPO), "rate": 1000.0}

    assert relative_paths(result) == {"git": {"code": "src"},
                                      "servers": [".venv/bin/favorites serve"], "root": ".",
                                      "rate": 1000.0}


def test_results_of_code_served_from_another_tree_name_no_path_of_this_machine() -> None:
    """A before/after run serves the older commit from a worktree, with this checkout's venv."""
    result = {"git": {"code": "/srv/older-tree/src"},
              "servers": [f"{REPO}/.venv/bin/python3 .venv/bin/favorites serve",
                          "/srv/older-tree/.venv/bin/favorites serve"]}

    relative = relative_paths(result, repository_roots(result))

    assert relative == {"git": {"code": "src"},
                        "servers": [".venv/bin/python3 .venv/bin/favorites serve",
                                    ".venv/bin/favorites serve"]}


def test_a_result_names_the_bench_code_beside_the_service_code() -> None:
    info = git_info()

    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"])
    assert re.fullmatch(r"[0-9a-f]{40}", info["bench"]["commit"])
    assert isinstance(info["bench"]["dirty"], bool)


def test_redis_options_without_a_redis_fail_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAVORITES_REDIS_URL", raising=False)

    for option in (["--cold-cache"], ["--redis-outage", "20,40"]):
        with pytest.raises(SystemExit, match="need FAVORITES_REDIS_URL"):
            main(["--skip-seed", *option])
    check_redis_options(parser().parse_args(["--skip-seed"]))  # nothing asked of Redis: fine


def test_the_mixed_traffics_active_users_are_recorded() -> None:
    mixed = parser().parse_args(["--active-users", "20000"])
    cached = parser().parse_args(["--scenario", "list-cached", "--active-users", "20000"])

    assert run_config(mixed)["active_users"] == 20000
    assert run_config(parser().parse_args([]))["active_users"] is None
    assert run_config(cached)["active_users"] is None  # the cached lists use --hot-users
