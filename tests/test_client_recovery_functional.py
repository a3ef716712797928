"""WsClient recovering history rooms over real sockets: connections cut by a TCP relay
(no close frame), pushes published meanwhile, resubscribes with ``since``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from examples import reference_app
from wsevents import WsApp, WsError, use_ws_connection, use_ws_message, use_ws_rooms
from wsevents.client import Push, WsClient

from .redis_support import wait_until
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.functional

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., WsClient]

FAST = {"reconnect": True, "base_delay": 0.01, "max_delay": 0.05}


def serve(ws_app: WsApp) -> web.Application:
    app = web.Application()
    ws_app.attach(app, "/ws")
    return app


def room_name() -> str:
    return f"/feed/rooms/{uuid.uuid4().hex[:12]}"


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    await wait_until(check, timeout)


@pytest.fixture
async def clients() -> AsyncIterator[ClientFactory]:
    made: list[WsClient] = []

    def make(url: str, **options: Any) -> WsClient:
        client = WsClient(url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def reference(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(serve(reference_app.app))


@pytest.fixture
async def proxy_to() -> AsyncIterator[Callable[[int], Awaitable[TcpProxy]]]:
    made: list[TcpProxy] = []

    async def make(port: int) -> TcpProxy:
        proxy = await TcpProxy(port).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.close()


async def cut(proxy: TcpProxy, client: WsClient) -> None:
    """Cut the client's connection like a network failure and keep it away."""
    proxy.refuse = True
    assert proxy.drop() >= 1
    await until(lambda: not client.connected)


async def restore(proxy: TcpProxy, client: WsClient) -> None:
    proxy.refuse = False
    await until(lambda: client.connected)


def collect(client: WsClient, pattern: str = "/feed/rooms/*") -> list[Push]:
    got: list[Push] = []
    client.on("message", pattern, got.append)
    return got


# -- the reference app: history in memory -----------------------------------------------------


async def test_pushes_missed_while_cut_off_come_once_in_order_then_live_ones(
    reference: TestServer, clients: ClientFactory, proxy_to: Any
) -> None:
    proxy = await proxy_to(reference.port)
    failed: list[str] = []
    alice = clients(proxy.url(), on_recovery_failed=failed.append, **FAST)
    got = collect(alice)
    await alice.connect()
    bob = clients(f"ws://127.0.0.1:{reference.port}/ws")
    await bob.connect()
    room = room_name()
    sub = await alice.subscribe(room)
    assert sub.reply["offset"] == 0 and isinstance(sub.reply["epoch"], str)
    sent: list[tuple[int, str]] = []

    async def publish(i: int) -> None:
        reply = await bob.call("publish", room, f"m{i}")
        sent.append((reply["offset"], f"m{i}"))

    for i in range(1, 4):
        await publish(i)
    await until(lambda: len(got) == 3)
    await cut(proxy, alice)
    for i in range(4, 9):  # published while alice is away
        await publish(i)
    await restore(proxy, alice)
    for i in range(9, 11):
        await publish(i)
    await until(lambda: len(got) >= 10)
    await asyncio.sleep(0.05)  # a duplicate would come right behind
    assert [(p.offset, p.data) for p in got] == sent
    assert alice.positions == {room: (sent[-1][0], sub.reply["epoch"])}
    assert failed == []
    assert proxy.accepted == 2  # one reconnect, not a resumed stream of frames


async def test_the_replay_keeps_the_apps_subscribe_data_and_sets_since(
    aiohttp_server: ServerFactory, clients: ClientFactory, proxy_to: Any
) -> None:
    seen: list[Any] = []
    ws = WsApp(heartbeat=0)
    ws.history.track("/feed/rooms/:room", size=10, ttl=60.0)

    @ws.on_message("subscribe", "/feed/rooms/:room")
    async def subscribe() -> dict[str, Any]:
        data = use_ws_message().data
        seen.append(data)
        since = data.get("since") if isinstance(data, dict) else None
        return (await use_ws_rooms().join_stream(since=since)).as_reply()

    server = await aiohttp_server(serve(ws))
    proxy = await proxy_to(server.port)
    alice = clients(proxy.url(), **FAST)
    await alice.connect()
    room = room_name()
    sub = await alice.subscribe(room, {"filter": "all"})
    await cut(proxy, alice)
    await restore(proxy, alice)
    assert seen == [
        {"filter": "all"},
        {"filter": "all", "since": {"offset": 0, "epoch": sub.reply["epoch"]}},
    ]
    assert alice.subscriptions == {room: {"filter": "all"}}  # what the app gave, unchanged


def small_history_app(size: int) -> WsApp:
    ws = WsApp(heartbeat=0)
    ws.history.track("/feed/rooms/:room", size=size, ttl=60.0)

    @ws.on_message("subscribe", "/feed/rooms/:room")
    async def subscribe() -> dict[str, Any]:
        data = use_ws_message().data
        since = data.get("since") if isinstance(data, dict) else None
        return (await use_ws_rooms().join_stream(since=since)).as_reply()

    @ws.on_message("publish", "/feed/rooms/:room")
    async def publish() -> dict[str, Any]:
        report = await use_ws_rooms().broadcast(
            "message", use_ws_message().data, exclude_self=False
        )
        return {"offset": report.offset}

    return ws


async def test_history_lost_meanwhile_is_reported_and_live_pushes_go_on(
    aiohttp_server: ServerFactory, clients: ClientFactory, proxy_to: Any
) -> None:
    server = await aiohttp_server(serve(small_history_app(size=3)))
    proxy = await proxy_to(server.port)
    failed: list[str] = []
    opened: list[list[str]] = []
    alice = clients(
        proxy.url(),
        on_recovery_failed=failed.append,
        on_open=lambda: opened.append(list(failed)),
        **FAST,
    )
    got = collect(alice)
    await alice.connect()
    bob = clients(f"ws://127.0.0.1:{server.port}/ws")
    await bob.connect()
    room = room_name()
    sub = await alice.subscribe(room)
    await bob.call("publish", room, "seen")
    await until(lambda: len(got) == 1)
    await cut(proxy, alice)
    for i in range(5):  # more than the 3 kept: the gap cannot be filled
        await bob.call("publish", room, f"lost {i}")
    await restore(proxy, alice)
    assert failed == [room]
    assert opened[-1] == [room]  # told before on_open
    assert alice.positions == {room: (6, sub.reply["epoch"])}
    await bob.call("publish", room, "live")
    await until(lambda: len(got) == 2)
    assert [(p.offset, p.data) for p in got] == [(1, "seen"), (7, "live")]


# -- a server that repeats itself: what the client hands over --------------------------------


def frame(path: str, offset: int, text: str | None = None) -> bytes:
    return orjson.dumps(
        {"event": "message", "path": path, "data": text or f"m{offset}", "offset": offset}
    )


def repeating_app() -> WsApp:
    """Replays after ``since`` with repeats and out of order; ``/dup/epoch`` starts a new
    epoch whose pushes come before a ``recovered: false`` reply."""
    ws = WsApp(heartbeat=0)
    state: dict[str, Any] = {"epoch": "e1", "last": 3}

    @ws.on_message("subscribe", "/dup/:room")
    def subscribe() -> dict[str, Any]:
        msg = use_ws_message()
        conn = use_ws_connection()
        since = msg.data.get("since") if isinstance(msg.data, dict) else None
        reply = {"subscribed": True, "offset": state["last"], "epoch": state["epoch"]}
        if since is None:
            return reply
        if since["epoch"] != state["epoch"]:
            for offset in (2, 1, 2):  # the new epoch's live pushes, held with a repeat
                conn.send_frame(frame(msg.path, offset))
            return {**reply, "offset": 2, "recovered": False}
        start = since["offset"]
        for offset in (start - 1, start, start + 2, start + 1, start + 2, start):
            conn.send_frame(frame(msg.path, offset))
        state["last"] = start + 2
        return {**reply, "offset": start + 2, "recovered": True}

    @ws.on_message("rpc", "/dup/push")
    def push() -> None:
        data = use_ws_message().data
        for offset in data["offsets"]:
            use_ws_connection().send_frame(frame(data["path"], offset))
        state["last"] = max(state["last"], *data["offsets"])

    @ws.on_message("rpc", "/dup/epoch")
    def new_epoch() -> None:
        state["epoch"], state["last"] = "e2", 0

    @ws.on_message("subscribe", "/refused/:room")
    def refused() -> dict[str, Any]:
        if isinstance(use_ws_message().data, dict):
            raise WsError(403, "not any more")
        return {"subscribed": True, "offset": 0, "epoch": "e1"}

    return ws


async def test_repeated_and_unordered_replays_are_handed_over_once_in_order(
    aiohttp_server: ServerFactory, clients: ClientFactory, proxy_to: Any
) -> None:
    server = await aiohttp_server(serve(repeating_app()))
    proxy = await proxy_to(server.port)
    failed: list[str] = []
    alice = clients(proxy.url(), on_recovery_failed=failed.append, **FAST)
    got = collect(alice, "/dup/*")
    await alice.connect()
    await alice.subscribe("/dup/a")
    await alice.call("rpc", "/dup/push", {"path": "/dup/a", "offsets": [4, 5]})
    await until(lambda: len(got) == 2)
    await cut(proxy, alice)
    await restore(proxy, alice)  # the replay: 4, 5, 7, 6, 7, 5
    await alice.call("rpc", "/dup/push", {"path": "/dup/a", "offsets": [8]})
    await until(lambda: len(got) >= 5)
    assert [p.offset for p in got] == [4, 5, 6, 7, 8]
    assert [p.data for p in got] == ["m4", "m5", "m6", "m7", "m8"]
    assert failed == [] and alice.positions == {"/dup/a": (8, "e1")}
    # The history is lost: a new epoch; its pushes come before the reply, once each.
    await alice.call("rpc", "/dup/epoch")
    await cut(proxy, alice)
    await restore(proxy, alice)
    assert failed == ["/dup/a"]
    assert [p.offset for p in got[5:]] == [1, 2]
    assert alice.positions == {"/dup/a": (2, "e2")}


async def test_a_history_room_refused_on_replay_is_forgotten_with_its_position(
    aiohttp_server: ServerFactory, clients: ClientFactory, proxy_to: Any
) -> None:
    server = await aiohttp_server(serve(repeating_app()))
    proxy = await proxy_to(server.port)
    errors: list[Exception] = []
    alice = clients(proxy.url(), on_error=errors.append, **FAST)
    await alice.connect()
    await alice.subscribe("/refused/a")
    assert alice.positions == {"/refused/a": (0, "e1")}
    await cut(proxy, alice)
    await restore(proxy, alice)
    assert alice.subscriptions == {} and alice.positions == {}
    assert any(getattr(e, "code", None) == 403 for e in errors)


async def test_unsubscribe_stops_following_the_room(
    reference: TestServer, clients: ClientFactory
) -> None:
    alice = clients(f"ws://127.0.0.1:{reference.port}/ws")
    await alice.connect()
    room = room_name()
    sub = await alice.subscribe(room)
    assert set(alice.positions) == {room}
    await sub.unsubscribe()
    assert alice.positions == {}
    plain = await alice.subscribe("/chat/rooms/x")  # no offset in the reply: not followed
    assert plain.reply == {"subscribed": True} and alice.positions == {}
