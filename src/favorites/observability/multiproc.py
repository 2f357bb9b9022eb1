"""The Prometheus multiprocess directory that ``favorites serve`` sets up for its workers.

prometheus-client picks its multiprocess mode when it is first imported, from
``PROMETHEUS_MULTIPROC_DIR``; so ``claim`` must run before anything imports it, which is why this
module imports nothing of it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LEFTOVERS = (".db", ".bin", ".tmp")


def directory() -> Path | None:
    value = os.environ.get(ENV) or os.environ.get(ENV.lower())
    return Path(value) if value else None


def claim() -> tuple[Path, bool]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for this process and its workers and empty it.

    The operator's directory when the variable is set, else a fresh temporary one; returns it
    and whether it is ours to remove at exit.
    """
    if "prometheus_client" in sys.modules and directory() is None:
        raise RuntimeError("claim() must run before prometheus_client is imported")
    chosen = directory()
    owned = chosen is None
    path = Path(tempfile.mkdtemp(prefix="favorites-metrics-")) if chosen is None else chosen
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():  # a previous run's counters must not be added to this one's
        if entry.suffix in _LEFTOVERS and entry.is_file():
            entry.unlink()
    os.environ[ENV] = str(path)
    return path, owned


def release(path: Path, owned: bool) -> None:
    if owned:
        shutil.rmtree(path, ignore_errors=True)
