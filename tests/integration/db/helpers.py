"""Small helpers shared by the database tests."""

from __future__ import annotations

import random
import uuid

from favorites.domain.models import Principal, PrincipalKind
from tests.helpers import port_is_free

#: The ports these tests may use for servers they start (and for "nothing listens here").
PORTS = range(18500, 18600)


def user(user_id: uuid.UUID | None = None) -> Principal:
    user_id = user_id or uuid.uuid4()
    return Principal(kind=PrincipalKind.USER, subject=str(user_id), user_id=user_id,
                     roles=frozenset({"user"}), token_id=uuid.uuid4().hex,
                     token_expires_at=2_000_000_000)


def free_ports(count: int) -> list[int]:
    """``count`` ports of 18500-18589 on 127.0.0.1 that nothing listens on right now, picked at
    random so that two test runs at the same time are unlikely to pick the same ones."""
    found = [port for port in PORTS[:90] if port_is_free(port)]
    if len(found) < count:
        raise RuntimeError("not enough free ports in 18500-18589")
    return random.sample(found, count)


def closed_port() -> int:
    """A port (18590-18599) with no listener: connections to it are refused at once."""
    return next(port for port in reversed(PORTS) if port_is_free(port))
