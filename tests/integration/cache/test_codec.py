"""Entry encodings (shared by blue and green versions through Redis) and version tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from favorites.adapters.cache import codec
from favorites.domain.models import Favorite


def test_a_page_round_trips_to_the_microsecond_and_is_compact() -> None:
    user_id = uuid.uuid4()
    items = [Favorite(user_id, uuid.uuid4(), datetime(1969, 12, 31, 23, 59, 59, 999999, UTC)),
             Favorite(user_id, uuid.uuid4(), datetime(2026, 11, 27, 8, 0, 0, 1, UTC))]
    payload = codec.encode_page(items)
    assert len(payload) == 1 + 24 * len(items)
    assert codec.decode_page(user_id, payload, 50) == items
    assert codec.decode_page(user_id, payload, 1) == items[:1]


def test_an_unknown_or_damaged_entry_is_a_miss_not_an_error() -> None:
    user_id = uuid.uuid4()
    assert codec.decode_page(user_id, b"\x02" + b"x" * 24, 50) is None  # a future format
    assert codec.decode_page(user_id, codec.encode_page([]) + b"xx", 50) is None
    assert codec.decode_count(b"-1") is None
    assert codec.decode_count(codec.encode_count(12)) == 12


def test_entries_are_valid_only_under_the_version_they_were_loaded_under() -> None:
    entry = codec.tag(b"42", b"payload")
    assert codec.untag(entry, b"42") == b"payload"
    assert codec.untag(entry, b"43") is None
    assert codec.untag(entry, None) is None
    assert codec.untag(codec.tag(None, b"p"), None) == b"p"  # no version key yet: version 0
    assert codec.untag(b"garbage", b"42") is None
    assert codec.untag(None, b"42") is None


def test_a_token_carries_the_epoch_and_the_version() -> None:
    version = str((1 << 62) - 5).encode()
    token = codec.make_token(123, version)
    assert codec.split_token(token) == (123, version)
    assert codec.split_token(codec.make_token(0, None)) == (0, b"0")
