"""History rooms and recovery over real sockets: the reference app, and three instances
on a MemoryBus."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest

from examples.reference_app import add_history, app
from wsevents import MemoryTransport, WsApp, WsClientError, use_ws_rooms
from wsevents.cluster import Envelope
from wsevents.testing import ClusterFactory, WsCluster, WsTestClient
from wsevents.transports.memory import MemoryHistoryStore


def room_name() -> str:
    return f"/feed/rooms/{uuid.uuid4().hex[:8]}"


def push(room: str, data: Any, offset: int) -> dict[str, Any]:
    frame = {"event": "message", "path": room, "params": {"room": room.rsplit("/", 1)[1]}}
    if data is not None:
        frame["data"] = data
    return {**frame, "offset": offset}


async def subscribe(client: WsTestClient, room: str, since: Any = None) -> dict[str, Any]:
    data = {} if since is None else {"since": since}
    reply: dict[str, Any] = await client.call("subscribe", room, data)
    return reply


async def publish(client: WsTestClient, room: str, data: Any) -> int:
    reply = await client.call("publish", room, data)
    assert reply["sent"] is True
    offset: int = reply["offset"]
    return offset


async def pushes(client: WsTestClient, count: int) -> list[dict[str, Any]]:
    return [await client.next_push() for _ in range(count)]


# -- one instance: the reference app ---------------------------------------------------------


async def test_subscribe_gives_the_position_and_pushes_carry_growing_offsets(ws_client) -> None:
    room = room_name()
    alice = await ws_client(app)
    first = await subscribe(alice, room)
    assert first["subscribed"] is True and first["offset"] == 0
    assert isinstance(first["epoch"], str) and first["epoch"]
    assert "recovered" not in first
    assert [await publish(alice, room, i) for i in range(3)] == [1, 2, 3]
    # Sender included; pushes come before each reply, so they are all queued by now.
    assert alice.pending_messages() == [push(room, i, i + 1) for i in range(3)]
    bob = await ws_client(app)
    assert await subscribe(bob, room) == {"subscribed": True, "offset": 3, "epoch": first["epoch"]}


async def test_since_replays_the_missed_pushes_in_order_before_the_reply(ws_client) -> None:
    room = room_name()
    alice = await ws_client(app)
    start = await subscribe(alice, room)
    await publish(alice, room, "seen")
    bob = await ws_client(app)
    await subscribe(bob, room)
    since = {"offset": 1, "epoch": start["epoch"]}
    await bob.call("unsubscribe", room)
    for i in range(5):
        await publish(alice, room, f"missed{i}")
    reply = await subscribe(bob, room, since)
    # The replayed pushes were queued before the reply arrived.
    assert bob.pending_messages() == [push(room, f"missed{i}", i + 2) for i in range(5)]
    assert reply == {"subscribed": True, "offset": 6, "epoch": start["epoch"], "recovered": True}
    await publish(alice, room, "live")
    assert await bob.next_push() == push(room, "live", 7)


async def test_a_replay_is_exactly_what_was_sent_the_first_time(ws_client) -> None:
    room = room_name()
    alice = await ws_client(app)
    start = await subscribe(alice, room)
    sent = [{"text": "héllo 😀", "n": [1, 2.5, None]}, None, "x" * 300, [True]]
    for data in sent:
        await publish(alice, room, data)
    live = alice.pending_messages()
    bob = await ws_client(app)
    await subscribe(bob, room, {"offset": 0, "epoch": start["epoch"]})
    assert bob.pending_messages() == live
    assert [p.get("offset") for p in live] == [1, 2, 3, 4]


async def test_since_another_epoch_or_ahead_is_not_recovered_and_replays_nothing(
    ws_client,
) -> None:
    room = room_name()
    alice = await ws_client(app)
    start = await subscribe(alice, room)
    await publish(alice, room, "a")
    bob = await ws_client(app)
    for since in ({"offset": 0, "epoch": "another"}, {"offset": 9, "epoch": start["epoch"]}):
        reply = await subscribe(bob, room, since)
        assert reply == {
            "subscribed": True,
            "offset": 1,
            "epoch": start["epoch"],
            "recovered": False,
        }
        assert bob.pending_messages() == []
    await publish(alice, room, "b")
    assert await bob.next_push() == push(room, "b", 2)


@pytest.mark.parametrize(
    "since", [5, "x", {"offset": -1, "epoch": "e"}, {"offset": 1.5, "epoch": "e"}, {"offset": 1}]
)
async def test_a_malformed_since_is_400_and_the_connection_stays(ws_client, since: Any) -> None:
    room = room_name()
    bob = await ws_client(app)
    with pytest.raises(WsClientError) as err:
        await subscribe(bob, room, since)
    assert err.value.code == 400
    assert (await subscribe(bob, room))["subscribed"] is True


async def test_older_than_the_history_is_not_recovered(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.history.track("/feed/rooms/:room", size=3, ttl=600.0)
    add_history_routes_only(ws)
    room = room_name()
    alice = await ws_client(ws)
    start = await subscribe(alice, room)
    for i in range(5):
        await publish(alice, room, i)
    bob = await ws_client(ws)
    # Offsets 3..5 are kept: from 2 on can be recovered, from 1 cannot.
    assert (await subscribe(bob, room, {"offset": 2, "epoch": start["epoch"]}))["recovered"]
    assert [p["offset"] for p in bob.pending_messages()] == [3, 4, 5]
    carol = await ws_client(ws)
    reply = await subscribe(carol, room, {"offset": 1, "epoch": start["epoch"]})
    assert reply["recovered"] is False and reply["offset"] == 5
    assert carol.pending_messages() == []


def add_history_routes_only(ws: WsApp) -> None:
    """The reference app's history routes, with the pattern already tracked."""
    track = ws.history.track
    ws.history.track = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        add_history(ws)
    finally:
        ws.history.track = track  # type: ignore[method-assign]


async def test_rooms_without_history_carry_no_offset(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    add_history(ws)

    @ws.on_message("join", "/plain/:room")
    async def plain_join() -> bool:
        await use_ws_rooms().join()
        return True

    @ws.on_message("say", "/plain/:room")
    async def plain_say() -> Any:
        report = await use_ws_rooms().broadcast("message", "hi", exclude_self=False)
        return report.offset

    alice = await ws_client(ws)
    assert await alice.call("join", "/plain/r") is True
    assert await alice.call("say", "/plain/r") is None
    assert await alice.next_push() == {
        "event": "message",
        "path": "/plain/r",
        "params": {"room": "r"},
        "data": "hi",
    }


# -- three instances on a MemoryBus ----------------------------------------------------------


def build(transport: MemoryTransport) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport)
    add_history(ws)
    return ws


@pytest.fixture
async def cluster(ws_cluster: ClusterFactory) -> WsCluster:
    return await ws_cluster(build, instances=3)


async def test_away_during_pushes_from_other_instances_recovers_on_another(
    cluster: WsCluster,
) -> None:
    room = room_name()
    publishers = [await cluster.connect(i) for i in (1, 2)]
    away = await cluster.connect(0)
    start = await subscribe(away, room)
    await away.close()
    count = 200
    for i in range(count):
        await publish(publishers[i % 2], room, i)
    back = await cluster.connect(2)
    reply = await subscribe(back, room, {"offset": start["offset"], "epoch": start["epoch"]})
    assert reply["recovered"] is True and reply["offset"] == count
    assert back.pending_messages() == [push(room, i, i + 1) for i in range(count)]
    await publish(publishers[0], room, "live")
    assert await back.next_push() == push(room, "live", count + 1)


async def test_concurrent_publishers_give_every_member_one_offset_order(
    cluster: WsCluster,
) -> None:
    room = room_name()
    members = [await cluster.connect(i) for i in range(3)]
    for member in members:
        await subscribe(member, room)
    publishers = [await cluster.connect(i) for i in range(3)]
    rounds = 30

    async def burst(p: WsTestClient, k: int) -> None:
        for i in range(rounds):
            await p.send("publish", room, f"{k}:{i}")

    await asyncio.gather(*(burst(p, k) for k, p in enumerate(publishers)))
    total = 3 * rounds
    received = [await pushes(m, total) for m in members]
    assert [p["offset"] for p in received[0]] == list(range(1, total + 1))
    for other in received[1:]:
        assert other == received[0]
    # Each publisher's pushes keep their order.
    for k in range(3):
        mine = [p["data"] for p in received[0] if p["data"].startswith(f"{k}:")]
        assert mine == [f"{k}:{i}" for i in range(rounds)]


async def remote_push(cluster: WsCluster, room: str, data: Any, *, publish: bool = True) -> int:
    """Keep a push in the store as instance 1 would, and (unless told not to) publish its
    envelope; returns its offset. Lets a test choose the order envelopes arrive in."""
    payload = orjson.dumps({"event": "message", "path": room, "data": data}).decode()
    pos = await cluster.bus.history.append(room, payload, 1000, 600.0)
    if publish:
        await send_envelope(cluster, room, data, pos.offset, pos.epoch)
    return pos.offset


async def send_envelope(cluster: WsCluster, room: str, data: Any, offset: int, epoch: str) -> None:
    sender = cluster.apps[1].rooms.cluster
    env = Envelope(
        sender.instance_id, "room", room, "message", room, data, None, None, offset, epoch
    )
    assert await sender.publish(env) is None


def plain(room: str, data: Any, offset: int) -> dict[str, Any]:
    return {"event": "message", "path": room, "data": data, "offset": offset}


async def test_envelopes_out_of_offset_order_are_delivered_in_order(cluster: WsCluster) -> None:
    room = room_name()
    member = await cluster.connect(0)
    await subscribe(member, room)
    epoch = (await cluster.bus.history.position(room)).epoch
    first = await remote_push(cluster, room, "a", publish=False)
    second = await remote_push(cluster, room, "b", publish=False)
    await send_envelope(cluster, room, "b", second, epoch)
    await send_envelope(cluster, room, "a", first, epoch)
    await send_envelope(cluster, room, "a", first, epoch)  # a duplicate is dropped
    await remote_push(cluster, room, "c")
    assert await pushes(member, 3) == [
        plain(room, "a", 1),
        plain(room, "b", 2),
        plain(room, "c", 3),
    ]


async def test_a_push_whose_envelope_never_comes_is_read_from_the_store(
    cluster: WsCluster,
) -> None:
    room = room_name()
    member = await cluster.connect(0)
    await subscribe(member, room)
    await remote_push(cluster, room, "lost", publish=False)
    await remote_push(cluster, room, "next")
    assert await pushes(member, 2) == [plain(room, "lost", 1), plain(room, "next", 2)]


class HeldStore(MemoryHistoryStore):
    """A store whose ``since`` waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def since(self, *args: Any, **kwargs: Any) -> Any:
        self.reading.set()
        await self.release.wait()
        return await super().since(*args, **kwargs)


async def test_pushes_during_a_replay_come_once_after_it(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    add_history(ws)
    store = ws.history._store = HeldStore()
    room = room_name()
    alice = await ws_client(ws)
    start = await subscribe(alice, room)
    await publish(alice, room, "missed")
    bob = await ws_client(ws)
    reply = asyncio.ensure_future(
        subscribe(bob, room, {"offset": start["offset"], "epoch": start["epoch"]})
    )
    await store.reading.wait()
    # Published while bob's replay is being read: it is in the store (so in the replay)
    # and live (so held back for bob): bob must get it once.
    await publish(alice, room, "during")
    store.release.set()
    assert (await reply)["recovered"] is True
    assert bob.pending_messages() == [push(room, "missed", 1), push(room, "during", 2)]
    await publish(alice, room, "after")
    assert await bob.next_push() == push(room, "after", 3)


async def test_a_member_ahead_of_its_instance_does_not_get_what_it_had_again(
    cluster: WsCluster,
) -> None:
    room = room_name()
    member = await cluster.connect(0)
    start = await subscribe(member, room)
    # Offset 1 is kept, but its envelope has not reached instance 0 yet.
    first = await remote_push(cluster, room, "a", publish=False)
    # A client that had offset 1 (from another instance) comes back on instance 0.
    ahead = await cluster.connect(0)
    reply = await subscribe(ahead, room, {"offset": first, "epoch": start["epoch"]})
    assert reply["recovered"] is True and reply["offset"] == first
    await send_envelope(cluster, room, "a", first, start["epoch"])
    await remote_push(cluster, room, "b")
    assert await pushes(member, 2) == [plain(room, "a", 1), plain(room, "b", 2)]
    assert await ahead.next_push() == plain(room, "b", 2)


async def test_members_who_joined_without_a_stream_get_every_push_of_a_burst(ws_client) -> None:
    # Members joined with a plain join(): the room's stream state is made by the first
    # push, while a burst of broadcasts is in flight. Each member gets every push, once, in
    # offset order (the position read meanwhile already counts the burst).
    ws = WsApp(heartbeat=0)
    ws.history.track("/plain/:room", size=1000, ttl=60.0)

    @ws.on_message("subscribe", "/plain/:room")
    async def subscribe_plain() -> bool:
        await use_ws_rooms().join()
        return True

    @ws.on_message("publish", "/plain/:room")
    async def publish_plain() -> int | None:
        report = await use_ws_rooms().broadcast("message", None, exclude_self=True)
        return report.offset

    members = [await ws_client(ws) for _ in range(5)]
    for member in members:
        assert await member.call("subscribe", "/plain/burst") is True
    publisher = await ws_client(ws)
    for n in range(60):
        await publisher.send("publish", "/plain/burst", None, message_id=n)
    for member in members:
        got = [(await member.next_push())["offset"] for _ in range(60)]
        assert got == list(range(1, 61))
