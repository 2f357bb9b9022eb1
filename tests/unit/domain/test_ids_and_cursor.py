from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from favorites.domain.cursor import CursorCodec
from favorites.domain.errors import InvalidCursor, ValidationFailed
from favorites.domain.ids import parse_uuid

SAMPLE = uuid.UUID("0b9c1a52-3f3a-4c1e-9d55-2f0a6c7e8b11")


@pytest.mark.parametrize(
    "text", [str(SAMPLE), str(SAMPLE).upper(), SAMPLE.hex, SAMPLE.hex.upper()]
)
def test_accepted_spellings_normalise(text: str) -> None:
    assert parse_uuid(text, "id") == SAMPLE


@pytest.mark.parametrize(
    "text", ["", "me", "123", "{" + str(SAMPLE) + "}", "urn:uuid:" + str(SAMPLE),
             str(SAMPLE) + "0", "g" * 32, "<script>", str(SAMPLE).replace("-", "_")],
)
def test_everything_else_is_refused(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_uuid(text, "id")


def test_cursor_round_trip_keeps_microseconds() -> None:
    codec = CursorCodec(b"secret" * 6)
    owner, product = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert codec.decode(owner, codec.encode(owner, at, product)) == (at, product)


@pytest.mark.parametrize("bad", ["", "x", "!!!!", "A" * 59, "A" * 500])
def test_garbage_cursors_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidCursor):
        CursorCodec(b"k" * 32).decode(uuid.uuid4(), bad)


def test_cursor_from_another_key_is_invalid() -> None:
    owner = uuid.uuid4()
    cursor = CursorCodec(b"a" * 32).encode(owner, datetime.now(UTC), uuid.uuid4())
    with pytest.raises(InvalidCursor):
        CursorCodec(b"b" * 32).decode(owner, cursor)
