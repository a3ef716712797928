"""Fixtures of the Redis functional tests (loaded with ``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from .redis_support import REDIS_SERVER, REDIS_URL, ThrowawayRedis, delete_keys, free_port, unique


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    """A plain client of the Redis under test (skips the test when Redis is not there)."""
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}: {exc!r}")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(admin: aioredis.Redis) -> AsyncIterator[str]:
    """A fresh channel/key prefix; keys left under it are deleted after the test."""
    value = unique("wsevents-test") + ":"
    yield value
    await delete_keys(admin, value)


@pytest.fixture
async def throwaway_redis() -> AsyncIterator[ThrowawayRedis]:
    """A private redis-server (skips the test when redis-server is not installed)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = ThrowawayRedis(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
