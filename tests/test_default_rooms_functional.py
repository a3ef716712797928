"""Default rooms joined on connect (WsApp(default_rooms=...)) over real sockets, on one
instance and across instances on a MemoryBus."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from wsevents import (
    Admit,
    Connection,
    MemoryTransport,
    WsApp,
    WsError,
    create_ws_app,
    use_ws_connection,
    use_ws_rooms,
)
from wsevents.testing import ClusterFactory


def build(transport: MemoryTransport | None = None, **options: Any) -> WsApp:
    ws = create_ws_app(heartbeat=0, transport=transport, **options)

    @ws.on_connect
    def identify() -> None:
        conn = use_ws_connection()
        if conn.request is not None:
            user = conn.request.query.get("user")
            if user == "nobody":
                raise WsError(403, "Forbidden")
            conn.user = user or conn.id

    @ws.on_message("rpc", "/rooms")
    def rooms() -> list[str]:
        return list(use_ws_rooms().rooms())

    @ws.on_message("rpc", "/member")
    def member() -> Any:
        data = use_ws_rooms().member_data(f"/users/{use_ws_connection().user}")
        return dict(data) if data is not None else None

    return ws


async def per_team(conn: Connection) -> list[str]:
    await asyncio.sleep(0)
    return [f"/teams/{conn.user[0]}"]


async def test_names_and_functions_are_joined_before_the_first_message(ws_client) -> None:
    ws = build(default_rooms=["/lobby", lambda conn: [f"/users/{conn.user}"], per_team])
    ada = await ws_client(ws, query={"user": "ada"})
    assert await ada.call("rpc", "/rooms") == ["/lobby", "/users/ada", "/teams/a"]
    # A broadcast to a default room reaches the new connection.
    report = await ws.rooms.broadcast("/users/ada", "note", {"text": "hi"})
    assert report.sent == 1
    assert await ada.next_push() == {"event": "note", "path": "/users/ada", "data": {"text": "hi"}}
    bob = await ws_client(ws, query={"user": "bob"})
    assert await bob.call("rpc", "/rooms") == ["/lobby", "/users/bob", "/teams/b"]
    await ws.rooms.broadcast("/lobby", "hello")
    assert (await ada.next_push())["event"] == "hello"
    assert (await bob.next_push())["event"] == "hello"
    # A disconnect leaves them.
    await bob.close()
    for _ in range(100):
        if ws.rooms.size("/users/bob") == 0:
            break
        await asyncio.sleep(0.02)
    assert ws.rooms.size("/users/bob") == 0 and ws.rooms.size("/lobby") == 1


async def test_a_refused_connection_joins_nothing(ws_client) -> None:
    joined: list[str] = []
    ws = build(default_rooms=[lambda conn: joined.append(conn.user) or ["/lobby"]])
    client = await ws_client(ws, query={"user": "nobody"})
    assert await client.wait_closed() == 1008
    assert joined == [] and ws.rooms.size("/lobby") == 0


async def test_room_policies_apply_to_default_rooms(ws_client, caplog) -> None:
    ws = build(default_rooms=["/staff", lambda conn: [f"/users/{conn.user}"]])
    ws.room_policy("/staff", admit=lambda conn, room: conn.user == "ada")
    ws.room_policy("/users/:user", admit=lambda conn, room: Admit({"self": True}))
    caplog.set_level(logging.DEBUG, "wsevents")
    ada = await ws_client(ws, query={"user": "ada"})
    bob = await ws_client(ws, query={"user": "bob"})
    assert await ada.call("rpc", "/rooms") == ["/staff", "/users/ada"]
    # Refused: not a member, still connected, the other default rooms joined.
    assert await bob.call("rpc", "/rooms") == ["/users/bob"]
    assert await bob.call("rpc", "/member") == {"self": True}
    assert any("default room /staff refused" in r.getMessage() for r in caplog.records)


async def test_a_failing_function_or_a_bad_name_is_logged_and_skipped(ws_client, caplog) -> None:
    def broken(conn: Connection) -> list[str]:
        raise RuntimeError("directory down")

    ws = build(default_rooms=[broken, lambda conn: [42, "/ok"], lambda conn: "/single", "/last"])
    client = await ws_client(ws, query={"user": "ada"})
    assert await client.call("rpc", "/rooms") == ["/ok", "/single", "/last"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed" in m for m in messages)
    assert any("42 is not a room name" in m for m in messages)


def test_bad_default_rooms_are_refused() -> None:
    with pytest.raises(TypeError, match="default room"):
        WsApp(default_rooms=["/a", 42])  # type: ignore[list-item]
    assert WsApp(default_rooms=("/a",)).default_rooms == ("/a",)


async def test_default_rooms_across_instances(ws_cluster: ClusterFactory) -> None:
    cluster = await ws_cluster(
        lambda t: build(t, default_rooms=["/all", lambda conn: [f"/users/{conn.user}"]]),
        instances=3,
    )
    ada1 = await cluster.connect(1, query={"user": "ada"})
    ada2 = await cluster.connect(2, query={"user": "ada"})
    bob = await cluster.connect(2, query={"user": "bob"})
    for client in (ada1, ada2, bob):
        assert "/all" in await client.call("rpc", "/rooms")
    # Sent from instance 0, which has no member: reaches both of ada's connections only.
    await cluster.apps[0].rooms.broadcast("/users/ada", "note", "for ada")
    push = {"event": "note", "path": "/users/ada", "data": "for ada"}
    assert await ada1.next_push() == push
    assert await ada2.next_push() == push
    await cluster.apps[0].rooms.broadcast("/all", "news")
    for client in (ada1, ada2, bob):
        assert (await client.next_push())["event"] == "news"
    assert bob.pending_messages() == []
    await cluster.close()


async def test_a_peer_leaving_during_the_joins_is_cleaned_up(ws_client) -> None:
    started = asyncio.Event()
    left: list[str] = []

    async def slow(conn: Connection) -> list[str]:
        started.set()
        await asyncio.sleep(30)
        return ["/late"]

    ws = build(default_rooms=["/early", slow])

    @ws.on_disconnect
    def gone() -> None:
        left.append(use_ws_connection().user)

    client = await ws_client(ws, query={"user": "ada"})
    await asyncio.wait_for(started.wait(), 5)
    assert ws.rooms.size("/early") == 1
    transport = client.ws._response.connection.transport  # drop the TCP connection
    assert transport is not None
    transport.abort()
    for _ in range(200):
        if not ws.connections() and left:
            break
        await asyncio.sleep(0.02)
    assert ws.connections() == () and left == ["ada"]
    assert ws.rooms.size("/early") == 0 and ws.rooms.size("/late") == 0


async def test_a_resumed_session_keeps_its_rooms_and_admitted_presence_data(
    ws_cluster: ClusterFactory,
) -> None:
    def make(transport: MemoryTransport) -> WsApp:
        ws = build(transport, default_rooms=[lambda conn: [f"/users/{conn.user}"]])
        ws.sessions.enable(ttl=60.0)
        ws.presence.track("/stages/:stage")
        ws.room_policy("/stages/:stage", admit=lambda conn, room: Admit({"role": "speaker"}))

        @ws.on_message("join", "/stages/:stage")
        async def join() -> Any:
            await use_ws_rooms().join(data={"name": "Ada"})
            return dict(use_ws_rooms().member_data() or {})

        @ws.on_message("rpc", "/stage-data")
        def stage_data() -> Any:
            data = use_ws_rooms().member_data("/stages/main")
            return dict(data) if data is not None else None

        return ws

    cluster = await ws_cluster(make, instances=2)
    ada = await cluster.connect(0, query={"user": "ada"})
    token = (await ada.call("rpc", "/session"))["session"]
    assert await ada.call("join", "/stages/main") == {"name": "Ada", "role": "speaker"}
    transport = ada.ws._response.connection.transport  # dropped, no close frame
    assert transport is not None
    transport.abort()
    back = await cluster.connect(1, query={"user": "ada", "session": token})
    assert sorted(await back.call("rpc", "/rooms")) == ["/stages/main", "/users/ada"]
    assert await back.call("rpc", "/stage-data") == {"name": "Ada", "role": "speaker"}
    await cluster.apps[0].rooms.broadcast("/users/ada", "note", "hi")
    assert await back.next_push() == {"event": "note", "path": "/users/ada", "data": "hi"}
    await cluster.close()
