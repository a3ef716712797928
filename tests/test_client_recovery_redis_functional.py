"""WsClient recovering history rooms across three instances on a real Redis: cut off from
one instance, it comes back on another and gets what the others published meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from examples.reference_app import add_history
from wsevents import WsApp
from wsevents.client import Push, WsClient
from wsevents.server import attach
from wsevents.transports.redis import RedisTransport

from .redis_support import REDIS_URL, delete_keys, wait_until
from .tcp_proxy import TcpProxy
from .test_client_recovery_functional import FAST, cut, room_name

pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def instances(aiohttp_server: ServerFactory, prefix: str, admin: aioredis.Redis) -> Any:
    servers = []
    for _ in range(3):
        app = WsApp(heartbeat=0, transport=RedisTransport.from_url(REDIS_URL, prefix=prefix))
        add_history(app)
        servers.append(await aiohttp_server(attach(app, web.Application(), "/ws")))
    return servers


@pytest.fixture
async def made() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.close()


async def test_away_during_500_pushes_it_recovers_them_on_another_instance(
    instances: list[TestServer], made: list[Any]
) -> None:
    proxy = await TcpProxy(instances[0].port).start()
    made.append(proxy)
    failed: list[str] = []
    away = WsClient(proxy.url(), on_recovery_failed=failed.append, **FAST)
    made.append(away)
    got: list[Push] = []
    away.on("message", "/feed/rooms/*", got.append)
    await away.connect()
    publishers = [WsClient(f"ws://127.0.0.1:{instances[i].port}/ws") for i in (1, 2)]
    made.extend(publishers)
    for publisher in publishers:
        await publisher.connect()
    room = room_name()
    start = (await away.subscribe(room)).reply
    await publishers[0].call("publish", room, "before")
    await wait_until(lambda: len(got) == 1)
    await cut(proxy, away)
    count = 500
    await asyncio.gather(
        *(publishers[i % 2].call("publish", room, i, timeout=30) for i in range(count))
    )
    proxy.upstream = instances[2].port  # back on another instance
    proxy.refuse = False
    await wait_until(lambda: away.connected and len(got) == count + 1, timeout=20)
    await publishers[1].call("publish", room, "live")
    await wait_until(lambda: len(got) == count + 2)
    await asyncio.sleep(0.05)  # a duplicate would come right behind
    assert [p.offset for p in got] == list(range(1, count + 3))
    assert sorted(p.data for p in got[1:-1]) == list(range(count))  # each once
    assert got[-1].data == "live"
    assert failed == []
    assert away.positions == {room: (count + 2, start["epoch"])}


async def test_history_lost_on_redis_is_reported_and_the_new_epoch_followed(
    instances: list[TestServer], made: list[Any], admin: aioredis.Redis, prefix: str
) -> None:
    proxy = await TcpProxy(instances[0].port).start()
    made.append(proxy)
    failed: list[str] = []
    away = WsClient(proxy.url(), on_recovery_failed=failed.append, **FAST)
    made.append(away)
    got: list[Push] = []
    away.on("message", "/feed/rooms/*", got.append)
    await away.connect()
    publisher = WsClient(f"ws://127.0.0.1:{instances[1].port}/ws")
    made.append(publisher)
    await publisher.connect()
    room = room_name()
    start = (await away.subscribe(room)).reply
    await publisher.call("publish", room, "before")
    await wait_until(lambda: len(got) == 1)
    await cut(proxy, away)
    await delete_keys(admin, prefix + "ws:history:")  # what a FLUSHALL does to the room
    await publisher.call("publish", room, "after the loss")
    proxy.upstream = instances[2].port
    proxy.refuse = False
    await wait_until(lambda: away.connected)
    assert failed == [room]
    (offset, epoch) = away.positions[room]
    assert epoch != start["epoch"]
    await publisher.call("publish", room, "live")
    await wait_until(lambda: len(got) == 2)
    assert [p.data for p in got] == ["before", "live"]
    assert got[-1].offset == offset + 1
