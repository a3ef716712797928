"""Join admission per room pattern (WsApp.room_policy) over real sockets, and the
reference app's private rooms."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from examples.reference_app import app as reference_app
from wsevents import RoutingError, WsApp, WsClientError, WsError, use_ws_message, use_ws_rooms


def rooms_app() -> WsApp:
    ws = WsApp(heartbeat=0)

    @ws.on_message("join", "/:kind/rooms/:room")
    async def join() -> list[str]:
        await use_ws_rooms().join()
        return list(use_ws_rooms().rooms())

    @ws.on_message("rpc", "/rooms")
    def rooms() -> list[str]:
        return list(use_ws_rooms().rooms())

    return ws


async def call_error(client: Any, event: str, path: str, data: Any = None) -> WsClientError:
    with pytest.raises(WsClientError) as info:
        await client.call(event, path, data)
    return info.value


@pytest.mark.parametrize("is_async", [False, True])
async def test_admit_false_refuses_with_403_and_no_membership(ws_client, is_async) -> None:
    ws = rooms_app()
    seen: list[tuple[str, str]] = []

    def check(conn: Any, room: str) -> bool:
        seen.append((conn.user, room))
        data = use_ws_message().data
        return isinstance(data, dict) and data.get("key") == "k"

    async def async_check(conn: Any, room: str) -> bool:
        await asyncio.sleep(0)
        return check(conn, room)

    ws.room_policy("/vip/rooms/:room", admit=async_check if is_async else check)
    client = await ws_client(ws)
    error = await call_error(client, "join", "/vip/rooms/a", {"key": "nope"})
    assert (error.code, error.message) == (403, "Forbidden")
    assert await client.call("rpc", "/rooms") == []
    assert ws.rooms.size("/vip/rooms/a") == 0
    assert await client.call("join", "/vip/rooms/a", {"key": "k"}) == ["/vip/rooms/a"]
    # Rooms that match no policy are open.
    assert await client.call("join", "/open/rooms/b") == ["/vip/rooms/a", "/open/rooms/b"]
    assert [room for _, room in seen] == ["/vip/rooms/a", "/vip/rooms/a"]


async def test_admit_may_refuse_with_its_own_error(ws_client) -> None:
    ws = rooms_app()

    def full(conn: Any, room: str) -> None:
        raise WsError(409, "Room is full")

    ws.room_policy("/capped/rooms/:room", admit=full)
    client = await ws_client(ws)
    error = await call_error(client, "join", "/capped/rooms/a")
    assert (error.code, error.message) == (409, "Room is full")
    assert await client.call("rpc", "/rooms") == []


async def test_an_admit_that_crashes_is_a_500_and_no_membership(ws_client, caplog) -> None:
    ws = rooms_app()

    def broken(conn: Any, room: str) -> None:
        raise RuntimeError("policy store is down")

    ws.room_policy("/x/rooms/:room", admit=broken)
    client = await ws_client(ws)
    error = await call_error(client, "join", "/x/rooms/a")
    assert (error.code, error.message) == (500, "Internal Error")
    assert await client.call("rpc", "/rooms") == []


def test_bad_policies_are_refused() -> None:
    ws = WsApp()
    with pytest.raises(TypeError, match="admit"):
        ws.room_policy("/a/:b", admit="nope")  # type: ignore[arg-type]
    ws.room_policy("/a/:b", admit=lambda conn, room: True)
    with pytest.raises(RoutingError):
        ws.room_policy("/a/:b", admit=lambda conn, room: True)
    with pytest.raises(RoutingError):
        ws.room_policy("no-slash", admit=lambda conn, room: True)


async def test_reference_private_rooms_need_the_key(ws_client) -> None:
    alice, bob = await ws_client(reference_app), await ws_client(reference_app)
    room = "/private/rooms/vault"
    error = await call_error(alice, "subscribe", room, {"key": "guess"})
    assert (error.code, error.message) == (403, "Forbidden")
    assert (await call_error(alice, "subscribe", room)).code == 403
    assert await alice.call("rpc", "/rooms") == []
    assert await alice.call("subscribe", room, {"key": "sesame"}) == {"subscribed": True}
    assert await bob.call("subscribe", room, {"key": "sesame"}) == {"subscribed": True}
    assert await bob.call("message", room, "hi") == {"sent": True}
    push = await alice.next_push()
    assert (push["event"], push["path"], push["data"]) == ("message", room, "hi")
    assert await alice.call("unsubscribe", room) == {"unsubscribed": True}
    await alice.close()
    await bob.close()
