"""Rooms and broadcasting over real sockets, one instance."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from wsevents import (
    Connection,
    DeliveryReport,
    MemoryTransport,
    WsApp,
    WsError,
    use_route_params,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.rooms import ROOM_CHANNEL_PREFIX
from wsevents.testing import WsTestClient

GENERAL = "/chat/general"


def _report(report: DeliveryReport) -> dict[str, Any]:
    return {
        "sent": report.sent,
        "skipped": report.skipped,
        "dropped": report.dropped,
        "published": report.published,
        "error": None if report.publish_error is None else type(report.publish_error).__name__,
    }


def _data() -> dict[str, Any]:
    data = use_ws_message().data
    if not isinstance(data, dict):
        raise WsError(400, "data must be an object")
    return data


def make_app(transport: MemoryTransport | None = None) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport)

    @ws.on_message("join", "/chat/:room")
    async def join() -> str:
        return await use_ws_rooms().join()

    @ws.on_message("leave", "/chat/:room")
    async def leave() -> str:
        return await use_ws_rooms().leave()

    @ws.on_message("join-to", "/chat/:room")
    async def join_to() -> str:
        return await use_ws_rooms().join(_data()["room"])

    @ws.on_message("leave-to", "/chat/:room")
    async def leave_to() -> str:
        return await use_ws_rooms().leave(_data()["room"])

    @ws.on_message("join", "/plain")
    async def join_plain() -> str:
        return await use_ws_rooms().join()

    @ws.on_message("message", "/chat/:room")
    @ws.on_message("message", "/plain")
    async def message() -> dict[str, Any]:
        return _report(await use_ws_rooms().broadcast("message", use_ws_message().data))

    @ws.on_message("message-all", "/chat/:room")
    async def message_all() -> dict[str, Any]:
        rooms = use_ws_rooms()
        return _report(await rooms.broadcast("message", use_ws_message().data, exclude_self=False))

    @ws.on_message("message-to", "/chat/:room")
    async def message_to() -> dict[str, Any]:
        data = _data()
        report = await use_ws_rooms().broadcast("message", data.get("payload"), room=data["room"])
        return _report(report)

    @ws.on_message("join", "/teams/:team/channels/:channel")
    async def join_team() -> str:
        params = use_route_params()
        return await use_ws_rooms().join(f"team:{params.get('team')}:{params.get('channel')}")

    @ws.on_message("rpc", "/rooms")
    def rooms() -> list[str]:
        return list(use_ws_rooms().rooms())

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().id

    @ws.on_message("rpc", "/members")
    def members() -> list[str]:
        return [c.id for c in use_ws_server().room_connections(_data()["room"])]

    @ws.on_message("rpc", "/announce")
    async def announce() -> dict[str, Any]:
        return _report(await use_ws_server().broadcast("announcement", "/announce", _data()))

    @ws.on_message("rpc", "/direct")
    async def direct() -> dict[str, bool]:
        data = _data()
        sent = await use_ws_server().send_to(
            data["to"], "notification", "/private", data.get("payload")
        )
        return {"sent": sent}

    @ws.on_message("rpc", "/peek")
    def peek() -> dict[str, Any]:
        conn = use_ws_server().get_connection(_data()["id"])
        if conn is None:
            return {"found": False}
        conn.send("notification", "/private", {"text": "Hello"})
        return {"found": True, "id": conn.id, "rooms": list(conn.rooms)}

    return ws


async def connect(ws_client: Any, ws: WsApp, count: int) -> list[WsTestClient]:
    return [await ws_client(ws) for _ in range(count)]


async def assert_nothing_pending(*clients: WsTestClient) -> None:
    """Nothing more is on its way: a reply sent now arrives after anything written before."""
    for client in clients:
        await client.call("rpc", "/whoami")
        assert client.pending_messages() == []


# -- join / leave -------------------------------------------------------------------------


async def test_join_without_a_name_joins_the_message_path(ws_client: Any) -> None:
    ws = make_app()
    [alice] = await connect(ws_client, ws, 1)
    assert await alice.call("join", GENERAL) == GENERAL
    assert await alice.call("rpc", "/rooms") == [GENERAL]
    alice_id = await alice.call("rpc", "/whoami")
    assert [c.id for c in ws.room_connections(GENERAL)] == [alice_id]


async def test_leave_without_a_name_leaves_the_message_path(ws_client: Any) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    await alice.call("join", GENERAL)
    await bob.call("join", GENERAL)
    assert await bob.call("leave", GENERAL) == GENERAL
    assert await bob.call("rpc", "/rooms") == []
    assert await alice.call("message", GENERAL, "after bob left") == {
        "sent": 0,
        "skipped": 1,
        "dropped": 0,
        "published": False,
        "error": None,
    }
    await assert_nothing_pending(bob)


async def test_join_and_leave_an_explicit_room(ws_client: Any) -> None:
    ws = make_app()
    [alice] = await connect(ws_client, ws, 1)
    assert await alice.call("join-to", GENERAL, {"room": "lobby"}) == "lobby"
    assert await alice.call("rpc", "/rooms") == ["lobby"]
    assert len(ws.room_connections("lobby")) == 1
    assert ws.room_connections(GENERAL) == ()
    assert await alice.call("leave-to", GENERAL, {"room": "lobby"}) == "lobby"
    assert ws.rooms.rooms() == ()


async def test_rooms_lists_the_connections_rooms_in_join_order(ws_client: Any) -> None:
    ws = make_app()
    [alice] = await connect(ws_client, ws, 1)
    await alice.call("join", "/chat/b")
    await alice.call("join", "/teams/red/channels/dev")
    await alice.call("join", "/chat/a")
    await alice.call("join", "/chat/b")  # already in: keeps its place
    assert await alice.call("rpc", "/rooms") == ["/chat/b", "team:red:dev", "/chat/a"]
    await alice.call("leave", "/chat/b")
    await alice.call("join", "/chat/b")
    assert await alice.call("rpc", "/rooms") == ["team:red:dev", "/chat/a", "/chat/b"]


async def test_rooms_of_one_connection_are_not_shared_with_another(ws_client: Any) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    await alice.call("join", "/chat/a")
    assert await bob.call("rpc", "/rooms") == []


# -- broadcast ----------------------------------------------------------------------------


async def test_room_broadcast_push_has_the_room_as_path_and_the_route_params(
    ws_client: Any,
) -> None:
    ws = make_app()
    alice, bob, carol = await connect(ws_client, ws, 3)
    for client in (alice, bob, carol):
        await client.call("join", GENERAL)
    report = await alice.call("message", GENERAL, {"text": "hi"})
    assert report == {"sent": 2, "skipped": 1, "dropped": 0, "published": False, "error": None}
    expected = {
        "event": "message",
        "path": GENERAL,
        "params": {"room": "general"},
        "data": {"text": "hi"},
    }
    assert await bob.next_push() == expected
    assert await carol.next_push() == expected
    await assert_nothing_pending(alice, bob, carol)


async def test_room_broadcast_excludes_the_sender_by_default(ws_client: Any) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    await alice.call("join", GENERAL)
    await bob.call("join", GENERAL)
    await alice.call("message", GENERAL, 1)
    # A push to alice would have been written before her reply.
    assert alice.pending_messages() == []
    assert (await bob.next_push())["data"] == 1


async def test_room_broadcast_with_exclude_self_false_reaches_the_sender_first(
    ws_client: Any,
) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    await alice.call("join", GENERAL)
    await bob.call("join", GENERAL)
    report = await alice.call("message-all", GENERAL, 2)
    assert (report["sent"], report["skipped"]) == (2, 0)
    push = {"event": "message", "path": GENERAL, "params": {"room": "general"}, "data": 2}
    assert alice.pending_messages() == [push]  # arrived before the reply
    assert await bob.next_push() == push
    await assert_nothing_pending(alice, bob)


async def test_room_override_keeps_the_params_of_the_current_route(ws_client: Any) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    await bob.call("join-to", GENERAL, {"room": "lobby"})
    await alice.call("message-to", GENERAL, {"room": "lobby", "payload": {"n": 1}})
    assert await bob.next_push() == {
        "event": "message",
        "path": "lobby",
        "params": {"room": "general"},
        "data": {"n": 1},
    }


async def test_broadcast_from_a_route_without_params_has_no_params_key(ws_client: Any) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    await alice.call("join", "/plain")
    await bob.call("join", "/plain")
    await alice.call("message", "/plain", None)
    assert await bob.next_push() == {"event": "message", "path": "/plain"}


async def test_broadcast_reaches_only_the_members_of_that_room(ws_client: Any) -> None:
    ws = make_app()
    alice, bob, carol = await connect(ws_client, ws, 3)
    await alice.call("join", "/chat/a")
    await bob.call("join", "/chat/a")
    await carol.call("join", "/chat/b")
    await alice.call("message", "/chat/a", "only a")
    assert (await bob.next_push())["data"] == "only a"
    await assert_nothing_pending(carol)


async def test_handler_gets_the_delivery_report(ws_client: Any) -> None:
    ws = make_app()

    @ws.on_message("kick-then-message", "/chat/:room")
    async def kick_then_message() -> dict[str, Any]:
        victim = use_ws_server().get_connection(_data()["kick"])
        assert victim is not None
        victim.close(4000, "kicked")  # still a member until its disconnect is handled
        return _report(await use_ws_rooms().broadcast("message", "x"))

    alice, bob, carol = await connect(ws_client, ws, 3)
    for client in (alice, bob, carol):
        await client.call("join", GENERAL)
    carol_id = await carol.call("rpc", "/whoami")
    report = await alice.call("kick-then-message", GENERAL, {"kick": carol_id})
    assert report == {"sent": 1, "skipped": 1, "dropped": 1, "published": False, "error": None}
    assert (await bob.next_push())["data"] == "x"
    assert await carol.wait_closed() == 4000
    assert carol.pending_messages() == []


# -- server-wide --------------------------------------------------------------------------


async def test_server_broadcast_reaches_every_connection_once_sender_included(
    ws_client: Any,
) -> None:
    ws = make_app()
    alice, bob, carol = await connect(ws_client, ws, 3)
    await bob.call("join", GENERAL)  # room membership does not matter
    report = await alice.call("rpc", "/announce", {"text": "hello all"})
    assert report == {"sent": 3, "skipped": 0, "dropped": 0, "published": False, "error": None}
    push = {"event": "announcement", "path": "/announce", "data": {"text": "hello all"}}
    assert alice.pending_messages() == [push]
    assert await bob.next_push() == push
    assert await carol.next_push() == push
    await assert_nothing_pending(alice, bob, carol)


async def test_get_connection_returns_a_connection_that_can_be_pushed_to(ws_client: Any) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    bob_id = await bob.call("rpc", "/whoami")
    await bob.call("join", "/chat/x")
    found = await alice.call("rpc", "/peek", {"id": bob_id})
    assert found == {"found": True, "id": bob_id, "rooms": ["/chat/x"]}
    assert await bob.next_push() == {
        "event": "notification",
        "path": "/private",
        "data": {"text": "Hello"},
    }
    assert await alice.call("rpc", "/peek", {"id": "nobody"}) == {"found": False}


async def test_room_connections_lists_the_local_members(ws_client: Any) -> None:
    ws = make_app()
    alice, bob, carol = await connect(ws_client, ws, 3)
    ids = [await c.call("rpc", "/whoami") for c in (alice, bob, carol)]
    await bob.call("join", GENERAL)
    await alice.call("join", GENERAL)
    assert await carol.call("rpc", "/members", {"room": GENERAL}) == [ids[1], ids[0]]
    assert await carol.call("rpc", "/members", {"room": "/nowhere"}) == []


async def test_send_to_a_local_connection_pushes_and_returns_true(ws_client: Any) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    bob_id = await bob.call("rpc", "/whoami")
    assert await alice.call("rpc", "/direct", {"to": bob_id, "payload": {"k": 1}}) == {"sent": True}
    assert await bob.next_push() == {"event": "notification", "path": "/private", "data": {"k": 1}}
    await assert_nothing_pending(alice, bob)


async def test_send_to_an_unknown_connection_returns_false_and_pushes_nothing(
    ws_client: Any,
) -> None:
    ws = make_app()
    alice, bob = await connect(ws_client, ws, 2)
    assert await alice.call("rpc", "/direct", {"to": "no-such-id", "payload": 1}) == {"sent": False}
    await assert_nothing_pending(alice, bob)


# -- disconnect ---------------------------------------------------------------------------


class SignallingTransport(MemoryTransport):
    """Reports each connection whose disconnect has been handled (the last step of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.gone: asyncio.Queue[str] = asyncio.Queue()

    async def unregister_connection(self, connection_id: str) -> None:
        await super().unregister_connection(connection_id)
        self.gone.put_nowait(connection_id)


async def test_send_to_a_connection_that_left_returns_false(ws_client: Any) -> None:
    transport = SignallingTransport()
    ws = make_app(transport)
    alice, bob = await connect(ws_client, ws, 2)
    bob_id = await bob.call("rpc", "/whoami")
    await bob.close()
    assert await asyncio.wait_for(transport.gone.get(), 5) == bob_id
    assert ws.get_connection(bob_id) is None
    assert await alice.call("rpc", "/direct", {"to": bob_id}) == {"sent": False}
    await assert_nothing_pending(alice)


async def test_on_disconnect_reads_rooms_cannot_use_rooms_and_rooms_are_left_anyway(
    ws_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    transport = SignallingTransport()
    ws = make_app(transport)
    seen: dict[str, Any] = {}

    @ws.on_disconnect
    def failing_hook() -> None:
        conn = use_ws_connection()
        seen["rooms"] = conn.rooms
        seen["server_rooms"] = list(use_ws_server().get_connection(conn.id).rooms)  # type: ignore[union-attr]
        try:
            use_ws_rooms()
        except RuntimeError as exc:
            seen["error"] = str(exc)
        raise ValueError("hook bug")

    alice, bob = await connect(ws_client, ws, 2)
    await alice.call("join", "/chat/a")
    await alice.call("join", "/chat/b")
    await bob.call("join", "/chat/b")
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        await alice.close()
        alice_id = await asyncio.wait_for(transport.gone.get(), 5)
    assert alice_id not in {c.id for c in ws.connections()}
    assert seen == {
        "rooms": ("/chat/a", "/chat/b"),
        "server_rooms": ["/chat/a", "/chat/b"],
        "error": "use_ws_rooms() called outside an on_message handler",
    }
    assert "on_disconnect failed" in caplog.text
    assert ws.room_connections("/chat/a") == ()
    assert len(ws.room_connections("/chat/b")) == 1  # bob stays
    assert ws.rooms.rooms() == ("/chat/b",)
    assert transport.bus.subscriber_count(ROOM_CHANNEL_PREFIX + "/chat/a") == 0
    assert transport.bus.subscriber_count(ROOM_CHANNEL_PREFIX + "/chat/b") == 1
    assert await bob.call("rpc", "/rooms") == ["/chat/b"]


async def test_disconnect_notice_from_on_disconnect_reaches_the_other_members(
    ws_client: Any,
) -> None:
    ws = make_app()

    @ws.on_disconnect
    async def notify() -> None:
        conn = use_ws_connection()
        for room in conn.rooms:
            await ws.rooms.broadcast(room, "system", {"left": conn.id}, exclude_id=conn.id)

    alice, bob, carol = await connect(ws_client, ws, 3)
    alice_id = await alice.call("rpc", "/whoami")
    await alice.call("join", GENERAL)
    await bob.call("join", GENERAL)
    await carol.call("join", "/chat/other")
    await alice.close()
    assert await bob.next_push() == {"event": "system", "path": GENERAL, "data": {"left": alice_id}}
    await assert_nothing_pending(bob, carol)


async def test_a_handler_joining_after_its_connection_left_does_not_bring_it_back(
    ws_client: Any,
) -> None:
    transport = SignallingTransport()
    ws = make_app(transport)
    release, done = asyncio.Event(), asyncio.Event()

    @ws.on_message("late-join", "/chat/:room")
    async def late_join() -> None:
        await release.wait()
        try:
            await use_ws_rooms().join()
        finally:
            done.set()

    [alice] = await connect(ws_client, ws, 1)
    await alice.send("late-join", "/chat/late")
    await alice.call("rpc", "/whoami")  # the late-join handler is running
    await alice.close()
    await asyncio.wait_for(transport.gone.get(), 5)
    release.set()
    await asyncio.wait_for(done.wait(), 5)
    assert ws.room_connections("/chat/late") == ()
    assert ws.rooms.rooms() == ()
    assert transport.bus.subscriber_count(ROOM_CHANNEL_PREFIX + "/chat/late") == 0


class BrokenBusTransport(MemoryTransport):
    """Subscribes fine, but every publish fails."""

    async def publish(self, channel: str, payload: str) -> None:
        raise ConnectionError("bus down")


async def test_a_failing_publish_is_reported_to_the_handler_and_local_members_still_get_it(
    ws_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ws = make_app(BrokenBusTransport())
    alice, bob = await connect(ws_client, ws, 2)
    await alice.call("join", GENERAL)
    await bob.call("join", GENERAL)
    with caplog.at_level(logging.WARNING, logger="wsevents.rooms"):
        room_report = await alice.call("message", GENERAL, "local only")
        server_report = await alice.call("rpc", "/announce", {"n": 1})
    assert room_report == {
        "sent": 1,
        "skipped": 1,
        "dropped": 0,
        "published": False,
        "error": "ConnectionError",
    }
    assert server_report == {
        "sent": 2,
        "skipped": 0,
        "dropped": 0,
        "published": False,
        "error": "ConnectionError",
    }
    assert (await bob.next_push())["data"] == "local only"
    assert (await bob.next_push())["data"] == {"n": 1}
    assert alice.pending_messages() == [
        {"event": "announcement", "path": "/announce", "data": {"n": 1}}
    ]
    assert "bus down" in caplog.text
    await assert_nothing_pending(alice, bob)


async def test_a_join_policy_refusal_in_a_handler_is_the_error_reply(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    def only_lobby(conn: Connection, room: str) -> None:
        if room != "/lobby":
            raise WsError(403, "closed room")

    ws.rooms.add_join_policy(only_lobby)

    @ws.on_message("join", "/:room")
    async def join() -> str:
        return await use_ws_rooms().join()

    client = await ws_client(ws)
    assert await client.call("join", "/lobby") == "/lobby"
    reply = await client.request("join", "/vip", message_id=2)
    assert reply == {"id": 2, "error": {"code": 403, "message": "closed room"}}
    assert ws.rooms.rooms() == ("/lobby",)
