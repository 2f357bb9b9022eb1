"""The real thing: `favorites serve` as a user runs it, over a socket, and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.flagfiles import rollout, write
from tests.helpers import wait_until_ready

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAVORITES_")}
    env.update(extra)
    return env


@dataclass
class Served:
    base: str
    output: str
    cwd: Path
    process: subprocess.Popen[str]


def _serve(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    port = free_port()
    log = cwd / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "favorites"), "serve", "--port", str(port), *args],
            cwd=cwd, env=env or clean_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process, log)
        yield Served(base, log.read_text(), cwd, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("embedded"), "--workers", "2")


def test_first_start_prints_a_working_demo(served: Served) -> None:
    assert "X-API-Key: fav_" in served.output
    token = re.search(r"access token \(1 h\):\s+(\S+)", served.output)
    assert token is not None
    add = re.search(r"^  (\S*favorites) products add (\S+)$", served.output, re.MULTILINE)
    assert add is not None
    # As printed, in a shell whose PATH may not have the virtualenv (make run, a new terminal).
    registered = subprocess.run(  # noqa: S602 (the demo's own line, as a user would paste it)
        add.group(0).strip(), shell=True, cwd=served.cwd,
        env=clean_env(PATH="/usr/bin:/bin"), capture_output=True, text=True, check=True,
    )
    assert "1 product registered (1 new)" in registered.stdout
    curl = re.search(r"curl -s -X PUT -H 'Authorization: Bearer (\S+)' (\S+)", served.output)
    assert curl is not None
    response = httpx.put(curl.group(2), headers={"Authorization": f"Bearer {curl.group(1)}"})
    assert response.status_code == 201
    listed = httpx.get(f"{served.base}/v1/users/me/favorites",
                       headers={"Authorization": f"Bearer {token.group(1)}"})
    assert [i["product_id"] for i in listed.json()["items"]] == [add.group(2)]
    assert (served.cwd / "var" / "favorites.db").exists()


def test_chunked_body_over_the_limit_is_413_over_a_socket(served: Served) -> None:
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v1/auth/refresh HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 512
        for _ in range(3):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert "application/problem+json" in reply


def _reply(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_request_head_over_16_kib_is_431_and_the_server_goes_on(served: Served) -> None:
    """httptools buffers a header of any size: a 60 MB one held a worker's event loop for
    seconds. Refused at 16 KiB, before the rest is even sent."""
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        with contextlib.suppress(OSError):  # the server may close while this still sends
            while sent < 1024 * 1024:
                sock.sendall(b"a" * 4096)
                sent += 4096
        reply = _reply(sock)
    assert reply.startswith("HTTP/1.1 431")
    assert "application/problem+json" in reply
    assert "request-header-fields-too-large" in reply
    assert "x-request-id: " in reply.lower()
    metrics = httpx.get(f"{served.base}/metrics").text
    assert re.search(r'http_requests_total\{method="GET",path="unmatched",status="431"\} [1-9]',
                     metrics), metrics
    many = "".join(f"X-H{i}: {i}\r\n" for i in range(50))  # many small headers are fine
    assert httpx.get(f"{served.base}/health/live", headers=dict(
        line.split(": ") for line in many.strip().split("\r\n"))).status_code == 200


def _raw(served: Served, request: bytes) -> str:
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        return _reply(sock)


@pytest.mark.parametrize(("target", "status", "allow"), [
    ("/v1/users/me/favorites?limit=5", 405, "allow: GET, HEAD"),
    ("/v1/users/me/favorites/3f0c9a52-1d1e-4f59-8a51-1f0b9f1b2c3d", 405,
     "allow: DELETE, GET, HEAD, PUT"),
    ("/no/such/thing", 404, None),
])
def test_a_method_the_parser_does_not_know_is_405_with_allow_like_any_other(
    served: Served, target: str, status: int, allow: str | None,
) -> None:
    """SPEC §3: a method a path does not have is 405 with Allow. httptools refuses a method it
    does not know before the app sees the request, which uvicorn answered with a bare 400."""
    reply = _raw(served, f"FOO {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}")
    assert "application/problem+json" in head
    assert json.loads(body)["status"] == status
    if allow is not None:
        assert allow in head
    assert _raw(served, b"\x16\x03\x01 not http\r\n\r\n").startswith("HTTP/1.1 400")


def test_a_request_refused_before_routing_is_logged(tmp_path: Path) -> None:
    for served_now in _serve(tmp_path):
        assert _raw(served_now, b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n").startswith("HTTP/1.1 404")
        assert _raw(served_now, b"GET / HTTP/1.1\r\nHost: \x01\r\n\r\n").startswith(
            "HTTP/1.1 400")
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()
             if "refused before routing" in line]
    assert [(line["level"], line["operation"], line["method"], line["path"], line["status"])
            for line in lines] == [("INFO", "httpRequest", "OTHER", "unmatched", 404),
                                   ("INFO", "httpRequest", "GET", "unmatched", 400)]
    assert lines[0]["message"] == "OTHER refused before routing: 404 not-found"
    assert lines[1]["message"] == "GET refused before routing: 400 malformed-request"
    assert len(lines[0]["requestId"]) == 32


def test_a_request_head_that_trickles_in_is_408_after_10_seconds(served: Served) -> None:
    """uvicorn stops timing a connection at its first byte: a header line a second kept one
    open forever. The head must be complete 10 s after its first byte."""
    host, port = served.base.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):
            for i in range(15):
                sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
                time.sleep(1)
        reply = _reply(sock)
    assert reply.startswith("HTTP/1.1 408")
    assert "request-timeout" in reply
    assert 9 < time.monotonic() - started < 15


def test_a_slow_but_complete_head_and_a_kept_alive_connection_are_not_timed_out(
    served: Served,
) -> None:
    """The timer runs from a request's first byte to its last header, not between requests."""
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.5)  # the head in two pieces: the timer runs
            sock.sendall(b"\r\n")
            [(status, _)] = _read_responses(sock, 1)
            assert status.startswith("HTTP/1.1 200")
            time.sleep(0.5)  # idle, kept alive (uvicorn's keep-alive timeout is 5 s)


def _read_responses(sock: socket.socket, count: int) -> list[tuple[str, bytes]]:
    """``count`` whole responses (status line, body by Content-Length) from one connection."""
    data, responses = b"", []
    while len(responses) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode()
            length = int(re.search(r"(?im)^content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            if len(data) >= head_end + 4 + length:
                responses.append((head.split("\r\n", 1)[0],
                                  data[head_end + 4:head_end + 4 + length]))
                data = data[head_end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(responses)} responses"
        data += chunk
    return responses


def test_pipelined_requests_on_one_connection_get_whole_responses_in_order(
    served: Served,
) -> None:
    """Each response's head and body leave in one write (entrypoints/http/protocol.py): several
    requests sent at once on a kept-alive connection still get whole answers, in order, and a
    ``Connection: close`` request gets its whole answer before the close."""
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /v1/users/me/favorites HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Request-ID: third\r\n\r\n")
        (first, body1), (second, body2), (third, body3) = _read_responses(sock, 3)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ((last, body4),) = _read_responses(sock, 1)
        assert sock.recv(1) == b""  # closed after the whole answer
    assert (first, third, last) == ("HTTP/1.1 200 OK",) * 3
    assert second == "HTTP/1.1 401 Unauthorized"
    assert b"invalid-token" in body2
    assert body1 == body3 == body4


def _exchange(served: Served, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """One raw request; the status line, headers (lower-cased names) and body of the answer."""
    host, port = served.base.removeprefix("http://").split(":")
    data = b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        while True:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                length = re.search(rb"(?im)^content-length: (\d+)", data[:head_end])
                assert length, data[:head_end]
                if len(data) >= head_end + 4 + int(length.group(1)):
                    break
            chunk = sock.recv(65536)
            assert chunk, f"closed before a whole answer: {data!r}"
            data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in
               (line.split(":", 1) for line in lines)}
    return status, headers, rest[:int(headers["content-length"])]


@pytest.mark.parametrize(("request_bytes", "answer"), [
    (b"BREW /health/live HTTP/1.1\r\nHost: x\r\n\r\n", "405 Method Not Allowed"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello\r\n\r\n", "400 Bad Request"),
    (b"GET /v1/users/me/favorites?x=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     "400 Bad Request"),
    (b"GET /health/live HTTP/1.1\r\nHost x\r\n\r\n", "400 Bad Request"),
], ids=["unknown method", "not HTTP", "100 KB request line", "header without colon"])
def test_a_request_the_parser_refuses_still_gets_a_problem_with_every_header(
    served: Served, request_bytes: bytes, answer: str,
) -> None:
    """SPEC §3: every response carries X-Request-ID and is problem+json on error; SPEC §4: the
    security headers on every response. These never reach the app (the HTTP parser refuses
    them), so the protocol writes the answer itself: for a method the parser does not know,
    the 405 the app gives any method a path does not have."""
    status, headers, body = _exchange(served, request_bytes)
    assert status == f"HTTP/1.1 {answer}"
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert headers["strict-transport-security"].startswith("max-age=31536000")
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    problem = json.loads(body)
    if answer.startswith("405"):
        assert problem["type"].endswith("/method-not-allowed")
        assert headers["allow"] == "GET, HEAD"
    else:
        assert problem["type"].endswith("/malformed-request")
    assert problem["status"] == int(answer[:3])
    assert problem["request_id"] == headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", problem["request_id"])
    assert problem["instance"] == f"urn:uuid:{uuid.UUID(hex=problem['request_id'])}"
    assert b"aaaa" not in body  # nothing of the request is echoed back


def test_white_space_around_a_request_id_is_not_part_of_it(served: Served) -> None:
    """RFC 9110 §5.5: the parser strips the leading white space of a field value, not always the
    trailing; the id is kept either way."""
    for raw in (b"padded ", b"padded\t", b" padded  "):
        _, headers, _ = _exchange(served, b"GET /health/live HTTP/1.1\r\nHost: x\r\n"
                                          b"X-Request-ID: " + raw + b"\r\n\r\n")
        assert headers["x-request-id"] == "padded"


def test_token_command_mints_a_usable_token(served: Served) -> None:
    user = uuid.uuid4()
    minted = subprocess.run([str(BIN / "favorites"), "token", "--user", str(user), "--admin"],
                            cwd=served.cwd, env=clean_env(), capture_output=True, text=True,
                            check=True).stdout.strip()
    other = uuid.uuid4()
    response = httpx.get(f"{served.base}/v1/users/{other}/favorites/count",
                         headers={"Authorization": f"Bearer {minted}"})
    assert response.json() == {"count": 0}  # admin reads anyone's


def test_products_import_from_stdin(served: Served) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    result = subprocess.run([str(BIN / "favorites"), "products", "import", "-"],
                            cwd=served.cwd, env=clean_env(), input="\n".join(ids) + "\n",
                            capture_output=True, text=True, check=True)
    assert "3 products registered (3 new)" in result.stdout
    bad = subprocess.run([str(BIN / "favorites"), "products", "import", "-"],
                         cwd=served.cwd, env=clean_env(), input="not-a-uuid\n",
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "line 1: not a UUID" in bad.stderr


@pytest.mark.parametrize(("name", "value"), [
    ("FAVORITES_RATE_LIMIT", "lots"),
    ("FAVORITES_RATE_LIMIT", "0/minute"),
    ("FAVORITES_DATABASE_URL", "sqlite://"),
    ("FAVORITES_DATABASE_URL", "sqlite:///:memory:"),
    ("FAVORITES_DATABASE_URL", "mysql://x"),
    ("FAVORITES_MAX_FAVORITES_PER_USER", "-3"),
    ("FAVORITES_CORS_ORIGINS", "*"),
    ("FAVORITES_SERVICE_CLIENTS", "[{\"name\": \"x\"}]"),
    ("FAVORITES_FLAGS_FILE", "/nonexistent/flags.json"),
    ("OTEL_TRACES_SAMPLER", "bogus"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "notaurl"),
])
def test_bad_configuration_stops_with_one_line_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    result = subprocess.run([str(BIN / "favorites"), "serve", "--port", str(free_port())],
                            cwd=tmp_path, env=clean_env(**{name: value}), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert name in lines[0]


@pytest.mark.parametrize(("command", "env", "named"), [
    (("products", "import", "/nonexistent/ids.txt"), {}, "/nonexistent/ids.txt"),
    (("serve", "--port", "PORT"), {"FAVORITES_DATA_DIR": "/proc/nope"}, "/proc/nope"),
    (("serve", "--port", "PORT"), {"FAVORITES_DATABASE_URL": "sqlite:////proc/nope/x.db"},
     "unable to open database file"),
    (("migrate", "down", "no-such-revision"), {}, "no-such-revision"),
])
def test_an_unusable_path_or_revision_is_one_line(
    tmp_path: Path, command: tuple[str, ...], env: dict[str, str], named: str,
) -> None:
    port = str(free_port())  # a port that would be free: the failure must be the named one
    result = subprocess.run([str(BIN / "favorites"), *(port if a == "PORT" else a for a in command)],
                            cwd=tmp_path, env=clean_env(**env), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]


def test_production_refuses_generated_secrets(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "favorites"), "serve"], cwd=tmp_path,
                            env=clean_env(FAVORITES_ENV="production"), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "FAVORITES_JWT_SECRET" in result.stderr


def test_secret_file_variant(tmp_path: Path) -> None:
    secret = tmp_path / "jwt"
    secret.write_text("s" * 40 + "\n")
    user = str(uuid.uuid4())
    env = clean_env(FAVORITES_JWT_SECRET_FILE=str(secret))
    minted = subprocess.run([str(BIN / "favorites"), "token", "--user", user], cwd=tmp_path,
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    import jwt

    claims = jwt.decode(minted, "s" * 40, algorithms=["HS256"], audience="favorites")
    assert claims["sub"] == user
    assert not (tmp_path / "var" / "jwt-secret").exists()


def _clients_json() -> str:
    import hashlib
    import json

    return json.dumps([{"name": "identity", "key_sha256": hashlib.sha256(b"k").hexdigest(),
                        "cidrs": ["10.0.0.0/8"], "scopes": ["tokens:issue"]}])


def test_secret_file_variants_as_deployed_and_from_dotenv(tmp_path: Path) -> None:
    """FAVORITES_SERVICE_CLIENTS_FILE holds JSON (deploy/kubernetes mounts it so), and a
    ``*_FILE`` in ``.env`` is read as one in the environment: no generated secret, no local
    client."""
    import jwt

    (tmp_path / "clients.json").write_text(_clients_json() + "\n")
    (tmp_path / "jwt").write_text("d" * 40 + "\n")
    user = str(uuid.uuid4())
    for env, dotenv in [
        ({"FAVORITES_SERVICE_CLIENTS_FILE": str(tmp_path / "clients.json"),
          "FAVORITES_JWT_SECRET_FILE": str(tmp_path / "jwt")}, ""),
        ({}, f"FAVORITES_SERVICE_CLIENTS_FILE={tmp_path / 'clients.json'}\n"
             f"FAVORITES_JWT_SECRET_FILE={tmp_path / 'jwt'}\n"),
    ]:
        (tmp_path / ".env").write_text(dotenv)
        minted = subprocess.run([str(BIN / "favorites"), "token", "--user", user], cwd=tmp_path,
                                env=clean_env(**env), capture_output=True, text=True, timeout=30)
        assert minted.returncode == 0, minted.stderr
        claims = jwt.decode(minted.stdout.strip(), "d" * 40, algorithms=["HS256"],
                            audience="favorites")
        assert claims["sub"] == user
        assert not (tmp_path / "var" / "jwt-secret").exists()
        assert not (tmp_path / "var" / "local-client.json").exists()
    (tmp_path / ".env").write_text("FAVORITES_JWT_SECRET_FILE=/nonexistent/jwt\n")
    missing = subprocess.run([str(BIN / "favorites"), "token", "--user", user], cwd=tmp_path,
                             env=clean_env(), capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "favorites: invalid configuration: FAVORITES_JWT_SECRET_FILE (in .env): cannot read "
        "'/nonexistent/jwt': No such file or directory"]


@pytest.mark.parametrize(("env", "named", "said"), [
    ({"FAVORITES_SERVICE_CLIENTS": "notjson"}, "FAVORITES_SERVICE_CLIENTS", "invalid JSON"),
    ({"FAVORITES_SERVICE_CLIENTS": '[{"name":"a",'}, "FAVORITES_SERVICE_CLIENTS", "column 14"),
    ({"FAVORITES_DATABASE_URL": "postgresql://a:b@host:notaport/db"}, "FAVORITES_DATABASE_URL",
     "port"),
    ({"FAVORITES_DATABASE_URL": "postgresql://u@db/x",
      "FAVORITES_DATABASE_REPLICA_URLS": "postgresql://u@r:99999/x"},
     "FAVORITES_DATABASE_REPLICA_URLS", "port"),
    ({"FAVORITES_REDIS_URL": "redis://127.0.0.1:notaport/0"}, "FAVORITES_REDIS_URL", "port"),
    ({"FAVORITES_PRODUCT_SERVICE_URL": "http://"}, "FAVORITES_PRODUCT_SERVICE_URL", "host"),
    ({"FAVORITES_TRUSTED_PROXIES": "::1/129"}, "FAVORITES_TRUSTED_PROXIES", "IPv4 or IPv6"),
    ({"FAVORITES_SECRET_KEY": "short"}, "FAVORITES_SECRET_KEY", "32 characters"),
    ({"FAVORITES_JWT_ISSUER": ""}, "FAVORITES_JWT_ISSUER", "at least 1 character"),
    ({"FAVORITES_JWT_AUDIENCE": ""}, "FAVORITES_JWT_AUDIENCE", "at least 1 character"),
    ({"FAVORITES_REDIS_CLUSTER": "true"}, "FAVORITES_REDIS_CLUSTER", "FAVORITES_REDIS_URL"),
    ({"FAVORITES_DATA_DIR": "/proc/nope"}, "FAVORITES_DATA_DIR", "/proc/nope"),
    ({"FAVORITES_ENV": "production", "FAVORITES_JWT_SECRET": "s" * 40,
      "FAVORITES_SERVICE_CLIENTS": "[]"}, "FAVORITES_DATABASE_URL", "production"),
])
def test_a_bad_setting_stops_serve_in_one_line_before_anything_is_printed(
    tmp_path: Path, env: dict[str, str], named: str, said: str,
) -> None:
    result = subprocess.run([str(BIN / "favorites"), "serve", "--port", str(free_port())],
                            cwd=tmp_path, env=clean_env(**env), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"favorites: invalid configuration: {named}: ")
    assert said in lines[0]
    assert result.stdout == ""


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    folder = tmp_path_factory.mktemp("keys")
    files = {"garbage": folder / "garbage.pem", "missing": folder / "missing.pem"}
    files["garbage"].write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    for name, key in (("ec", ec.generate_private_key(ec.SECP256R1())),
                      ("rsa", rsa.generate_private_key(65537, 2048))):
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return files


@pytest.mark.parametrize("command", ["serve", "token"])
@pytest.mark.parametrize(("algorithm", "key", "said"), [
    ("ES256", "missing", "cannot read"),
    ("ES256", "garbage", "is not a PEM private key"),
    ("ES256", "rsa", "ES256 needs an EC key"),
    ("RS256", "ec", "RS256 needs an RSA key"),
])
def test_an_unusable_signing_key_is_one_line_and_no_api_key_is_lost(
    tmp_path: Path, key_files: dict[str, Path], command: str, algorithm: str, key: str, said: str,
) -> None:
    """Refused before the embedded defaults run: the one-time local API key is neither printed
    nor created (it would be lost: it is shown once)."""
    arguments = ["--port", str(free_port())] if command == "serve" else ["--user", str(uuid.uuid4())]
    result = subprocess.run(
        [str(BIN / "favorites"), command, *arguments], cwd=tmp_path, capture_output=True, text=True,
        env=clean_env(FAVORITES_JWT_ALGORITHM=algorithm,
                      FAVORITES_JWT_PRIVATE_KEY_FILE=str(key_files[key])), timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("favorites: invalid configuration: FAVORITES_JWT_PRIVATE_KEY_FILE: ")
    assert said in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "var" / "local-client.json").exists()


def test_migrate_command_up_and_down(tmp_path: Path) -> None:
    env = clean_env(FAVORITES_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}")
    for args in (["migrate"], ["migrate", "down", "base"], ["migrate", "up"]):
        subprocess.run([str(BIN / "favorites"), *args], cwd=tmp_path, env=env, check=True,
                       capture_output=True)
    missing_rev = subprocess.run([str(BIN / "favorites"), "migrate", "down"], cwd=tmp_path,
                                 env=env, capture_output=True, text=True)
    assert missing_rev.returncode == 2


def test_help_lists_every_command() -> None:
    result = subprocess.run([str(BIN / "favorites"), "--help"], capture_output=True, text=True,
                            check=True)
    for command in ("serve", "migrate", "token", "products", "partition", "flags"):
        assert command in result.stdout


def test_flags_check_validates_a_file_and_shows_a_users_flags(tmp_path: Path) -> None:
    good = write(tmp_path / "flags.json", rollout(100))
    checked = subprocess.run([str(BIN / "favorites"), "flags", "check", str(good)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0
    assert "valid" in checked.stdout
    user = subprocess.run([str(BIN / "favorites"), "flags", "check", str(good),
                           "--user", str(uuid.uuid4())], capture_output=True, text=True,
                          timeout=30)
    assert user.stdout.strip() == "enable_favorites_v2: on"
    bad = write(tmp_path / "bad.json", '{"flags": {"enable_favorites_v2": {"variants": {}}}}')
    refused = subprocess.run([str(BIN / "favorites"), "flags", "check", str(bad)],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "variants" in refused.stderr


def test_sigterm_drains_readiness_before_shutting_down(tmp_path: Path) -> None:
    """Zero-downtime deploys: after SIGTERM the instance reports 503 draining on /health/ready
    (still serving) for FAVORITES_DRAIN_SECONDS, then exits cleanly."""
    import signal

    env = clean_env(FAVORITES_DRAIN_SECONDS="3")
    for served_now in _serve(tmp_path, env=env):
        kept = httpx.get(f"{served_now.base}/health/live", timeout=2)
        assert kept.headers.get("connection") != "close"
        served_now.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        ready = httpx.get(f"{served_now.base}/health/ready", timeout=2)
        assert ready.status_code == 503
        assert ready.json()["status"] == "draining"
        assert ready.headers["retry-after"]
        live = httpx.get(f"{served_now.base}/health/live", timeout=2)
        assert live.status_code == 200
        # Still served, but not kept alive: the client's next request opens a new connection,
        # which the load balancer sends elsewhere, instead of being reset at the shutdown.
        assert live.headers["connection"] == "close"
        started = time.monotonic()
        # uvicorn shuts down gracefully, then re-raises the signal it caught: exit by SIGTERM.
        assert served_now.process.wait(timeout=20) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 10
        assert "draining done; shutting down" in (tmp_path / "serve.log").read_text()


def test_two_workers_serve_lists_from_redis(tmp_path: Path) -> None:
    """The cache as production runs it: uvicorn workers on uvloop, Redis, several processes."""
    redis_url = os.environ.get("FAVORITES_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    env = clean_env(FAVORITES_REDIS_URL=redis_url)
    for served in _serve(tmp_path, "--workers", "2", env=env):
        product = str(uuid.uuid4())
        subprocess.run([str(BIN / "favorites"), "products", "add", product], cwd=tmp_path,
                       env=env, capture_output=True, text=True, check=True)
        token = subprocess.run([str(BIN / "favorites"), "token", "--user", str(uuid.uuid4())],
                               cwd=tmp_path, env=env, capture_output=True, text=True,
                               check=True).stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=served.base, headers=auth) as http:
            assert http.put(f"/v1/users/me/favorites/{product}").status_code == 201
            for _ in range(10):  # spread over both workers by the kernel
                items = http.get("/v1/users/me/favorites").json()["items"]
                assert [i["product_id"] for i in items] == [product]
            metrics = http.get("/metrics").text
        hits = re.search(r'cache_requests_total\{cache_name="favorites_page",result="hit"\} (\S+)',
                         metrics)
        errors = re.search(
            r'cache_requests_total\{cache_name="favorites_page",result="error"\} (\S+)', metrics)
        assert hits is not None
        assert errors is not None
        assert float(hits.group(1)) >= 8  # at most one miss per worker
        assert float(errors.group(1)) == 0
        assert '"level":"ERROR"' not in (tmp_path / "serve.log").read_text()


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    """With --workers 2, SIGTERM to the supervisor reaches both workers: every readiness answer
    in the window is 503 draining, the API still answers, and the whole tree exits."""
    import signal

    env = clean_env(FAVORITES_DRAIN_SECONDS="3")
    for served_now in _serve(tmp_path, "--workers", "2", env=env):
        # Ready means one worker answered; a worker still starting when SIGTERM comes has taken
        # no traffic yet and just stops. Both must be up for this test.
        deadline = time.monotonic() + 30
        while (tmp_path / "serve.log").read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.1)
        served_now.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        answers = []
        for _ in range(12):  # a new connection each time: the kernel spreads them over workers
            ready = httpx.get(f"{served_now.base}/health/ready", timeout=2,
                              headers={"Connection": "close"})
            answers.append((ready.status_code, ready.json()["status"]))
        assert set(answers) == {(503, "draining")}
        assert httpx.get(f"{served_now.base}/health/live", timeout=2).status_code == 200
        assert served_now.process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = (tmp_path / "serve.log").read_text()
        assert log.count("draining done; shutting down") == 2  # one per worker


def test_a_command_before_the_first_start_leaves_the_key_to_serve(tmp_path: Path) -> None:
    """The local client's key is shown once, by the start that creates it: a migration or a
    token before the first start must not create it unseen."""
    env = clean_env()
    for args in (["migrate"], ["token", "--user", str(uuid.uuid4())]):
        done = subprocess.run([str(BIN / "favorites"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        assert "fav_" not in done.stdout + done.stderr
    assert not (tmp_path / "var" / "local-client.json").exists()
    for served in _serve(tmp_path):
        assert "X-API-Key: fav_" in served.output


def test_the_demo_is_for_the_embedded_default_only_and_never_on_stdout(
    tmp_path: Path, postgres_url: str
) -> None:
    """On PostgreSQL the service is not a demo: no token signed with its key is printed. On the
    embedded default the demo goes to stderr: stdout is the JSON logs."""
    port = free_port()
    env = clean_env(FAVORITES_DATABASE_URL=postgres_url.replace("+asyncpg", ""))
    with (tmp_path / "out.log").open("w") as out_file, (tmp_path / "err.log").open("w") as err_file:
        process = subprocess.Popen([str(BIN / "favorites"), "serve", "--port", str(port)],
                                   cwd=tmp_path, env=env, stdout=out_file, stderr=err_file)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, tmp_path / "err.log")
    finally:
        process.terminate()
        process.wait(timeout=30)
    out, err = (tmp_path / "out.log").read_text(), (tmp_path / "err.log").read_text()
    assert "access token" not in out + err
    assert "X-API-Key: fav_" in err  # no FAVORITES_SERVICE_CLIENTS: the local client still
    assert all(line.startswith("{") for line in out.splitlines())
