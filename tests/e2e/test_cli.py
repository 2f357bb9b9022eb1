"""The command line's answers to bad input and to what it cannot use: arguments out of range, an
address it cannot listen on, a database it cannot use, a file that is not text, a flag file that
names flags the service does not know or that breaks while serving. Each is one line on stderr
naming what is wrong, never a traceback, and never a silent start on something else."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory

from favorites.adapters.db import migrate
from tests.conftest import PG_ADMIN_URL
from tests.e2e.test_served import BIN, _serve, clean_env, free_port
from tests.flagfiles import rollout, write

FAVORITES = str(BIN / "favorites")
PG_BASE = PG_ADMIN_URL.rsplit("/", 1)[0]


def run(cwd: Path, *args: str, env: dict[str, str] | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([FAVORITES, *args], cwd=cwd, env=env or clean_env(), input=stdin,
                            capture_output=True, timeout=60)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(), result.stderr.decode())


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# serve: arguments and the address


@pytest.mark.parametrize(("args", "error"), [
    (("--port", "83237"), "argument --port: must be 1-65535, got 83237"),
    (("--port", "65536"), "argument --port: must be 1-65535, got 65536"),
    (("--port", "-1"), "argument --port: must be 1-65535, got -1"),
    (("--port", "0"), "argument --port: must be 1-65535, got 0"),
    (("--port", "http"), "argument --port: not a port number: 'http'"),
    (("--workers", "0"), "argument --workers: must be at least 1, got 0"),
    (("--workers", "-2"), "argument --workers: must be at least 1, got -2"),
])
def test_serve_refuses_a_port_out_of_range_and_workers_below_one(
    tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    """Not a server on port 83237 % 65536, nor one worker for 0: argparse's usage error."""
    result = run(tmp_path, "serve", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"favorites serve: error: {error}"
    assert result.stdout == ""
    assert not (tmp_path / "var").exists()  # refused before anything was created


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_web_concurrency_stops_serve_with_one_line_and_no_other_command(
    tmp_path: Path, value: str
) -> None:
    env = clean_env(WEB_CONCURRENCY=value)
    line = one_line(run(tmp_path, "serve", "--port", str(free_port()), env=env))
    assert line.startswith("favorites: invalid configuration: WEB_CONCURRENCY: ")
    assert run(tmp_path, "token", "--user", str(uuid.uuid4()), env=env).returncode == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_names_a_host_it_cannot_resolve_on_stderr(tmp_path: Path, workers: str) -> None:
    port = free_port()
    result = run(tmp_path, "serve", "--host", "nosuchhost.invalid", "--port", str(port),
                 "--workers", workers)
    assert result.returncode == 2
    # The reason is the resolver's own words, which differ between C libraries.
    assert one_line(result).startswith(f"favorites: cannot listen on nosuchhost.invalid:{port}: ")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_names_an_address_in_use_on_stderr(
    tmp_path: Path, listening: int, workers: str
) -> None:
    result = run(tmp_path, "serve", "--port", str(listening), "--workers", workers)
    assert result.returncode == 2
    assert one_line(result) == (f"favorites: cannot listen on 127.0.0.1:{listening}: "
                                "Address already in use")


def test_a_port_taken_after_the_check_still_says_so_on_stderr(
    tmp_path: Path, listening: int
) -> None:
    """The port can be taken between the check and uvicorn's own bind: uvicorn's JSON log line
    and exit status stay, and stderr names the address."""
    code = ("import sys, favorites.entrypoints.cli as cli\n"
            "cli._listen_problem = lambda *args: None\n"
            f"sys.exit(cli.main(['serve', '--port', '{listening}']))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    # Before it, the first start's key and the demo (stderr too: stdout is the JSON logs).
    assert result.stderr.strip().splitlines()[-1] == (
        f"favorites: the server on 127.0.0.1:{listening} did not start (its log says why)")
    assert "address already in use" in result.stdout
    assert all(line.startswith("{") for line in result.stdout.splitlines())


# migrate, products: a database that cannot be used


class RefusingPostgres:
    """A server that answers every login as PostgreSQL does a wrong password (28P01)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the client went away
                self._refuse(conn)

    @staticmethod
    def _read(conn: socket.socket) -> bytes:
        (length,) = struct.unpack("!i", conn.recv(4, socket.MSG_WAITALL))
        return conn.recv(length - 4, socket.MSG_WAITALL)

    def _refuse(self, conn: socket.socket) -> None:
        message = self._read(conn)
        if message == struct.pack("!i", 80877103):  # SSLRequest: no TLS here
            conn.sendall(b"N")
            self._read(conn)  # the startup message
        fields = b"".join(key + value.encode() + b"\0" for key, value in (
            (b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28P01"),
            (b"M", 'password authentication failed for user "postgres"')))
        conn.sendall(b"E" + struct.pack("!i", 4 + len(fields) + 1) + fields + b"\0")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def refusing_postgres() -> Iterator[RefusingPostgres]:
    server = RefusingPostgres()
    yield server
    server.close()


def _unusable(kind: str, refusing: RefusingPostgres) -> tuple[str, str]:
    """A database URL with a password, and what the one line must say about it."""
    missing = f"favorites_missing_{uuid.uuid4().hex[:8]}"
    role = f"favorites_nobody_{uuid.uuid4().hex[:8]}"
    host_port = PG_BASE.split("@", 1)[1]
    return {
        "missing database": (f"postgresql://postgres:hunter2@{host_port}/{missing}",
                             f'database "{missing}" does not exist'),
        "missing role": (f"postgresql://{role}:hunter2@{host_port}/postgres",
                         f'role "{role}" does not exist'),
        "wrong password": (f"postgresql://postgres:hunter2@127.0.0.1:{refusing.port}/postgres",
                           'password authentication failed for user "postgres"'),
        "closed port": (f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/postgres",
                        "Connection refused"),
    }[kind]


@pytest.mark.parametrize("kind", ["missing database", "missing role", "wrong password",
                                  "closed port"])
@pytest.mark.parametrize("command", [("migrate", "up"), ("migrate", "down", "base"),
                                     ("products", "add", "ID"), ("products", "import", "-")])
def test_a_database_that_cannot_be_used_is_one_line_naming_it_without_its_password(
    tmp_path: Path, refusing_postgres: RefusingPostgres, kind: str, command: tuple[str, ...]
) -> None:
    url, reason = _unusable(kind, refusing_postgres)
    product = str(uuid.uuid4())
    result = run(tmp_path, *(product if arg == "ID" else arg for arg in command),
                 env=clean_env(FAVORITES_DATABASE_URL=url), stdin=product.encode())
    assert result.returncode == 2
    masked = url.replace(":hunter2@", ":***@")
    assert one_line(result) == f"favorites: cannot use the database {masked}: {reason}"
    assert "hunter2" not in result.stdout + result.stderr


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def test_a_role_without_the_right_to_create_tables_is_one_line(tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    database, role = f"favorites_cli_{suffix}", f"favorites_cli_{suffix}"

    asyncio.run(_admin(f'CREATE ROLE "{role}" LOGIN', f'CREATE DATABASE "{database}"'))
    try:
        url = f"postgresql://{role}@{PG_BASE.split('@', 1)[1]}/{database}"
        result = run(tmp_path, "migrate", env=clean_env(FAVORITES_DATABASE_URL=url))
        assert result.returncode == 2
        assert one_line(result) == (f"favorites: cannot use the database {url}: "
                                    "permission denied for schema public")
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                          f'DROP ROLE IF EXISTS "{role}"'))


def test_token_needs_no_database_and_says_it_cannot_be_revoked(tmp_path: Path) -> None:
    """It signs with the configured key; an unusable database does not stop it. An operator
    who hands it on is told that an erasure of the user would not revoke it."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = run(tmp_path, "token", "--user", str(uuid.uuid4()),
                 env=clean_env(FAVORITES_DATABASE_URL=url))
    assert result.returncode == 0
    assert result.stdout.count(".") == 2
    assert one_line(result) == (
        "favorites: warning: the token is not recorded, so an erasure of the user cannot revoke "
        f"it before it expires (cannot use the database {url}: Connection refused)")


def test_a_database_without_the_schema_says_to_migrate(tmp_path: Path) -> None:
    """Not a traceback about a missing relation: the operator's next step. The token is still
    given, with the warning; an import stops."""
    database = f"favorites_cli_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
    try:
        url = f"{PG_BASE}/{database}"
        env = clean_env(FAVORITES_DATABASE_URL=url)
        said = f"cannot use the database {url}: it has no schema yet: run favorites migrate"
        result = run(tmp_path, "token", "--user", str(uuid.uuid4()), env=env)
        assert result.returncode == 0
        assert result.stdout.count(".") == 2
        assert one_line(result).endswith(f"({said})")
        imported = run(tmp_path, "products", "add", str(uuid.uuid4()), env=env)
        assert imported.returncode == 2
        assert one_line(imported) == f"favorites: {said}"
        # serve would be ready (the database answers) and fail every request: it does not start.
        served = run(tmp_path, "serve", "--port", str(free_port()), env=env)
        assert served.returncode == 2
        assert served.stderr.strip().splitlines()[-1] == f"favorites: {said}"
        assert run(tmp_path, "migrate", "up", "0007", env=env).returncode == 0
        behind = run(tmp_path, "serve", "--port", str(free_port()), env=env)
        assert behind.returncode == 2
        assert behind.stderr.strip().splitlines()[-1] == (
            f"favorites: cannot use the database {url}: its schema is at revision 0007, this "
            "version needs 0008: run favorites migrate")
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def test_a_token_from_the_command_line_is_revoked_by_the_erasure_of_its_user(
    tmp_path: Path,
) -> None:
    user = str(uuid.uuid4())
    for served in _serve(tmp_path):
        key = re.search(r"X-API-Key: (fav_\S+)", served.output)
        assert key is not None
        minted = run(tmp_path, "token", "--user", user)
        assert (minted.returncode, minted.stderr) == (0, "")
        with httpx.Client(base_url=served.base, timeout=5) as http:
            bearer = {"Authorization": f"Bearer {minted.stdout.strip()}"}
            assert http.get("/v1/users/me/favorites", headers=bearer).status_code == 200
            erased = http.delete(f"/internal/v1/users/{user}", headers={"X-API-Key": key[1]})
            assert erased.status_code == 200
            refused = http.get("/v1/users/me/favorites", headers=bearer)
            assert refused.status_code == 401
            assert refused.json()["detail"] == "token revoked"


# products: the input


@pytest.mark.parametrize(("content", "error"), [
    (b"\xff\xfe\n", "line 1: not UTF-8 text (byte 0xff at position 1)"),
    (f"{uuid.UUID(int=1)}\nabc\xc3(\n".encode("latin-1"),
     "line 2: not UTF-8 text (byte 0xc3 at position 4)"),
])
def test_an_import_file_that_is_not_utf8_names_the_file_and_the_line(
    tmp_path: Path, content: bytes, error: str
) -> None:
    (tmp_path / "ids.txt").write_bytes(content)
    result = run(tmp_path, "products", "import", "ids.txt")
    assert result.returncode == 2
    assert one_line(result) == f"favorites: ids.txt: {error}"


def test_a_bad_id_in_a_file_is_a_usage_error_like_on_the_command_line_and_imports_nothing(
    tmp_path: Path,
) -> None:
    good = str(uuid.uuid4())
    (tmp_path / "ids.txt").write_text(f"{good}\nnot-a-uuid\n")
    from_file = run(tmp_path, "products", "import", "ids.txt")
    from_stdin = run(tmp_path, "products", "import", "-", stdin=f"{good}\nnot-a-uuid\n".encode())
    from_args = run(tmp_path, "products", "add", good, "not-a-uuid")
    assert (from_file.returncode, from_stdin.returncode, from_args.returncode) == (2, 2, 2)
    assert one_line(from_file) == "favorites: ids.txt: line 2: not a UUID: 'not-a-uuid'"
    assert one_line(from_stdin) == "favorites: standard input: line 2: not a UUID: 'not-a-uuid'"
    assert "not a UUID: 'not-a-uuid'" in from_args.stderr
    # All or nothing: the good first line was not registered by either import.
    assert run(tmp_path, "products", "add", good).stdout == "1 product registered (1 new)\n"


def test_the_same_product_twice_is_counted_once(tmp_path: Path) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert run(tmp_path, "products", "add", first, first.upper()).stdout == (
        "1 product registered (1 new)\n")
    (tmp_path / "ids.txt").write_bytes(f"\ufeff{first}\r\n{second}\n{second}\n".encode())
    assert run(tmp_path, "products", "import", "ids.txt").stdout == (
        "2 products registered (1 new)\n")


# flags


def test_flags_check_warns_about_flags_the_service_does_not_know(tmp_path: Path) -> None:
    """Still valid (exit 0): the service ignores them, and one file may serve two versions of
    it during a rollout; but a misspelt name is said, with the names it knows."""
    path = write(tmp_path / "flags.json", {"flags": {
        **rollout(100)["flags"], **rollout(10, "enable_favorites_v3")["flags"],  # type: ignore[dict-item]
    }})
    result = run(tmp_path, "flags", "check", str(path))
    assert result.returncode == 0
    assert result.stdout == f"{path}: valid\n"
    assert one_line(result) == (
        f"favorites flags: warning: {path}: not flags of this service, never asked for: "
        "enable_favorites_v3 (it knows: enable_favorites_v2)")
    known = run(tmp_path, "flags", "check", str(write(tmp_path / "known.json", rollout(10))))
    assert (known.returncode, known.stderr) == (0, "")


def test_a_flag_file_broken_while_serving_is_one_warning_and_the_last_good_flags(
    tmp_path: Path,
) -> None:
    """Served: readiness says ``flags: stale`` while the last good flags still apply, the log
    has one WARN (no ERROR, no stack trace each second) and one INFO once the file is good."""
    path = write(tmp_path / "flags.json", rollout(100))
    env = clean_env(FAVORITES_FLAGS_FILE=str(path))
    for served in _serve(tmp_path, env=env):
        token = run(tmp_path, "token", "--user", str(uuid.uuid4()), env=env).stdout.strip()
        with httpx.Client(base_url=served.base, timeout=5,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            assert http.get("/v1/users/me/favorites/export").status_code == 200  # v2 on
            path.write_text("{broken")
            os.utime(path, (time.time() + 1, time.time() + 1))
            _until(lambda: http.get("/health/ready").json()["checks"]["flags"] == "stale")
            time.sleep(3)  # three more polls of the broken file
            ready = http.get("/health/ready")
            assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
            assert http.get("/v1/users/me/favorites/export").status_code == 200  # still on
            write(path, rollout(0))
            _until(lambda: http.get("/health/ready").json()["checks"]["flags"] == "ok")
            assert http.get("/v1/users/me/favorites/export").status_code == 404  # now off
        log = (tmp_path / "serve.log").read_text()
        assert log.count('"level":"WARN"') == 1
        assert log.count("flag file unusable, keeping the last good flags: "
                         f"{path}: Expecting property name enclosed in double quotes") == 1
        assert log.count(f"flag file valid again, its flags apply: {path}") == 1
        assert '"level":"ERROR"' not in log
        assert "Traceback" not in log


def _until(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# smoke: the post-deployment check against a served instance


def test_smoke_passes_against_a_working_service_and_leaves_nothing_behind(tmp_path: Path) -> None:
    for served in _serve(tmp_path):
        key = re.search(r"X-API-Key: (fav_\S+)", served.output)
        assert key is not None
        result = run(tmp_path, "smoke", "--url", served.base,
                     env=clean_env(FAVORITES_SMOKE_API_KEY=key[1]))
        assert result.returncode == 0, result.stdout + result.stderr
        steps = [line.split()[:2] for line in result.stdout.splitlines()]
        assert steps == [["ok", name] for name in (
            "ready", "register", "token", "add", "list", "contains", "remove", "list-empty",
            "erase-user", "delete-product")]
        user = re.search(r"ok +token .* user (\S+)", result.stdout)
        assert user is not None
        log = (tmp_path / "serve.log").read_text()
        assert log.count(key[1]) == served.output.count(key[1])  # the first start's line only
        assert key[1] not in result.stdout
        with httpx.Client(base_url=served.base, timeout=5) as http:
            # The erasure took the user's tokens along: none is left to use.
            assert http.delete(f"/internal/v1/users/{user[1]}", headers={
                "X-API-Key": key[1]}).json() == {"deleted_favorites": 0}


def test_smoke_names_the_step_that_failed_and_still_cleans_up(tmp_path: Path) -> None:
    for served in _serve(tmp_path):
        key = re.search(r"X-API-Key: (fav_\S+)", served.output)
        assert key is not None
        # A product the catalog does not know: the add fails, the clean-up runs.
        result = run(tmp_path, "smoke", "--url", served.base, "--product", str(uuid.uuid4()),
                     env=clean_env(FAVORITES_SMOKE_API_KEY=key[1]))
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert [line.split()[:2] for line in lines] == [
            ["ok", "ready"], ["ok", "token"], ["FAIL", "add"], ["ok", "erase-user"]]
        assert "404, expected 201: Product not found" in lines[2]
        wrong = run(tmp_path, "smoke", "--url", served.base,
                    env=clean_env(FAVORITES_SMOKE_API_KEY="fav_not-a-key"))
        assert wrong.returncode == 1
        assert wrong.stdout.splitlines()[1].startswith("FAIL register")


def test_smoke_without_a_key_or_a_server_says_so(tmp_path: Path) -> None:
    missing = run(tmp_path, "smoke", "--url", "http://127.0.0.1:9")
    assert missing.returncode == 2
    assert "set FAVORITES_SMOKE_API_KEY" in one_line(missing)
    down = run(tmp_path, "smoke", "--url", f"http://127.0.0.1:{free_port()}",
               env=clean_env(FAVORITES_SMOKE_API_KEY="fav_x"))
    assert down.returncode == 1
    assert down.stdout.startswith("FAIL ready")
    assert "ConnectError" in down.stdout


# What an operator meets first


def test_a_misspelt_variable_is_named_with_the_setting_meant(tmp_path: Path) -> None:
    """Ignored without a word, FAVORITES_DATABSE_URL would serve the embedded SQLite file."""
    result = run(tmp_path, "serve", "--host", "nosuchhost.invalid", "--port", str(free_port()),
                 env=clean_env(FAVORITES_DATABSE_URL="postgresql://db/favorites",
                               FAVORITES_SMOKE_API_KEY="fav_x"))  # smoke's own: no warning
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "favorites: warning: FAVORITES_DATABSE_URL is not a setting and is ignored (did you "
        "mean FAVORITES_DATABASE_URL?)")
    assert "SMOKE" not in result.stderr


def test_version_and_migrate_say_what_they_are_at(tmp_path: Path) -> None:
    version = run(tmp_path, "--version")
    assert (version.returncode, version.stdout) == (
        0, f"favorites {importlib.metadata.version('favorites-service')}\n")
    migrated = run(tmp_path, "migrate")
    head = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head()
    assert (migrated.returncode, migrated.stdout) == (0, f"the database is at revision {head}\n")
    down = run(tmp_path, "migrate", "down", "base")
    assert down.stdout == "the database is at revision base (no schema)\n"
