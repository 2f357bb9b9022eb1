"""A user's first page as it is cached and served: already in its JSON form.

Most reads are of a user's first page, from the cache. Decoding a cached page into 50 ``Favorite``
objects only to encode them as JSON again was a quarter of such a read's CPU, so a ``FirstPage``
keeps the page as the JSON the API answers with, one fragment per favorite, plus where each
fragment ends: the first ``limit`` items are one slice of bytes, whatever ``limit`` is. Objects
are decoded only when something other than the HTTP answer needs them (tests, a next-page cursor).

Encoded entry (``payload``): format byte ``\\x02``, item count ``n`` (uint16), ``n`` fragment end
offsets (uint16, little-endian, each counting the commas between fragments), then the fragments
joined by ``,``. A full page of 51 favorites is about 4.9 KiB. Blue and green versions share
Redis: a payload in a format this version does not know decodes to ``None`` (a miss, then
overwritten), never to an error.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import orjson

from favorites.domain.models import Favorite

FORMAT = b"\x02"
_COUNT = struct.Struct("<H")
_HEADER = 1 + _COUNT.size


def render_items(items: Sequence[Favorite]) -> bytes:
    """The JSON array elements (no brackets) of ``items``, exactly as the API renders them:
    canonical UUIDs, UTC times with a ``Z`` (orjson, one call for the whole list)."""
    if not items:
        return b""
    rendered = orjson.dumps(
        [{"product_id": f.product_id, "created_at": f.created_at} for f in items],
        default=str, option=orjson.OPT_UTC_Z,
    )
    return rendered[1:-1]


def render_page(items_json: bytes, next_cursor: str | None) -> bytes:
    """The list endpoint's body around already rendered items; the same bytes orjson gives for
    ``{"items": [...], "next_cursor": ...}``."""
    cursor = b"null" if next_cursor is None else orjson.dumps(next_cursor)
    return b'{"items":[' + items_json + b'],"next_cursor":' + cursor + b"}"


class FirstPage:
    """An immutable snapshot of a user's newest favorites (up to one more than a page)."""

    __slots__ = ("_count", "_ends", "_payload", "user_id")

    def __init__(self, user_id: UUID, payload: bytes, count: int, ends: tuple[int, ...]):
        self.user_id = user_id
        self._payload = payload
        self._count = count
        self._ends = ends

    @classmethod
    def of(cls, user_id: UUID, items: Sequence[Favorite]) -> FirstPage:
        page = cls.rendered_as(user_id, render_items(items))  # one orjson call for the page
        if len(page) != len(items):
            raise ValueError("a rendered favorite contains '},{'")
        return page

    @classmethod
    def rendered_as(cls, user_id: UUID, body: bytes) -> FirstPage:
        """A page from its items' JSON array elements, rendered exactly as ``render_items``
        renders them (by us, or by the database: see ``SqlFavoritesRepository.first_page``)."""
        if len(body) > 0xFFFF:
            raise ValueError("a first page's JSON must fit in 64 KiB")
        ends: list[int] = []
        at = body.find(b"},{")  # only between items: ids and times never contain braces
        while at >= 0:
            ends.append(at + 1)
            at = body.find(b"},{", at + 2)
        if body:
            ends.append(len(body))
        header = FORMAT + _COUNT.pack(len(ends)) + struct.pack(f"<{len(ends)}H", *ends)
        return cls(user_id, header + body, len(ends), tuple(ends))

    @classmethod
    def decode(cls, user_id: UUID, payload: bytes) -> FirstPage | None:
        """The page in ``payload``, or None when it is not in a format this version knows."""
        if payload[:1] != FORMAT or len(payload) < _HEADER:
            return None
        (count,) = _COUNT.unpack_from(payload, 1)
        start = _HEADER + 2 * count
        if len(payload) < start:
            return None
        ends = struct.unpack_from(f"<{count}H", payload, _HEADER)
        if (ends[-1] if count else 0) != len(payload) - start:
            return None  # truncated or damaged
        return cls(user_id, payload, count, ends)

    @property
    def payload(self) -> bytes:
        """The encoded entry, as stored in Redis."""
        return self._payload

    def __len__(self) -> int:
        return self._count

    def rendered(self, limit: int) -> bytes:
        """The JSON array elements of the first ``limit`` favorites: a slice, no decoding."""
        count = min(limit, self._count)
        if count <= 0:
            return b""
        start = _HEADER + 2 * self._count
        return self._payload[start : start + self._ends[count - 1]]

    def includes(self, product_id: UUID) -> bool:
        """Whether the page lists ``product_id``: found in the JSON as every page renders it
        (canonical lower-case id, no white space), without decoding."""
        needle = b'"product_id":"' + str(product_id).encode() + b'"'
        return self._payload.find(needle, _HEADER + 2 * self._count) >= 0

    def favorites(self, limit: int) -> list[Favorite]:
        """The first ``limit`` favorites as objects (decoded on demand)."""
        rows = orjson.loads(b"[" + self.rendered(limit) + b"]")
        return [Favorite(self.user_id, UUID(row["product_id"]),
                         datetime.fromisoformat(row["created_at"])) for row in rows]

    def item(self, index: int) -> bytes:
        """One favorite's JSON, as rendered: it names the favorite (product and time) exactly."""
        if not 0 <= index < self._count:
            raise IndexError(index)
        start = _HEADER + 2 * self._count + (self._ends[index - 1] + 1 if index else 0)
        return self._payload[start : _HEADER + 2 * self._count + self._ends[index]]

    def favorite_at(self, index: int) -> Favorite:
        """One favorite, e.g. the last of a page, whose key makes the next page's cursor."""
        row = orjson.loads(self.item(index))
        return Favorite(self.user_id, UUID(row["product_id"]),
                        datetime.fromisoformat(row["created_at"]))

    def __repr__(self) -> str:
        return f"FirstPage(user_id={self.user_id}, favorites={self._count})"


class Page:
    """One page of a listing. ``rendered()`` is what the API sends; ``items`` decodes only when
    read, so a page served from the cache never becomes objects."""

    __slots__ = ("_first", "_items", "_limit", "next_cursor")

    def __init__(self, items: list[Favorite] | None, next_cursor: str | None, *,
                 first: FirstPage | None = None, limit: int = 0):
        if items is None and first is None:
            raise ValueError("a page needs its items or the first page it is a slice of")
        self._items = items
        self._first = first
        self._limit = limit
        self.next_cursor = next_cursor

    @classmethod
    def from_first(cls, first: FirstPage, limit: int, next_cursor: str | None) -> Page:
        return cls(None, next_cursor, first=first, limit=limit)

    @property
    def items(self) -> list[Favorite]:
        if self._items is None:
            assert self._first is not None
            self._items = self._first.favorites(self._limit)
        return self._items

    def rendered(self) -> bytes:
        """The items' JSON array elements (no brackets)."""
        if self._first is not None:
            return self._first.rendered(self._limit)
        return render_items(self.items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Page):
            return NotImplemented
        return self.items == other.items and self.next_cursor == other.next_cursor

    __hash__ = None  # type: ignore[assignment]  # mutable (items decode lazily), like a list

    def __repr__(self) -> str:
        return f"Page(items={self.items!r}, next_cursor={self.next_cursor!r})"
