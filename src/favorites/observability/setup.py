"""Start-up and shutdown of logs, metrics and traces for one process (an HTTP worker)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from prometheus_client import CollectorRegistry, multiprocess
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from favorites.config import Settings
from favorites.observability import exposition, logs, multiproc, tracing
from favorites.observability.active_users import tracker
from favorites.observability.operations import instrument_services
from favorites.tasks import cancel_and_wait

log = logging.getLogger("favorites.observability")

#: A worker shares the users it has seen with the others (multiprocess mode only) within this long.
ACTIVE_USERS_SHARE_SECONDS = 2.0


class Observability:
    """Built by ``setup`` at start-up; the app's lifespan calls ``start`` and ``stop``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.multiprocess_dir = multiproc.directory()
        self.active_users = tracker()
        self._registry: CollectorRegistry | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def instrument_services(self, container: object) -> None:
        instrument_services(container, self.active_users)

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            self._registry = exposition.scrape_registry(self.active_users)
        return self._registry

    async def metrics_endpoint(self, _request: Request) -> Response:
        """``GET /metrics``: no auth, no rate limit; rendering runs off the event loop."""
        body = await run_in_threadpool(exposition.render, self.registry)
        return Response(body, media_type=exposition.CONTENT_TYPE,
                         headers={"Cache-Control": "no-store"})

    async def start(self) -> None:
        self._tasks = [
            # Prunes the active users (and shares them in multiprocess mode).
            asyncio.create_task(self._flush_active_users(), name="active-users"),
            asyncio.create_task(self._flush_logs(), name="flush-logs"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        logs.flush_logs()
        if self.multiprocess_dir is not None:
            self.active_users.remove_file()
            with contextlib.suppress(OSError):
                # This worker's live gauges (pool in use) stop counting for the instance.
                multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                    os.getpid(), str(self.multiprocess_dir))
        tracing.shutdown_tracing()

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(logs.FLUSH_SECONDS)
            # stdout closed or gone (OSError, ValueError): nothing to be done about it here.
            with contextlib.suppress(OSError, ValueError):
                logs.flush_logs()

    async def _flush_active_users(self) -> None:
        users = self.active_users
        while True:
            await asyncio.sleep(ACTIVE_USERS_SHARE_SECONDS)
            share = users.share()
            if share is None:
                continue
            try:
                await asyncio.to_thread(users.write, share)
            except OSError:
                log.warning("could not share the active users with the other workers",
                            exc_info=True)


def setup(settings: Settings) -> Observability:
    """Configure JSON logging and tracing for this process, once, before anything logs."""
    logs.configure_logging(settings.log_level)
    tracing.configure_tracing()
    return Observability(settings)
