"""Flag files in flagd's format, as an operator would write them."""

from __future__ import annotations

import json
import os
from pathlib import Path


def rollout(percent: int, flag: str = "enable_favorites_v2") -> dict[str, object]:
    """A sticky percentage rollout: ``fractional`` over the flag key and the user id."""
    return {"flags": {flag: {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [
            {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]},
            ["on", percent], ["off", 100 - percent],
        ]},
    }}}


def write(path: Path, content: dict[str, object] | str) -> Path:
    """Write as a ConfigMap update does: a new file renamed over the old one."""
    text = content if isinstance(content, str) else json.dumps(content)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    # A change within one mtime tick must still be seen as a change.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return path
