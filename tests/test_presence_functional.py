"""Presence over real sockets: one instance (the reference app), three on a MemoryBus."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from examples.reference_app import add_presence, app
from wsevents import MemoryTransport, PresenceChange, PresenceCount, WsApp, WsClientError
from wsevents.testing import ClusterFactory, WsCluster, WsTestClient


def room_name() -> str:
    return f"/presence/rooms/{uuid.uuid4().hex[:8]}"


def presence(room: str, joins: list[dict[str, Any]], leaves: list[str]) -> dict[str, Any]:
    return {
        "event": "presence",
        "path": room,
        "data": {"joins": joins, "leaves": [{"user": u} for u in leaves]},
    }


async def next_presence(client: WsTestClient, timeout: float = 5.0) -> dict[str, Any]:
    """The next presence push (other pushes are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await client.next_push(timeout)
            if frame["event"] == "presence":
                return frame


async def join(client: WsTestClient, room: str, name: str | None = None) -> None:
    assert await client.call("join", room, {"name": name}) == {"joined": True}


# -- one instance: the reference app ---------------------------------------------------------


@pytest.fixture(autouse=True)
async def nothing_left_behind() -> Any:
    yield
    assert app.presence._local == {}


async def test_first_join_is_pushed_to_members_and_a_second_tab_is_not(ws_client) -> None:
    room = room_name()
    bob = await ws_client(app, query={"user": "bob"})
    await join(bob, room, "Bob")
    assert await next_presence(bob) == presence(room, [{"user": "bob", "name": "Bob"}], [])
    alice = await ws_client(app, query={"user": "alice"})
    await join(alice, room, "Ada")
    expected = presence(room, [{"user": "alice", "name": "Ada"}], [])
    assert await next_presence(bob) == expected
    assert await next_presence(alice) == expected
    tab = await ws_client(app, query={"user": "alice"})
    await join(tab, room, "Second tab")
    carol = await ws_client(app, query={"user": "carol"})
    await join(carol, room, "Cy")
    # The second tab pushed nothing: the next push bob sees is carol's join.
    assert await next_presence(bob) == presence(room, [{"user": "carol", "name": "Cy"}], [])
    assert await bob.call("rpc", "/presence/count", {"room": room}) == {
        "connections": 4,
        "users": 3,
    }


async def test_last_leave_and_disconnect_are_leaves_but_not_a_tab_closing(ws_client) -> None:
    room = room_name()
    bob = await ws_client(app, query={"user": "bob"})
    await join(bob, room, "Bob")
    await next_presence(bob)
    alice1 = await ws_client(app, query={"user": "alice"})
    alice2 = await ws_client(app, query={"user": "alice"})
    await join(alice1, room, "Ada")
    await join(alice2, room, "Ada")
    await next_presence(bob)
    assert await alice1.call("leave", room) == {"left": True}
    carol = await ws_client(app, query={"user": "carol"})
    await join(carol, room)
    assert await next_presence(bob) == presence(room, [{"user": "carol", "name": None}], [])
    await alice2.close()  # the last connection of alice: a disconnect is a leave
    assert await next_presence(bob) == presence(room, [], ["alice"])
    assert await carol.call("leave", room) == {"left": True}
    assert await next_presence(bob) == presence(room, [], ["carol"])
    assert await bob.call("rpc", "/presence/count", {"room": room}) == {
        "connections": 1,
        "users": 1,
    }


async def test_list_is_ordered_by_user_paginated_with_the_first_connections_name(
    ws_client,
) -> None:
    room = room_name()
    users = ["dave", "alice", "carol", "bob", "Zed"]
    clients = {}
    for user in users:
        clients[user] = await ws_client(app, query={"user": user})
        await join(clients[user], room, user.upper())
    again = await ws_client(app, query={"user": "carol"})
    await join(again, room, "not the first")
    caller = clients["bob"]
    page = await caller.call("rpc", "/presence/list", {"room": room})
    assert page == {
        "total": 5,
        "members": [
            {"user": "Zed", "name": "ZED", "connections": 1},
            {"user": "alice", "name": "ALICE", "connections": 1},
            {"user": "bob", "name": "BOB", "connections": 1},
            {"user": "carol", "name": "CAROL", "connections": 2},
            {"user": "dave", "name": "DAVE", "connections": 1},
        ],
    }
    page = await caller.call("rpc", "/presence/list", {"room": room, "offset": 1, "limit": 2})
    assert [m["user"] for m in page["members"]] == ["alice", "bob"]
    assert page["total"] == 5
    page = await caller.call("rpc", "/presence/list", {"room": room, "offset": 9})
    assert page == {"total": 5, "members": []}


async def test_list_limit_is_at_most_100(ws_client) -> None:
    room = room_name()
    client = await ws_client(app, query={"user": "u000"})
    await join(client, room)
    # 101 more members, written to the store as another instance would.
    store = app.presence.store
    for i in range(1, 102):
        await store.add(room, f"c{i}", f"u{i:03d}", None, "bulk")
    try:
        page = await client.call("rpc", "/presence/list", {"room": room, "limit": 500})
    finally:
        await store.reap("bulk", "bulk")
    assert page["total"] == 102
    assert len(page["members"]) == 100
    assert page["members"][-1]["user"] == "u099"


async def test_without_user_query_the_user_is_the_connection_id(ws_client) -> None:
    room = room_name()
    client = await ws_client(app)
    await join(client, room, "anon")
    conn_id = (await client.call("rpc", "/whoami"))["id"]
    assert await next_presence(client) == presence(room, [{"user": conn_id, "name": "anon"}], [])


@pytest.mark.parametrize(
    "data",
    [None, {"room": 5}, {"room": "/presence/rooms/x", "offset": -1}, {"room": "/x", "limit": "9"}],
)
async def test_bad_queries_are_400_and_the_connection_stays(ws_client, data: Any) -> None:
    client = await ws_client(app)
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/presence/list", data)
    assert info.value.code == 400
    assert await client.call("rpc", "/echo", 1) == 1


async def test_rooms_without_presence_count_zero_and_push_nothing(ws_client) -> None:
    client = await ws_client(app)
    assert await client.call("subscribe", "/chat/rooms/plain") == {"subscribed": True}
    assert await client.call("rpc", "/presence/count", {"room": "/chat/rooms/plain"}) == {
        "connections": 0,
        "users": 0,
    }
    # Pushes are queued before replies: a presence push would come first.
    assert await client.call("message-all", "/chat/rooms/plain", "hi") == {"sent": True}
    assert (await client.next_push())["event"] == "message"


# -- three instances on a MemoryBus ----------------------------------------------------------


def build(transport: MemoryTransport, changes: list[PresenceChange] | None = None) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport)
    add_presence(ws)
    ws.presence.instance_ttl = 0.3
    if changes is not None:
        ws.on_presence(changes.append)
    return ws


@pytest.fixture
async def changes() -> list[PresenceChange]:
    return []


@pytest.fixture
async def cluster(ws_cluster: ClusterFactory, changes: list[PresenceChange]) -> WsCluster:
    return await ws_cluster(lambda t: build(t, changes), instances=3)


async def join_markers(cluster: WsCluster, room: str, stem: str) -> set[str]:
    """A marker user joins on each instance in turn: a change an instance decided before
    reaches every member before that instance's marker does."""
    names = set()
    for i in range(len(cluster.apps)):
        marker = await cluster.connect(i, query={"user": f"{stem}{i}"})
        await join(marker, room)
        names.add(f"{stem}{i}")
    return names


async def pushes_until(client: WsTestClient, markers: set[str]) -> list[dict[str, Any]]:
    """The presence pushes ``client`` gets until every marker user has joined."""
    frames, waiting = [], set(markers)
    while waiting:
        frame = await next_presence(client)
        frames.append(frame)
        waiting -= {j["user"] for j in frame["data"]["joins"]}
    return frames


def count_changes(frames: list[dict[str, Any]], user: str) -> tuple[int, int]:
    joins = sum(1 for f in frames for j in f["data"]["joins"] if j["user"] == user)
    leaves = sum(1 for f in frames for j in f["data"]["leaves"] if j["user"] == user)
    return joins, leaves


async def test_counts_and_lists_are_exact_on_every_instance(cluster: WsCluster) -> None:
    room = room_name()
    for i, user in enumerate(["alice", "bob", "alice", "carol", "alice"]):
        client = await cluster.connect(i % 3, query={"user": user})
        await join(client, room, f"{user}{i}")
    for i in range(3):
        asker = await cluster.connect(i)
        assert await asker.call("rpc", "/presence/count", {"room": room}) == {
            "connections": 5,
            "users": 3,
        }
        page = await asker.call("rpc", "/presence/list", {"room": room})
        assert page == {
            "total": 3,
            "members": [
                {"user": "alice", "name": "alice0", "connections": 3},
                {"user": "bob", "name": "bob1", "connections": 1},
                {"user": "carol", "name": "carol3", "connections": 1},
            ],
        }


async def test_concurrent_joins_and_leaves_of_one_user_are_pushed_once_to_each_member(
    cluster: WsCluster, changes: list[PresenceChange]
) -> None:
    room = room_name()
    observers = [await cluster.connect(i, query={"user": f"obs{i}"}) for i in range(3)]
    for observer in observers:
        await join(observer, room)
    alice = [await cluster.connect(i, query={"user": "alice"}) for i in range(3)]
    await asyncio.gather(*(join(c, room, "Ada") for c in alice))
    assert await observers[0].call("rpc", "/presence/count", {"room": room}) == {
        "connections": 6,
        "users": 4,
    }
    markers = await join_markers(cluster, room, "~in")
    for observer in observers:
        assert count_changes(await pushes_until(observer, markers), "alice") == (1, 0)
    await asyncio.gather(*(c.close() for c in alice))
    markers = await join_markers(cluster, room, "~out")
    for observer in observers:
        assert count_changes(await pushes_until(observer, markers), "alice") == (0, 1)
    assert [c.kind for c in changes if c.user == "alice"] == ["join", "leave"]


async def test_a_dead_instances_members_are_reaped_once_and_pushed_as_leaves(
    cluster: WsCluster, changes: list[PresenceChange]
) -> None:
    room = room_name()
    watchers = [await cluster.connect(i, query={"user": f"w{i}"}) for i in range(3)]
    for watcher in watchers:
        await join(watcher, room)
    # A crashed instance left its entries behind: it is known to the store, and its
    # heartbeat has expired.
    store = cluster.bus.presence
    await store.heartbeat("dead", 0.0)
    assert await store.add(room, "c1", "ghost", '{"name":"G"}', "dead")
    assert not await store.add(room, "c2", "ghost", None, "dead")
    assert not await store.add(room, "c3", "w0", None, "dead")  # w0 also lives elsewhere
    for watcher in watchers:
        push = await next_presence(watcher)
        while not push["data"]["leaves"]:  # the watchers' own joins come first
            push = await next_presence(watcher)
        assert push == presence(room, [], ["ghost"])
    for watcher in watchers:
        assert await watcher.call("rpc", "/presence/count", {"room": room}) == {
            "connections": 3,
            "users": 3,
        }
    reaped = [c for c in changes if c.user == "ghost"]
    assert [c.kind for c in reaped] == ["leave"]
    assert await store.expired_instances() == []


async def test_a_clean_shutdown_leaves_nothing_behind_and_pushes_the_leaves(
    ws_cluster: ClusterFactory,
) -> None:
    cluster = await ws_cluster(build, instances=2)
    room = room_name()
    watcher = await cluster.connect(0, query={"user": "watcher"})
    await join(watcher, room)
    leaving = await cluster.connect(1, query={"user": "leaving"})
    await join(leaving, room, "L")
    await pushes_until(watcher, {"leaving"})
    await cluster.servers[1].close()
    assert await next_presence(watcher) == presence(room, [], ["leaving"])
    store = cluster.bus.presence
    assert await store.count(room) == PresenceCount(1, 1)
    assert await store.heartbeat(cluster.apps[1].rooms.instance_id, 1.0)  # it was forgotten


# -- the Python client ------------------------------------------------------------------------


async def test_client_presence_follows_members_and_resyncs_after_a_reconnect() -> None:
    from wsevents import WsClient

    ws = WsApp(heartbeat=0)
    add_presence(ws)
    host, port = await ws.listen(port=0)
    room = room_name()
    url = f"ws://{host}:{port}/ws"
    try:
        async with (
            WsClient(url + "?user=alice", reconnect=True, base_delay=0.05) as alice,
            WsClient(url + "?user=bob") as bob,
        ):
            mine = await alice.presence(room, {"name": "Ada"})
            assert set(mine.members) == {"alice"}
            changed = asyncio.Event()
            mine.on_change(lambda change: changed.set())
            theirs = await bob.presence(room, {"name": "Bob"})
            assert set(theirs.members) == {"alice", "bob"}
            await changed.wait()
            assert mine.members["bob"]["name"] == "Bob"
            assert await mine.count() == {"connections": 2, "users": 2}
            assert [m["user"] for m in (await mine.list(limit=1))["members"]] == ["alice"]
            # Alice's socket drops: she left on the server; the client joins again and
            # fetches the members anew (bob left meanwhile: not replayed from old state).
            for conn in ws.connections():
                if conn.user == "alice":
                    conn.abort()
            await theirs.leave()
            async with asyncio.timeout(5):
                while set(mine.members) != {"alice"} or alice.connected is False:
                    changed.clear()
                    await changed.wait()
            assert await bob.call("rpc", "/presence/count", {"room": room}) == {
                "connections": 1,
                "users": 1,
            }
    finally:
        await ws.close()
