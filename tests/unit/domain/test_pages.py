"""The cached first page: served as a slice of its JSON, identical to rendering the objects."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from favorites.domain.models import Favorite
from favorites.domain.pages import FirstPage, Page, render_items, render_page


def favorites_of(user_id: uuid.UUID, n: int) -> list[Favorite]:
    start = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)
    return [Favorite(user_id, uuid.uuid4(), start - timedelta(microseconds=7 * i))
            for i in range(n)]


def api_body(items: list[Favorite], cursor: str | None) -> bytes:
    """The list endpoint's body the plain way: objects through orjson."""
    return orjson.dumps(
        {"items": [{"product_id": f.product_id, "created_at": f.created_at} for f in items],
         "next_cursor": cursor},
        option=orjson.OPT_UTC_Z,
    )


@pytest.mark.parametrize("n", [0, 1, 2, 51])
def test_every_slice_renders_exactly_like_the_objects(n: int) -> None:
    user_id = uuid.uuid4()
    items = favorites_of(user_id, n)
    # Times with and without microseconds and before 1970 render like orjson renders them.
    if n >= 2:
        items[1] = Favorite(user_id, items[1].product_id, datetime(2026, 1, 1, tzinfo=UTC))
    if n == 51:
        items[50] = Favorite(user_id, items[50].product_id,
                             datetime(1969, 12, 31, 23, 59, 59, 999999, UTC))
    first = FirstPage.of(user_id, items)
    assert len(first) == n
    for limit in range(0, n + 2):
        assert render_page(first.rendered(limit), None) == api_body(items[:limit], None)
        assert first.favorites(limit) == items[:limit]
    assert render_page(first.rendered(50), "abc") == api_body(items[:50], "abc")
    for index in range(n):
        assert first.favorite_at(index) == items[index]


@pytest.mark.parametrize("n", [0, 1, 51])
def test_a_page_tells_which_products_it_lists_without_decoding(n: int) -> None:
    user_id = uuid.uuid4()
    items = favorites_of(user_id, n)
    first = FirstPage.decode(user_id, FirstPage.of(user_id, items).payload)
    assert first is not None
    assert all(first.includes(f.product_id) for f in items)
    assert not first.includes(uuid.uuid4())
    assert not first.includes(user_id)


def test_a_page_round_trips_through_its_payload() -> None:
    user_id = uuid.uuid4()
    items = favorites_of(user_id, 51)
    decoded = FirstPage.decode(user_id, FirstPage.of(user_id, items).payload)
    assert decoded is not None
    assert decoded.favorites(51) == items
    assert decoded.favorites(51)[0].created_at.tzinfo is not None
    assert len(FirstPage.of(user_id, items).payload) < 5 * 1024


def test_an_unknown_or_damaged_payload_is_a_miss_not_an_error() -> None:
    user_id = uuid.uuid4()
    payload = FirstPage.of(user_id, favorites_of(user_id, 3)).payload
    assert FirstPage.decode(user_id, b"\x01" + b"x" * 24) is None  # the previous format
    assert FirstPage.decode(user_id, b"\x03" + payload[1:]) is None  # a future format
    assert FirstPage.decode(user_id, payload[:-1]) is None  # truncated
    assert FirstPage.decode(user_id, payload + b"xx") is None
    assert FirstPage.decode(user_id, payload[:5]) is None  # offsets cut short
    assert FirstPage.decode(user_id, b"") is None
    empty = FirstPage.decode(user_id, FirstPage.of(user_id, []).payload)
    assert empty is not None
    assert len(empty) == 0
    assert empty.rendered(50) == b""


def test_a_page_decodes_its_items_only_when_asked() -> None:
    user_id = uuid.uuid4()
    items = favorites_of(user_id, 5)
    page = Page.from_first(FirstPage.of(user_id, items), 3, None)
    assert page.rendered() == render_items(items[:3])
    assert page.items == items[:3]
    assert Page(items, "c").rendered() == render_items(items)
    with pytest.raises(ValueError, match="needs its items"):
        Page(None, None)
