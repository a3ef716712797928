"""Sessions and idempotent calls on three instances over the Redis Cluster: the tests of
the single-Redis suite, on the fixtures below."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports.redis import RedisTransport

from .redis_support import ThrowawayRedisCluster, delete_cluster_keys, unique
from .test_sessions_functional import build
from .test_sessions_redis_functional import (  # the same tests, on the fixtures below
    test_a_bad_idem_is_refused,
    test_a_clean_close_ends_the_session,
    test_a_resume_takes_over_a_half_open_connection_on_another_instance,
    test_a_shutdown_keeps_the_session_for_another_instance,
    test_after_the_ttl_the_token_resumes_nothing,
    test_away_during_500_pushes_from_other_instances_resumes_and_recovers,
    test_idem_counts_once_also_across_a_resume_on_another_instance,
    test_racing_resumes_on_two_instances_resume_once,
)

pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

__all__ = [
    "test_a_bad_idem_is_refused",
    "test_a_clean_close_ends_the_session",
    "test_a_resume_takes_over_a_half_open_connection_on_another_instance",
    "test_a_shutdown_keeps_the_session_for_another_instance",
    "test_after_the_ttl_the_token_resumes_nothing",
    "test_away_during_500_pushes_from_other_instances_resumes_and_recovers",
    "test_idem_counts_once_also_across_a_resume_on_another_instance",
    "test_racing_resumes_on_two_instances_resume_once",
]

Connect = Callable[..., Awaitable[WsTestClient]]


@pytest.fixture
async def apps(
    aiohttp_client: Any, redis_cluster: ThrowawayRedisCluster
) -> AsyncIterator[list[Any]]:
    prefix = unique("wsevents-test") + ":"
    servers = []
    for _ in range(3):
        app = build(RedisTransport.from_url(redis_cluster.url, prefix=prefix))
        servers.append((app, await aiohttp_client(attach(app, web.Application(), "/ws"))))
    yield servers
    await delete_cluster_keys(redis_cluster, prefix)


@pytest.fixture
def connect(apps: list[Any]) -> Connect:
    async def connect(i: int, **query: str) -> WsTestClient:
        return WsTestClient(await apps[i][1].ws_connect("/ws", params=query))

    return connect
