"""Which address a request comes from (SPEC §4): the socket peer, or behind a configured trusted
proxy the nearest untrusted hop of X-Forwarded-For."""

from __future__ import annotations

import ipaddress

import pytest

from favorites.entrypoints.http.auth import ServiceClients

PROXIES = ServiceClients((), [ipaddress.ip_network("10.0.0.0/8")])


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    ("203.0.113.7", None, "203.0.113.7"),
    ("203.0.113.7", "127.0.0.1", "203.0.113.7"),  # an untrusted peer's header is ignored
    ("10.0.0.2", "198.51.100.4", "198.51.100.4"),
    ("10.0.0.2", "198.51.100.4, 10.0.0.3", "198.51.100.4"),  # proxies skipped right to left
    ("10.0.0.2", "garbage, 198.51.100.4", "198.51.100.4"),  # left of the client: never read
    ("10.0.0.2", "::ffff:198.51.100.4", "198.51.100.4"),
    ("10.0.0.2", "10.0.0.9", "10.0.0.9"),  # only proxies: the farthest one
])
def test_the_client_address(peer: str, forwarded: str | None, expected: str) -> None:
    assert PROXIES.client_address(peer, forwarded) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("forwarded", ["garbage", "198.51.100.4, garbage",
                                       "unknown, 10.0.0.3", "10.0.0.3, 1.2.3.4.5"])
def test_a_malformed_chain_behind_a_proxy_is_an_unknown_caller(forwarded: str) -> None:
    """Not the proxy's own address: a service client allowed from inside the cluster
    (10.0.0.0/8) must not be reachable by whoever makes the proxy forward garbage."""
    assert PROXIES.client_address("10.0.0.2", forwarded) is None


def test_an_unparsable_peer_is_an_unknown_caller() -> None:
    assert PROXIES.client_address("not-an-address", None) is None
