"""Feature flags through the OpenFeature SDK, evaluated in process from a flagd flag file.

Why OpenFeature with flagd's file format rather than a JSON format of our own: the format, its
validation and its ``fractional`` rollout are published and tested elsewhere. ``fractional`` hashes
the flag key with the user id (murmur3), so a user's answer is the same on every instance and after
every restart, and a user inside a 10 % rollout stays inside at 50 %. The same definitions can later
be served by a flagd daemon or a vendor by swapping the provider, not the call sites.

The file is read in process and polled for changes: raising a rollout from 10 to 50 % is an edit
of the file (a ConfigMap in Kubernetes), not a deployment. A file that turns unreadable keeps the
last good flags in force, shows in readiness as ``stale`` and is logged; at start-up it is fatal.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.tools.flagd.core.model.flag_store import FlagStore
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus
from openfeature.provider.no_op_provider import NoOpProvider

from favorites.domain.flags import DEFAULTS

#: How often the flag file is checked for a change (one ``stat``).
POLL_MS = 1000

_instances = itertools.count()


class FlagsFileError(Exception):
    """The flag file cannot be used; the message says which file and why."""


def check_file(path: Path, known: Mapping[str, bool] = DEFAULTS) -> None:
    """Parse and validate a flag file the way the provider will, and a little more (the provider
    accepts a ``defaultVariant`` that names no variant), so start-up fails on a bad file with one
    line instead of quietly serving every flag at its default."""
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("flags"), dict):
            raise ValueError('expected an object with a "flags" object')
        for key, flag in data["flags"].items():
            _check_flag(key, flag, boolean=key in known)
        FlagStore().update(data)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise FlagsFileError(f"{path}: {exc}") from None
    except Exception as exc:  # the provider's parse errors are not ValueErrors
        message = getattr(exc, "error_message", None) or "not a valid flagd flag definition"
        raise FlagsFileError(f"{path}: {message}") from None


def _check_flag(key: str, flag: Any, *, boolean: bool) -> None:
    variants = flag.get("variants") if isinstance(flag, dict) else None
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"flag {key}: needs a non-empty \"variants\" object")
    if flag.get("defaultVariant") not in variants:
        raise ValueError(f"flag {key}: \"defaultVariant\" must name one of its variants")
    if boolean and not all(isinstance(value, bool) for value in variants.values()):
        raise ValueError(f"flag {key}: every variant must be true or false")


class OpenFeatureFlags:
    """``enabled(flag, user_id)``; every flag at its default when no file is configured."""

    def __init__(self, path: Path | None, *, defaults: Mapping[str, bool] = DEFAULTS,
                 poll_ms: int = POLL_MS):
        self._path = path
        self._defaults = dict(defaults)
        # A domain of its own: several apps in one process (tests) do not share providers.
        self._domain = f"favorites-{next(_instances)}"
        self._provider: FlagdProvider | None = None
        if path is not None:
            check_file(path)
            self._provider = FlagdProvider(
                resolver_type=ResolverType.FILE, offline_flag_source_path=str(path),
                deadline_ms=poll_ms,
            )
        self._client = api.get_client(self._domain)

    def start(self) -> None:
        if self._provider is not None:
            try:
                api.set_provider_and_wait(self._provider, self._domain)
            except Exception as exc:  # changed since check_file: refuse to start
                raise FlagsFileError(f"{self._path}: {exc}") from None

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
