"""Sessions, idempotent calls, capped rooms and cluster-wide rate limits on three instances
over a real NATS.

The engine-independent tests of the Redis module run here unchanged, on NATS fixtures.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("nats", reason="the NATS engine needs nats-py: pip install 'wsevents[nats]'")
from aiohttp import web

from examples.reference_app import add_capped_rooms
from wsevents import WsApp
from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports.nats import NatsTransport

from .nats_support import NATS_URL
from .test_capacity_functional import build_capped
from .test_capacity_redis_functional import Instance as CappedInstance
from .test_capacity_redis_functional import test_an_instance_that_stops_renewing_frees_its_places
from .test_ratelimit_cluster_functional import build as build_rate_limited
from .test_ratelimit_cluster_functional import check_one_bucket_per_user
from .test_ratelimit_cluster_functional import serve as serve_rate_limited
from .test_sessions_functional import build, drop, session_of
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

pytest_plugins = ["tests.nats_fixtures"]

pytestmark = pytest.mark.functional

__all__ = [
    "test_a_bad_idem_is_refused",
    "test_a_clean_close_ends_the_session",
    "test_a_resume_takes_over_a_half_open_connection_on_another_instance",
    "test_a_shutdown_keeps_the_session_for_another_instance",
    "test_after_the_ttl_the_token_resumes_nothing",
    "test_an_instance_that_stops_renewing_frees_its_places",
    "test_away_during_500_pushes_from_other_instances_resumes_and_recovers",
    "test_idem_counts_once_also_across_a_resume_on_another_instance",
    "test_racing_resumes_on_two_instances_resume_once",
]

Connect = Callable[..., Awaitable[WsTestClient]]


def build_with_capacity(transport: NatsTransport) -> WsApp:
    app = build(transport)
    add_capped_rooms(app)
    return app


@pytest.fixture
async def apps(aiohttp_client: Any, nats_prefix: str) -> list[Any]:
    servers = []
    for _ in range(3):
        app = build_with_capacity(NatsTransport.from_url(NATS_URL, prefix=nats_prefix))
        servers.append((app, await aiohttp_client(attach(app, web.Application(), "/ws"))))
    return servers


@pytest.fixture
async def cluster(aiohttp_client: Any, nats_prefix: str) -> AsyncIterator[Any]:
    """Capped-room instances on NATS (the capacity suite's ``cluster``)."""
    made: list[CappedInstance] = []

    async def make(count: int = 3, lease: float | None = None) -> list[CappedInstance]:
        for _ in range(count):
            transport = NatsTransport.from_url(NATS_URL, prefix=nats_prefix)
            app = build_capped(transport, lease=lease)
            server = await aiohttp_client(attach(app, web.Application(), "/ws"))
            made.append(CappedInstance(app, server))
        return made[-count:]

    yield make
    for instance in made:
        for client in instance.clients:
            await client.close()


@pytest.fixture
def connect(apps: list[Any]) -> Connect:
    async def connect(i: int, **query: str) -> WsTestClient:
        return WsTestClient(await apps[i][1].ws_connect("/ws", params=query))

    return connect


async def test_a_dropped_connection_resumes_on_another_instance(
    connect: Connect, apps: list[tuple[WsApp, Any]]
) -> None:
    alice = await connect(0, user="alice")
    token = (await session_of(alice))["session"]
    room = "/chat/rooms/" + uuid.uuid4().hex[:8]
    await alice.call("subscribe", room)
    before = await alice.call("rpc", "/whoami")
    drop(alice)
    back = await connect(1, user="alice", session=token)
    assert await back.call("rpc", "/whoami") == before
    assert await session_of(back) == {"session": token, "resumed": True}
    assert await back.call("rpc", "/rooms") == [room]
    transport = apps[2][0].transport
    assert isinstance(transport, NatsTransport)
    assert await transport.locate_connection(before["id"]) == apps[1][0].rooms.instance_id
    carol = await connect(2)
    assert await carol.call("rpc", "/direct", {"to": before["id"], "x": "hi"}) == {"sent": True}
    assert await back.next_push() == {"event": "notification", "path": "/private", "data": "hi"}


async def test_a_capped_room_takes_three_members_across_instances(connect: Connect) -> None:
    room = "/capped/rooms/" + uuid.uuid4().hex[:8]
    members = [await connect(i) for i in range(3)]
    for member in members:
        assert await member.call("subscribe", room) == {"subscribed": True}
    fourth = await connect(1)
    reply = await fourth.request("subscribe", room, message_id=7)
    assert reply["error"]["code"] == 409
    assert await members[0].call("unsubscribe", room) == {"unsubscribed": True}
    assert await fourth.call("subscribe", room) == {"subscribed": True}


async def test_three_nats_instances_share_one_rate_limit_bucket(
    aiohttp_client: Any, nats_prefix: str
) -> None:
    apps = [
        build_rate_limited(NatsTransport.from_url(NATS_URL, prefix=nats_prefix)) for _ in range(3)
    ]
    await check_one_bucket_per_user(await serve_rate_limited(aiohttp_client, apps))
