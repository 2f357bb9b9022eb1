"""``favorites``: serve, migrate, mint tokens and fill the local catalog."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from favorites import embedded
from favorites.config import ConfigError, Settings, load_settings, unknown_variables
from favorites.domain.models import Principal, PrincipalKind


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"favorites: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("favorites-service")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _defaults(settings: Settings) -> embedded.EmbeddedDefaults:
    """The embedded defaults of a command that does not serve: it never creates the local
    service client, whose key only ``serve`` shows (see ``embedded.resolve``)."""
    return embedded.resolve(settings, create_local_client=False)


def _uuid(value: str) -> UUID:
    from favorites.domain.errors import ValidationFailed
    from favorites.domain.ids import parse_uuid

    try:
        return parse_uuid(value.strip(), "id")
    except ValidationFailed:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _port(value: str) -> int:
    """1-65535. Not 0 (any free port): the service is meant to be found where it was told to
    listen (probes, the Service, the demo's curl lines), and nothing would say which port it got."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {port}")
    return port


def _workers(value: str) -> int:
    """At least one: uvicorn quietly runs one worker for 0 or a negative number."""
    try:
        workers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {workers}")
    return workers


def _default_workers() -> int:
    """``WEB_CONCURRENCY`` when ``--workers`` is not given; read here, not when the parser is
    built, so a bad value stops ``serve`` with one line and no other command."""
    value = os.environ.get("WEB_CONCURRENCY", "1")
    try:
        return _workers(value)
    except argparse.ArgumentTypeError as exc:
        print(f"favorites: invalid configuration: WEB_CONCURRENCY: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _os_reason(exc: OSError) -> str:
    """The system's words for an OSError, without the errno and wrapper text around them."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)  # getaddrinfo errors have negative numbers of their own


async def _bind_all(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
    server.close()
    await server.wait_closed()


def _listen_problem(host: str, port: int, workers: int) -> str | None:
    """Why uvicorn would not be able to listen on ``host:port``, found by binding the way it will
    and closing again, or None.

    Uvicorn itself logs only the system's message (no host, no port) as a JSON line on stdout,
    after the application has started up in vain, and exits 3 with nothing on stderr.
    """
    try:
        if workers > 1:  # the supervisor binds one socket for all workers, as uvicorn does
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        else:  # one process: the event loop listens on every address the host resolves to
            asyncio.run(_bind_all(host, port))
    except OSError as exc:
        return _os_reason(exc)
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from favorites.observability import multiproc

    if args.workers is None:
        args.workers = _default_workers()
    if args.workers == 1 and multiproc.directory() is None:
        return _serve(args)  # one process: plain in-memory metrics, cheaper per request
    # First: prometheus-client fixes its multiprocess mode when imported (workers inherit this).
    metrics_dir, own_metrics_dir = multiproc.claim()
    try:
        return _serve(args)
    finally:
        multiproc.release(metrics_dir, own_metrics_dir)


def _serve(args: argparse.Namespace) -> int:
    from favorites.adapters.db import migrate
    from favorites.adapters.db.engine import is_sqlite
    from favorites.bootstrap import build_flags
    from favorites.observability.exposition import start_admin_server
    from favorites.observability.logs import uvicorn_log_config
    from favorites.observability.tracing import ratio_from_env

    settings = _settings()
    for warning in unknown_variables(os.environ):
        print(f"favorites: warning: {warning}", file=sys.stderr)
    try:
        ratio_from_env()
        build_flags(settings)  # checked here: each worker would fail on it with a traceback
    except ConfigError as exc:
        print(f"favorites: invalid configuration: {exc}", file=sys.stderr)
        return 2
    problem = _listen_problem(args.host, args.port, args.workers)
    if problem is not None:
        print(f"favorites: cannot listen on {_address(args.host, args.port)}: {problem}",
              file=sys.stderr)
        return 2
    defaults = embedded.resolve(settings)
    if is_sqlite(defaults.database_url):
        migrate.upgrade(defaults.database_url)
    else:
        behind = _schema_behind(defaults.database_url)
        if behind is not None:
            print(f"favorites: cannot use the database {_masked(defaults.database_url)}: "
                  f"{behind}: run favorites migrate", file=sys.stderr)
            return 2
    # To stderr: stdout is the logs, one JSON object a line.
    if defaults.new_local_key:
        print("Local service client created (loopback only, all scopes). Its API key, shown once"
              f" (delete {settings.data_dir / 'local-client.json'} for a new one):",
              file=sys.stderr)
        print(f"  X-API-Key: {defaults.new_local_key}", file=sys.stderr)
    if settings.database_url is None:  # the embedded default: a demo, never a real deployment
        _print_demo(settings, defaults, args.host, args.port)
    admin = None
    if settings.is_production:  # /metrics of all workers, from this parent, on the admin port
        try:
            admin = start_admin_server(settings.metrics_port, args.host)
        except OSError as exc:
            print(f"favorites: FAVORITES_METRICS_PORT: cannot listen on {args.host}:"
                  f"{settings.metrics_port}: {exc.strerror}", file=sys.stderr)
            return 2
    # Workers inherit it; with several, the app does not use an in-process cache (adapters/cache).
    os.environ["WEB_CONCURRENCY"] = str(args.workers)
    try:
        _run_uvicorn(args, settings, uvicorn_log_config(settings.log_level))
    except SystemExit as exc:
        if exc.code in (None, 0):
            raise
        # The port was taken since the check above, or the application did not start: uvicorn
        # has logged why; say which server it was where an operator looks first.
        print(f"favorites: the server on {_address(args.host, args.port)} did not start "
              "(its log says why)", file=sys.stderr)
        raise
    finally:
        if admin is not None:
            admin[0].shutdown()
    return 0


def _run_uvicorn(args: argparse.Namespace, settings: Settings, log_config: dict[str, Any]) -> None:
    import uvicorn

    uvicorn.run(
        "favorites.entrypoints.http.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="favorites.entrypoints.http.protocol:CoalescingHttpToolsProtocol",
        access_log=False,
        log_level=settings.log_level.lower(),
        log_config=log_config,  # uvicorn's own lines as the same JSON, in every worker
        timeout_graceful_shutdown=30,
        server_header=False,
        proxy_headers=False,
    )


def _invocation() -> str:
    """This program as the demo's lines should name it to work as printed: ``favorites`` when
    that is on PATH and is this program, else the path it was started by (``make run`` starts
    ``.venv/bin/favorites``, which a fresh shell does not find as ``favorites``)."""
    invoked = sys.argv[0]
    if Path(invoked).name != "favorites":
        return "favorites"
    found = shutil.which("favorites")
    if found is not None and Path(found).resolve() == Path(invoked).resolve():
        return "favorites"
    return shlex.quote(invoked)


def _print_demo(settings: Settings, defaults: embedded.EmbeddedDefaults, host: str,
                port: int) -> None:
    from favorites.bootstrap import build_jwt

    user = uuid4()
    token, _ = build_jwt(settings, defaults).mint(user, ("user",))
    product = uuid4()
    base = f"http://{host}:{port}"
    lines = [f"Demo user {user}; access token (1 h):", f"  {token}",
             "Try it (registers a demo product, saves it, lists favorites):",
             f"  {_invocation()} products add {product}",
             f"  curl -s -X PUT -H 'Authorization: Bearer {token}' "
             f"{base}/v1/users/me/favorites/{product}",
             f"  curl -s -H 'Authorization: Bearer {token}' {base}/v1/users/me/favorites"]
    print("\n".join(lines), file=sys.stderr, flush=True)


#: SQLSTATEs (classes by their first two characters) that say the database cannot be used as
#: configured, not that the program is wrong: connection (08), login or role (28), no such
#: database (3D) or schema (3F), missing privilege (42501), read-only server (25006), too many
#: connections or a full disk (53), a server shutting down or starting up (57P).
_UNUSABLE_SQLSTATES = ("08", "28", "3D", "3F", "42501", "25006", "53", "57P")


def _database_problem(exc: BaseException) -> str | None:
    """The first line of what went wrong when ``exc`` is the database's or the network's fault
    rather than a bug (which keeps its traceback), else None."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, OSError):  # refused, unknown host, timeout, a path SQLite cannot use
        return _os_reason(exc)
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        if isinstance(exc, OperationalError | InterfaceError) or (
            sqlstate and sqlstate.startswith(_UNUSABLE_SQLSTATES)
        ):
            text = str(exc.orig).strip() or type(exc.orig).__name__
            return text.splitlines()[0]
    return None


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # settings validated it; never print an unparsed URL with its password
        return "FAVORITES_DATABASE_URL"


@contextmanager
def _database(url: str) -> Iterator[None]:
    """A database that cannot be used (missing, wrong role or password, unreachable) is for the
    operator to fix: one line naming it, password masked, exit 2, not a driver traceback."""
    try:
        yield
    except Exception as exc:
        problem = _database_problem(exc) or _unmigrated(exc)
        if problem is None:
            raise
        print(f"favorites: cannot use the database {_masked(url)}: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    from favorites.adapters.db import migrate

    settings = _settings()
    url = _defaults(settings).database_url
    if args.direction == "down" and not args.revision:
        print("favorites migrate down needs a revision (e.g. base)", file=sys.stderr)
        return 2
    with _database(url):
        if args.direction == "down":
            migrate.downgrade(url, args.revision)
        else:
            migrate.upgrade(url, args.revision or "head")
        revision = migrate.current_revision(url)
    print(f"the database is at revision {revision or 'base (no schema)'}")
    return 0


#: The caller ``favorites token`` issues as: the operator at the machine, with the one scope the
#: command uses.
_OPERATOR = Principal(kind=PrincipalKind.SERVICE, subject="favorites-cli",
                      scopes=frozenset({"tokens:issue"}))


async def _issue_recorded(settings: Settings, user: UUID, roles: tuple[str, ...]) -> str:
    from favorites import bootstrap

    container = bootstrap.build(settings, _defaults(settings))
    try:
        pair = await container.tokens.issue(_OPERATOR, user, roles)
    finally:
        await container.engine.dispose()
    return pair.access_token


def cmd_token(args: argparse.Namespace) -> int:
    """Recorded like a token of ``POST /v1/auth/tokens`` (its refresh token is thrown away), so an
    erasure of the user revokes it. A database that cannot be used does not stop an operator
    from getting a token: it is then signed alone, and stderr says it cannot be revoked."""
    from favorites.adapters.db import migrate
    from favorites.adapters.db.engine import is_sqlite
    from favorites.bootstrap import build_jwt

    settings = _settings()
    roles = ("admin",) if args.admin else ("user",)
    url = _defaults(settings).database_url
    try:
        if is_sqlite(url):
            migrate.upgrade(url)
        token = asyncio.run(_issue_recorded(settings, args.user, roles))
    except Exception as exc:
        problem = _database_problem(exc) or _unmigrated(exc)
        if problem is None:
            raise
        token, _ = build_jwt(settings, _defaults(settings)).mint(args.user, roles)
        print(f"favorites: warning: the token is not recorded, so an erasure of the user cannot "
              f"revoke it before it expires (cannot use the database {_masked(url)}: {problem})",
              file=sys.stderr)
    print(token)
    return 0


def _schema_behind(url: str) -> str | None:
    """An unmigrated database would be ready (it answers) and fail every request: refused at
    start. One that cannot be reached yet is not: the service starts not ready, as always, and
    a deployment runs its migrations before it starts new pods."""
    from favorites.adapters.db import migrate

    try:
        return migrate.schema_behind(url)
    except Exception as exc:
        if _database_problem(exc) is None:
            raise
        return None


def _unmigrated(exc: BaseException) -> str | None:
    """The reason when the database has no schema yet (SQLSTATE 42P01, undefined table)."""
    if str(getattr(getattr(exc, "orig", None), "sqlstate", "")) == "42P01":
        return "it has no schema yet: run favorites migrate"
    return None


def _bad_input(message: str) -> SystemExit:
    """A file or argument the user gave is wrong: exit 2 like any usage error, nothing written."""
    print(f"favorites: {message}", file=sys.stderr)
    return SystemExit(2)


def _read_ids(name: str, lines: Iterable[bytes]) -> list[UUID]:
    """Every id of the file, or the first bad line named; decoded line by line so that a file
    that is not UTF-8 text is reported at its line too."""
    ids = []
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad_input(f"{name}: line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                             f"at position {exc.start + 1})") from None
        text = (line.removeprefix("\ufeff") if number == 1 else line).strip()  # a BOM, if any
        if not text or text.startswith("#"):
            continue
        try:
            ids.append(_uuid(text))
        except argparse.ArgumentTypeError:
            raise _bad_input(f"{name}: line {number}: not a UUID: {text[:60]!r}") from None
    return ids


async def _register(ids: Sequence[UUID]) -> int:
    from favorites import bootstrap

    settings = _settings()
    container = bootstrap.build(settings, _defaults(settings))
    try:
        created = 0
        for start in range(0, len(ids), 1000):
            created += await container.products.register_many(list(ids[start:start + 1000]))
        return created
    finally:
        await container.engine.dispose()


def cmd_products(args: argparse.Namespace) -> int:
    from favorites.adapters.db import migrate
    from favorites.adapters.db.engine import is_sqlite

    # The whole input is read and checked before anything is written: a bad line imports nothing.
    if args.action == "add":
        ids = list(args.ids)
    elif args.file == "-":
        ids = _read_ids("standard input", sys.stdin.buffer)
    else:
        with Path(args.file).open("rb") as handle:
            ids = _read_ids(args.file, handle)
    ids = list(dict.fromkeys(ids))  # the same product twice is one product
    settings = _settings()
    url = _defaults(settings).database_url
    from favorites.domain.errors import CatalogIsExternal

    with _database(url):
        if is_sqlite(url):
            migrate.upgrade(url)
        try:
            created = asyncio.run(_register(ids))
        except CatalogIsExternal as exc:
            raise SystemExit(f"favorites: {exc.detail}") from None
    print(f"{len(ids)} product{'' if len(ids) == 1 else 's'} registered ({created} new)")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from favorites.adapters.db.partition import PartitionError, partition_favorites

    url = _defaults(_settings()).database_url
    try:
        with _database(url):
            result = asyncio.run(partition_favorites(url, args.partitions, keep_old=args.keep_old))
    except PartitionError as exc:
        print(f"favorites partition: {exc}", file=sys.stderr)
        return 1
    if result.already_partitioned:
        print(f"favorites is already hash-partitioned into {result.partitions}; nothing to do")
    else:
        print(f"favorites hash-partitioned by user_id into {result.partitions} partitions "
              f"({result.rows} rows copied in {result.seconds:.1f} s)")
    return 0


def cmd_flags(args: argparse.Namespace) -> int:
    """Check a flag file before it is rolled out: the pods would keep their last good flags.

    Flags the service does not know are a warning, not an error: the service ignores them, and
    one file may serve two versions during a rollout (a flag defined before the version that
    reads it, or kept after the one that read it). The warning catches a misspelt name, which
    would otherwise leave the real flag at its default without a word.
    """
    from favorites.adapters.flags import FlagsFileError, OpenFeatureFlags, check_flags_file
    from favorites.domain.flags import DEFAULTS

    path = Path(args.file)
    try:
        unknown = check_flags_file(path)
    except FlagsFileError as exc:
        print(f"favorites flags: {exc}", file=sys.stderr)
        return 2
    if unknown:
        print(f"favorites flags: warning: {path}: not flags of this service, never asked for: "
              f"{', '.join(unknown)} (it knows: {', '.join(sorted(DEFAULTS))})", file=sys.stderr)
    if args.user is None:
        print(f"{path}: valid")
        return 0
    flags = OpenFeatureFlags(path)
    flags.start()
    try:
        for name in DEFAULTS:
            print(f"{name}: {'on' if flags.enabled(name, args.user) else 'off'}")
    finally:
        flags.close()
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    from favorites.entrypoints import smoke

    key = os.environ.get(smoke.API_KEY_VARIABLE, "").strip()
    if not key:
        print(f"favorites smoke: set {smoke.API_KEY_VARIABLE} to a service client's API key "
              "(scopes tokens:issue, users:erase, and products:write without --product)",
              file=sys.stderr)
        return 2
    steps = smoke.run(args.url, key, args.product, args.timeout)
    for step in steps:
        print(step.line())
    return 0 if all(step.ok for step in steps) else 1


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or value.endswith("://"):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="favorites", description="Favorites (wishlist) microservice."
    )
    root.add_argument("--version", action="version", version=f"favorites {_version()}")
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate the embedded database if needed and serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="1-65535 (default: 8000)")
    serve.add_argument("--workers", type=_workers, metavar="N",
                       help="worker processes, at least 1 (default: $WEB_CONCURRENCY, else 1)")
    serve.set_defaults(func=cmd_serve)

    mig = sub.add_parser("migrate", help="Alembic migrations against FAVORITES_DATABASE_URL")
    mig.add_argument("direction", nargs="?", choices=["up", "down"], default="up")
    mig.add_argument("revision", nargs="?", help="target revision (head for up, e.g. base for down)")
    mig.set_defaults(func=cmd_migrate)

    token = sub.add_parser("token", help="mint an access token with the configured key")
    token.add_argument("--user", type=_uuid, required=True, metavar="UUID",
                       help="the user the token is for")
    token.add_argument("--admin", action="store_true", help="give the token the admin role")
    token.set_defaults(func=cmd_token)

    products = sub.add_parser("products", help="fill the local product catalog")
    psub = products.add_subparsers(dest="action", required=True)
    add = psub.add_parser("add", help="register products by id")
    add.add_argument("ids", nargs="+", type=_uuid, metavar="UUID")
    imp = psub.add_parser("import", help="register products from a file, one UUID a line")
    imp.add_argument("file", help="path, or - for standard input")
    products.set_defaults(func=cmd_products)

    part = sub.add_parser(
        "partition", help="turn favorites into a table hash-partitioned by user_id (PostgreSQL)"
    )
    part.add_argument("--partitions", type=int, required=True, metavar="N",
                      help="number of hash partitions (2-1024)")
    part.add_argument("--keep-old", action="store_true",
                      help="keep the old table as favorites_unpartitioned instead of dropping it")
    part.set_defaults(func=cmd_partition)

    smoke = sub.add_parser(
        "smoke", help="a user's round trip against a running service, cleaned up after "
                      "(post-deployment check, synthetic monitor); exit 1 when a step fails")
    smoke.add_argument("--url", type=_url, required=True, help="the service's base URL")
    smoke.add_argument("--product", type=_uuid, metavar="UUID",
                       help="a product that exists (default: register one and delete it after)")
    smoke.add_argument("--timeout", type=float, default=5.0, help="seconds per request (5)")
    smoke.set_defaults(func=cmd_smoke)

    flags = sub.add_parser("flags", help="feature flags (FAVORITES_FLAGS_FILE)")
    fsub = flags.add_subparsers(dest="action", required=True)
    check = fsub.add_parser("check", help="validate a flag file; with --user, show that "
                                          "user's flags under it")
    check.add_argument("file")
    check.add_argument("--user", type=_uuid, help="a user id: print each flag for this user")
    flags.set_defaults(func=cmd_flags)
    return root


def _environmental(exc: Exception) -> bool:
    """A failure of what the command was pointed at, not of the program: a path it cannot use,
    a database it cannot open, a migration that does not exist."""
    from alembic.util import CommandError
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OSError | CommandError | OperationalError)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        if not _environmental(exc):
            raise
        # One line, like a bad setting: the traceback would only show our own frames.
        print(f"favorites: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
