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
import struct
import time
from pathlib import Path
from uuid import UUID

from favorites.observability import multiproc

WINDOW_SECONDS = 300.0
_RECORD = struct.Struct("<16sd")
_PREFIX = "active_users_"
#: Prune in the request path only when a burst made the map this large between flushes.
_PRUNE_AT = 500_000


class ActiveUsers:
    def __init__(self, directory: Path | None = None, window: float = WINDOW_SECONDS):
        self.directory = directory
        self.window = window
        self._seen: dict[bytes, float] = {}
        #: Someone new since the last ``snapshot``: worth telling the other workers soon.
        self.new_users = False

    def seen(self, user_id: UUID) -> None:
        key = user_id.bytes
        if key not in self._seen:
            self.new_users = True
            if len(self._seen) > _PRUNE_AT:
                self.prune()
        self._seen[key] = time.time()

    def prune(self) -> None:
        """Forget users older than the window (call from the thread that calls ``seen``)."""
        cutoff = time.time() - self.window
        self._seen = {key: seen for key, seen in list(self._seen.items()) if seen >= cutoff}

    def _own_file(self) -> Path | None:
        return None if self.directory is None else self.directory / f"{_PREFIX}{os.getpid()}.bin"

    def snapshot(self) -> list[tuple[bytes, float]]:
        """This worker's recent users; taken on the event loop, written by ``write`` elsewhere."""
        self.prune()
        self.new_users = False
        return list(self._seen.items())

    def write(self, users: list[tuple[bytes, float]]) -> None:
        """Share ``users`` with the other workers (atomic: write, then rename)."""
        target = self._own_file()
        if target is None:
            return
        partial = target.with_suffix(".tmp")
        partial.write_bytes(b"".join(_RECORD.pack(key, seen) for key, seen in users))
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
                usable = len(data) - len(data) % _RECORD.size
                users.update(key for key, seen in _RECORD.iter_unpack(data[:usable])
                             if seen >= cutoff)
        return len(users)


_tracker: ActiveUsers | None = None


def tracker() -> ActiveUsers:
    """This process's tracker: the app's operations feed it, every ``/metrics`` reads it (also
    the admin port's when the one worker is the ``serve`` process itself)."""
    global _tracker
    if _tracker is None:
        _tracker = ActiveUsers(multiproc.directory())
    return _tracker
