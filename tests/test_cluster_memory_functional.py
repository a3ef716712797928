"""Several instances on one MemoryBus: every push reaches each intended connection once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wsevents import (
    MemoryTransport,
    WsApp,
    WsError,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.rooms import ROOM_CHANNEL_PREFIX
from wsevents.testing import ClusterFactory, WsCluster, WsTestClient, assert_delivered_once

ROOM = "/chat/rooms/general"


def build(transport: MemoryTransport) -> WsApp:
    """One instance of a chat app (the reference app's rooms routes)."""
    ws = WsApp(heartbeat=0, transport=transport)

    @ws.on_disconnect
    async def say_goodbye() -> None:
        conn = use_ws_connection()
        for room in conn.rooms:
            await ws.rooms.broadcast(
                room, "system", {"text": "left", "id": conn.id}, exclude_id=conn.id
            )

    @ws.on_message("subscribe", "/chat/rooms/:room")
    async def subscribe() -> dict[str, bool]:
        await use_ws_rooms().join()
        return {"subscribed": True}

    @ws.on_message("unsubscribe", "/chat/rooms/:room")
    async def unsubscribe() -> dict[str, bool]:
        await use_ws_rooms().leave()
        return {"unsubscribed": True}

    @ws.on_message("message", "/chat/rooms/:room")
    async def message() -> dict[str, Any]:
        report = await use_ws_rooms().broadcast("message", use_ws_message().data)
        return {"sent": True, "published": report.published}

    @ws.on_message("message-all", "/chat/rooms/:room")
    async def message_all() -> dict[str, bool]:
        await use_ws_rooms().broadcast("message", use_ws_message().data, exclude_self=False)
        return {"sent": True}

    @ws.on_message("message-to", "/chat/rooms/:room")
    async def message_to() -> dict[str, bool]:
        data = use_ws_message().data
        if not isinstance(data, dict) or not isinstance(data.get("room"), str):
            raise WsError(400, "data.room must be a string")
        await use_ws_rooms().broadcast("message", data.get("payload"), room=data["room"])
        return {"sent": True}

    @ws.on_message("message-except", "/chat/rooms/:room")
    async def message_except() -> dict[str, bool]:
        data = use_ws_message().data
        if not isinstance(data, dict) or not isinstance(data.get("except"), str):
            raise WsError(400, "data.except must be a string")
        await ws.rooms.broadcast(ROOM, "message", data.get("payload"), exclude_id=data["except"])
        return {"sent": True}

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().id

    @ws.on_message("rpc", "/announce")
    async def announce() -> dict[str, bool]:
        await use_ws_server().broadcast("announcement", "/announce", use_ws_message().data)
        return {"sent": True}

    @ws.on_message("rpc", "/direct")
    async def direct() -> dict[str, bool]:
        data = use_ws_message().data
        if not isinstance(data, dict) or not isinstance(data.get("to"), str):
            raise WsError(400, "data.to must be a string")
        sent = await use_ws_server().send_to(
            data["to"], "notification", "/private", data.get("payload")
        )
        return {"sent": sent}

    return ws


def push(data: Any, room: str = ROOM) -> dict[str, Any]:
    return {
        "event": "message",
        "path": room,
        "params": {"room": room.rsplit("/", 1)[-1]},
        "data": data,
    }


@pytest.fixture
async def cluster(ws_cluster: ClusterFactory) -> WsCluster:
    return await ws_cluster(build, instances=3)


async def joined(cluster: WsCluster, count: int, room: str = ROOM) -> list[WsTestClient]:
    clients = await cluster.connect_spread(count)
    for client in clients:
        assert await client.call("subscribe", room) == {"subscribed": True}
    return clients


async def assert_quiet(*clients: WsTestClient, quiet: float = 0.2) -> None:
    """Nothing more arrives at ``clients`` within a short quiet window."""
    await asyncio.sleep(quiet)
    for client in clients:
        assert client.pending_messages() == []


# -- room broadcasts -------------------------------------------------------------------------


@pytest.mark.parametrize("sender_index", [0, 1, 2])
async def test_room_broadcast_reaches_each_member_on_every_instance_once_never_the_sender(
    cluster: WsCluster, sender_index: int
) -> None:
    members = await joined(cluster, 7)
    outsiders = await cluster.connect_spread(3)
    assert {cluster.instance_of(c) for c in members} == {0, 1, 2}
    sender = members[sender_index]
    reply = await sender.call("message", ROOM, {"text": "hi"})
    assert reply == {"sent": True, "published": True}
    others = [c for c in members if c is not sender]
    await assert_delivered_once(others, push({"text": "hi"}), excluded=[sender, *outsiders])
    await assert_quiet(*members, *outsiders)


async def test_room_broadcast_including_the_sender_reaches_it_once(cluster: WsCluster) -> None:
    members = await joined(cluster, 6)
    await members[4].call("message-all", ROOM, "all of us")
    await assert_delivered_once(members, push("all of us"))


async def test_room_broadcast_from_an_instance_without_members_reaches_the_others(
    cluster: WsCluster,
) -> None:
    members = [await cluster.connect(1), await cluster.connect(2), await cluster.connect(2)]
    for client in members:
        await client.call("subscribe", ROOM)
    announcer = await cluster.connect(0)
    assert cluster.room_subscribers(ROOM) == 2
    await announcer.call("message-to", "/chat/rooms/news", {"room": ROOM, "payload": 7})
    expected = {"event": "message", "path": ROOM, "params": {"room": "news"}, "data": 7}
    await assert_delivered_once(members, expected, excluded=[announcer])


async def test_a_member_excluded_by_id_on_another_instance_gets_nothing(
    cluster: WsCluster,
) -> None:
    members = await joined(cluster, 6)
    sender, excluded = members[0], members[2]
    assert cluster.instance_of(excluded) != cluster.instance_of(sender)
    excluded_id = await excluded.call("rpc", "/whoami")
    await sender.call("message-except", ROOM, {"except": excluded_id, "payload": "not you"})
    expected = {"event": "message", "path": ROOM, "data": "not you"}
    others = [m for m in members if m is not excluded]
    await assert_delivered_once(others, expected, excluded=[excluded])


async def test_two_hundred_messages_from_one_sender_arrive_in_order_on_every_instance(
    cluster: WsCluster,
) -> None:
    members = await joined(cluster, 7)
    sender, receivers = members[0], members[1:]
    for i in range(200):
        await sender.send("message", ROOM, i)
    for receiver in receivers:
        got = [(await receiver.next_push())["data"] for _ in range(200)]
        assert got == list(range(200)), f"instance {cluster.instance_of(receiver)}"
    await assert_quiet(*members)


async def test_fifty_clients_twenty_broadcasts_no_duplicate_no_loss(cluster: WsCluster) -> None:
    members = await joined(cluster, 50)
    senders = members[:20]  # round-robin: spread over the three instances
    replies = await asyncio.gather(
        *(s.call("message", ROOM, {"from": i}) for i, s in enumerate(senders))
    )
    assert all(reply == {"sent": True, "published": True} for reply in replies)
    for index, member in enumerate(members):
        expected = sorted(i for i in range(len(senders)) if i != index)
        got = [(await member.next_push())["data"]["from"] for _ in expected]
        assert sorted(got) == expected, f"member {index} on {cluster.instance_of(member)}"
    await assert_quiet(*members)


# -- server-wide and direct ------------------------------------------------------------------


async def test_server_broadcast_reaches_every_connection_of_every_instance_once(
    cluster: WsCluster,
) -> None:
    clients = await cluster.connect_spread(9)
    await clients[0].call("subscribe", ROOM)  # rooms do not matter
    assert await clients[4].call("rpc", "/announce", {"text": "hello all"}) == {"sent": True}
    expected = {"event": "announcement", "path": "/announce", "data": {"text": "hello all"}}
    await assert_delivered_once(clients, expected)


async def test_send_to_a_connection_on_another_instance_delivers_once(cluster: WsCluster) -> None:
    alice, carol, bob = await cluster.connect_spread(3)
    assert cluster.instance_of(bob) == 2
    bob_id = await bob.call("rpc", "/whoami")
    assert await alice.call("rpc", "/direct", {"to": bob_id, "payload": {"k": 1}}) == {"sent": True}
    expected = {"event": "notification", "path": "/private", "data": {"k": 1}}
    await assert_delivered_once([bob], expected, excluded=[alice, carol])


async def test_send_to_an_unknown_connection_returns_false_everywhere(cluster: WsCluster) -> None:
    clients = await cluster.connect_spread(3)
    assert await clients[1].call("rpc", "/direct", {"to": "no-such-id", "payload": 1}) == {
        "sent": False
    }
    await assert_quiet(*clients)


# -- membership across instances -------------------------------------------------------------


async def test_disconnect_notice_reaches_the_members_on_other_instances_once(
    cluster: WsCluster,
) -> None:
    alice, bob, carol, dave = await joined(cluster, 4)
    eve = await cluster.connect(1)
    await eve.call("subscribe", "/chat/rooms/other")
    bob_id = await bob.call("rpc", "/whoami")
    await bob.close()
    # Sent from on_disconnect, outside any message: no route params.
    notice = {"event": "system", "path": ROOM, "data": {"text": "left", "id": bob_id}}
    await assert_delivered_once([alice, carol, dave], notice, excluded=[eve])


async def test_an_instance_whose_last_member_leaves_unsubscribes_and_stops_receiving(
    cluster: WsCluster,
) -> None:
    channel = ROOM_CHANNEL_PREFIX + ROOM
    alice = await cluster.connect(0)
    bob, carol = await cluster.connect(2), await cluster.connect(2)
    for client in (alice, bob, carol):
        await client.call("subscribe", ROOM)
    assert cluster.room_subscribers(ROOM) == 2
    await carol.call("unsubscribe", ROOM)
    assert cluster.room_subscribers(ROOM) == 2  # bob is still there
    await bob.call("unsubscribe", ROOM)
    assert cluster.room_subscribers(ROOM) == 1
    transport_2 = cluster.apps[2].transport
    assert isinstance(transport_2, MemoryTransport)
    assert channel not in transport_2.channels
    assert cluster.apps[2].rooms.subscribed_rooms() == frozenset()

    await alice.call("message-all", ROOM, "after")
    await assert_delivered_once([alice], push("after"), excluded=[bob, carol])

    await bob.call("subscribe", ROOM)  # and back again
    assert cluster.room_subscribers(ROOM) == 2
    await alice.call("message", ROOM, "welcome back")
    await assert_delivered_once([bob], push("welcome back"), excluded=[alice, carol])


async def test_when_every_member_is_gone_no_instance_stays_subscribed(cluster: WsCluster) -> None:
    members = await joined(cluster, 6)
    assert cluster.room_subscribers(ROOM) == 3
    for member in members[:3]:
        await member.call("unsubscribe", ROOM)
    assert cluster.room_subscribers(ROOM) == 3
    for member in members[3:]:
        await member.call("unsubscribe", ROOM)
    assert cluster.room_subscribers(ROOM) == 0
    assert ROOM_CHANNEL_PREFIX + ROOM not in cluster.bus.channels
    assert all(app.rooms.rooms() == () for app in cluster.apps)


async def test_every_instance_has_its_own_origin_and_directory_entries(cluster: WsCluster) -> None:
    clients = await cluster.connect_spread(3)
    ids = [await c.call("rpc", "/whoami") for c in clients]
    assert len({app.instance_id for app in cluster.apps}) == 3
    assert [cluster.bus.directory[i] for i in ids] == [app.instance_id for app in cluster.apps]


async def test_an_instance_shutting_down_tells_members_elsewhere_once_and_unsubscribes(
    cluster: WsCluster,
) -> None:
    alice, bob, carol = await joined(cluster, 3)
    bob_id = await bob.call("rpc", "/whoami")
    assert cluster.room_subscribers(ROOM) == 3
    await cluster.servers[1].server.close()  # the server only: the client session stays
    assert await bob.wait_closed() == 1001
    notice = {"event": "system", "path": ROOM, "data": {"text": "left", "id": bob_id}}
    await assert_delivered_once([alice, carol], notice)
    assert cluster.room_subscribers(ROOM) == 2
    assert bob_id not in cluster.bus.directory
    await alice.call("message", ROOM, "still here")
    await assert_delivered_once([carol], push("still here"), excluded=[alice])
