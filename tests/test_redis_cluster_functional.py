"""The Redis Cluster engine against a real 3-master 3-replica cluster started by the tests:
conformance, sharded channels, hash-tagged room keys, slot moves and failover."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode

from wsevents.testing import (
    check_capacity_store,
    check_presence_store,
    check_session_store,
    check_transport,
)
from wsevents.transports.redis import RedisClusterTransport, RedisTransport
from wsevents.transports.redis._capacity import RedisCapacity
from wsevents.transports.redis._presence import RedisPresence
from wsevents.transports.redis._sessions import RedisSessions

from .redis_support import ThrowawayRedisCluster, delete_cluster_keys

# The fixtures redis_cluster and cluster_prefix.
pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional


@pytest.fixture
async def cluster_client(
    redis_cluster: ThrowawayRedisCluster,
) -> AsyncIterator[aioredis.RedisCluster]:
    client = aioredis.RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in redis_cluster.ports]
    )
    await client.initialize()  # the slot map, before concurrent commands
    yield client
    await client.aclose()


def transport(cluster: ThrowawayRedisCluster, prefix: str, **options: float) -> RedisTransport:
    return RedisTransport.from_url(cluster.url, prefix=prefix, **options)


async def test_the_cluster_transport_passes_the_conformance_suite(
    redis_cluster: ThrowawayRedisCluster, cluster_prefix: str
) -> None:
    made: list[RedisTransport] = []

    def factory() -> RedisTransport:
        made.append(transport(redis_cluster, cluster_prefix))
        return made[-1]

    await check_transport(factory)
    assert made and all(isinstance(t, RedisClusterTransport) for t in made)


async def test_the_presence_store_passes_on_the_cluster_and_leaves_no_key(
    redis_cluster: ThrowawayRedisCluster,
    cluster_client: aioredis.RedisCluster,
    cluster_prefix: str,
) -> None:
    await check_presence_store(
        lambda: RedisPresence(
            cluster_client, prefix=cluster_prefix, command_timeout=2.0, reap_lease=5.0
        )
    )
    assert await delete_cluster_keys(redis_cluster, cluster_prefix) == 0


async def test_the_capacity_store_passes_on_the_cluster_and_leaves_no_key(
    redis_cluster: ThrowawayRedisCluster,
    cluster_client: aioredis.RedisCluster,
    cluster_prefix: str,
) -> None:
    await check_capacity_store(
        lambda: RedisCapacity(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    )
    assert await delete_cluster_keys(redis_cluster, cluster_prefix) == 0


async def test_the_session_store_passes_on_the_cluster(
    redis_cluster: ThrowawayRedisCluster,
    cluster_client: aioredis.RedisCluster,
    cluster_prefix: str,
) -> None:
    await check_session_store(
        lambda: RedisSessions(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    )
