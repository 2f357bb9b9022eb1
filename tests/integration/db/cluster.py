"""A throwaway PostgreSQL primary and a streaming standby made with ``pg_basebackup -R``.

Both listen on 127.0.0.1 only, on ports of 18500-18599, with their data under one temporary
directory owned by the ``postgres`` OS user (PostgreSQL refuses to run as root). ``stop()``
stops both servers and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

BINDIR = Path(os.environ.get("FAVORITES_TEST_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
wal_level = replica
max_wal_senders = 4
hot_standby = on
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 100
wal_receiver_status_interval = 1s
logging_collector = off
"""


def available() -> str | None:
    """Why the cluster cannot be made here, or None when it can."""
    for tool in ("initdb", "pg_ctl", "pg_basebackup"):
        if not (BINDIR / tool).exists():
            return f"{BINDIR / tool} not found"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


def _as_postgres(*args: str | Path) -> list[str]:
    command = [str(a) for a in args]
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(*args: str | Path, timeout: float = 60) -> None:
    done = subprocess.run(_as_postgres(*args), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class StreamingCluster:
    primary_port: int
    standby_port: int
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="favorites-pg-")))
    database: str = "favorites"

    @property
    def primary_dir(self) -> Path:
        return self.root / "primary"

    @property
    def standby_dir(self) -> Path:
        return self.root / "standby"

    def url(self, port: int, database: str | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{database or self.database}"

    @property
    def primary_url(self) -> str:
        return self.url(self.primary_port)

    @property
    def standby_url(self) -> str:
        return self.url(self.standby_port)

    def start(self) -> None:
        """initdb, start the primary, create the database, base-backup and start the standby."""
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        _run(BINDIR / "initdb", "-D", self.primary_dir, "-U", "postgres", "-A", "trust",
             "--no-sync", "--no-instructions", "-E", "UTF8")
        with (self.primary_dir / "postgresql.conf").open("a") as conf:
            conf.write(CONF.format(port=self.primary_port, sockets=self.root))
        self._pg_ctl(self.primary_dir, "start")
        with psycopg.connect(self.url(self.primary_port, "postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        _run(BINDIR / "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary_port),
             "-U", "postgres", "-D", self.standby_dir, "-R", "-X", "stream",
             "--checkpoint=fast", "--no-sync")
        with (self.standby_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.standby_port}\n")  # the last setting wins
        self.start_standby()

    def start_standby(self) -> None:
        self._pg_ctl(self.standby_dir, "start")

    def stop_standby(self) -> None:
        self._pg_ctl(self.standby_dir, "stop", "-m", "fast")

    def stop(self) -> None:
        """Stop both servers (whatever state they are in) and remove every file."""
        for data in (self.standby_dir, self.primary_dir):
            if (data / "postmaster.pid").exists():
                subprocess.run(_as_postgres(BINDIR / "pg_ctl", "-D", data, "stop", "-m",
                                            "immediate", "-w", "-t", "20"),
                               capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg_ctl(self, data: Path, action: str, *extra: str) -> None:
        _run(BINDIR / "pg_ctl", "-D", data, "-l", data.parent / f"{data.name}.log", "-w",
             "-t", "30", action, *extra)

    # -- replication controls ------------------------------------------------------------------

    def pause_replay(self) -> None:
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + 10
            while conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() != (
                    "paused",):
                assert time.monotonic() < deadline, "replay did not pause"
                time.sleep(0.02)

    def resume_replay(self) -> None:
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def wait_for_replay(self, timeout: float = 15) -> None:
        """Until the standby has replayed everything the primary had written when called."""
        with psycopg.connect(self.primary_url, autocommit=True) as primary:
            row = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        with psycopg.connect(self.standby_url, autocommit=True) as standby:
            deadline = time.monotonic() + timeout
            caught_up = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
            while standby.execute(caught_up, (row[0],)).fetchone() != (True,):
                assert time.monotonic() < deadline, "the standby did not catch up"
                time.sleep(0.02)
