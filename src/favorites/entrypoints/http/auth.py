"""Who is calling: typed dependencies for user tokens and service clients.

Handlers declare ``user: CurrentUser`` or ``client: ServiceCaller``; the dependency authenticates
and returns a Principal, so no handler can forget to.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Annotated

from fastapi import Depends, Request

from favorites.adapters.ratelimit import ADDRESS, SERVICE, USER, Scope
from favorites.bootstrap import Container
from favorites.config import IPNetwork, ServiceClient
from favorites.domain.errors import (
    AddressNotAllowed,
    FavoritesError,
    InvalidApiKey,
    InvalidToken,
    MalformedRequest,
    RateLimited,
)
from favorites.domain.models import Principal, PrincipalKind
from favorites.entrypoints.http.middleware import RATE_LIMIT_HEADERS
from favorites.observability.metrics import record_rate_limited

_CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "access_token", "token", "x-api-key"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def app_container(request: Request) -> Container:
    found: Container = request.app.state.container
    return found


async def container(request: Request) -> Container:
    """The dependency form; async on purpose: FastAPI runs a plain ``def`` in a worker thread."""
    return app_container(request)


def refuse_credentials_in_query(request: Request) -> None:
    """Credentials in a URL end up in proxy logs and browser history; refuse them outright.

    Every credential name contains ``key`` or ``token``: a query string with neither (and no
    percent-escape that could spell one) is let through without being parsed, as most are."""
    raw = request.scope.get("query_string", b"").lower()
    if not raw or (b"key" not in raw and b"token" not in raw and b"%" not in raw):
        return
    if _CREDENTIAL_PARAMS & {k.lower() for k in request.query_params}:
        raise MalformedRequest("credentials are not accepted in the query string")


async def authenticate_user(request: Request) -> Principal:
    """The bearer token's user, counted against that user's rate limit.

    A request that fails authentication is counted against its client address instead, so
    guessing tokens is limited too: once the address is over its limit, 429 replaces the 401.
    """
    try:
        principal = verify_user(request)
    except FavoritesError:
        await limit_address(request)
        raise
    await _count(request, USER, principal.subject)
    return principal


def _one_credential(request: Request, name: str,
                    refused: type[InvalidToken | InvalidApiKey]) -> str | None:
    """The single value of a credential header, or None when there is none.

    Sent twice, a credential is refused rather than one of its values picked: a proxy in front
    may check one value and this service use the other (HTTP defines both headers as single
    values, so a second one is never legitimate)."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise refused(f"more than one {name} header")
    return values[0] if values else None


def verify_user(request: Request) -> Principal:
    refuse_credentials_in_query(request)
    header = _one_credential(request, "Authorization", InvalidToken)
    if not header:
        raise InvalidToken("missing bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("expected 'Authorization: Bearer <token>'")
    app = app_container(request)
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
            address = _ip(peer) if peer else None
        except ValueError:
            return None
        if address is None or not forwarded_for or not self._is_trusted(address):
            return address
        for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
            try:
                hop_address = _ip(hop)
            except ValueError:
                # A malformed chain is not believed, and the caller is unknown: not the
                # trusted proxy, whose own address a service client's CIDRs may well allow.
                return None
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


def _ip(text: str) -> IPAddress:
    """An address as one caller has it: an IPv4 address a dual-stack proxy wrote as
    ``::ffff:a.b.c.d`` is that IPv4 address (its own CIDR checks and its own rate-limit count, not
    the /64 every such address shares)."""
    address = ipaddress.ip_address(text)
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: Request) -> IPAddress | None:
    """The caller's address: the socket peer, or XFF's nearest untrusted hop behind our proxies.

    Every ``X-Forwarded-For`` line counts, in order, as one list (a proxy may append its own line
    after one the client sent rather than extend it).
    """
    clients: ServiceClients = request.app.state.service_clients
    peer = request.client.host if request.client else None
    forwarded = request.headers.getlist("x-forwarded-for")
    return clients.client_address(peer, ", ".join(forwarded) if forwarded else None)


async def authenticate_service(request: Request) -> Principal:
    """The service client, counted per client name (failures count against the address)."""
    try:
        refuse_credentials_in_query(request)
        clients: ServiceClients = request.app.state.service_clients
        principal = clients.authenticate(_one_credential(request, "X-API-Key", InvalidApiKey),
                                         client_address(request))
    except FavoritesError:
        await limit_address(request)
        raise
    await _count(request, SERVICE, principal.subject.removeprefix("service:"))
    return principal


async def limit_address(request: Request) -> None:
    """Counts a request without (valid) credentials against its client address.

    IPv6 callers are counted per /64, the block one subscriber usually holds, so rotating
    addresses inside it does not reset the limit.
    """
    address = client_address(request)
    if address is None:
        key = "unknown"
    elif address.version == 6:
        key = str(ipaddress.IPv6Network((address, 64), strict=False))
    else:
        key = str(address)
    await _count(request, ADDRESS, key)


async def _count(request: Request, scope: Scope, identity: str) -> None:
    """One hit per request; leaves the RateLimit-* headers for EdgeMiddleware; 429 when over."""
    state = request.scope.setdefault("state", {})
    if RATE_LIMIT_HEADERS in state:
        return  # already counted (a route with two limited dependencies)
    decision = await app_container(request).rate_limiter.hit(scope, identity)
    state[RATE_LIMIT_HEADERS] = decision.headers
    if not decision.allowed:
        record_rate_limited(scope)
        raise RateLimited(decision.reset_after,
                          f"more than {decision.limit} requests; retry in {decision.reset_after} s")


CurrentUser = Annotated[Principal, Depends(authenticate_user)]
#: For routes open to anyone (token refresh, JWKS): ``dependencies=[LimitedByAddress]``.
LimitedByAddress = Depends(limit_address)
ServiceCaller = Annotated[Principal, Depends(authenticate_service)]
AppContainer = Annotated[Container, Depends(container)]
