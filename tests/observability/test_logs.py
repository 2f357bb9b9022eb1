"""JSON log lines: the seed's keys, one line per request and per business operation, ids that
match the response, levels, stack traces in the log and never in the response, no secrets."""

from __future__ import annotations

import logging
import logging.config
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog

from favorites.observability import logs
from favorites.observability.redaction import REDACTED, redact, scrub
from tests.conftest import SERVICE_KEY
from tests.helpers import SERVICE, bearer, new_product
from tests.observability.conftest import Observed, log_lines, observed_app

FIELDS = ["timestamp", "level", "service", "requestId", "userId", "operation", "productId",
          "durationMs", "message", "method", "path", "status", "traceId"]


def request_lines(lines: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("requestId") == request_id]


async def test_one_request_line_and_one_operation_line_with_exactly_the_seed_keys(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    user = uuid.uuid4()
    product = await new_product(observed.client)
    capsys.readouterr()
    response = await observed.client.put(f"/v1/users/me/favorites/{product}",
                                         headers=bearer(user))
    assert response.status_code == 201
    request_id = response.headers["x-request-id"]
    lines = request_lines(log_lines(capsys.readouterr().out), request_id)
    assert len(lines) == 2, lines
    operation, request = lines
    for line in lines:
        assert list(line) == FIELDS
        assert line["service"] == "favorites-service"
        assert line["level"] == "INFO"
        assert line["userId"] == str(user)
        assert line["productId"] == str(product)
        assert line["method"] == "PUT"
        assert line["path"] == "/v1/users/{user_id}/favorites/{product_id}"
        assert len(line["traceId"]) == 32
        assert line["timestamp"].endswith("Z")
        assert "T" in line["timestamp"]
        assert isinstance(line["durationMs"], float)
        assert line["durationMs"] >= 0
    assert operation["operation"] == "addFavorite"
    assert operation["message"] == "Favorite added"
    assert operation["status"] is None
    assert request["operation"] == "httpRequest"
    assert request["status"] == 201
    assert request["message"] == "PUT /v1/users/{user_id}/favorites/{product_id} 201"
    assert request["durationMs"] >= operation["durationMs"]
    assert request["traceId"] == response.headers["traceparent"].split("-")[1]


async def test_a_refused_operation_is_logged_at_info_with_the_reason(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = uuid.uuid4()
    response = await observed.client.put(f"/v1/users/me/favorites/{missing}",
                                         headers=bearer(uuid.uuid4()))
    assert response.status_code == 404
    lines = request_lines(log_lines(capsys.readouterr().out), response.headers["x-request-id"])
    assert [line["operation"] for line in lines] == ["addFavorite", "httpRequest"]
    assert lines[0]["message"] == "addFavorite refused: product-not-found"
    assert {line["level"] for line in lines} == {"INFO"}
    assert lines[1]["status"] == 404


async def test_an_unknown_path_is_logged_as_unmatched(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    response = await observed.client.get(f"/no/such/{uuid.uuid4()}")
    assert response.status_code == 404
    (line,) = request_lines(log_lines(capsys.readouterr().out), response.headers["x-request-id"])
    assert line["path"] == "unmatched"
    assert line["message"] == "GET unmatched 404"


async def test_an_incoming_request_id_is_the_log_request_id(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    response = await observed.client.get("/health/live", headers={"X-Request-ID": "abc.123-x"})
    assert response.headers["x-request-id"] == "abc.123-x"
    (line,) = request_lines(log_lines(capsys.readouterr().out), "abc.123-x")
    assert line["path"] == "/health/live"
    assert line["userId"] is None


async def test_an_unhandled_error_is_one_error_line_with_its_stack_trace_and_a_clean_500(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    async def explode() -> None:
        raise RuntimeError("kaboom: internal detail")

    observed.app.add_api_route("/test/explode", explode)
    response = await observed.client.get("/test/explode")
    assert response.status_code == 500
    assert "kaboom" not in response.text
    assert "Traceback" not in response.text
    lines = request_lines(log_lines(capsys.readouterr().out), response.headers["x-request-id"])
    # One line: the edge middleware's own "unhandled error" record is not a second stack trace.
    assert len(lines) == 1, lines
    (line,) = lines
    assert line["level"] == "ERROR"
    assert line["status"] == 500
    assert line["path"] == "/test/explode"
    assert len(line["traceId"]) == 32
    assert "Traceback" in line["stackTrace"]
    assert "RuntimeError: kaboom: internal detail" in line["stackTrace"]
    # The 500 carries the trace like every other answer, marked sampled: errors are kept.
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, trace_id, len(span_id), flags) == ("00", line["traceId"], 16, "01")


async def test_a_refused_body_is_logged_counted_and_traced_like_any_answer(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body over the limit is refused before the app reads it, yet it is still a request: an
    operator looking for oversized-body floods finds them in the log and in the metrics."""
    # Under its route, though refused before routing: not "unmatched".
    counted = ('http_requests_total{method="PUT",path="/v1/users/{user_id}/favorites/'
               '{product_id}",status="413"}')

    def count(text: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(counted))

    before = count((await observed.client.get("/metrics")).text)
    capsys.readouterr()
    response = await observed.client.put(f"/v1/users/me/favorites/{uuid.uuid4()}",
                                         content=b"x" * 2048, headers=bearer(uuid.uuid4()))
    assert response.status_code == 413
    (line,) = request_lines(log_lines(capsys.readouterr().out), response.headers["x-request-id"])
    assert (line["level"], line["method"], line["status"]) == ("INFO", "PUT", 413)
    assert line["path"] == "/v1/users/{user_id}/favorites/{product_id}"
    assert line["traceId"] == response.headers["traceparent"].split("-")[1]
    after = count((await observed.client.get("/metrics")).text)
    assert after - before == 1


async def test_a_failing_operation_logs_its_stack_trace_once(
    observed: Observed, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The use case's unit-of-work factory is gone: the call fails with a TypeError.
    monkeypatch.setattr(observed.app.state.container.favorites, "_uow", None)
    response = await observed.client.get("/v1/users/me/favorites/count",
                                         headers=bearer(uuid.uuid4()))
    assert response.status_code == 500
    lines = request_lines(log_lines(capsys.readouterr().out), response.headers["x-request-id"])
    assert [line["operation"] for line in lines] == ["countFavorites", "httpRequest"]
    assert [line["level"] for line in lines] == ["ERROR", "ERROR"]
    assert "TypeError" in lines[0]["stackTrace"]
    assert lines[0]["message"] == "countFavorites failed: TypeError"
    assert "stackTrace" not in lines[1]  # the same exception is not dumped twice


async def test_stdlib_logging_comes_out_as_the_same_json_with_the_request_ids(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    async def chatty() -> dict[str, str]:
        logging.getLogger("favorites.test").warning("cache degraded", extra={"reason": "x"})
        structlog.get_logger().debug("not shown at INFO")
        return {}

    observed.app.add_api_route("/test/chatty", chatty)
    response = await observed.client.get("/test/chatty")
    lines = request_lines(log_lines(capsys.readouterr().out), response.headers["x-request-id"])
    warning = next(line for line in lines if line["message"] == "cache degraded")
    assert list(warning)[:13] == FIELDS
    assert warning["level"] == "WARN"
    assert warning["reason"] == "x"
    assert warning["logger"] == "favorites.test"
    assert warning["traceId"] == lines[-1]["traceId"]
    assert all(line["level"] != "DEBUG" for line in lines)


async def test_debug_lines_only_with_log_level_debug(
    sqlite_url: str, session_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async for item in observed_app(sqlite_url, session_tmp, log_level="DEBUG"):
        async def chatty() -> dict[str, str]:
            structlog.get_logger().debug("diagnostic detail")
            logging.getLogger("favorites.test").debug("stdlib detail")
            return {}

        item.app.add_api_route("/test/chatty", chatty)
        response = await item.client.get("/test/chatty")
        lines = request_lines(log_lines(capsys.readouterr().out),
                              response.headers["x-request-id"])
        debug = {line["message"] for line in lines if line["level"] == "DEBUG"}
        assert {"diagnostic detail", "stdlib detail"} <= debug


def test_uvicorn_log_config_routes_uvicorn_through_the_json_handler(
    capsys: pytest.CaptureFixture[str]
) -> None:
    logging.config.dictConfig(logs.uvicorn_log_config("INFO"))
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    (line,) = log_lines(capsys.readouterr().out)
    assert line["message"] == "Started server process [42]"
    assert line["level"] == "INFO"
    assert line["logger"] == "uvicorn.error"
    assert line["requestId"] is None
    assert line["traceId"] is None


@pytest.mark.parametrize(
    ("level", "expected"),
    [("warning", "WARN"), ("error", "ERROR"), ("critical", "CRITICAL"), ("info", "INFO")],
)
def test_levels_are_the_seeds(level: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging("DEBUG")
    getattr(structlog.get_logger(), level)("hello")
    getattr(logging.getLogger("favorites.test"), level)("hello")
    assert [line["level"] for line in log_lines(capsys.readouterr().out)] == [expected] * 2


# -- secrets ----------------------------------------------------------------------------------


def test_redaction_masks_credential_fields_and_credential_looking_values() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    event = redact({
        "message": f"bad token {jwt} from client",
        "authorization": "Bearer abc",
        "refresh_token": "opaque-refresh",
        "X-API-Key": "whatever",
        "cookie": "session=1",
        "password": "hunter2",
        "client_secret": "s",
        "detail": "Authorization: Bearer opaque.value-123 was rejected",
        "key": "fav_AbCdEf0123456789",
        "nested": {"headers": {"Authorization": "x"}, "items": [jwt]},
        "userId": "u", "count": 3,
    })
    assert event["message"] == f"bad token {REDACTED} from client"
    for key in ("authorization", "refresh_token", "X-API-Key", "cookie", "password",
                "client_secret"):
        assert event[key] == REDACTED
    assert "opaque.value-123" not in event["detail"]
    assert event["key"] == REDACTED
    assert event["nested"] == {"headers": {"Authorization": REDACTED}, "items": [REDACTED]}
    assert event["userId"] == "u"
    assert event["count"] == 3
    assert scrub("nothing to see") == "nothing to see"


def test_secrets_logged_by_mistake_are_masked_in_the_output(
    capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure_logging("INFO")
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    structlog.get_logger().info("got header", authorization=f"Bearer {jwt}", token="t0ps3cret")
    logging.getLogger("favorites.test").warning("key fav_Zz9Zz9Zz9Zz9Zz9 and %s", jwt,
                                                extra={"api_key": "k3y"})
    try:
        raise ValueError(f"token {jwt} invalid")
    except ValueError:
        logging.getLogger("favorites.test").exception("failed")
    structlog.get_logger().info("misuse", userId=f"Bearer {jwt}", operation=jwt)
    out = capsys.readouterr().out
    for secret in (jwt, "t0ps3cret", "fav_Zz9Zz9Zz9Zz9Zz9", "k3y"):
        assert secret not in out
    assert len(log_lines(out)) == 4


async def test_a_token_sent_as_request_id_is_not_logged(
    observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"  # fits X-Request-ID's charset
    response = await observed.client.get("/health/live", headers={"X-Request-ID": jwt})
    assert response.headers["x-request-id"] == jwt  # the caller's own value, echoed
    out = capsys.readouterr().out
    assert jwt not in out
    assert any(line["requestId"] == REDACTED for line in log_lines(out))


async def test_no_token_refresh_token_or_api_key_reaches_the_logs(
    sqlite_url: str, session_tmp: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A whole token lifecycle at DEBUG, then grep everything written for the secrets used."""
    secrets: list[str] = [SERVICE_KEY]
    async for item in observed_app(sqlite_url, session_tmp, log_level="DEBUG"):
        client = item.client
        user = uuid.uuid4()
        issued = await client.post("/v1/auth/tokens", headers=SERVICE,
                                   json={"user_id": str(user), "roles": ["user"]})
        assert issued.status_code == 201, issued.text
        pair = issued.json()
        secrets += [pair["access_token"], pair["refresh_token"]]
        auth = {"Authorization": f"Bearer {pair['access_token']}"}
        product = await new_product(client)
        assert (await client.put(f"/v1/users/me/favorites/{product}", headers=auth)).is_success
        assert (await client.get("/v1/users/me/favorites", headers=auth)).is_success
        await client.get("/v1/users/me/favorites", params={"access_token": pair["access_token"]})
        await client.get("/v1/users/me/favorites",
                         headers={"Authorization": f"Bearer {pair['access_token']}x"})
        await client.post("/v1/auth/tokens", headers={"X-API-Key": SERVICE_KEY + "-wrong"},
                          json={"user_id": str(user), "roles": ["user"]})
        refreshed = await client.post("/v1/auth/refresh",
                                      json={"refresh_token": pair["refresh_token"]})
        assert refreshed.status_code == 200
        new = refreshed.json()
        secrets += [new["access_token"], new["refresh_token"]]
        reused = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert reused.status_code == 401  # reuse: the family is revoked (and that is logged)
        # ...with its access tokens: the logout is another family's.
        other = (await client.post("/v1/auth/tokens", headers=SERVICE,
                                   json={"user_id": str(user), "roles": ["user"]})).json()
        secrets += [other["access_token"], other["refresh_token"]]
        logout = await client.post("/v1/auth/logout",
                                   headers={"Authorization": f"Bearer {other['access_token']}"},
                                   json={"refresh_token": other["refresh_token"]})
        assert logout.status_code == 204
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert len(log_lines(captured.out)) > 20
    assert "token family revoked" in output
    leaked = [secret for secret in secrets if secret in output]
    assert leaked == []
    # Not even the recognisable halves of a JWT (header.payload) are left.
    assert not [s for s in secrets if s.startswith("eyJ") and s.rsplit(".", 1)[0] in output]


def test_log_levels_are_read_as_the_seed_writes_them() -> None:
    assert logs.level_number("WARN") == logging.WARNING
    assert logs.level_number("warning") == logging.WARNING
    assert logs.level_number("debug") == logging.DEBUG
    assert logs.level_number("nonsense") == logging.INFO
