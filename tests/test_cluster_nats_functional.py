"""Three WsApp instances on one real NATS (in process, ``serve_cluster``): exactly-once
delivery, send_to, presence (a dead instance reaped) and history across instances, and a
NATS restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("nats", reason="the NATS engine needs nats-py: pip install 'wsevents[nats]'")

from aiohttp import web

from examples.reference_app import add_history, add_presence
from wsevents import PresenceChange, WsApp
from wsevents.server import attach
from wsevents.testing import WsCluster, WsTestClient, assert_delivered_once, serve_cluster
from wsevents.transports.nats import NatsTransport

from .nats_support import NATS_URL, ThrowawayNats
from .redis_support import wait_until
from .test_cluster_memory_functional import build as build_chat
from .test_cluster_memory_functional import (  # the memory suite's tests, on NATS (below)
    test_a_member_excluded_by_id_on_another_instance_gets_nothing,
    test_disconnect_notice_reaches_the_members_on_other_instances_once,
    test_fifty_clients_twenty_broadcasts_no_duplicate_no_loss,
    test_room_broadcast_including_the_sender_reaches_it_once,
    test_room_broadcast_reaches_each_member_on_every_instance_once_never_the_sender,
    test_send_to_a_connection_on_another_instance_delivers_once,
    test_send_to_an_unknown_connection_returns_false_everywhere,
    test_server_broadcast_reaches_every_connection_of_every_instance_once,
    test_two_hundred_messages_from_one_sender_arrive_in_order_on_every_instance,
)
from .test_history_functional import publish, push, subscribe
from .test_presence_functional import count_changes, next_presence, pushes_until
from .test_presence_functional import join as presence_join
from .test_presence_functional import room_name as presence_room_name
from .test_presence_redis_functional import Instance as PresenceInstance

pytest_plugins = ["tests.nats_fixtures"]

pytestmark = pytest.mark.functional

__all__ = [  # the tests of the memory suite that need no MemoryBus run here on NATS
    "test_a_member_excluded_by_id_on_another_instance_gets_nothing",
    "test_disconnect_notice_reaches_the_members_on_other_instances_once",
    "test_fifty_clients_twenty_broadcasts_no_duplicate_no_loss",
    "test_room_broadcast_including_the_sender_reaches_it_once",
    "test_room_broadcast_reaches_each_member_on_every_instance_once_never_the_sender",
    "test_send_to_a_connection_on_another_instance_delivers_once",
    "test_send_to_an_unknown_connection_returns_false_everywhere",
    "test_server_broadcast_reaches_every_connection_of_every_instance_once",
    "test_two_hundred_messages_from_one_sender_arrive_in_order_on_every_instance",
]

Serve = Callable[..., Awaitable[WsCluster]]


def build(transport: Any) -> WsApp:
    ws = build_chat(transport)
    add_presence(ws)
    add_history(ws)
    return ws


@pytest.fixture
async def serve(aiohttp_client: Any, nats_prefix: str) -> AsyncIterator[Serve]:
    clusters: list[WsCluster] = []

    async def make(url: str = NATS_URL, instances: int = 3, **options: Any) -> WsCluster:
        options.setdefault("prefix", nats_prefix)
        cluster = await serve_cluster(
            aiohttp_client,
            build,
            lambda: NatsTransport.from_url(url, **options),
            instances=instances,
        )
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        await cluster.close()


@pytest.fixture
async def cluster(serve: Serve) -> WsCluster:
    """The memory suite's three instances, on NATS."""
    return await serve()


def chat_push(room: str, data: Any) -> dict[str, Any]:
    return {
        "event": "message",
        "path": room,
        "params": {"room": room.rsplit("/", 1)[1]},
        "data": data,
    }


async def joined(cluster: WsCluster, count: int, room: str) -> list[WsTestClient]:
    clients = await cluster.connect_spread(count)
    for client in clients:
        assert await client.call("subscribe", room) == {"subscribed": True}
    return clients


async def test_room_and_server_broadcasts_reach_each_connection_once(serve: Serve) -> None:
    cluster = await serve()
    room = f"/chat/rooms/{uuid.uuid4().hex[:8]}"
    clients = await joined(cluster, 6, room)
    sender, *others = clients
    assert (await sender.call("message", room, {"n": 1}))["sent"] is True
    await assert_delivered_once(others, chat_push(room, {"n": 1}), excluded=[sender])
    for n in range(100):  # order, from one sender, on every instance
        await sender.send("message", room, {"seq": n})
    for member in others:
        got = [(await member.next_push())["data"]["seq"] for _ in range(100)]
        assert got == list(range(100))
    assert await others[0].call("rpc", "/announce", {"all": 1}) == {"sent": True}
    announcement = {"event": "announcement", "path": "/announce", "data": {"all": 1}}
    await assert_delivered_once(clients, announcement)


async def test_send_to_reaches_a_connection_on_another_instance_once(serve: Serve) -> None:
    cluster = await serve()
    a = await cluster.connect(0)
    b = await cluster.connect(2)
    bystander = await cluster.connect(1)
    target = await b.call("rpc", "/whoami")
    assert cluster.apps[0].server is not None
    assert await cluster.apps[0].server.send_to(target, "notification", "/private", "psst")
    frame = {"event": "notification", "path": "/private", "data": "psst"}
    await assert_delivered_once([b], frame, excluded=[a, bystander])
    assert not await cluster.apps[1].server.send_to(str(uuid.uuid4()), "n", "/p", 1)


async def test_presence_counts_and_lists_every_instance(serve: Serve) -> None:
    cluster = await serve()
    room = f"/presence/rooms/{uuid.uuid4().hex[:8]}"
    clients = [
        await cluster.connect(i % 3, query={"user": user})
        for i, user in enumerate(["ada", "ada", "bob", "cy"])
    ]
    for client in clients:
        assert await client.call("join", room, {"name": "n"}) == {"joined": True}
    for client in clients[:3]:  # asked on every instance
        assert await client.call("rpc", "/presence/count", {"room": room}) == {
            "connections": 4,
            "users": 3,
        }
    listing = await clients[2].call("rpc", "/presence/list", {"room": room})
    assert listing["total"] == 3
    assert [(m["user"], m["connections"]) for m in listing["members"]] == [
        ("ada", 2),
        ("bob", 1),
        ("cy", 1),
    ]
    await clients[3].close()
    await wait_until(
        lambda: _count(clients[0], room, {"connections": 3, "users": 2}),
        what="cy's leave to be counted everywhere",
    )


async def _count(client: WsTestClient, room: str, expected: dict[str, int]) -> bool:
    return bool(await client.call("rpc", "/presence/count", {"room": room}) == expected)


async def test_history_offsets_are_one_order_for_every_instance(serve: Serve) -> None:
    cluster = await serve()
    room = f"/feed/rooms/{uuid.uuid4().hex[:8]}"
    readers = [await cluster.connect(i) for i in range(3)]
    start = [await subscribe(reader, room) for reader in readers]
    assert len({(s["offset"], s["epoch"]) for s in start}) == 1
    publishers = [await cluster.connect(i) for i in range(3)]
    offsets = await asyncio.gather(*(publish(publishers[n % 3], room, n) for n in range(30)))
    assert sorted(offsets) == list(range(1, 31))
    for reader in readers:
        got = [await reader.next_push() for _ in range(30)]
        assert [frame["offset"] for frame in got] == list(range(1, 31))
    # Recovery on another instance: what was missed, in order, then live.
    away = start[0]
    back = await cluster.connect(2)
    reply = await subscribe(back, room, {"offset": away["offset"], "epoch": away["epoch"]})
    assert reply["recovered"] is True
    assert reply["offset"] == 30
    replayed = back.pending_messages()
    assert [frame["offset"] for frame in replayed] == list(range(1, 31))
    by_offset = dict(zip(offsets, range(30), strict=True))
    assert replayed == [push(room, by_offset[o], o) for o in range(1, 31)]


async def test_a_nats_restart_brings_delivery_back_without_duplicates(
    serve: Serve, throwaway_nats: ThrowawayNats
) -> None:
    cluster = await serve(url=throwaway_nats.url, reconnect_delay=0.1)
    room = f"/chat/rooms/{uuid.uuid4().hex[:8]}"
    clients = await joined(cluster, 3, room)
    sender, *others = clients
    await sender.call("message", room, {"n": "before"})
    await assert_delivered_once(others, chat_push(room, {"n": "before"}), excluded=[sender])

    await throwaway_nats.stop()
    transports = [app.transport for app in cluster.apps]
    await wait_until(
        lambda: not any(t.connected for t in transports), what="every instance to see the loss"
    )
    await wait_until(
        lambda: not any(app.transport_up for app in cluster.apps), what="on_transport_down"
    )
    report = await sender.call("message", room, {"n": "lost"})
    assert report["published"] is False  # refused while down, never sent late
    stopped = time.monotonic()
    await throwaway_nats.start()
    await wait_until(
        lambda: all(t.connected for t in transports), timeout=10.0, what="every instance back"
    )
    await wait_until(lambda: all(app.transport_up for app in cluster.apps), what="transport up")
    # Delivery is back within 10 s of the restart.
    deadline = stopped + 10.0
    n = 0
    while True:
        n += 1
        await sender.call("message", room, {"n": f"after-{n}"})
        try:
            await assert_delivered_once(
                others, chat_push(room, {"n": f"after-{n}"}), excluded=[sender], timeout=1.0
            )
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    assert time.monotonic() - stopped < 10.0
    # Exactly once from now on: a fresh push, then nothing else pending but earlier tries.
    await sender.call("message", room, {"n": "final"})
    await assert_delivered_once(others, chat_push(room, {"n": "final"}), excluded=[sender])
    for member in others:
        leftovers = [f["data"]["n"] for f in member.pending_messages()]
        assert "lost" not in leftovers
        assert len(leftovers) == len(set(leftovers))


# -- presence: a dead instance is reaped by one survivor ------------------------------------


async def test_one_survivor_reaps_a_dead_instance_and_each_member_hears_one_leave(
    aiohttp_client: Any, nats_prefix: str
) -> None:
    changes: list[PresenceChange] = []
    instances = []
    for _ in range(2):
        app = WsApp(heartbeat=0, transport=NatsTransport.from_url(NATS_URL, prefix=nats_prefix))
        add_presence(app)
        app.presence.instance_ttl = 0.6
        app.on_presence(changes.append)
        instances.append(
            PresenceInstance(app, await aiohttp_client(attach(app, web.Application(), "/ws")))
        )
    room = presence_room_name()
    watchers = [await inst.connect(f"w{i}") for i, inst in enumerate(instances)]
    for watcher in watchers:
        await presence_join(watcher, room)
    # What a crashed instance leaves behind: its entries, and a heartbeat that expires.
    crashed = NatsTransport.from_url(NATS_URL, prefix=nats_prefix)
    await crashed.start()
    try:
        dead = crashed.capabilities().presence
        assert dead is not None
        assert await dead.heartbeat("dead-instance", 0.2)
        assert await dead.add(room, "c1", "ghost", '{"name": "G"}', "dead-instance")
        assert not await dead.add(room, "c2", "ghost", None, "dead-instance")
        assert not await dead.add(room, "c3", "w0", None, "dead-instance")
        for watcher in watchers:
            frames = await pushes_until(watcher, {"w0", "w1"})
            while count_changes(frames, "ghost") == (0, 0):
                frames.append(await next_presence(watcher, timeout=10.0))
            assert count_changes(frames, "ghost") == (0, 1)
            assert count_changes(frames, "w0") == (1, 0)
        for watcher in watchers:
            assert await watcher.call("rpc", "/presence/count", {"room": room}) == {
                "connections": 2,
                "users": 2,
            }
        assert [c.kind for c in changes if c.user == "ghost"] == ["leave"]
        assert await dead.expired_instances() == []
        # Another leave of ghost would come before this marker.
        await presence_join(await instances[1].connect("~marker"), room)
        for watcher in watchers:
            assert count_changes(await pushes_until(watcher, {"~marker"}), "ghost") == (0, 0)
    finally:
        await crashed.close()
