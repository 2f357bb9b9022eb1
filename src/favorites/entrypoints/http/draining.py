"""Zero-downtime shutdown: on SIGTERM, fail readiness first, stop serving later.

Kubernetes sends SIGTERM and removes the pod from the Service endpoints at about the same time;
requests already routed keep arriving for a few seconds. So the instance first reports 503
``draining`` on ``/health/ready`` for ``FAVORITES_DRAIN_SECONDS``, still serving everything else,
and only then hands the signal to uvicorn, which finishes in-flight requests and exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("favorites.lifecycle")

Handler = Callable[[int, FrameType | None], Any] | int | None


def install(on_drain: Callable[[], None], drain_seconds: float) -> Callable[[], None]:
    """Take over SIGTERM in this process; returns an uninstaller. No-op where unsupported."""
    loop = asyncio.get_running_loop()
    previous: Handler = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return lambda: None  # nobody (uvicorn) to hand the signal to: leave it alone

    def hand_over() -> None:
        log.info("draining done; shutting down")
        assert callable(previous)
        previous(signal.SIGTERM, None)

    def on_sigterm() -> None:
        log.info("SIGTERM: draining for %.1f s before shutdown", drain_seconds)
        on_drain()
        loop.call_later(drain_seconds, hand_over)

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None

    def uninstall() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)

    return uninstall
