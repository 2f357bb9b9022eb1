"""What the seeder, the load generator and the runner agree on: ids, secrets, URLs.

User and product ids are derived from their index (uuid5 in a bench namespace), so the load
generator can pick users and products without reading the database. They look random on purpose:
sequential ids (``UUID(int=i)``) would make every B-tree insert an append and would give every user
the same first 8 bytes, which the service uses as the advisory-lock key.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

NAMESPACE = uuid.UUID("6f1c0c52-5d43-4c6e-9a57-3b1f0f7b9e21")

#: 48 characters, only ever used against the local bench server.
JWT_SECRET = "bench-only-secret-not-for-production-0123456789ab"  # noqa: S105 - bench only
JWT_ISSUER = "favorites-service"
JWT_AUDIENCE = "favorites"

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/favorites_bench"
ADMIN_DATABASE = "postgres"

#: Strides for a user's products: large primes, so (base + k * stride) mod P never repeats for k < P
#: whatever the pool size (unless P is a multiple of one of them, which ``user_product_indices``
#: checks).
_STRIDES = (1_000_003, 1_000_033, 1_000_037, 1_000_039, 1_000_081, 1_000_099, 1_000_117, 1_000_121)


def user_id(index: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"user:{index}")


def product_id(index: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"product:{index}")


def user_product_indices(user: int, per_user: int, products: int) -> list[int]:
    """The indices (into the product pool) of the products user ``user`` was seeded with."""
    if per_user > products:
        raise ValueError("per-user favorites exceed the product pool")
    base = (user * 2_654_435_761 + 97) % products
    stride = _STRIDES[user % len(_STRIDES)]
    if math.gcd(stride, products) != 1:
        stride = 1
    return [(base + k * stride) % products for k in range(per_user)]


@dataclass(frozen=True, slots=True)
class SeedShape:
    users: int
    per_user: int
    products: int

    @property
    def favorites(self) -> int:
        return self.users * self.per_user


_BENCH_NAME = re.compile(r"bench", re.IGNORECASE)


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def check_bench_database(url: str) -> None:
    """The seeder truncates tables: refuse any database whose name does not say it is a bench one."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise SystemExit(f"bench: only postgresql:// URLs are supported, not {url.split(':')[0]}")
    name = database_name(url)
    if not name or not _BENCH_NAME.search(name):
        raise SystemExit(f"bench: refusing to use database {name!r}: its name must contain 'bench'")


def admin_url(url: str) -> str:
    """The same server's maintenance database, to create the bench database from."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + ADMIN_DATABASE, parts.query, ""))
