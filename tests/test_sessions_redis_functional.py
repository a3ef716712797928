"""Sessions and idempotent calls on three instances over a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from wsevents import WsApp
from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports.redis import RedisTransport

from .redis_support import REDIS_URL
from .test_history_functional import publish, push, room_name, subscribe
from .test_sessions_functional import build, drop, idem_call, session_of

pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

Connect = Callable[..., Awaitable[WsTestClient]]


@pytest.fixture
async def apps(aiohttp_client: Any, prefix: str, admin: aioredis.Redis) -> list[Any]:
    servers = []
    for _ in range(3):
        app = build(RedisTransport.from_url(REDIS_URL, prefix=prefix))
        servers.append((app, await aiohttp_client(attach(app, web.Application(), "/ws"))))
    return servers


@pytest.fixture
def connect(apps: list[Any]) -> Connect:
    async def connect(i: int, **query: str) -> WsTestClient:
        return WsTestClient(await apps[i][1].ws_connect("/ws", params=query))

    return connect


async def test_a_dropped_connection_resumes_on_another_instance(
    connect: Connect, apps: list[tuple[WsApp, Any]], admin: aioredis.Redis, prefix: str
) -> None:
    alice = await connect(0, user="alice")
    token = (await session_of(alice))["session"]
    room = "/chat/rooms/" + uuid.uuid4().hex[:8]
    await alice.call("subscribe", room)
    await alice.call("rpc", "/state", {"n": 1})
    before = await alice.call("rpc", "/whoami")
    drop(alice)
    back = await connect(1, user="alice", session=token)
    assert await back.call("rpc", "/whoami") == before
    assert await session_of(back) == {"session": token, "resumed": True}
    assert await back.call("rpc", "/rooms") == [room]
    located = await admin.get(f"{prefix}conn:{before['id']}")
    assert located.decode() == apps[1][0].rooms.instance_id
    carol = await connect(2)
    assert await carol.call("rpc", "/direct", {"to": before["id"], "x": "hi"}) == {"sent": True}
    assert await back.next_push() == {"event": "notification", "path": "/private", "data": "hi"}
    await carol.call("subscribe", room)
    await carol.call("message", room, "all")
    assert (await back.next_push())["data"] == "all"


async def test_a_clean_close_ends_the_session(connect: Connect) -> None:
    alice = await connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    await alice.close()
    await asyncio.sleep(0.2)
    back = await connect(1, session=token)
    assert (await back.call("rpc", "/whoami"))["id"] != cid
    assert (await session_of(back))["resumed"] is False


async def test_racing_resumes_on_two_instances_resume_once(
    connect: Connect, apps: list[tuple[WsApp, Any]]
) -> None:
    alice = await connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    drop(alice)
    racers = await asyncio.gather(connect(1, session=token), connect(2, session=token))
    await asyncio.sleep(0.3)
    holders = [app for app, _ in apps if cid in app.server._connections]
    assert len(holders) == 1
    open_ids = [(await r.call("rpc", "/whoami"))["id"] for r in racers if not r.ws.closed]
    assert open_ids.count(cid) == 1


async def test_a_resume_takes_over_a_half_open_connection_on_another_instance(
    connect: Connect, apps: list[tuple[WsApp, Any]]
) -> None:
    old = await connect(0)
    token = (await session_of(old))["session"]
    cid = (await old.call("rpc", "/whoami"))["id"]
    new = await connect(2, session=token)
    assert (await new.call("rpc", "/whoami"))["id"] == cid
    await old.wait_closed()
    assert cid not in apps[0][0].server._connections


async def test_idem_counts_once_also_across_a_resume_on_another_instance(
    connect: Connect,
) -> None:
    alice = await connect(0)
    token = (await session_of(alice))["session"]
    key = uuid.uuid4().hex
    first = await idem_call(alice, "/counter/incr", {"key": key}, "k", message_id=1)
    assert first == {"id": 1, "data": {"value": 1}}
    assert await idem_call(alice, "/counter/incr", {"key": key}, "k", message_id=2) == {
        "id": 2,
        "data": {"value": 1},
    }
    drop(alice)
    back = await connect(1, session=token)
    assert await idem_call(back, "/counter/incr", {"key": key}, "k", message_id=3) == {
        "id": 3,
        "data": {"value": 1},
    }
    other = await connect(2)
    assert await other.call("rpc", "/counter/incr", {"key": key}) == {"value": 2}


async def test_a_bad_idem_is_refused(connect: Connect) -> None:
    alice = await connect(0)
    reply = await idem_call(alice, "/whoami", None, "x" * 65, message_id=9)
    assert reply["id"] == 9 and reply["error"]["code"] == 400


async def test_away_during_500_pushes_from_other_instances_resumes_and_recovers(
    connect: Connect,
) -> None:
    room = room_name()
    away = await connect(0)
    token = (await session_of(away))["session"]
    start = await subscribe(away, room)
    drop(away)
    publishers = [await connect(1), await connect(2)]
    count = 500
    for i in range(count):
        await publish(publishers[i % 2], room, i)
    back = await connect(1, session=token)
    assert await back.call("rpc", "/rooms") == [room]
    reply = await subscribe(back, room, {"offset": start["offset"], "epoch": start["epoch"]})
    assert reply == {
        "subscribed": True,
        "offset": start["offset"] + count,
        "epoch": start["epoch"],
        "recovered": True,
    }
    assert back.pending_messages() == [push(room, i, i + 1) for i in range(count)]
    await publish(publishers[0], room, "live")
    assert await back.next_push() == push(room, "live", count + 1)
    await asyncio.sleep(0.2)
    assert back.pending_messages() == []


async def test_after_the_ttl_the_token_resumes_nothing(
    connect: Connect, apps: list[tuple[WsApp, Any]]
) -> None:
    for app, _ in apps:
        app.sessions.ttl = 0.2
    alice = await connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    drop(alice)
    await asyncio.sleep(0.6)
    back = await connect(1, session=token)
    assert (await back.call("rpc", "/whoami"))["id"] != cid
    assert (await session_of(back))["resumed"] is False


async def test_a_shutdown_keeps_the_session_for_another_instance(
    connect: Connect, apps: list[tuple[WsApp, Any]]
) -> None:
    alice = await connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    await apps[0][0].shutdown()
    assert await alice.wait_closed() == 1001
    back = await connect(2, session=token)
    assert (await back.call("rpc", "/whoami"))["id"] == cid
