"""Rate limiting on a real Redis Cluster (``FAVORITES_REDIS_CLUSTER=true``): the exact count per
request and the batched flush, whose one pipeline carries keys of every slot."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import RedisCluster

from favorites.adapters.ratelimit import RateLimit, RedisRateLimiter, build_storage
from favorites.adapters.ratelimit.redis import KEY_PREFIX
from tests.integration.cache.servers import Cluster


async def test_batched_counts_reach_every_slot_and_the_limit_holds(cluster: Cluster) -> None:
    clock = [60.0 * (int(time.time() // 60) + 2000) + 1]  # a window of its own
    window = int(clock[0] // 60)
    limiter = RedisRateLimiter(build_storage(cluster.url, True), {"user": RateLimit(100, 60)},
                               clock=lambda: clock[0], flush_interval=3600)
    users = [str(uuid.uuid4()) for _ in range(30)]  # spread over the three masters' slots
    raw = RedisCluster.from_url(cluster.url)
    try:
        for user in users:
            for _ in range(3):
                assert (await limiter.hit("user", user)).allowed
        await limiter.flush()
        totals = [await raw.get(f"{KEY_PREFIX}:user:{user}:{window}") for user in users]
        assert [int(total) for total in totals] == [3] * len(users)
        # Up to half the limit batched, past it every hit counted in the cluster first; the
        # first refusal is remembered, so the hits after it cost no round trip.
        allowed = [(await limiter.hit("user", users[0])).allowed for _ in range(100)]
        assert allowed.count(True) == 100 - 3
        assert int(await raw.get(f"{KEY_PREFIX}:user:{users[0]}:{window}")) == 101
        assert limiter.failures == 0
    finally:
        await limiter.close()
        for user in users:
            await raw.delete(f"{KEY_PREFIX}:user:{user}:{window}")
        await raw.aclose()
