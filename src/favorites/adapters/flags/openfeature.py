"""Feature flags through the OpenFeature SDK, evaluated in process from a flagd flag file.

Why OpenFeature with flagd's file format rather than a JSON format of our own: the format, its
validation and its ``fractional`` rollout are published and tested elsewhere. ``fractional`` hashes
the flag key with the user id (murmur3), so a user's answer is the same on every instance and after
every restart, and a user inside a 10 % rollout stays inside at 50 %. The same definitions can later
be served by a flagd daemon or a vendor by swapping the provider, not the call sites.

The file is read in process and polled for changes: raising a rollout from 10 to 50 % is an edit
of the file (a ConfigMap in Kubernetes), not a deployment. Every version of the file is checked by
the same rules, at start-up and at each reload. A file that turns unreadable or invalid keeps the
last good flags in force, shows in readiness as ``stale`` and is logged once (WARN), and once more
(INFO) when it is valid again; at start-up it is fatal.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.provider.flagd.resolvers.process.connector.file_watcher import (
    FileWatcher,
)
from openfeature.contrib.tools.flagd.core.model.flag_store import FlagStore
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.provider import ProviderStatus
from openfeature.provider.no_op_provider import NoOpProvider

from favorites.domain.flags import DEFAULTS

#: How often the flag file is checked for a change (one ``stat``).
POLL_MS = 1000

log = logging.getLogger(__name__)

_instances = itertools.count()


class FlagsFileError(Exception):
    """The flag file cannot be used; the message says which file and why."""


def check_file(path: Path, known: Mapping[str, bool] = DEFAULTS) -> list[str]:
    """Parse and validate a flag file the way the provider will, and a little more (the provider
    accepts a ``defaultVariant`` that names no variant), so start-up fails on a bad file with one
    line instead of quietly serving every flag at its default.

    Returns the names of the flags in the file that are not in ``known``, sorted: they are valid
    but never asked for (a typo, or a flag of another version of the service), which the caller
    may want to point out.
    """
    if path.suffix == ".yml":  # the provider reads YAML only from a name ending in .yaml
        raise FlagsFileError(f"{path}: a YAML flag file must be named *.yaml (the flagd provider "
                             "reads any other name as JSON)")
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
        return check_data(data, known)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise FlagsFileError(f"{path}: {exc}") from None
    except Exception as exc:  # the provider's parse errors are not ValueErrors
        raise FlagsFileError(f"{path}: {_parse_error(exc)}") from None


def check_data(data: Any, known: Mapping[str, bool] = DEFAULTS) -> list[str]:
    """``check_file`` on a parsed file: ValueError, or the provider's own parse error."""
    if not isinstance(data, dict) or not isinstance(data.get("flags"), dict):
        raise ValueError('expected an object with a "flags" object')
    for key, flag in data["flags"].items():
        _check_flag(key, flag, boolean=key in known)
    FlagStore().update(data)
    return sorted(key for key in data["flags"] if key not in known)


def _parse_error(exc: Exception) -> str:
    return getattr(exc, "error_message", None) or "not a valid flagd flag definition"


def _check_flag(key: str, flag: Any, *, boolean: bool) -> None:
    variants = flag.get("variants") if isinstance(flag, dict) else None
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"flag {key}: needs a non-empty \"variants\" object")
    if flag.get("defaultVariant") not in variants:
        raise ValueError(f"flag {key}: \"defaultVariant\" must name one of its variants")
    if boolean and not all(isinstance(value, bool) for value in variants.values()):
        raise ValueError(f"flag {key}: every variant must be true or false")


class _CheckedStore:
    """Stands in front of the provider's flag store: each reloaded version of the file passes
    ``check_data`` first, so a file that start-up would refuse is refused at run time too (the
    last good flags stay) instead of quietly turning every flag to its default."""

    def __init__(self, store: Any, known: Mapping[str, bool], loaded: Callable[[], None]):
        self._store = store
        self._known = known
        self._loaded = loaded

    def update(self, data: Any) -> None:
        check_data(data, self._known)  # raised: the watcher calls handle_error
        self._store.update(data)
        self._loaded()


class OpenFeatureFlags:
    """``enabled(flag, user_id)``; every flag at its default when no file is configured."""

    def __init__(self, path: Path | None, *, defaults: Mapping[str, bool] = DEFAULTS,
                 poll_ms: int = POLL_MS):
        self._path = path
        self._defaults = dict(defaults)
        # A domain of its own: several apps in one process (tests) do not share providers.
        self._domain = f"favorites-{next(_instances)}"
        self._provider: FlagdProvider | None = None
        #: The file turned bad since the last good version was loaded (the watcher thread's).
        self._stale = False
        if path is not None:
            check_file(path, self._defaults)
            self._provider = FlagdProvider(
                resolver_type=ResolverType.FILE, offline_flag_source_path=str(path),
                deadline_ms=poll_ms,
            )
            self._watch(self._provider)
        self._client = api.get_client(self._domain)

    def _watch(self, provider: FlagdProvider) -> None:
        """Hook into the provider's file watcher: it would log an ERROR with a stack trace at
        every poll (each second) while the file stays bad, and load a file that start-up refuses.
        Should a release of the provider be laid out otherwise, its own behaviour stays."""
        watcher = getattr(getattr(provider, "resolver", None), "connector", None)
        if not isinstance(watcher, FileWatcher):
            return
        watcher.flag_store = _CheckedStore(  # type: ignore[assignment]
            watcher.flag_store, self._defaults, self._reloaded)

        def handle_error(error_message: str) -> None:
            # What the watcher's own handle_error does, without its log line: the provider
            # reports the error (readiness: stale) and will report ready after the next load.
            # The line first: whoever sees readiness turn stale finds it logged already.
            if not self._stale:
                self._stale = True
                log.warning("flag file unusable, keeping the last good flags: %s",
                            self._reason(error_message))
            watcher.should_emit_ready_on_success = True
            watcher.emit_provider_error(
                ProviderEventDetails(message=error_message, error_code=ErrorCode.PARSE_ERROR))

        watcher.handle_error = handle_error  # type: ignore[method-assign]

    def _reason(self, fallback: str) -> str:
        """Why the file is bad, as precisely as ``check_file`` says it (once per bad spell)."""
        assert self._path is not None
        try:
            check_file(self._path, self._defaults)
        except FlagsFileError as exc:
            return str(exc)
        return f"{self._path}: {fallback}"  # fixed meanwhile; the next poll loads it

    def _reloaded(self) -> None:
        if self._stale:
            self._stale = False
            log.info("flag file valid again, its flags apply: %s", self._path)

    def start(self) -> None:
        if self._provider is not None:
            try:
                api.set_provider_and_wait(self._provider, self._domain)
            except Exception as exc:  # changed since check_file: refuse to start
                self.close()  # stops the provider's file watcher thread
                cause = exc.__cause__ or exc
                reason = str(cause) or type(cause).__name__
                raise FlagsFileError(f"{self._path}: {reason}") from None

    def close(self) -> None:
        if self._provider is not None:
            api.set_provider(NoOpProvider(), self._domain)  # shuts the file watcher down

    def enabled(self, flag: str, user_id: UUID) -> bool:
        default = self._defaults[flag]  # KeyError: asking for an unknown flag is a bug
        return self._client.get_boolean_value(
            flag, default, EvaluationContext(targeting_key=str(user_id)))

    async def readiness(self) -> str:
        """``ok``, or ``stale`` while the file cannot be read (the last good flags apply)."""
        return "ok" if self._client.get_provider_status() == ProviderStatus.READY else "stale"
