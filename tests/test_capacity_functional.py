"""Room capacity (room_policy max_members) over real sockets: one instance, and three
instances on a MemoryBus."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from examples.reference_app import add_capped_rooms
from examples.reference_app import app as reference_app
from wsevents import (
    BroadcastTransport,
    Capabilities,
    RoutingError,
    WsApp,
    WsClientError,
    use_ws_message,
    use_ws_rooms,
)
from wsevents.testing import WsTestClient
from wsevents.transports.memory import MemoryCapacityStore, MemoryTransport

from .redis_support import wait_until

ROOM = "/capped/rooms/lobby"


def capped_app(max_members: int | None = 3, **options: Any) -> WsApp:
    ws = WsApp(heartbeat=0, **options)
    if max_members is not None:
        ws.room_policy("/capped/rooms/:room", max_members=max_members)

    @ws.on_message("join", "/:kind/rooms/:room")
    async def join() -> list[str]:
        await use_ws_rooms().join()
        return list(use_ws_rooms().rooms())

    @ws.on_message("leave", "/:kind/rooms/:room")
    async def leave() -> list[str]:
        await use_ws_rooms().leave()
        return list(use_ws_rooms().rooms())

    @ws.on_message("message", "/:kind/rooms/:room")
    async def message() -> bool:
        await use_ws_rooms().broadcast("message", use_ws_message().data)
        return True

    @ws.on_message("rpc", "/rooms")
    def rooms() -> list[str]:
        return list(use_ws_rooms().rooms())

    return ws


async def call_error(client: Any, event: str, path: str, data: Any = None) -> WsClientError:
    with pytest.raises(WsClientError) as info:
        await client.call(event, path, data)
    return info.value


async def join_outcomes(clients: list[WsTestClient], room: str) -> list[Any]:
    """Every client joins ``room`` at once; the replies, or the errors as (code, message)."""
    outcomes = await asyncio.gather(
        *(c.call("join", room) for c in clients), return_exceptions=True
    )
    return [(o.code, o.message) if isinstance(o, WsClientError) else o for o in outcomes]


# -- one instance ------------------------------------------------------------------------------


async def test_the_fourth_member_gets_409_and_is_not_a_member(ws_client) -> None:
    ws = capped_app()
    clients = [await ws_client(ws) for _ in range(4)]
    for client in clients[:3]:
        assert await client.call("join", ROOM) == [ROOM]
    error = await call_error(clients[3], "join", ROOM)
    assert (error.code, error.message) == (409, "Room is full")
    assert await clients[3].call("rpc", "/rooms") == []
    assert ws.rooms.size(ROOM) == 3
    assert await ws.capacity.count(ROOM) == 3
    # The full room's members do not hear of the refused one, and it hears nothing of them.
    assert await clients[0].call("message", ROOM, "hi") is True
    for client in clients[1:3]:
        assert (await client.next_push())["data"] == "hi"
    assert clients[3].pending_messages() == []
    # Another capped room has places of its own; uncapped rooms are open.
    assert await clients[3].call("join", "/capped/rooms/other") == ["/capped/rooms/other"]
    assert await clients[3].call("join", "/chat/rooms/x") == [
        "/capped/rooms/other",
        "/chat/rooms/x",
    ]
    assert await ws.capacity.count("/chat/rooms/x") == 0
    assert ws.capacity.limit("/chat/rooms/x") is None
    assert ws.capacity.limit(ROOM) == 3


async def test_a_leave_frees_the_place(ws_client) -> None:
    ws = capped_app()
    clients = [await ws_client(ws) for _ in range(4)]
    for client in clients[:3]:
        await client.call("join", ROOM)
    assert (await call_error(clients[3], "join", ROOM)).code == 409
    assert await clients[1].call("leave", ROOM) == []
    assert await ws.capacity.count(ROOM) == 2
    assert await clients[3].call("join", ROOM) == [ROOM]
    assert (await call_error(clients[1], "join", ROOM)).code == 409
    # Leaving a room one is not in frees nothing.
    assert await clients[1].call("leave", ROOM) == []
    assert await ws.capacity.count(ROOM) == 3


async def test_a_disconnect_frees_the_place(ws_client) -> None:
    ws = capped_app()
    clients = [await ws_client(ws) for _ in range(4)]
    for client in clients[:3]:
        await client.call("join", ROOM)
    await clients[0].close()

    async def freed() -> bool:
        return await ws.capacity.count(ROOM) == 2

    await wait_until(freed, what="the place of a closed connection is freed")
    assert await clients[3].call("join", ROOM) == [ROOM]
    assert ws.rooms.size(ROOM) == 3


async def test_joining_again_takes_no_second_place(ws_client) -> None:
    ws = capped_app(max_members=2)
    first, second, third = [await ws_client(ws) for _ in range(3)]
    assert await first.call("join", ROOM) == [ROOM]
    assert await first.call("join", ROOM) == [ROOM]
    # Two joins of the same connection at once: still one place.
    assert await asyncio.gather(first.call("join", ROOM), first.call("join", ROOM)) == [[ROOM]] * 2
    assert await ws.capacity.count(ROOM) == 1
    assert await second.call("join", ROOM) == [ROOM]
    assert (await call_error(third, "join", ROOM)).code == 409
    # One leave frees the one place.
    assert await first.call("leave", ROOM) == []
    assert await third.call("join", ROOM) == [ROOM]


async def test_racing_joins_on_one_instance_fill_exactly_the_places(ws_client) -> None:
    ws = capped_app()
    clients = [await ws_client(ws) for _ in range(10)]
    outcomes = await join_outcomes(clients, ROOM)
    assert outcomes.count([ROOM]) == 3
    assert outcomes.count((409, "Room is full")) == 7
    assert ws.rooms.size(ROOM) == 3
    assert await ws.capacity.count(ROOM) == 3


async def test_joins_and_leaves_in_flight_at_once_keep_places_and_members_equal(
    ws_client,
) -> None:
    ws = capped_app(max_members=2)
    busy, other = await ws_client(ws), await ws_client(ws)
    calls = [busy.call("join" if n % 2 == 0 else "leave", ROOM) for n in range(30)]
    await asyncio.gather(*calls)
    member = ws.rooms.size(ROOM)
    assert await ws.capacity.count(ROOM) == member
    # Whatever the outcome, the other connection finds the place(s) it should.
    assert await other.call("join", ROOM) == [ROOM]
    assert await ws.capacity.count(ROOM) == member + 1


async def test_admit_runs_first_then_the_place_is_taken(ws_client) -> None:
    ws = capped_app()
    admitted: list[str] = []

    def knows_the_key(conn: Any, room: str) -> bool:
        data = use_ws_message().data
        admitted.append(conn.id)
        return isinstance(data, dict) and data.get("key") == "k"

    ws.room_policy("/vip/rooms/:room", admit=knows_the_key, max_members=1)
    one, two = await ws_client(ws), await ws_client(ws)
    room = "/vip/rooms/a"
    # Refused by admit: 403, and no place taken.
    assert (await call_error(one, "join", room, {"key": "no"})).code == 403
    assert await ws.capacity.count(room) == 0
    assert await one.call("join", room, {"key": "k"}) == [room]
    # Admitted, but the room is full.
    error = await call_error(two, "join", room, {"key": "k"})
    assert (error.code, error.message) == (409, "Room is full")
    # Refused by admit even though the room is full: admit speaks first.
    assert (await call_error(two, "join", room, {"key": "no"})).code == 403
    assert len(admitted) == 4


async def test_the_most_specific_policy_decides_the_maximum(ws_client) -> None:
    ws = capped_app(max_members=1)
    ws.room_policy("/capped/rooms/open", admit=lambda conn, room: True)
    ws.room_policy("/capped/rooms/pair", max_members=2)
    clients = [await ws_client(ws) for _ in range(3)]
    outcomes = await join_outcomes(clients, "/capped/rooms/open")
    assert outcomes == [["/capped/rooms/open"]] * 3
    outcomes = await join_outcomes(clients, "/capped/rooms/pair")
    assert sorted(map(str, outcomes)).count(str((409, "Room is full"))) == 1
    assert ws.capacity.limit("/capped/rooms/open") is None
    assert ws.capacity.limit("/capped/rooms/pair") == 2


def test_bad_policies_are_refused() -> None:
    ws = WsApp()
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="max_members"):
            ws.room_policy("/a/:b", max_members=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="admit, max_members or both"):
        ws.room_policy("/a/:b")
    assert ws.rooms.capacity_hooks is None  # nothing was registered
    ws.room_policy("/a/:b", max_members=1)
    assert ws.rooms.capacity_hooks is ws.capacity
    with pytest.raises(RoutingError):
        ws.room_policy("/a/:b", max_members=2)


class FailingCapacityStore(MemoryCapacityStore):
    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        raise ConnectionError("secret backend detail")


class FailingCapacityTransport(MemoryTransport):
    def capabilities(self) -> Capabilities:
        return Capabilities(capacity=FailingCapacityStore())


async def test_a_failing_store_refuses_with_503_without_leaking_the_cause(
    ws_client, caplog
) -> None:
    ws = capped_app(transport=FailingCapacityTransport())
    client = await ws_client(ws)
    error = await call_error(client, "join", ROOM)
    assert (error.code, error.message) == (503, "Service Unavailable")
    assert "secret" not in repr(vars(error))
    assert await client.call("rpc", "/rooms") == []
    assert "secret backend detail" in caplog.text  # logged on the server
    # Uncapped rooms do not ask the store.
    assert await client.call("join", "/chat/rooms/x") == ["/chat/rooms/x"]


class SlowCapacityStore(MemoryCapacityStore):
    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.go_on = asyncio.Event()

    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        taken = await super().try_acquire(room, member, limit, instance_id, lease)
        self.asked.set()
        await self.go_on.wait()
        return taken


class SlowCapacityTransport(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.store = SlowCapacityStore()

    def capabilities(self) -> Capabilities:
        return Capabilities(capacity=self.store)


async def test_a_place_taken_by_a_join_its_connection_left_meanwhile_is_freed(
    ws_client,
) -> None:
    transport = SlowCapacityTransport()
    ws = capped_app(transport=transport)
    client = await ws_client(ws)
    await client.send("join", ROOM, message_id=1)
    await transport.store.asked.wait()
    assert await transport.store.count(ROOM) == 1  # the place is taken, the join not done
    await client.close()
    await wait_until(lambda: not ws._connections, what="the server saw the close")
    transport.store.go_on.set()

    async def freed() -> bool:
        return await transport.store.count(ROOM) == 0

    await wait_until(freed, what="the abandoned join's place is freed")
    assert ws.rooms.size(ROOM) == 0


async def test_the_reference_capped_rooms(ws_client) -> None:
    clients = [await ws_client(reference_app) for _ in range(4)]
    room = "/capped/rooms/ref-single"
    for client in clients[:3]:
        assert await client.call("subscribe", room) == {"subscribed": True}
    error = await call_error(clients[3], "subscribe", room)
    assert (error.code, error.message) == (409, "Room is full")
    assert await clients[0].call("message", room, {"text": "hi"}) == {"sent": True}
    for client in clients[1:3]:
        push = await client.next_push()
        assert (push["event"], push["path"], push["data"]) == ("message", room, {"text": "hi"})
    assert await clients[2].call("unsubscribe", room) == {"unsubscribed": True}
    assert await clients[3].call("subscribe", room) == {"subscribed": True}
    await clients[1].close()

    async def joined() -> bool:
        try:
            return await clients[2].call("subscribe", room) == {"subscribed": True}
        except WsClientError as exc:
            assert exc.code == 409
            return False

    await wait_until(joined, what="the place of a disconnected member is free")
    # A member subscribing again takes no second place.
    assert await clients[0].call("subscribe", room) == {"subscribed": True}
    assert await reference_app.capacity.count(room) == 3


# -- three instances on a MemoryBus -------------------------------------------------------------


def build_capped(transport: BroadcastTransport, lease: float | None = None) -> WsApp:
    ws = capped_app(None, transport=transport)
    add_capped_rooms(ws)  # the reference app's policy and routes (max 3)
    if lease is not None:
        ws.capacity.lease = lease
    return ws


async def test_racing_joins_over_three_instances_fill_exactly_the_places(ws_cluster) -> None:
    cluster = await ws_cluster(build_capped)
    for round_ in range(3):
        room = f"/capped/rooms/race{round_}"
        clients = await cluster.connect_spread(12, first=round_)
        outcomes = await join_outcomes(clients, room)
        assert outcomes.count([room]) == 3, outcomes
        assert outcomes.count((409, "Room is full")) == 9, outcomes
        assert sum(app.rooms.size(room) for app in cluster.apps) == 3
        for app in cluster.apps:
            assert await app.capacity.count(room) == 3
        # The members hear each other across instances.
        members = [c for c, o in zip(clients, outcomes, strict=True) if o == [room]]
        assert await members[0].call("message", room, round_) == {"sent": True}
        for member in members[1:]:
            assert (await member.next_push())["data"] == round_
        # A leave on one instance frees a place for a client of another.
        await members[0].call("leave", room)
        late = [c for c in clients if c not in members]
        instance = cluster.instance_of(members[0])
        other = next(c for c in late if cluster.instance_of(c) != instance)
        assert await other.call("join", room) == [room]


async def test_the_reference_capped_rooms_over_three_instances(ws_cluster) -> None:
    cluster = await ws_cluster(build_capped)
    room = "/capped/rooms/ref-cluster"
    clients = await cluster.connect_spread(9)
    outcomes = await asyncio.gather(
        *(c.call("subscribe", room) for c in clients), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, WsClientError)]
    assert outcomes.count({"subscribed": True}) == 3
    assert [(e.code, e.message) for e in refused] == [(409, "Room is full")] * 6
    member = clients[outcomes.index({"subscribed": True})]
    await member.close()
    outsider = clients[outcomes.index(refused[0])]

    async def joined() -> bool:
        try:
            return await outsider.call("subscribe", room) == {"subscribed": True}
        except WsClientError:
            return False

    await wait_until(joined, what="a disconnect on one instance frees a place everywhere")


async def test_a_dead_instances_places_are_freed_when_its_lease_runs_out(ws_cluster) -> None:
    cluster = await ws_cluster(lambda t: build_capped(t, lease=1.0))
    room = "/capped/rooms/dead"
    victims = [await cluster.connect(1), await cluster.connect(1)]
    survivor = await cluster.connect(0)
    late = [await cluster.connect(2), await cluster.connect(0)]
    for client in (*victims, survivor):
        assert await client.call("join", room) == [room]
    assert (await call_error(late[0], "join", room)).code == 409
    # Instance 1 stops renewing its leases, as a crashed process would (its connections
    # stay open: nothing tells the others).
    dead = cluster.apps[1].capacity
    assert dead._loop_task is not None
    dead._loop_task.cancel()
    await asyncio.sleep(1.6)  # past instance 1's lease; the survivors renew theirs
    assert await late[0].call("join", room) == [room]
    assert await late[1].call("join", room) == [room]
    assert await cluster.apps[0].capacity.count(room) == 3
    # The survivors' leases were renewed meanwhile: their places hold.
    assert await survivor.call("rpc", "/rooms") == [room]
    await asyncio.sleep(1.2)
    assert await cluster.apps[2].capacity.count(room) == 3


async def test_an_instance_that_lost_its_lease_takes_its_places_again_or_leaves(
    ws_cluster, caplog
) -> None:
    cluster = await ws_cluster(build_capped)
    room = "/capped/rooms/lost"
    mine = [await cluster.connect(0), await cluster.connect(0)]
    for client in mine:
        assert await client.call("join", room) == [room]
    # Instance 0 lost its lease (say, Redis was out of reach for longer than it): its
    # places are free, and instance 1 takes two of the three.
    store = cluster.bus.capacity
    store._rooms[room].leases[cluster.apps[0].rooms.instance_id] = 0.0
    others = [await cluster.connect(1), await cluster.connect(1)]
    for client in others:
        assert await client.call("join", room) == [room]
    await cluster.apps[0].capacity.renew()
    assert await store.count(room) == 3
    assert cluster.apps[0].rooms.size(room) == 1  # one took a place again, one had none
    assert "lost its place" in caplog.text
    sizes = [app.rooms.size(room) for app in cluster.apps]
    assert sum(sizes) == 3
    # A renewal with the lease held changes nothing.
    await cluster.apps[0].capacity.renew()
    assert [app.rooms.size(room) for app in cluster.apps] == sizes


async def test_a_maximum_registered_after_the_start_is_renewed_too(ws_cluster) -> None:
    def build(transport: MemoryTransport) -> WsApp:
        ws = capped_app(None, transport=transport)
        ws.capacity.lease = 0.6
        return ws

    cluster = await ws_cluster(build, instances=2)
    first = await cluster.connect(0)
    assert await first.call("rpc", "/rooms") == []  # instance 0 has started
    app = cluster.apps[0]
    assert app.capacity._loop_task is None
    app.room_policy("/capped/rooms/:room", max_members=1)
    cluster.apps[1].room_policy("/capped/rooms/:room", max_members=1)
    assert await first.call("join", ROOM) == [ROOM]
    assert app.capacity._loop_task is not None
    await asyncio.sleep(1.2)  # twice the lease: only a renewal keeps the place
    second = await cluster.connect(1)
    error = await call_error(second, "join", ROOM)
    assert (error.code, error.message) == (409, "Room is full")


async def test_an_instance_closed_cleanly_frees_its_places_at_once(ws_cluster) -> None:
    cluster = await ws_cluster(build_capped)
    room = "/capped/rooms/closing"
    for instance in (1, 1, 0):
        client = await cluster.connect(instance)
        assert await client.call("join", room) == [room]
    assert await cluster.apps[0].capacity.count(room) == 3
    await cluster.apps[1].close()
    assert await cluster.apps[0].capacity.count(room) == 1
    late = await cluster.connect(2)
    assert await late.call("join", room) == [room]


class FlakyCapacityStore(MemoryCapacityStore):
    """Releases and renewals fail while ``down``."""

    down = False

    async def release(self, room: str, member: str, instance_id: str) -> bool:
        if self.down:
            raise ConnectionError("backend away")
        return await super().release(room, member, instance_id)

    async def renew(self, room: str, instance_id: str, lease: float) -> bool:
        if self.down:
            raise ConnectionError("backend away")
        return await super().renew(room, instance_id, lease)


class FlakyCapacityTransport(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.store = FlakyCapacityStore()

    def capabilities(self) -> Capabilities:
        return Capabilities(capacity=self.store)


async def test_a_failed_release_is_retried_by_the_next_renewal(ws_client, caplog) -> None:
    transport = FlakyCapacityTransport()
    store = transport.store
    ws = capped_app(max_members=1, transport=transport)
    one, two = await ws_client(ws), await ws_client(ws)
    assert await two.call("join", "/capped/rooms/other") == ["/capped/rooms/other"]
    assert await one.call("join", ROOM) == [ROOM]
    store.down = True
    assert await one.call("leave", ROOM) == []  # the release fails: logged, kept for later
    assert "release of" in caplog.text
    assert await store.count(ROOM) == 1
    assert (await call_error(two, "join", ROOM)).code == 409
    caplog.clear()
    await ws.capacity.renew()
    await ws.capacity.renew()
    assert caplog.text.count("lease renewal failed") == 1  # warned once until it works
    assert await store.count(ROOM) == 1
    store.down = False
    await ws.capacity.renew()
    assert await store.count(ROOM) == 0
    assert await two.call("join", ROOM) == ["/capped/rooms/other", ROOM]
