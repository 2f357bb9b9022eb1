"""In multiprocess mode the metrics know their process without a system call per update, and a
forked child still writes files of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import os
    from prometheus_client import values
    from favorites.observability import metrics  # multiprocess mode: the variable is set

    # What each update calls to learn whether the process forked since.
    check = values.ValueClass._MmapedValue__check_for_pid_change
    identify = next(cell.cell_contents for cell in check.__closure__
                    if callable(cell.cell_contents))
    print("identifier is getpid", identify is os.getpid)
    print("identifier right", identify() == os.getpid())
    for _ in range(100):
        metrics.http_requests_total.labels("GET", "/x", "200").inc()
        metrics.http_request_duration_seconds.labels("GET", "/x").observe(0.01)
        metrics.db_connections_active.labels("primary").set(3)
    child = os.fork()
    if child == 0:
        metrics.http_requests_total.labels("GET", "/child", "200").inc()
        os._exit(0)
    os.waitpid(child, 0)
    print("child", child)
    print("parent", os.getpid())
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_updates_make_no_getpid_call_and_a_forked_child_gets_its_own_files(
        tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    lines = dict(line.rsplit(" ", 1) for line in out.splitlines())
    assert lines["identifier is getpid"] == "False"
    assert lines["identifier right"] == "True"
    files = {p.name for p in tmp_path.iterdir()}
    # The parent's counter file and the child's: the child did not write into its parent's.
    assert f"counter_{lines['parent']}.db" in files
    assert f"counter_{lines['child']}.db" in files
