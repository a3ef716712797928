"""WsClient with ``resume=True`` against wsevents' own sessions, over real sockets cut by a
TCP relay: the reference app on one instance, and three instances on a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from examples import reference_app
from examples.reference_app import add_history, add_sessions
from wsevents import WsApp, use_ws_connection
from wsevents.client import Push, WsClient
from wsevents.server import attach
from wsevents.transports.redis import RedisTransport

from .redis_support import REDIS_URL, wait_until
from .tcp_proxy import TcpProxy
from .test_client_recovery_functional import FAST, cut, restore, room_name

pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def made() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.close()


async def proxied(made: list[Any], port: int) -> TcpProxy:
    proxy = await TcpProxy(port).start()
    made.append(proxy)
    return proxy


def client(made: list[Any], url: str, **options: Any) -> WsClient:
    new = WsClient(url, **options)
    made.append(new)
    return new


async def counted(ws: WsApp, key: str) -> int:
    value = await ws.sessions.store.get("counter:" + key)
    return int(value) if value is not None else 0


async def incr_lost_on_the_way(
    alice: WsClient, proxy: TcpProxy, ws: WsApp, key: str
) -> asyncio.Future[Any]:
    """Call /counter/incr so that the server runs it but its reply never arrives, then
    cut the connection: the call is still waiting."""
    proxy.stall()
    call = asyncio.ensure_future(alice.call("rpc", "/counter/incr", {"key": key}))

    async def ran() -> bool:
        return await counted(ws, key) == 1

    await wait_until(ran)
    assert not call.done()
    await cut(proxy, alice)
    return call


# -- the reference app on one instance ---------------------------------------------------------


@pytest.fixture
async def reference(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(attach(reference_app.app, web.Application(), "/ws"))


async def test_resumed_connection_keeps_its_id_rooms_and_runs_a_cut_off_call_once(
    reference: TestServer, made: list[Any]
) -> None:
    proxy = await proxied(made, reference.port)
    alice = client(made, proxy.url(), resume=True, **FAST)
    await alice.connect()
    assert alice.session_token is not None and alice.resumed is False
    me = await alice.call("rpc", "/whoami")
    await alice.subscribe("/chat/rooms/resume")
    key = uuid.uuid4().hex
    call = await incr_lost_on_the_way(alice, proxy, reference_app.app, key)
    await restore(proxy, alice)
    assert await call == {"value": 1}  # the kept reply: it ran once
    assert await counted(reference_app.app, key) == 1
    assert alice.resumed is True
    assert await alice.call("rpc", "/whoami") == me
    assert "/chat/rooms/resume" in await alice.call("rpc", "/rooms")
    assert await alice.call("rpc", "/counter/incr", {"key": key}) == {"value": 2}


async def test_a_resumed_history_room_gets_what_it_missed_once_in_order(
    reference: TestServer, made: list[Any]
) -> None:
    proxy = await proxied(made, reference.port)
    failed: list[str] = []
    alice = client(made, proxy.url(), resume=True, on_recovery_failed=failed.append, **FAST)
    got: list[Push] = []
    alice.on("message", "/feed/rooms/*", got.append)
    await alice.connect()
    bob = client(made, f"ws://127.0.0.1:{reference.port}/ws")
    await bob.connect()
    room = room_name()
    await alice.subscribe(room)
    sent = [(await bob.call("publish", room, "m1"))["offset"]]
    await wait_until(lambda: len(got) == 1)
    await cut(proxy, alice)
    for i in range(2, 7):
        sent.append((await bob.call("publish", room, f"m{i}"))["offset"])
    await restore(proxy, alice)
    assert alice.resumed is True
    sent.append((await bob.call("publish", room, "m7"))["offset"])
    await wait_until(lambda: len(got) >= 7)
    await asyncio.sleep(0.05)  # a duplicate would come right behind
    assert [(p.offset, p.data) for p in got] == [(o, f"m{i}") for i, o in enumerate(sent, 1)]
    assert failed == []


async def test_a_clean_close_ends_the_session(reference: TestServer, made: list[Any]) -> None:
    url = f"ws://127.0.0.1:{reference.port}/ws"
    first = client(made, url, resume=True)
    await first.connect()
    token = first.session_token
    me = await first.call("rpc", "/whoami")
    await first.close()
    again = client(made, f"{url}?session={token}", resume=True)
    await again.connect()
    assert again.resumed is False and again.session_token != token
    assert await again.call("rpc", "/whoami") != me


# -- three instances on Redis ---------------------------------------------------------------


def whoami() -> dict[str, str]:
    return {"id": use_ws_connection().id}


@pytest.fixture
async def instances(
    aiohttp_server: ServerFactory, prefix: str, admin: aioredis.Redis
) -> list[tuple[WsApp, TestServer]]:
    out = []
    for _ in range(3):
        app = WsApp(heartbeat=0, transport=RedisTransport.from_url(REDIS_URL, prefix=prefix))
        add_history(app)
        add_sessions(app)
        app.on_message("rpc", "/whoami")(whoami)
        out.append((app, await aiohttp_server(attach(app, web.Application(), "/ws"))))
    return out


async def test_resumed_on_another_instance_with_the_call_run_once(
    instances: list[tuple[WsApp, TestServer]], made: list[Any]
) -> None:
    proxy = await proxied(made, instances[0][1].port)
    failed: list[str] = []
    alice = client(made, proxy.url(), resume=True, on_recovery_failed=failed.append, **FAST)
    got: list[Push] = []
    alice.on("message", "/feed/rooms/*", got.append)
    await alice.connect()
    me = await alice.call("rpc", "/whoami")
    room = room_name()
    await alice.subscribe(room)
    publisher = client(made, f"ws://127.0.0.1:{instances[1][1].port}/ws")
    await publisher.connect()
    key = uuid.uuid4().hex
    call = await incr_lost_on_the_way(alice, proxy, instances[0][0], key)
    count = 100
    await asyncio.gather(*(publisher.call("publish", room, i) for i in range(count)))
    proxy.upstream = instances[2][1].port  # back on another instance
    await restore(proxy, alice)
    assert alice.resumed is True
    assert await call == {"value": 1}
    assert await counted(instances[1][0], key) == 1  # one counter, shared by the instances
    assert await alice.call("rpc", "/whoami") == me
    await wait_until(lambda: len(got) >= count)
    await publisher.call("publish", room, "live")
    await wait_until(lambda: len(got) >= count + 1)
    await asyncio.sleep(0.05)
    assert [p.offset for p in got] == list(range(1, count + 2))
    assert sorted(p.data for p in got[:-1]) == list(range(count)) and got[-1].data == "live"
    assert failed == []
