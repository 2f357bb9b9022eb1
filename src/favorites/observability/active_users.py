"""``favorites_active_users``: distinct users seen in the last five minutes, per instance.

A sum of per-worker counts would count a user twice as soon as two workers served them, so each
worker keeps the users it saw (id -> last seen) and, with several workers, writes them every few
seconds to a small file in the Prometheus multiprocess directory; the scrape takes the union of
its own set and every worker's file. Entries carry wall-clock times, so the file of a worker that
died without cleaning up simply ages out. Memory is bounded by the users of one window.
"""

from __future__ import annotations

import contextlib
import os
import time
from array import array
from pathlib import Path
from uuid import UUID

from favorites.observability import multiproc

WINDOW_SECONDS = 300.0
_KEY = 16  # a user id's bytes
_TIME = array("d").itemsize
_PREFIX = "active_users_"

#: A worker's file: every user id (16 bytes each), then their last-seen times (native doubles)
#: in the same order. Built with two C-level joins: a record packed per user in Python was 45 ms
#: on the event loop and 25 ms more in a thread, every two seconds, with 100,000 users.
Snapshot = tuple[bytes, bytes]


class ActiveUsers:
    def __init__(self, directory: Path | None = None, window: float = WINDOW_SECONDS):
        self.directory = directory
        self.window = window
        #: user id -> last seen, in the order last seen (the oldest first), so forgetting the
        #: users who left the window only visits those.
        self._seen: dict[bytes, float] = {}
        #: Someone new since the last ``snapshot``: worth telling the other workers soon.
        self.new_users = False

    def seen(self, user_id: UUID) -> None:
        key = user_id.bytes
        if self._seen.pop(key, None) is None:
            self.new_users = True
        self._seen[key] = time.time()

    def prune(self) -> None:
        """Forget users older than the window (call from the thread that calls ``seen``)."""
        cutoff = time.time() - self.window
        expired = []
        for key, seen in self._seen.items():
            if seen >= cutoff:
                break
            expired.append(key)
        for key in expired:
            del self._seen[key]

    def _own_file(self) -> Path | None:
        return None if self.directory is None else self.directory / f"{_PREFIX}{os.getpid()}.bin"

    def snapshot(self) -> Snapshot:
        """This worker's recent users; taken on the event loop, written by ``write`` elsewhere."""
        self.prune()
        self.new_users = False
        return b"".join(self._seen), array("d", self._seen.values()).tobytes()

    def write(self, users: Snapshot) -> None:
        """Share ``users`` with the other workers (atomic: write, then rename)."""
        target = self._own_file()
        if target is None:
            return
        partial = target.with_suffix(".tmp")
        partial.write_bytes(users[0] + users[1])
        os.replace(partial, target)

    def remove_file(self) -> None:
        target = self._own_file()
        if target is not None:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()

    def count(self) -> int:
        """Distinct users seen within the window, by this process and every worker's file."""
        cutoff = time.time() - self.window
        users = {key for key, seen in list(self._seen.items()) if seen >= cutoff}
        if self.directory is not None:
            own = self._own_file()
            for path in self.directory.glob(f"{_PREFIX}*.bin"):
                if path == own:
                    continue
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # its worker just stopped
                    continue
                users.update(_recent(data, cutoff))
        return len(users)


def _recent(data: bytes, cutoff: float) -> list[bytes]:
    """The user ids of one worker's file seen at or after ``cutoff``."""
    size = len(data) // (_KEY + _TIME)
    times = array("d")
    times.frombytes(data[size * _KEY:size * (_KEY + _TIME)])
    return [data[i * _KEY:(i + 1) * _KEY] for i, seen in enumerate(times) if seen >= cutoff]


_tracker: ActiveUsers | None = None


def tracker() -> ActiveUsers:
    """This process's tracker: the app's operations feed it, every ``/metrics`` reads it (also
    the admin port's when the one worker is the ``serve`` process itself)."""
    global _tracker
    if _tracker is None:
        _tracker = ActiveUsers(multiproc.directory())
    return _tracker
