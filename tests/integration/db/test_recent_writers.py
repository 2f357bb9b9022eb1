"""Read-your-writes marks: in process, and shared through the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from favorites.adapters.db.recent_writers import InProcessRecentWriters, RedisRecentWriters
from tests.integration.db.helpers import closed_port

REDIS_URL = os.environ.get("FAVORITES_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def test_in_process_marks_expire_after_the_window() -> None:
    clock = FakeClock()
    writers = InProcessRecentWriters(5, clock=clock)
    user, other = uuid.uuid4(), uuid.uuid4()
    await writers.mark(user)
    assert await writers.wrote_recently(user)
    assert not await writers.wrote_recently(other)
    clock.now += 4.9
    assert await writers.wrote_recently(user)
    await writers.mark(user)  # a new write extends the window
    clock.now += 4.9
    assert await writers.wrote_recently(user)
    clock.now += 0.2
    assert not await writers.wrote_recently(user)


async def test_in_process_marks_are_pruned_and_bounded() -> None:
    clock = FakeClock()
    writers = InProcessRecentWriters(5, clock=clock, max_entries=100)
    for _ in range(50):
        await writers.mark(uuid.uuid4())
    clock.now += 6
    await writers.mark(uuid.uuid4())
    assert len(writers) == 1  # the expired 50 went on the next mark
    for _ in range(500):
        await writers.mark(uuid.uuid4())
    assert len(writers) == 100


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    yield client
    await client.aclose()


@pytest.mark.redis
async def test_redis_marks_are_shared_between_instances(redis: Redis) -> None:
    instance_a = RedisRecentWriters(redis, 5)
    instance_b = RedisRecentWriters(redis, 5)
    user = uuid.uuid4()
    await instance_a.mark(user)
    assert await instance_b.wrote_recently(user)  # the other instance knows through Redis
    key = RedisRecentWriters.key(user)
    assert key == f"{{u:{user}}}:rw"  # hash-tagged: same Redis Cluster slot as the user's keys
    assert 4000 < await redis.pttl(key) <= 5000
    assert not await instance_b.wrote_recently(uuid.uuid4())
    assert instance_a.failures == instance_b.failures == 0
    await redis.delete(key)


@pytest.mark.redis
async def test_redis_mark_expires_with_the_window(redis: Redis) -> None:
    writers = RedisRecentWriters(redis, 0.2)
    other_instance = RedisRecentWriters(redis, 0.2)
    user = uuid.uuid4()
    await writers.mark(user)
    assert await other_instance.wrote_recently(user)
    await asyncio.sleep(0.25)
    assert not await other_instance.wrote_recently(user)


async def test_redis_down_falls_back_to_in_process_marks_quickly() -> None:
    client = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=0.2,
                   socket_timeout=0.2, retry=None)
    clock = FakeClock()
    writers = RedisRecentWriters(client, 5, timeout=0.3, retry_after=5, clock=clock)
    user = uuid.uuid4()
    started = time.monotonic()
    try:
        await writers.mark(user)  # Redis refuses: never raises, the local mark holds
        assert await writers.wrote_recently(user)
        assert not await writers.wrote_recently(uuid.uuid4())  # Redis skipped: local answer
        assert writers.failures == 1
        assert not writers.redis_available
        clock.now += 5
        assert writers.redis_available  # tried again after retry_after
        assert not await writers.wrote_recently(uuid.uuid4())
        assert writers.failures == 2
    finally:
        await client.aclose()
    assert time.monotonic() - started < 2
