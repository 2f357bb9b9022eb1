"""Who is calling: typed dependencies for user tokens and service clients.

Handlers declare ``user: CurrentUser`` or ``client: ServiceCaller``; the dependency authenticates
and returns a Principal, so no handler can forget to.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Annotated

from fastapi import Depends, Request

from favorites.bootstrap import Container
from favorites.config import IPNetwork, ServiceClient
from favorites.domain.errors import AddressNotAllowed, InvalidApiKey, InvalidToken, MalformedRequest
from favorites.domain.models import Principal, PrincipalKind

_CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "access_token", "token", "x-api-key"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def container(request: Request) -> Container:
    app_container: Container = request.app.state.container
    return app_container


def refuse_credentials_in_query(request: Request) -> None:
    """Credentials in a URL end up in proxy logs and browser history; refuse them outright."""
    if request.query_params and _CREDENTIAL_PARAMS & {k.lower() for k in request.query_params}:
        raise MalformedRequest("credentials are not accepted in the query string")


def authenticate_user(request: Request) -> Principal:
    refuse_credentials_in_query(request)
    header = request.headers.get("authorization")
    if not header:
        raise InvalidToken("missing bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("expected 'Authorization: Bearer <token>'")
    app = container(request)
    principal = app.jwt.verify(token.strip())
    assert principal.token_id is not None
    if app.revocations.is_revoked(principal.token_id):
        raise InvalidToken("token revoked")
    return principal


class ServiceClients:
    """Looks up clients by the sha256 of the presented key; the key itself is never kept."""

    def __init__(self, clients: tuple[ServiceClient, ...], trusted_proxies: list[IPNetwork]):
        self._by_hash = {client.key_sha256: client for client in clients}
        self._trusted = tuple(trusted_proxies)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> IPAddress | None:
        """The socket peer, unless it is a trusted proxy: then the nearest untrusted hop of XFF."""
        try:
            address = ipaddress.ip_address(peer) if peer else None
        except ValueError:
            return None
        if address is None or not forwarded_for or not self._is_trusted(address):
            return address
        for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
            try:
                hop_address = ipaddress.ip_address(hop)
            except ValueError:
                return address  # a malformed chain is not believed
            if not self._is_trusted(hop_address):
                return hop_address
            address = hop_address
        return address

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)

    def authenticate(self, key: str | None, address: IPAddress | None) -> Principal:
        if not key:
            raise InvalidApiKey("missing X-API-Key")
        client = self._by_hash.get(hashlib.sha256(key.encode("utf-8")).hexdigest())
        if client is None:
            raise InvalidApiKey("unknown API key")
        if address is None or not any(address in network for network in client.cidrs):
            raise AddressNotAllowed(f"client {client.name!r} may not call from this address")
        return Principal(kind=PrincipalKind.SERVICE, subject=f"service:{client.name}",
                         scopes=frozenset(client.scopes))


def authenticate_service(request: Request) -> Principal:
    refuse_credentials_in_query(request)
    clients: ServiceClients = request.app.state.service_clients
    peer = request.client.host if request.client else None
    address = clients.client_address(peer, request.headers.get("x-forwarded-for"))
    return clients.authenticate(request.headers.get("x-api-key"), address)


CurrentUser = Annotated[Principal, Depends(authenticate_user)]
ServiceCaller = Annotated[Principal, Depends(authenticate_service)]
AppContainer = Annotated[Container, Depends(container)]
