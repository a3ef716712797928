"""Fixtures of the Redis functional tests (loaded with ``pytest_plugins``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from .redis_support import (
    REDIS_CLI,
    REDIS_SERVER,
    REDIS_URL,
    KeysOf,
    ThrowawayRedis,
    ThrowawayRedisCluster,
    cluster_keys,
    delete_cluster_keys,
    delete_keys,
    free_port,
    unique,
)


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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayRedisCluster]:
    """A 3-master 3-replica Redis Cluster on loopback, started once per session (skips the
    test when redis-server or redis-cli is not installed)."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server and redis-cli are needed for a Redis Cluster")
    cluster = ThrowawayRedisCluster(str(tmp_path_factory.mktemp("redis-cluster")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def cluster_prefix(redis_cluster: ThrowawayRedisCluster) -> AsyncIterator[str]:
    """A fresh channel/key prefix on the Redis Cluster; its keys are deleted after the
    test (once the cluster is healthy again, if the test killed a master)."""
    value = unique("wsevents-test") + ":"
    yield value
    await asyncio.to_thread(redis_cluster.wait_healthy)
    await delete_cluster_keys(redis_cluster, value)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """``redis`` unless the test is parametrized with ``both_engines``."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture
async def engine_url(
    engine: str, request: pytest.FixtureRequest, prefix: str
) -> AsyncIterator[str]:
    """The URL of the engine under test; on the Redis Cluster, the keys under ``prefix``
    are deleted after the test."""
    if engine == "redis":
        yield REDIS_URL
        return
    cluster: ThrowawayRedisCluster = request.getfixturevalue("redis_cluster")
    yield cluster.url
    await asyncio.to_thread(cluster.wait_healthy)
    await delete_cluster_keys(cluster, prefix)


@pytest.fixture
def keys_of(engine: str, request: pytest.FixtureRequest) -> KeysOf:
    """``await keys_of(match)``: the keys matching ``match`` on the engine under test."""
    if engine == "redis":
        admin: aioredis.Redis = request.getfixturevalue("admin")

        async def on_redis(match: str) -> list[bytes]:
            return [key async for key in admin.scan_iter(match=match, count=500)]

        return on_redis
    cluster: ThrowawayRedisCluster = request.getfixturevalue("redis_cluster")

    async def on_cluster(match: str) -> list[bytes]:
        return await cluster_keys(cluster, match)

    return on_cluster
