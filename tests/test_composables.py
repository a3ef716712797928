"""Composables: where each one works, what it returns, and the error outside its context."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from wsevents import (
    DeliveryReport,
    RouteParams,
    WsApp,
    use_route_params,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)

TIMEOUT = 5.0

MESSAGE_ONLY: list[tuple[str, Callable[[], Any]]] = [
    ("use_ws_message", use_ws_message),
    ("use_route_params", use_route_params),
    ("use_ws_rooms", use_ws_rooms),
]


def attempt(fn: Callable[[], Any]) -> str:
    """What calling ``fn`` did: ``"ok"`` or the RuntimeError's text."""
    try:
        fn()
    except RuntimeError as exc:
        return str(exc)
    return "ok"


# -- outside any context ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fn"), MESSAGE_ONLY)
def test_message_composables_outside_a_handler_raise_naming_on_message(name, fn) -> None:
    with pytest.raises(RuntimeError) as info:
        fn()
    assert str(info.value) == f"{name}() called outside an on_message handler"


def test_use_ws_connection_outside_a_connection_raises_naming_where_it_works() -> None:
    with pytest.raises(RuntimeError) as info:
        use_ws_connection()
    text = str(info.value)
    assert text.startswith("use_ws_connection() called outside a connection")
    for hook in ("on_connect", "on_message", "on_disconnect"):
        assert hook in text


def test_use_ws_server_outside_a_connection_raises_pointing_to_the_app() -> None:
    with pytest.raises(RuntimeError) as info:
        use_ws_server()
    assert "use_ws_server() called outside a wsevents connection" in str(info.value)
    assert "WsApp" in str(info.value)


async def test_composables_raise_in_an_unrelated_task_while_a_connection_is_open(
    ws_client,
) -> None:
    ws = WsApp(heartbeat=0)
    entered = asyncio.Event()
    gate = asyncio.Event()

    @ws.on_message("rpc", "/hold")
    async def hold() -> str:
        entered.set()
        await gate.wait()
        return use_ws_message().path

    client = await ws_client(ws)
    call = asyncio.create_task(client.call("rpc", "/hold"))
    await asyncio.wait_for(entered.wait(), TIMEOUT)

    async def outsider() -> list[str]:
        fns = [fn for _, fn in MESSAGE_ONLY] + [use_ws_connection, use_ws_server]
        return [attempt(fn) for fn in fns]

    results = await asyncio.create_task(outsider())
    assert all(r != "ok" for r in results), results
    gate.set()
    assert await call == "/hold"


# -- inside the hooks -------------------------------------------------------------------------


async def test_in_on_connect_only_connection_and_server_composables_work(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    seen: dict[str, str] = {}

    @ws.on_connect
    async def connect() -> None:
        await asyncio.sleep(0)
        for name, fn in MESSAGE_ONLY:
            seen[name] = attempt(fn)
        seen["use_ws_connection"] = attempt(use_ws_connection)
        seen["use_ws_server"] = "ok" if use_ws_server() is ws.server else "wrong app"
        use_ws_connection().state["id"] = use_ws_connection().id

    @ws.on_message("rpc", "/id")
    def same_id() -> bool:
        return use_ws_connection().state["id"] == use_ws_connection().id

    client = await ws_client(ws)
    assert await client.call("rpc", "/id") is True
    assert seen == {
        "use_ws_message": "use_ws_message() called outside an on_message handler",
        "use_route_params": "use_route_params() called outside an on_message handler",
        "use_ws_rooms": "use_ws_rooms() called outside an on_message handler",
        "use_ws_connection": "ok",
        "use_ws_server": "ok",
    }


async def test_in_on_disconnect_message_composables_raise(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    seen: dict[str, str] = {}
    done = asyncio.Event()

    @ws.on_message("rpc", "/x/:param")
    def handler() -> str:
        return use_ws_connection().id

    @ws.on_disconnect
    def disconnect() -> None:
        for name, fn in MESSAGE_ONLY:
            seen[name] = attempt(fn)
        seen["id"] = use_ws_connection().id
        seen["server"] = "ok" if use_ws_server() is ws.server else "wrong app"
        done.set()

    client = await ws_client(ws)
    cid = await client.call("rpc", "/x/1")
    await client.close()
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert seen == {
        "use_ws_message": "use_ws_message() called outside an on_message handler",
        "use_route_params": "use_route_params() called outside an on_message handler",
        "use_ws_rooms": "use_ws_rooms() called outside an on_message handler",
        "id": cid,
        "server": "ok",
    }


# -- inside on_message ------------------------------------------------------------------------


async def test_use_ws_message_exposes_the_frame(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/msg/:x")
    def msg() -> dict[str, Any]:
        m = use_ws_message()
        raw = m.raw.decode() if isinstance(m.raw, bytes) else m.raw
        return {
            "event": m.event,
            "path": m.path,
            "data": m.data,
            "id": m.id,
            "raw": raw,
            "binary": isinstance(m.raw, bytes),
        }

    client = await ws_client(ws)
    text = '{"event":"rpc","path":"/msg/1","data":[1,{"a":null}],"id":"q"}'
    await client.send_raw(text)
    assert await client.next_message() == {
        "id": "q",
        "data": {
            "event": "rpc",
            "path": "/msg/1",
            "data": [1, {"a": None}],
            "id": "q",
            "raw": text,
            "binary": False,
        },
    }
    await client.send_raw(text.encode())
    assert (await client.next_message())["data"]["binary"] is True


async def test_use_route_params_gives_decoded_params_and_defaults(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/users/:id")
    def user() -> dict[str, Any]:
        params = use_route_params()
        assert isinstance(params, RouteParams)
        return {
            "id": params.get("id"),
            "missing": params.get("missing"),
            "default": params.get("missing", "dflt"),
            "all": dict(params.params),
            "repr": repr(params),
        }

    @ws.on_message("rpc", "/files/*")
    def files() -> str | None:
        return use_route_params().get("*")

    @ws.on_message("rpc", "/static")
    def static() -> dict[str, str]:
        return dict(use_route_params().params)

    client = await ws_client(ws)
    assert await client.call("rpc", "/users/a%20b") == {
        "id": "a b",
        "missing": None,
        "default": "dflt",
        "all": {"id": "a b"},
        "repr": "RouteParams({'id': 'a b'})",
    }
    assert await client.call("rpc", "/files/a/b.txt") == "a/b.txt"
    assert await client.call("rpc", "/static") == {}


async def test_use_ws_rooms_joins_the_message_path_by_default(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_message("join", "/rooms/:name")
    async def join() -> str:
        return await use_ws_rooms().join()

    @ws.on_message("join-other", "/rooms/:name")
    async def join_other() -> str:
        return await use_ws_rooms().join(use_ws_message().data)

    @ws.on_message("leave", "/rooms/:name")
    async def leave() -> str:
        return await use_ws_rooms().leave()

    @ws.on_message("rpc", "/mine")
    def mine() -> list[str]:
        return list(use_ws_rooms().rooms())

    client = await ws_client(ws)
    assert await client.call("join", "/rooms/b") == "/rooms/b"
    assert await client.call("join", "/rooms/a") == "/rooms/a"
    assert await client.call("join-other", "/rooms/a", "custom") == "custom"
    assert await client.call("join", "/rooms/b") == "/rooms/b"  # joining twice changes nothing
    assert await client.call("rpc", "/mine") == ["/rooms/b", "/rooms/a", "custom"]
    assert await client.call("leave", "/rooms/b") == "/rooms/b"
    assert await client.call("leave", "/rooms/zzz") == "/rooms/zzz"  # not a member: no-op
    assert await client.call("rpc", "/mine") == ["/rooms/a", "custom"]
    assert len(ws.room_connections("/rooms/a")) == 1
    assert ws.room_connections("/rooms/b") == ()


async def test_use_ws_rooms_broadcast_uses_room_as_path_and_route_params(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    reports: list[DeliveryReport] = []

    @ws.on_message("join", "/chat/:room")
    async def join() -> None:
        await use_ws_rooms().join()
        await use_ws_rooms().join("lobby")

    @ws.on_message("say", "/chat/:room")
    async def say() -> None:
        data = use_ws_message().data
        reports.append(
            await use_ws_rooms().broadcast(
                "said", data.get("text"), room=data.get("room"), exclude_self=data["exclude"]
            )
        )

    alice = await ws_client(ws)
    bob = await ws_client(ws)
    for client in (alice, bob):
        await client.call("join", "/chat/x")
    await alice.call("say", "/chat/x", {"text": "hi", "exclude": True})
    assert await bob.next_push() == {
        "event": "said",
        "path": "/chat/x",
        "params": {"room": "x"},
        "data": "hi",
    }
    await alice.call("say", "/chat/x", {"text": "all", "room": "lobby", "exclude": False})
    expected = {"event": "said", "path": "lobby", "params": {"room": "x"}, "data": "all"}
    assert await bob.next_push() == expected
    assert await alice.next_push() == expected  # the first push alice got: none before
    await alice.call("say", "/chat/x", {"exclude": False})
    assert await bob.next_push() == {"event": "said", "path": "/chat/x", "params": {"room": "x"}}
    assert reports[0] == DeliveryReport(sent=1, skipped=1, dropped=0)
    assert reports[1] == DeliveryReport(sent=2, skipped=0, dropped=0)


async def test_use_ws_server_in_a_handler_is_the_running_app(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/server")
    def server() -> dict[str, Any]:
        app = use_ws_server()
        me = use_ws_connection()
        return {
            "same": app is ws.server,
            "count": len(app.connections()),
            "found": app.get_connection(me.id) is me,
        }

    first = await ws_client(ws)
    await ws_client(ws)
    assert await first.call("rpc", "/server") == {"same": True, "count": 2, "found": True}


async def test_two_apps_in_one_process_see_their_own_context(ws_client) -> None:
    apps = [WsApp(heartbeat=0), WsApp(heartbeat=0)]
    for index, app in enumerate(apps):

        def which(index: int = index) -> list[Any]:
            return [index, use_ws_server() is apps[index].server]

        app.add_message_handler("rpc", "/which", which)
    first = await ws_client(apps[0])
    second = await ws_client(apps[1])
    assert await first.call("rpc", "/which") == [0, True]
    assert await second.call("rpc", "/which") == [1, True]
