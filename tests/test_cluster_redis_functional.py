"""Several WsApp instances over a real Redis: exactly-once delivery, order, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from wsevents import (
    WsApp,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.server import attach
from wsevents.testing import WsTestClient, assert_delivered_once
from wsevents.transports.redis import RedisTransport

from .redis_support import (
    REDIS_URL,
    ThrowawayRedis,
    clients_named,
    pubsub_clients_named,
    unique,
    wait_until,
)

# The fixtures admin, prefix and throwaway_redis.
pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

ROOM = "/rooms/lobby"


class Instance:
    """One served WsApp with its RedisTransport and what its transport hooks saw."""

    def __init__(self, app: WsApp, transport: RedisTransport, server: Any) -> None:
        self.app = app
        self.transport = transport
        self.server = server
        self.clients: list[WsTestClient] = []
        self.states: list[str] = []
        self._changed = asyncio.Event()

        @app.on_transport_down
        def down() -> None:
            assert use_ws_server() is app.server
            self._record("down")

        @app.on_transport_up
        async def up() -> None:
            self._record("up")

    def _record(self, state: str) -> None:
        self.states.append(state)
        self._changed.set()

    async def wait_states(self, count: int, timeout: float = 10.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while len(self.states) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.states


def build_app(transport: RedisTransport) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport)

    @ws.on_message("join", "/rooms/:room")
    async def join() -> dict[str, bool]:
        await use_ws_rooms().join()
        return {"joined": True}

    @ws.on_message("message", "/rooms/:room")
    async def message() -> dict[str, Any]:
        report = await use_ws_rooms().broadcast("message", use_ws_message().data)
        return {
            "sent": report.sent,
            "published": report.published,
            "publishFailed": report.publish_error is not None,
        }

    @ws.on_message("rpc", "/announce")
    async def announce() -> dict[str, Any]:
        report = await use_ws_server().broadcast("announcement", "/announce", use_ws_message().data)
        return {"sent": report.sent, "published": report.published}

    @ws.on_message("rpc", "/direct")
    async def direct() -> dict[str, bool]:
        data = use_ws_message().data
        found = await use_ws_server().send_to(data["to"], "notification", "/private", data["body"])
        return {"sent": found}

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().id

    return ws


Cluster = Callable[..., Awaitable[list[Instance]]]


@pytest.fixture
async def cluster(aiohttp_client: Any, prefix: str) -> AsyncIterator[Cluster]:
    """``instances = await cluster(3, url=REDIS_URL, **transport_options)``."""
    made: list[Instance] = []

    async def make(count: int, *, url: str = REDIS_URL, **options: Any) -> list[Instance]:
        options.setdefault("prefix", prefix)
        new = []
        for _ in range(count):
            transport = RedisTransport.from_url(url, **options)
            app = build_app(transport)
            instance = Instance(app, transport, None)
            instance.server = await aiohttp_client(attach(app, web.Application(), "/ws"))
            new.append(instance)
        made.extend(new)
        return new

    yield make
    for instance in made:  # also after a failure
        for client in instance.clients:
            await client.close()


async def connect(instance: Instance) -> WsTestClient:
    client = WsTestClient(await instance.server.ws_connect("/ws"))
    instance.clients.append(client)
    return client


async def joined(instance: Instance, room: str = ROOM) -> WsTestClient:
    client = await connect(instance)
    assert await client.call("join", room) == {"joined": True}
    return client


def push(data: Any, path: str = ROOM, event: str = "message") -> dict[str, Any]:
    """The push a client receives; room pushes carry the route params of the sender."""
    frame: dict[str, Any] = {"event": event, "path": path, "data": data}
    if path == ROOM:
        frame["params"] = {"room": "lobby"}
    return frame


# -- exactly once ---------------------------------------------------------------------------


async def test_room_broadcast_reaches_every_member_once_and_never_the_sender(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster(3)
    sender = await joined(a)
    members = [await joined(a), await joined(b), await joined(b), await joined(c)]
    outsider = await connect(c)  # on an instance with members, not in the room
    reply = await sender.call("message", ROOM, "hello")
    assert reply == {"sent": 1, "published": True, "publishFailed": False}
    await assert_delivered_once(members, push("hello"), excluded=[sender, outsider], quiet=0.3)
    for client in [sender, outsider, *members]:
        await client.close()


async def test_200_broadcasts_from_one_sender_arrive_in_order_everywhere(
    cluster: Cluster,
) -> None:
    a, b = await cluster(2)
    sender = await joined(a)
    local, remote = await joined(a), await joined(b)
    for i in range(200):
        await sender.send("message", ROOM, i)  # no id: fire and forget, back to back
    for client in (local, remote):
        got = [(await client.next_push())["data"] for _ in range(200)]
        assert got == list(range(200))
    # Nothing else was queued for the sender: a call's reply is the next frame it reads.
    assert await sender.call("message", ROOM, "end") == {
        "sent": 1,  # local is the only other member on instance a
        "published": True,
        "publishFailed": False,
    }
    assert sender.pending_messages() == []
    for client in (sender, local, remote):
        await client.close()


async def test_burst_of_50_clients_times_20_broadcasts_has_no_duplicate(
    cluster: Cluster,
) -> None:
    # The default 2 s publish budget: the publishes queued on the room's channel go out
    # in batches, so none waits for every other one's round trip.
    instances = await cluster(3)
    clients = [await joined(instances[i % 3]) for i in range(50)]
    rounds = 20

    async def burst(index: int, client: WsTestClient) -> None:
        for n in range(rounds):
            await client.send("message", ROOM, {"from": index, "n": n})

    await asyncio.gather(*(burst(i, c) for i, c in enumerate(clients)))
    expected = (len(clients) - 1) * rounds

    async def collect(index: int, client: WsTestClient) -> list[tuple[int, int]]:
        got = []
        for _ in range(expected):
            frame = await client.next_push(timeout=30)
            got.append((frame["data"]["from"], frame["data"]["n"]))
        return got

    received = await asyncio.gather(*(collect(i, c) for i, c in enumerate(clients)))
    await asyncio.sleep(0.3)  # quiet window: a duplicate would arrive now
    for index, (client, got) in enumerate(zip(clients, received, strict=True)):
        assert client.pending_messages() == [], f"client {index} got extra frames"
        assert len(set(got)) == expected, f"client {index} got a duplicate"
        assert {sender for sender, _ in got} == set(range(50)) - {index}
        for sender in range(50):
            ns = [n for s, n in got if s == sender]
            assert ns == sorted(ns), f"client {index}: sender {sender} out of order"
    for client in clients:
        await client.close()


async def test_server_wide_broadcast_reaches_every_connection_of_every_instance_once(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster(3)
    caller = await connect(a)
    others = [await connect(a), await connect(b), await connect(c), await connect(c)]
    assert await caller.call("rpc", "/announce", {"v": 1}) == {"sent": 2, "published": True}
    expected = push({"v": 1}, "/announce", "announcement")
    await assert_delivered_once([caller, *others], expected, quiet=0.3)
    for client in (caller, *others):
        await client.close()


async def test_send_to_a_connection_on_another_instance_delivers_once(cluster: Cluster) -> None:
    a, b = await cluster(2)
    sender, target, bystander = await connect(a), await connect(b), await connect(b)
    target_id = await target.call("rpc", "/whoami")
    reply = await sender.call("rpc", "/direct", {"to": target_id, "body": "psst"})
    assert reply == {"sent": True}
    await assert_delivered_once(
        [target], push("psst", "/private", "notification"), excluded=[bystander, sender]
    )
    for client in (sender, target, bystander):
        await client.close()


async def test_send_to_an_unknown_id_returns_false(cluster: Cluster) -> None:
    a, _ = await cluster(2)
    sender = await connect(a)
    assert await sender.call("rpc", "/direct", {"to": "nobody", "body": "x"}) == {"sent": False}
    await sender.close()


async def test_send_to_a_closed_connection_returns_false_at_once(cluster: Cluster) -> None:
    a, b = await cluster(2)
    sender, target = await connect(a), await connect(b)
    target_id = await target.call("rpc", "/whoami")
    await target.close()

    async def forgotten() -> bool:
        return await a.transport.locate_connection(target_id) is None

    await wait_until(forgotten, timeout=5, what="the closed connection leaves the directory")
    assert await sender.call("rpc", "/direct", {"to": target_id, "body": "x"}) == {"sent": False}
    await sender.close()


async def test_directory_forgets_the_connections_of_a_crashed_instance(cluster: Cluster) -> None:
    a, b = await cluster(2, directory_ttl=0.6)
    sender, victim = await connect(a), await connect(b)
    victim_id = await victim.call("rpc", "/whoami")
    assert await sender.call("rpc", "/direct", {"to": victim_id, "body": "x"}) == {"sent": True}
    # A crash: instance b stops refreshing its entries and never unregisters them.
    assert b.transport._refresh_task is not None
    b.transport._refresh_task.cancel()

    async def expired() -> bool:
        return await a.transport.locate_connection(victim_id) is None

    await wait_until(expired, timeout=5, what="the crashed instance's entry expires")
    assert await sender.call("rpc", "/direct", {"to": victim_id, "body": "x"}) == {"sent": False}
    for client in (sender, victim):
        await client.close()


# -- outages --------------------------------------------------------------------------------


async def test_killed_pubsub_connection_restores_delivery(
    cluster: Cluster, admin: aioredis.Redis
) -> None:
    name = unique("wsevents-cluster")
    a, b = await cluster(2, client_name=name, reconnect_max_delay=0.5)
    sender, receiver = await joined(a), await joined(b)
    killed = 0
    for pubsub in await pubsub_clients_named(admin, name):
        killed += await admin.client_kill_filter(_id=pubsub["id"])
    assert killed == 2
    assert await a.wait_states(2) == ["down", "up"]
    assert await b.wait_states(2) == ["down", "up"]
    await sender.call("message", ROOM, "after")
    await assert_delivered_once([receiver], push("after"), excluded=[sender])
    assert len(await pubsub_clients_named(admin, name)) == 2
    for client in (sender, receiver):
        await client.close()


async def test_redis_restart_keeps_local_delivery_and_restores_remote_delivery(
    cluster: Cluster, throwaway_redis: ThrowawayRedis
) -> None:
    name = unique("wsevents-restart")
    a, b = await cluster(
        2,
        url=throwaway_redis.url,
        client_name=name,
        reconnect_delay=0.05,
        reconnect_max_delay=0.5,
        connect_timeout=1.0,
        command_timeout=1.0,
    )
    sender, local, remote = await joined(a), await joined(a), await joined(b)
    remote_id = await remote.call("rpc", "/whoami")
    assert await sender.call("message", ROOM, "before") == {
        "sent": 1,
        "published": True,
        "publishFailed": False,
    }
    await assert_delivered_once([local, remote], push("before"), excluded=[sender])

    await throwaway_redis.stop()
    assert await a.wait_states(1) == ["down"]
    assert await b.wait_states(1) == ["down"]
    # Local delivery goes on and the handler is not stuck: it replies with the failure.
    reply = await sender.call("message", ROOM, "during", timeout=5)
    assert reply == {"sent": 1, "published": False, "publishFailed": True}
    await assert_delivered_once([local], push("during"), excluded=[sender, remote])
    # A client connecting during the outage is served, its directory entry kept for later.
    late = await joined(b)
    late_id = await late.call("rpc", "/whoami")

    await throwaway_redis.start()
    assert await a.wait_states(2) == ["down", "up"]
    assert await b.wait_states(2) == ["down", "up"]
    assert await a.transport.health()
    assert await sender.call("message", ROOM, "after") == {
        "sent": 1,
        "published": True,
        "publishFailed": False,
    }
    await assert_delivered_once([local, remote, late], push("after"), excluded=[sender])

    async def directory_restored() -> bool:
        return [await a.transport.locate_connection(i) for i in (remote_id, late_id)] == [
            b.app.instance_id,
            b.app.instance_id,
        ]

    await wait_until(directory_restored, what="b's directory entries written again")
    assert await sender.call("rpc", "/direct", {"to": late_id, "body": "hi"}) == {"sent": True}
    await assert_delivered_once([late], push("hi", "/private", "notification"))

    private = aioredis.from_url(throwaway_redis.url)
    try:
        assert len(await pubsub_clients_named(private, name)) == 2
        # Two pub/sub connections plus the few pooled ones that published.
        assert len(await clients_named(private, name)) <= 6
    finally:
        await private.aclose()
    for client in (sender, local, remote, late):
        await client.close()


async def test_close_unsubscribes_and_forgets_the_instance(
    cluster: Cluster, admin: aioredis.Redis, prefix: str
) -> None:
    (a,) = await cluster(1)
    client = await joined(a)
    client_id = await client.call("rpc", "/whoami")
    channels = {c.decode() for c in await admin.pubsub_channels(prefix + "*")}
    assert f"{prefix}ws:room:{ROOM}" in channels
    assert f"{prefix}ws:broadcast" in channels
    assert f"{prefix}ws:instance:{a.app.instance_id}" in channels
    assert await admin.get(f"{prefix}conn:{client_id}") == a.app.instance_id.encode()
    await a.app.close()
    assert await client.wait_closed() == 1001
    assert await admin.pubsub_channels(prefix + "*") == []
    assert [k async for k in admin.scan_iter(match=prefix + "conn:*")] == []
