"""A command whose SQLite database cannot be opened ends with its one line, and no driver thread
dying after it on the closed event loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import aiosqlite.core
import pytest
from sqlalchemy.exc import OperationalError

from favorites.adapters.db import migrate


def test_a_failed_sqlite_connect_leaves_no_thread_to_die_on_the_closed_loop(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # aiosqlite's thread reports the failed connection's clean-up back onto the event loop. Here
    # it is made late, as a loaded machine makes it: the race that printed a thread's traceback
    # under `favorites serve`'s one-line error.
    log_debug = aiosqlite.core.LOG.debug
    delayed: list[str] = []

    def late_clean_up(message: str, *args: Any) -> None:
        if args and getattr(args[0], "__name__", "") == "close_and_stop":
            delayed.append(args[0].__name__)
            time.sleep(0.3)
        log_debug(message, *args)

    monkeypatch.setattr(aiosqlite.core.LOG, "debug", late_clean_up)
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: died.append(hook.exc_value))

    with pytest.raises(OperationalError, match="unable to open database file"):
        migrate.upgrade(f"sqlite:///{tmp_path}/missing/dir/favorites.db")
    for thread in threading.enumerate():
        if thread.name.endswith("(_connection_worker_thread)"):
            thread.join(5)

    assert delayed, "aiosqlite no longer logs its clean-up step: this test no longer delays it"
    assert died == []
