"""One ``redis.asyncio`` client per process, built from Settings: a single node or a Cluster.

Short socket timeouts and no client-side retries: on the request path a slow Redis must cost a
few tens of milliseconds at most, and the circuit breaker (not redis-py's retry loop, which by
default retries with backoff) decides when to try again.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RedisClient = Redis | RedisCluster

#: Connect and read timeouts (seconds). A healthy Redis on the same network answers in < 1 ms.
SOCKET_TIMEOUT = 0.1
#: Idle connections are PINGed before reuse after this long, so a Redis restarted meanwhile is
#: noticed on checkout instead of failing a request.
HEALTH_CHECK_INTERVAL = 30


def build_redis_client(url: str, *, cluster: bool = False,
                       timeout: float = SOCKET_TIMEOUT) -> RedisClient:
    """``redis://host:port/db`` (or ``rediss://``, ``unix://``); with ``cluster`` the URL names
    one startup node and the rest of the cluster is discovered (a cluster has no db number)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
    if not cluster:
        return Redis.from_url(url, **options)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("FAVORITES_REDIS_CLUSTER=true needs a redis:// or rediss:// host:port URL")
    return RedisCluster(
        host=parts.hostname,
        port=parts.port or 6379,
        username=parts.username,
        password=parts.password,
        ssl=parts.scheme == "rediss",
        # Per node; the default (100) would turn a burst into MaxConnectionsError, i.e. failures.
        max_connections=1000,
        **options,
    )


#: What a Redis (or a Cluster: "cannot be connected", CLUSTERDOWN, a slot not covered) that is
#: down or unreachable raises; redis-py's cluster errors are not all ``ConnectionError``s.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, RedisClusterException, ClusterError,
                OSError, TimeoutError)


async def server_identity(client: RedisClient) -> str | None:
    """Which Redis process(es) hold the data: the ``run_id`` of the server, or of every primary
    of a cluster with its address. It changes when a server restarts (from a snapshot, perhaps,
    with version keys older than invalidations already delivered) or another takes over (a
    failover to a replica that had not received them), which ``CacheEpoch`` treats as data that
    cannot be trusted. None when Redis does not answer (an outage the breaker already handles);
    any other failure (``INFO`` not allowed to this user) raises."""
    try:
        return await _server_identity(client)
    except _UNREACHABLE:
        return None


async def _server_identity(client: RedisClient) -> str:
    if isinstance(client, RedisCluster):
        replies: dict[str, Any] = await client.info(
            "server", target_nodes=RedisCluster.PRIMARIES)
        if "run_id" in replies:  # redis-py answers a single primary's INFO as is, not by node
            return str(replies["run_id"])
        return " ".join(sorted(f"{node}={info['run_id']}" for node, info in replies.items()))
    info: dict[str, Any] = await client.info("server")
    return str(info["run_id"])
