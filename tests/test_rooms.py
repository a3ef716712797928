"""RoomManager on its own: membership, encode-once broadcasts, transport subscriptions."""

from __future__ import annotations

import asyncio
import logging
import random

import orjson
import pytest

from wsevents import (
    Connection,
    DeliveryReport,
    MemoryBus,
    MemoryTransport,
    RoomManager,
    WsError,
)
from wsevents.cluster import PUBLISH_WARNING_INTERVAL, Envelope, decode_envelope
from wsevents.rooms import ROOM_CHANNEL_PREFIX
from wsevents.testing import RecordingSocket
from wsevents.transports.base import PayloadHandler

ROOM = "/chat/general"
CHANNEL = ROOM_CHANNEL_PREFIX + ROOM


class WaitableSocket(RecordingSocket):
    """A RecordingSocket that can be awaited for a number of frames."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def write(self, payload: bytes, binary: bool) -> bool:
        written = super().write(payload, binary)
        self.changed.set()
        return written

    async def wait_frames(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self.changed.clear()
                await self.changed.wait()


def member(conn_id: str) -> tuple[Connection, WaitableSocket]:
    sock = WaitableSocket()
    return Connection(sock, id=conn_id), sock


class RecordingTransport:
    """Records calls, can hold subscribe/unsubscribe on a gate, and flags misuse.

    RoomManager serialises changes per room, so two calls on one channel never overlap,
    and it never subscribes twice or unsubscribes what it did not subscribe.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.published: list[tuple[str, str]] = []
        self.handlers: dict[str, PayloadHandler] = {}
        self.violations: list[str] = []
        self.in_flight: set[str] = set()
        self.subscribe_gate: asyncio.Event | None = None
        self.unsubscribe_gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.publish_error: Exception | None = None
        self.subscribe_error: Exception | None = None
        self.unsubscribe_error: Exception | None = None

    async def pause(self) -> None:
        """Where a subclass lets other tasks run inside a call."""

    async def _enter(self, op: str, channel: str) -> None:
        self.calls.append((op, channel))
        if channel in self.in_flight:
            self.violations.append(f"overlapping {op} on {channel}")
        self.in_flight.add(channel)
        self.entered.set()
        gate = self.subscribe_gate if op == "subscribe" else self.unsubscribe_gate
        if gate is not None:
            await gate.wait()
        await self.pause()

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        await self._enter("subscribe", channel)
        try:
            if channel in self.handlers:
                self.violations.append(f"subscribed twice to {channel}")
            self.handlers[channel] = handler
            if self.subscribe_error is not None:
                raise self.subscribe_error
        finally:
            self.in_flight.discard(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._enter("unsubscribe", channel)
        try:
            if self.handlers.pop(channel, None) is None:
                self.violations.append(f"unsubscribed {channel} without a subscription")
            if self.unsubscribe_error is not None:
                raise self.unsubscribe_error
        finally:
            self.in_flight.discard(channel)

    async def publish(self, channel: str, payload: str) -> None:
        if self.publish_error is not None:
            raise self.publish_error
        self.published.append((channel, payload))


class ShufflingTransport(RecordingTransport):
    """Each call lets a random number of other task steps run before it completes."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    async def pause(self) -> None:
        for _ in range(self.rng.randrange(6)):
            await asyncio.sleep(0)


# -- membership ---------------------------------------------------------------------------


async def test_join_adds_member_and_the_room_to_the_connection() -> None:
    rooms = RoomManager()
    alice, _ = member("alice")
    await rooms.join(alice, ROOM)
    assert rooms.connections(ROOM) == (alice,)
    assert rooms.size(ROOM) == 1
    assert rooms.rooms() == (ROOM,)
    assert alice.rooms == (ROOM,) == RoomManager.rooms_of(alice)


async def test_joining_twice_keeps_one_membership() -> None:
    rooms = RoomManager()
    alice, _ = member("alice")
    await rooms.join(alice, ROOM)
    await rooms.join(alice, ROOM)
    assert rooms.connections(ROOM) == (alice,)
    assert alice.rooms == (ROOM,)


async def test_connection_rooms_are_in_join_order() -> None:
    rooms = RoomManager()
    alice, _ = member("alice")
    for room in ("/c", "/a", "/b"):
        await rooms.join(alice, room)
    assert alice.rooms == ("/c", "/a", "/b")
    await rooms.leave(alice, "/a")
    await rooms.join(alice, "/a")
    assert alice.rooms == ("/c", "/b", "/a")


async def test_members_of_a_room_in_join_order() -> None:
    rooms = RoomManager()
    conns = [member(name)[0] for name in ("c", "a", "b")]
    for conn in conns:
        await rooms.join(conn, ROOM)
    assert rooms.connections(ROOM) == tuple(conns)


async def test_leave_removes_the_member_and_an_empty_room_disappears() -> None:
    rooms = RoomManager()
    alice, bob = member("alice")[0], member("bob")[0]
    await rooms.join(alice, ROOM)
    await rooms.join(bob, ROOM)
    await rooms.leave(alice, ROOM)
    assert rooms.connections(ROOM) == (bob,)
    assert alice.rooms == ()
    await rooms.leave(bob, ROOM)
    assert rooms.rooms() == ()
    assert rooms.connections(ROOM) == ()
    assert rooms.size(ROOM) == 0


async def test_leaving_a_room_one_is_not_in_changes_nothing() -> None:
    rooms = RoomManager()
    alice, bob = member("alice")[0], member("bob")[0]
    await rooms.join(alice, ROOM)
    await rooms.leave(bob, ROOM)
    await rooms.leave(bob, "/never")
    assert rooms.connections(ROOM) == (alice,)
    assert rooms.rooms() == (ROOM,)


async def test_leave_all_leaves_every_room_and_returns_them_in_join_order() -> None:
    rooms = RoomManager()
    alice, bob = member("alice")[0], member("bob")[0]
    for room in ("/x", "/y", "/z"):
        await rooms.join(alice, room)
    await rooms.join(bob, "/y")
    assert await rooms.leave_all(alice) == ("/x", "/y", "/z")
    assert alice.rooms == ()
    assert rooms.rooms() == ("/y",)
    assert rooms.connections("/y") == (bob,)
    assert await rooms.leave_all(alice) == ()


async def test_a_closed_connection_joins_nothing_and_subscribes_nothing() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    alice = member("alice")[0]
    alice.close(1000)
    await rooms.join(alice, ROOM)
    assert rooms.rooms() == () and alice.rooms == ()
    assert transport.calls == []


async def test_unknown_room_has_no_connections() -> None:
    rooms = RoomManager()
    assert (rooms.connections("/nope"), rooms.size("/nope"), rooms.rooms()) == ((), 0, ())


# -- broadcast ----------------------------------------------------------------------------


async def test_broadcast_writes_the_very_same_bytes_object_to_every_member() -> None:
    rooms = RoomManager()
    socks = []
    for name in ("a", "b", "c"):
        conn, sock = member(name)
        socks.append(sock)
        await rooms.join(conn, ROOM)
    report = await rooms.broadcast(ROOM, "message", {"text": "hi"})
    assert report == DeliveryReport(sent=3)
    frame = socks[0].frames[0]
    assert all(sock.frames == [frame] and sock.frames[0] is frame for sock in socks)
    assert orjson.loads(frame) == {"event": "message", "path": ROOM, "data": {"text": "hi"}}


async def test_broadcast_push_carries_params_and_omits_empty_ones_and_none_data() -> None:
    rooms = RoomManager()
    conn, sock = member("a")
    await rooms.join(conn, ROOM)
    await rooms.broadcast(ROOM, "message", {"n": 1}, params={"room": "general"})
    await rooms.broadcast(ROOM, "ping", params={})
    assert sock.messages == [
        {"event": "message", "path": ROOM, "params": {"room": "general"}, "data": {"n": 1}},
        {"event": "ping", "path": ROOM},
    ]


async def test_broadcast_skips_the_excluded_connection() -> None:
    rooms = RoomManager()
    alice, alice_sock = member("alice")
    bob, bob_sock = member("bob")
    await rooms.join(alice, ROOM)
    await rooms.join(bob, ROOM)
    report = await rooms.broadcast(ROOM, "message", "hi", exclude_id="alice")
    assert report == DeliveryReport(sent=1, skipped=1)
    assert alice_sock.frames == []
    assert bob_sock.messages == [{"event": "message", "path": ROOM, "data": "hi"}]


async def test_broadcast_counts_a_closed_member_as_dropped_and_still_serves_the_others() -> None:
    rooms = RoomManager()
    gone, gone_sock = member("gone")
    ok, ok_sock = member("ok")
    await rooms.join(gone, ROOM)
    await rooms.join(ok, ROOM)
    gone.close(1000)
    report = await rooms.broadcast(ROOM, "message", 1)
    assert report == DeliveryReport(sent=1, dropped=1)
    assert gone_sock.frames == []
    assert len(ok_sock.frames) == 1


async def test_broadcast_drops_and_closes_a_slow_consumer_without_stalling_the_room() -> None:
    rooms = RoomManager()
    slow_sock, fast_sock = WaitableSocket(), WaitableSocket()
    slow = Connection(slow_sock, id="slow", max_send_buffer=10)
    fast = Connection(fast_sock, id="fast")
    await rooms.join(slow, ROOM)
    await rooms.join(fast, ROOM)
    slow_sock.buffered = 11  # the peer is not reading
    report = await rooms.broadcast(ROOM, "message", "x")
    assert report == DeliveryReport(sent=1, dropped=1)
    assert slow_sock.close_code == 1013
    assert len(fast_sock.frames) == 1


async def test_broadcast_to_an_empty_room_without_transport_reports_nothing_done() -> None:
    assert await RoomManager().broadcast("/empty", "message", 1) == DeliveryReport()
    assert DeliveryReport() == DeliveryReport(0, 0, 0, False, None)


async def test_broadcast_with_a_transport_publishes_an_envelope_and_reports_it() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport, instance_id="me")
    conn, _ = member("a")
    await rooms.join(conn, ROOM)
    report = await rooms.broadcast(ROOM, "message", {"t": 1}, params={"r": "g"}, exclude_id="x")
    assert report == DeliveryReport(sent=1, published=True)
    [(channel, payload)] = transport.published
    assert channel == CHANNEL
    assert orjson.loads(payload) == {
        "event": "message",
        "path": ROOM,
        "data": {"t": 1},
        "params": {"r": "g"},
        "excludeId": "x",
        "origin": "me",
    }


async def test_broadcast_to_a_room_with_no_local_member_still_publishes() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport, instance_id="me")
    report = await rooms.broadcast("/elsewhere", "message")
    assert report == DeliveryReport(published=True)
    [(channel, payload)] = transport.published
    assert channel == ROOM_CHANNEL_PREFIX + "/elsewhere"
    assert orjson.loads(payload) == {"event": "message", "path": "/elsewhere", "origin": "me"}


async def test_publish_failure_is_reported_and_local_members_are_still_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    conn, sock = member("a")
    await rooms.join(conn, ROOM)
    transport.publish_error = ConnectionError("bus down")
    with caplog.at_level(logging.WARNING, logger="wsevents.rooms"):
        report = await rooms.broadcast(ROOM, "message", "hi")
    assert (report.sent, report.published) == (1, False)
    assert report.publish_error is transport.publish_error
    assert sock.messages == [{"event": "message", "path": ROOM, "data": "hi"}]
    assert f"publish on {CHANNEL} failed" in caplog.text


async def test_failing_publishes_warn_once_per_outage_and_then_at_most_every_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("wsevents.cluster.monotonic", lambda: now[0])
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    transport.publish_error = ConnectionError("bus down")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    with caplog.at_level(logging.DEBUG, logger="wsevents.rooms"):
        for _ in range(5):
            assert (await rooms.broadcast(ROOM, "m")).published is False
        assert len(warnings()) == 1
        assert f"publish on {CHANNEL} failed: ConnectionError: bus down" in warnings()[0]
        now[0] += PUBLISH_WARNING_INTERVAL - 0.1
        await rooms.broadcast(ROOM, "m")
        assert len(warnings()) == 1
        now[0] += 0.1  # the interval has passed: one more warning, counting the quiet ones
        await rooms.broadcast(ROOM, "m")
        assert len(warnings()) == 2
        assert "5 more failed" in warnings()[1]
        transport.publish_error = None
        assert (await rooms.broadcast(ROOM, "m")).published is True
        assert any("works again" in r.getMessage() for r in caplog.records)
        transport.publish_error = ConnectionError("down again")
        await rooms.broadcast(ROOM, "m")  # a new outage warns at once
        assert len(warnings()) == 3
        assert "down again" in warnings()[2]


def test_delivery_reports_merge_by_adding_up() -> None:
    error = ConnectionError("x")
    a = DeliveryReport(sent=2, skipped=1, dropped=0, published=True)
    b = DeliveryReport(sent=1, skipped=0, dropped=3, published=False, publish_error=error)
    assert a.merged(b) == DeliveryReport(3, 1, 3, True, error)
    assert DeliveryReport().merged(DeliveryReport()) == DeliveryReport()


async def test_broadcast_with_unencodable_data_raises_before_anyone_gets_anything() -> None:
    rooms = RoomManager()
    conn, sock = member("a")
    await rooms.join(conn, ROOM)
    with pytest.raises(TypeError):
        await rooms.broadcast(ROOM, "message", object())
    assert sock.frames == []


# -- transport subscriptions --------------------------------------------------------------


async def test_first_local_member_subscribes_and_the_last_one_leaving_unsubscribes() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    alice, bob = member("alice")[0], member("bob")[0]
    await rooms.join(alice, ROOM)
    await rooms.join(bob, ROOM)
    assert transport.calls == [("subscribe", CHANNEL)]
    assert rooms.subscribed_rooms() == {ROOM}
    await rooms.leave(alice, ROOM)
    assert transport.calls == [("subscribe", CHANNEL)]
    await rooms.leave(bob, ROOM)
    assert transport.calls == [("subscribe", CHANNEL), ("unsubscribe", CHANNEL)]
    assert rooms.subscribed_rooms() == frozenset()
    assert transport.handlers == {} and transport.violations == []


async def test_leave_all_unsubscribes_every_room_it_emptied() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    alice, bob = member("alice")[0], member("bob")[0]
    await rooms.join(alice, "/a")
    await rooms.join(alice, "/b")
    await rooms.join(bob, "/b")
    await rooms.leave_all(alice)
    assert set(transport.handlers) == {ROOM_CHANNEL_PREFIX + "/b"}
    assert rooms.subscribed_rooms() == {"/b"}


async def test_join_returns_only_once_the_subscription_is_live() -> None:
    transport = RecordingTransport()
    transport.subscribe_gate = asyncio.Event()
    rooms = RoomManager(transport)
    alice, bob = member("alice")[0], member("bob")[0]
    first = asyncio.create_task(rooms.join(alice, ROOM))
    await asyncio.wait_for(transport.entered.wait(), 5)
    second = asyncio.create_task(rooms.join(bob, ROOM))
    # Both joiners wait for the one subscription in flight; let everything else run.
    for _ in range(20):
        await asyncio.sleep(0)
    assert not first.done() and not second.done()
    assert rooms.size(ROOM) == 2  # membership is immediate, only the return waits
    transport.subscribe_gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert transport.calls == [("subscribe", CHANNEL)]
    assert rooms.subscribed_rooms() == {ROOM}


async def test_leave_returns_only_once_unsubscribed() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    alice = member("alice")[0]
    await rooms.join(alice, ROOM)
    transport.unsubscribe_gate = asyncio.Event()
    transport.entered.clear()
    leaving = asyncio.create_task(rooms.leave(alice, ROOM))
    await asyncio.wait_for(transport.entered.wait(), 5)
    assert not leaving.done()
    assert rooms.size(ROOM) == 0
    transport.unsubscribe_gate.set()
    await asyncio.wait_for(leaving, 5)
    assert transport.handlers == {}


async def test_join_leave_join_with_a_slow_transport_ends_subscribed() -> None:
    transport = RecordingTransport()
    transport.subscribe_gate = asyncio.Event()
    rooms = RoomManager(transport)
    alice = member("alice")[0]
    steps = [asyncio.create_task(rooms.join(alice, ROOM))]
    await asyncio.wait_for(transport.entered.wait(), 5)
    steps.append(asyncio.create_task(rooms.leave(alice, ROOM)))
    steps.append(asyncio.create_task(rooms.join(alice, ROOM)))
    await asyncio.sleep(0)  # both ran up to the room's lock
    assert rooms.connections(ROOM) == (alice,)
    assert not any(step.done() for step in steps)
    transport.subscribe_gate.set()
    await asyncio.wait_for(asyncio.gather(*steps), 5)
    assert rooms.connections(ROOM) == (alice,)
    assert set(transport.handlers) == {CHANNEL}
    assert rooms.subscribed_rooms() == {ROOM}
    assert transport.violations == []


async def test_join_then_leave_with_a_slow_transport_ends_unsubscribed() -> None:
    transport = RecordingTransport()
    transport.subscribe_gate = asyncio.Event()
    rooms = RoomManager(transport)
    alice = member("alice")[0]
    joining = asyncio.create_task(rooms.join(alice, ROOM))
    await asyncio.wait_for(transport.entered.wait(), 5)
    leaving = asyncio.create_task(rooms.leave(alice, ROOM))
    await asyncio.sleep(0)  # the leave ran up to the room's lock
    assert rooms.rooms() == ()
    assert not joining.done() and not leaving.done()
    transport.subscribe_gate.set()
    await asyncio.wait_for(asyncio.gather(joining, leaving), 5)
    assert rooms.rooms() == ()
    assert transport.handlers == {}
    assert transport.calls == [("subscribe", CHANNEL), ("unsubscribe", CHANNEL)]
    assert rooms.subscribed_rooms() == frozenset()
    assert transport.violations == []


async def test_leave_then_join_while_unsubscribing_ends_subscribed() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    alice, bob = member("alice")[0], member("bob")[0]
    await rooms.join(alice, ROOM)
    transport.unsubscribe_gate = asyncio.Event()
    transport.entered.clear()
    leaving = asyncio.create_task(rooms.leave(alice, ROOM))
    await asyncio.wait_for(transport.entered.wait(), 5)
    joining = asyncio.create_task(rooms.join(bob, ROOM))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not joining.done(), "the joiner waits for the unsubscribe in flight"
    transport.unsubscribe_gate.set()
    await asyncio.wait_for(asyncio.gather(leaving, joining), 5)
    assert transport.calls == [
        ("subscribe", CHANNEL),
        ("unsubscribe", CHANNEL),
        ("subscribe", CHANNEL),
    ]
    assert set(transport.handlers) == {CHANNEL}
    assert transport.violations == []


@pytest.mark.parametrize("seed", range(40))
async def test_random_join_leave_interleavings_end_subscribed_iff_members(seed: int) -> None:
    rng = random.Random(seed)
    transport = ShufflingTransport(rng)
    rooms = RoomManager(transport)
    conns = [member(f"c{i}")[0] for i in range(4)]
    names = ["/r0", "/r1", "/r2"]

    async def step(conn: Connection, room: str, join: bool, delay: int) -> None:
        for _ in range(delay):
            await asyncio.sleep(0)
        if join:
            await rooms.join(conn, room)
        else:
            await rooms.leave(conn, room)

    tasks = [
        asyncio.create_task(
            step(rng.choice(conns), rng.choice(names), rng.random() < 0.55, rng.randrange(8))
        )
        for _ in range(40)
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert transport.violations == []
    for room in names:
        members = rooms.connections(room)
        live = ROOM_CHANNEL_PREFIX + room in transport.handlers
        assert live == bool(members) == (room in rooms.subscribed_rooms()), room
        assert {c.id for c in members} == {c.id for c in conns if room in c.rooms}
    assert set(rooms.rooms()) == {room for room in names if rooms.size(room)}


async def test_a_failed_subscribe_is_logged_and_the_join_still_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = RecordingTransport()
    transport.subscribe_error = ConnectionError("bus down")
    rooms = RoomManager(transport)
    alice = member("alice")[0]
    with caplog.at_level(logging.WARNING, logger="wsevents.rooms"):
        await rooms.join(alice, ROOM)
    assert rooms.connections(ROOM) == (alice,)
    assert f"subscribe to {CHANNEL} failed" in caplog.text
    # The transport keeps the registration, so leaving the room releases it.
    transport.subscribe_error = None
    await rooms.leave(alice, ROOM)
    assert transport.calls[-1] == ("unsubscribe", CHANNEL)


async def test_a_failed_unsubscribe_is_logged_and_leave_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    alice = member("alice")[0]
    await rooms.join(alice, ROOM)
    transport.unsubscribe_error = ConnectionError("bus down")
    with caplog.at_level(logging.WARNING, logger="wsevents.rooms"):
        await rooms.leave(alice, ROOM)
    assert rooms.rooms() == () and rooms.subscribed_rooms() == frozenset()
    assert f"unsubscribe from {CHANNEL} failed" in caplog.text


async def test_close_unsubscribes_every_room_and_keeps_members() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    alice = member("alice")[0]
    await rooms.join(alice, "/a")
    await rooms.join(alice, "/b")
    await rooms.close()
    assert transport.handlers == {}
    assert rooms.subscribed_rooms() == frozenset()
    assert alice.rooms == ("/a", "/b")
    await RoomManager().close()  # without a transport there is nothing to do


# -- envelopes from other instances -------------------------------------------------------


async def test_own_envelopes_are_dropped_so_local_members_get_each_broadcast_once() -> None:
    bus = MemoryBus()
    here = RoomManager(MemoryTransport(bus), instance_id="here")
    there = RoomManager(MemoryTransport(bus), instance_id="there")
    alice, sock = member("alice")
    await here.join(alice, ROOM)
    await here.broadcast(ROOM, "message", "first")  # echoed back to "here" by the bus
    await there.broadcast(ROOM, "message", "second")
    # Per-channel order: a redelivered "first" would arrive before "second".
    await sock.wait_frames(2)
    assert [m["data"] for m in sock.messages] == ["first", "second"]
    assert bus.published == 2
    await here.close()
    await there.close()


async def test_remote_broadcast_reaches_local_members_except_the_excluded_id() -> None:
    bus = MemoryBus()
    here = RoomManager(MemoryTransport(bus), instance_id="here")
    there = RoomManager(MemoryTransport(bus), instance_id="there")
    alice, alice_sock = member("alice")
    bob, bob_sock = member("bob")
    await here.join(alice, ROOM)
    await here.join(bob, ROOM)
    await there.broadcast(ROOM, "message", "no alice", params={"room": "g"}, exclude_id="alice")
    await there.broadcast(ROOM, "message", "all")
    await bob_sock.wait_frames(2)
    await alice_sock.wait_frames(1)
    assert alice_sock.messages == [{"event": "message", "path": ROOM, "data": "all"}]
    assert bob_sock.messages == [
        {"event": "message", "path": ROOM, "params": {"room": "g"}, "data": "no alice"},
        {"event": "message", "path": ROOM, "data": "all"},
    ]
    # The remote push is encoded once for all local members too.
    assert alice_sock.frames[0] is bob_sock.frames[1]
    await here.close()
    await there.close()


def _envelope(**fields: object) -> str:
    return orjson.dumps(fields).decode()


MALFORMED: list[str | bytes] = [
    "not json",
    "",
    b"\xff\xfe",
    "[1, 2]",
    "42",
    _envelope(event="message", path=ROOM),  # no origin
    _envelope(origin=5, event="message", path=ROOM),
    _envelope(origin="other"),  # no event/path
    _envelope(origin="other", event=1, path=ROOM),
    _envelope(origin="other", event="message", path=None),
]


async def test_malformed_envelopes_are_dropped_with_a_warning_and_delivery_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryBus()
    here = RoomManager(MemoryTransport(bus), instance_id="here")
    raw = MemoryTransport(bus)
    alice, sock = member("alice")
    await here.join(alice, ROOM)
    with caplog.at_level(logging.WARNING):
        for payload in MALFORMED:
            await raw.publish(CHANNEL, payload)  # type: ignore[arg-type]
        # Oddly typed optional fields are ignored, not fatal.
        odd = _envelope(origin="o", event="e", path=ROOM, params=[1], excludeId=7, data=None)
        await raw.publish(CHANNEL, odd)
        await raw.publish(CHANNEL, _envelope(origin="o", event="ok", path=ROOM, data=1))
        await sock.wait_frames(2)
    assert sock.messages == [
        {"event": "e", "path": ROOM},
        {"event": "ok", "path": ROOM, "data": 1},
    ]
    warnings = [r for r in caplog.records if r.name == "wsevents.rooms"]
    assert len(warnings) == len(MALFORMED)
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert not any(r.name == "wsevents.transports.memory" for r in caplog.records)
    await here.close()
    await raw.close()


def test_envelope_round_trip_and_own_origin_is_dropped() -> None:
    envelope = Envelope("a", "room", "/p", "e", "/p", {"1": 2})
    payload = envelope.encode()
    assert payload == '{"event":"e","path":"/p","data":{"1":2},"origin":"a"}'
    assert decode_envelope(payload, "b", "room", "/p") == envelope
    assert decode_envelope(payload, "a", "room", "/p") is None
    assert decode_envelope(payload.encode(), "b", "room", "/p") is not None


def test_instance_ids_are_random_unless_given() -> None:
    assert RoomManager().instance_id != RoomManager().instance_id
    assert RoomManager(instance_id="fixed").instance_id == "fixed"


async def test_pushes_use_the_managers_codec() -> None:
    class Tagged:
        binary = True

        @staticmethod
        def decode(raw: str | bytes) -> object:
            return orjson.loads(raw)

        @staticmethod
        def encode(message: dict[str, object]) -> bytes:
            return b"T" + orjson.dumps(message)

    rooms = RoomManager(codec=Tagged())
    conn, sock = member("a")
    await rooms.join(conn, ROOM)
    await rooms.broadcast(ROOM, "e", 1)
    assert sock.frames == [b'T{"event":"e","path":"/chat/general","data":1}']


# -- join policy and change hooks ---------------------------------------------------------------


async def test_a_join_policy_refuses_with_ws_error_and_nothing_changes() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    asked: list[tuple[str, str]] = []

    async def full_rooms_refuse(conn: Connection, room: str) -> None:
        asked.append((conn.id, room))
        if room == "/full":
            raise WsError(429, "room is full")

    rooms.add_join_policy(full_rooms_refuse)
    alice, _ = member("alice")
    with pytest.raises(WsError) as info:
        await rooms.join(alice, "/full")
    assert (info.value.code, info.value.message) == (429, "room is full")
    assert rooms.rooms() == () and alice.rooms == () and transport.calls == []
    await rooms.join(alice, ROOM)
    await rooms.join(alice, ROOM)  # already a member: not asked again
    assert asked == [("alice", "/full"), ("alice", ROOM)]
    assert rooms.connections(ROOM) == (alice,) and alice.rooms == (ROOM,)


async def test_join_and_leave_hooks_hear_each_change_once_with_the_connection_and_room() -> None:
    transport = RecordingTransport()
    rooms = RoomManager(transport)
    events: list[tuple[str, str, str, bool]] = []

    def joined(conn: Connection, room: str) -> None:
        # Called after the join: the member is in and the channel is live.
        events.append(("join", conn.id, room, room in rooms.subscribed_rooms()))

    async def left(conn: Connection, room: str) -> None:
        events.append(("leave", conn.id, room, room in conn.rooms))

    rooms.add_join_hook(joined)
    rooms.add_leave_hook(left)
    alice, _ = member("alice")
    await rooms.join(alice, ROOM)
    await rooms.join(alice, ROOM)
    await rooms.join(alice, "/other")
    await rooms.leave(alice, ROOM)
    await rooms.leave(alice, ROOM)  # not a member any more: no event
    assert await rooms.leave_all(alice) == ("/other",)
    assert events == [
        ("join", "alice", ROOM, True),
        ("join", "alice", "/other", True),
        ("leave", "alice", ROOM, False),
        ("leave", "alice", "/other", False),
    ]


async def test_a_failing_change_hook_is_logged_and_the_join_still_happens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rooms = RoomManager()
    ran: list[str] = []

    def broken(conn: Connection, room: str) -> None:
        raise RuntimeError("hook bug")

    rooms.add_join_hook(broken)
    rooms.add_join_hook(lambda conn, room: ran.append(room))
    alice, _ = member("alice")
    with caplog.at_level(logging.ERROR, logger="wsevents.rooms"):
        await rooms.join(alice, ROOM)
    assert rooms.connections(ROOM) == (alice,) and ran == [ROOM]
    assert [r.getMessage() for r in caplog.records] == ["room join hook failed"]
