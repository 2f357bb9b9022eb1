"""What the benchmark reports of the server's log."""

from __future__ import annotations

from bench.run import Server


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
