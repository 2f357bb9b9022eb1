"""Secrets never reach a log line: enforced here, in the processor chain, not by care.

Two rules, applied to every line after it is shaped:

- a field whose *name* looks like a credential (token, authorization, cookie, api key, password,
  secret, credential) keeps its name but loses its value;
- any *value* that looks like a credential is masked wherever it appears, messages and stack
  traces included: a JWT (``eyJ...``), an API key with the ``fav_`` prefix, ``Bearer <anything>``.

Refresh tokens are opaque random strings with no recognisable shape, so they are protected by the
field-name rule and by never being put in a log call; the tests grep the whole output for the ones
they use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"

_SENSITIVE_NAME = re.compile(
    r"token|authori[sz]ation|cookie|api[-_]?key|apikey|password|passw|secret|credential|"
    r"private[-_]?key|signature",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){0,2}"  # JWT (header.payload.signature) or its start
    r"|fav_[A-Za-z0-9_-]+"  # service API keys minted by the embedded default
    r"|(?<=[Bb]earer )\s*[^\s\"',;]+"  # whatever follows "Bearer "
)
#: Cheap substring tests first; the regex only runs on strings that could hold a secret.
HINTS = ("eyJ", "fav_", "earer ")
_MAX_NAMES = 4096

_name_cache: dict[str, bool] = {}


def is_sensitive_name(name: str) -> bool:
    known = _name_cache.get(name)
    if known is None:
        known = _SENSITIVE_NAME.search(name) is not None
        if len(_name_cache) < _MAX_NAMES:
            _name_cache[name] = known
    return known


def scrub(text: str) -> str:
    """Mask every credential-looking part of ``text``."""
    for hint in HINTS:
        if hint in text:
            return _SECRET_VALUE.sub(REDACTED, text)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and is_sensitive_name(k) else _clean(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item) for item in value]
    return value


def redact(
    event: MutableMapping[str, Any], skip: frozenset[str] = frozenset()
) -> MutableMapping[str, Any]:
    """Redact ``event`` in place; keys in ``skip`` hold values known not to be credentials."""
    for key, value in event.items():
        if key in skip:
            continue
        if is_sensitive_name(key):
            event[key] = REDACTED
        elif isinstance(value, str):
            for hint in HINTS:
                if hint in value:
                    event[key] = _SECRET_VALUE.sub(REDACTED, value)
                    break
        elif value is not None and not isinstance(value, int | float):
            event[key] = _clean(value)
    return event
