"""Request bodies: the repeated-name check on what orjson accepts."""

from __future__ import annotations

import orjson
import pytest

from favorites.domain.errors import ValidationFailed
from favorites.entrypoints.http.body import _refuse_repeated_names


def test_nesting_orjson_accepts_is_a_422_not_a_recursion_error() -> None:
    """With FAVORITES_MAX_BODY_BYTES raised, a body nested 1,000 deep passes orjson (limit
    1,024) and exceeded the standard parser's recursion: a 500 on an unauthenticated route."""
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    orjson.loads(deep)  # valid JSON, as far as the first parse goes
    with pytest.raises(ValidationFailed, match="nested too deeply"):
        _refuse_repeated_names(deep)


@pytest.mark.parametrize(("raw", "repeated"), [
    (b'{"a": 1, "a": 2}', "a"),
    (b'{"outer": {"b": 1, "b": 1}}', "b"),
    (b'{"list": [{"c": 1, "c": 2}]}', "c"),
])
def test_a_name_given_twice_at_any_depth_is_refused(raw: bytes, repeated: str) -> None:
    with pytest.raises(ValidationFailed, match=f"body: {repeated} given more than once"):
        _refuse_repeated_names(raw)


def test_distinct_names_pass() -> None:
    _refuse_repeated_names(b'{"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}')
