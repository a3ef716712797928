"""Join admission per room pattern (WsApp.room_policy) over real sockets, and the
reference app's private rooms."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from examples.reference_app import app as reference_app
from wsevents import (
    Admit,
    Connection,
    RoomManager,
    RoutingError,
    WsApp,
    WsClientError,
    WsError,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
)
from wsevents.testing import RecordingSocket


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


# -- admission with member data -------------------------------------------------------------


def data_app() -> WsApp:
    ws = rooms_app()

    @ws.on_message("enter", "/:kind/rooms/:room")
    async def enter() -> dict[str, Any] | None:
        name = use_ws_message().data
        await use_ws_rooms().join(data={"name": name, "role": "guest"} if name else None)
        data = use_ws_rooms().member_data()
        return dict(data) if data is not None else None

    @ws.on_message("rpc", "/member")
    def member() -> dict[str, Any] | None:
        data = use_ws_rooms().member_data(use_ws_message().data)
        return dict(data) if data is not None else None

    @ws.on_message("exit", "/:kind/rooms/:room")
    async def exit_room() -> None:
        await use_ws_rooms().leave()

    return ws


@pytest.mark.parametrize("form", ["Admit", "dict", "async"])
async def test_admit_may_accept_with_member_data(ws_client, form) -> None:
    ws = data_app()

    def role(conn: Any, room: str) -> Any:
        return Admit({"role": "moderator"}) if form == "Admit" else {"role": "moderator"}

    async def async_role(conn: Any, room: str) -> Any:
        await asyncio.sleep(0)
        return Admit(data={"role": "moderator"})

    ws.room_policy("/mod/rooms/:room", admit=async_role if form == "async" else role)
    client = await ws_client(ws)
    # The admitted keys win over the join's own data; the others are kept.
    assert await client.call("enter", "/mod/rooms/a", "ada") == {"name": "ada", "role": "moderator"}
    assert await client.call("rpc", "/member", "/mod/rooms/a") == {
        "name": "ada",
        "role": "moderator",
    }
    # Without data of its own the join gets the admitted data alone.
    assert await client.call("enter", "/mod/rooms/b") == {"role": "moderator"}
    conn = ws.connections()[0]
    assert ws.rooms.member_data(conn, "/mod/rooms/b") == {"role": "moderator"}
    assert ws.rooms.member_data(conn.id, "/mod/rooms/b") == {"role": "moderator"}
    # Leaving forgets it.
    await client.call("exit", "/mod/rooms/a")
    assert await client.call("rpc", "/member", "/mod/rooms/a") is None
    # A room without policy keeps the join's data; True and Admit() add nothing.
    assert await client.call("enter", "/open/rooms/c", "ada") == {"name": "ada", "role": "guest"}
    assert await client.call("enter", "/open/rooms/d") is None


async def test_admit_true_none_and_empty_admit_add_no_data(ws_client) -> None:
    ws = data_app()
    ws.room_policy("/t/rooms/:room", admit=lambda conn, room: True)
    ws.room_policy("/n/rooms/:room", admit=lambda conn, room: None)
    ws.room_policy("/e/rooms/:room", admit=lambda conn, room: Admit())
    client = await ws_client(ws)
    for kind in ("t", "n", "e"):
        assert await client.call("enter", f"/{kind}/rooms/a") is None
        assert await client.call("enter", f"/{kind}/rooms/b", "bo") == {
            "name": "bo",
            "role": "guest",
        }


@pytest.mark.parametrize("verdict", ["yes", 1, ["role"]])
async def test_an_admit_returning_something_else_is_a_500_and_no_membership(
    ws_client, caplog, verdict
) -> None:
    ws = data_app()
    ws.room_policy("/odd/rooms/:room", admit=lambda conn, room: verdict)
    client = await ws_client(ws)
    error = await call_error(client, "enter", "/odd/rooms/a", "ada")
    assert (error.code, error.message) == (500, "Internal Error")
    assert "returned" not in error.message
    assert await client.call("rpc", "/rooms") == []
    assert any(
        "expected True, None, False, Admit" in r.getMessage()
        or (r.exc_info and "expected True, None, False, Admit" in str(r.exc_info[1]))
        for r in caplog.records
    )


async def test_admitted_data_is_the_presence_member_data(ws_client) -> None:
    ws = data_app()
    ws.presence.track("/live/rooms/:room")
    ws.room_policy(
        "/live/rooms/:room",
        admit=lambda conn, room: Admit({"role": "speaker" if conn.user == "ada" else "listener"}),
    )

    @ws.on_connect
    def identify() -> None:
        conn = use_ws_connection()
        if conn.request is not None:
            conn.user = conn.request.query.get("user", conn.id)

    @ws.on_message("rpc", "/who")
    async def who() -> list[dict[str, Any]]:
        users = await ws.presence.users(use_ws_message().data)
        return [u.as_dict() for u in users.members]

    ada = await ws_client(ws, query={"user": "ada"})
    bob = await ws_client(ws, query={"user": "bob"})
    assert await ada.call("enter", "/live/rooms/a", "Ada") == {"name": "Ada", "role": "speaker"}
    assert await bob.call("enter", "/live/rooms/a", "Bob") == {"name": "Bob", "role": "listener"}
    assert await ada.call("rpc", "/who", "/live/rooms/a") == [
        {"name": "Ada", "role": "speaker", "user": "ada", "connections": 1},
        {"name": "Bob", "role": "listener", "user": "bob", "connections": 1},
    ]
    # The presence pushes carry the admitted data too (joins may be batched).
    joins: dict[str, Any] = {}
    while "bob" not in joins:
        push = await ada.next_push()
        joins.update({j["user"]: j for j in push["data"]["joins"]})
    assert joins["bob"] == {"name": "Bob", "role": "listener", "user": "bob"}


async def test_room_manager_policies_may_return_member_data() -> None:
    rooms = RoomManager()
    rooms.add_join_policy(lambda conn, room: {"a": 1, "b": 1})

    async def second(conn: Any, room: str) -> Any:
        return {"b": 2}

    rooms.add_join_policy(second)
    rooms.add_join_policy(lambda conn, room: "ignored: not a mapping")  # type: ignore[arg-type, return-value]
    conn = Connection(RecordingSocket())
    await rooms.join(conn, "r", data={"a": 0, "c": 0})
    assert rooms.member_data(conn, "r") == {"a": 1, "b": 2, "c": 0}
    # Joining again changes nothing; set_member_data replaces; leaving forgets.
    await rooms.join(conn, "r", data={"z": 9})
    assert rooms.member_data(conn, "r") == {"a": 1, "b": 2, "c": 0}
    assert rooms.set_member_data(conn, "r", {"x": 1})
    assert rooms.member_data(conn, "r") == {"x": 1}
    assert rooms.set_member_data(conn, "r", None)
    assert rooms.member_data(conn, "r") is None
    assert not rooms.set_member_data(conn, "other", {"x": 1})
    await rooms.join(conn, "s")
    assert rooms.member_data(conn, "s") == {"a": 1, "b": 2}
    rooms._leave_all_now(conn)
    assert rooms.member_data(conn, "s") is None
    assert rooms._data == {}


async def test_admitted_data_and_max_members_in_one_policy(ws_client) -> None:
    ws = data_app()
    ws.room_policy(
        "/duo/rooms/:room", admit=lambda conn, room: Admit({"role": "player"}), max_members=1
    )
    first, second = await ws_client(ws), await ws_client(ws)
    assert await first.call("enter", "/duo/rooms/a", "ada") == {"name": "ada", "role": "player"}
    error = await call_error(second, "enter", "/duo/rooms/a", "bob")
    assert (error.code, error.message) == (409, "Room is full")
    assert await second.call("rpc", "/member", "/duo/rooms/a") is None
    assert ws.rooms._data == {
        "/duo/rooms/a": {
            ws.rooms.connections("/duo/rooms/a")[0].id: {
                "name": "ada",
                "role": "player",
            }
        }
    }
    await first.call("exit", "/duo/rooms/a")
    assert await second.call("enter", "/duo/rooms/a", "bob") == {"name": "bob", "role": "player"}
