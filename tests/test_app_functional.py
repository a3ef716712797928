"""WsApp over real sockets: dispatch, replies, errors, concurrency and the connection lifecycle."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import pytest
from aiohttp import ClientWSTimeout, WSMsgType, web

from wsevents import (
    MemoryTransport,
    WsApp,
    WsClientError,
    WsError,
    use_route_params,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.server import attach

TIMEOUT = 5.0


def make_app(**options: Any) -> WsApp:
    options.setdefault("heartbeat", 0)
    ws = WsApp(**options)

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    @ws.on_message("rpc", "/async-echo")
    async def async_echo() -> Any:
        await asyncio.sleep(0)
        return use_ws_message().data

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().id

    return ws


def track_disconnects(ws: WsApp) -> asyncio.Queue[str]:
    """A queue that gets a connection id once the server has fully cleaned that connection up."""
    done: asyncio.Queue[str] = asyncio.Queue()
    close_connection = ws._close_connection

    async def tracked(conn: Any, *, resumable: bool = False) -> None:
        try:
            await close_connection(conn, resumable=resumable)
        finally:
            done.put_nowait(conn.id)

    ws._close_connection = tracked  # type: ignore[method-assign]
    return done


async def raw_socket(aiohttp_client: Any, ws: WsApp, **kwargs: Any) -> Any:
    client = await aiohttp_client(attach(ws, web.Application()))
    return await client.ws_connect("/ws", **kwargs)


# -- dispatch: return values ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/echo", "/async-echo"])
async def test_sync_and_async_handlers_reply_with_their_return_value(ws_client, path) -> None:
    client = await ws_client(make_app())
    data = {"text": "héllo", "n": [1, 2.5, None, True]}
    assert await client.request("rpc", path, data, message_id=7) == {"id": 7, "data": data}


async def test_handler_returning_none_replies_data_null(ws_client) -> None:
    ws = make_app()

    @ws.on_message("rpc", "/none")
    def nothing() -> None:
        return None

    @ws.on_message("rpc", "/async-none")
    async def async_nothing() -> None:
        return None

    client = await ws_client(ws)
    await client.send("rpc", "/none", message_id=1)
    await client.send("rpc", "/async-none", message_id=2)
    replies = [await client.next_message(), await client.next_message()]
    assert sorted(replies, key=lambda r: r["id"]) == [
        {"id": 1, "data": None},
        {"id": 2, "data": None},
    ]


# -- dispatch: errors -------------------------------------------------------------------------


def add_failing_handlers(ws: WsApp) -> None:
    @ws.on_message("rpc", "/ws-error")
    def ws_error() -> None:
        raise WsError(409, "already taken")

    @ws.on_message("rpc", "/async-ws-error")
    async def async_ws_error() -> None:
        await asyncio.sleep(0)
        raise WsError(409, "already taken")

    @ws.on_message("rpc", "/crash")
    def crash() -> None:
        raise RuntimeError("secret internals at /srv/app.py")

    @ws.on_message("rpc", "/async-crash")
    async def async_crash() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("secret internals at /srv/app.py")


@pytest.mark.parametrize("path", ["/ws-error", "/async-ws-error"])
async def test_ws_error_replies_its_code_and_message(ws_client, path) -> None:
    ws = make_app()
    add_failing_handlers(ws)
    client = await ws_client(ws)
    reply = await client.request("rpc", path, message_id="a")
    assert reply == {"id": "a", "error": {"code": 409, "message": "already taken"}}


@pytest.mark.parametrize("path", ["/crash", "/async-crash"])
async def test_other_exception_replies_500_and_is_logged_never_sent(
    aiohttp_client, caplog, path
) -> None:
    ws = make_app()
    add_failing_handlers(ws)
    sock = await raw_socket(aiohttp_client, ws)
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        await sock.send_json({"event": "rpc", "path": path, "id": 1})
        msg = await sock.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.TEXT
    assert "secret" not in msg.data and "Traceback" not in msg.data and "/srv" not in msg.data
    assert msg.json() == {"id": 1, "error": {"code": 500, "message": "Internal Error"}}
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert failures and "secret internals" in str(failures[0].exc_info[1])
    assert path in failures[0].getMessage()
    # The connection is still usable.
    await sock.send_json({"event": "rpc", "path": "/echo", "data": "ok", "id": 2})
    assert (await sock.receive_json(timeout=TIMEOUT)) == {"id": 2, "data": "ok"}
    await sock.close()


# -- dispatch: ids ----------------------------------------------------------------------------


async def test_messages_without_id_get_no_reply(ws_client) -> None:
    ws = make_app()
    add_failing_handlers(ws)
    client = await ws_client(ws)
    for path in ("/echo", "/async-echo", "/ws-error", "/async-ws-error", "/crash", "/missing"):
        await client.send("rpc", path, "no id")
    await client.send("rpc", "/echo", "last", message_id=99)
    # A sync handler replies at dispatch: a reply from the sync ones above would come first.
    assert await client.next_message() == {"id": 99, "data": "last"}
    # Async handlers run in dispatch order: a reply from the async ones would come first.
    await client.send("rpc", "/async-echo", "after", message_id=100)
    assert await client.next_message() == {"id": 100, "data": "after"}
    assert client.pending_messages() == []


@pytest.mark.parametrize("message_id", [None, False, 0, "", "abc", -5, 1.5, [1, "x"], {"k": None}])
async def test_any_present_id_is_echoed_verbatim(ws_client, message_id) -> None:
    ws = make_app()
    add_failing_handlers(ws)
    client = await ws_client(ws)
    await client.send("rpc", "/echo", "x", message_id=message_id)
    reply = await client.next_message()
    assert reply == {"id": message_id, "data": "x"}
    assert type(reply["id"]) is type(message_id)
    await client.send("rpc", "/missing", message_id=message_id)
    reply = await client.next_message()
    assert reply == {"id": message_id, "error": {"code": 404, "message": "Not found"}}
    assert type(reply["id"]) is type(message_id)
    await client.send("rpc", "/async-ws-error", message_id=message_id)
    reply = await client.next_message()
    assert reply == {"id": message_id, "error": {"code": 409, "message": "already taken"}}
    assert type(reply["id"]) is type(message_id)


async def test_unknown_path_with_id_replies_404(ws_client) -> None:
    client = await ws_client(make_app())
    for event, path in (("rpc", "/nowhere"), ("other", "/echo"), ("rpc", "/ECHO")):
        with pytest.raises(WsClientError) as info:
            await client.call(event, path)
        assert (info.value.code, info.value.message) == (404, "Not found")


async def test_unknown_path_without_id_is_silent(ws_client) -> None:
    client = await ws_client(make_app())
    await client.send("rpc", "/nowhere", {"x": 1})
    await client.send("other", "/echo", {"x": 1})
    await client.send("rpc", "/echo", "after", message_id=1)
    assert await client.next_message() == {"id": 1, "data": "after"}
    assert client.pending_messages() == []


@pytest.mark.parametrize("is_async", [False, True])
async def test_unserialisable_return_value_replies_500_and_connection_stays_usable(
    ws_client, caplog, is_async
) -> None:
    ws = make_app()

    if is_async:

        @ws.on_message("rpc", "/bad")
        async def bad() -> Any:
            return {"secret": object()}

    else:

        @ws.on_message("rpc", "/bad")
        def bad() -> Any:
            return {"secret": object()}

    client = await ws_client(ws)
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        reply = await client.request("rpc", "/bad", message_id=3)
    assert reply == {"id": 3, "error": {"code": 500, "message": "Internal Error"}}
    assert any("/bad" in r.getMessage() for r in caplog.records)
    assert await client.call("rpc", "/echo", [1]) == [1]


# -- dispatch: concurrency --------------------------------------------------------------------


@pytest.mark.parametrize("fast_is_async", [False, True])
async def test_messages_of_one_connection_run_concurrently(ws_client, fast_is_async) -> None:
    ws = make_app()
    gate = asyncio.Event()

    @ws.on_message("rpc", "/slow")
    async def slow() -> str:
        await gate.wait()  # only the later, fast message opens it
        return "slow"

    if fast_is_async:

        @ws.on_message("rpc", "/fast")
        async def fast() -> str:
            gate.set()
            return "fast"

    else:

        @ws.on_message("rpc", "/fast")
        def fast() -> str:
            gate.set()
            return "fast"

    client = await ws_client(ws)
    await client.send("rpc", "/slow", message_id=1)
    await client.send("rpc", "/fast", message_id=2)
    assert await client.next_message() == {"id": 2, "data": "fast"}
    assert await client.next_message() == {"id": 1, "data": "slow"}


@pytest.mark.parametrize("is_async", [False, True])
async def test_pushes_sent_in_a_handler_arrive_before_its_reply(ws_client, is_async) -> None:
    ws = make_app()

    async def push_then_reply() -> str:
        conn = use_ws_connection()
        conn.send("note", "/a", 1)
        await use_ws_rooms().join()
        await use_ws_rooms().broadcast("note", 2, exclude_self=False)
        await use_ws_server().broadcast("note", "/all", 3)
        conn.send("note", "/a", 4, {"k": "v"})
        return "done"

    def sync_push_then_reply() -> str:
        conn = use_ws_connection()
        conn.send("note", "/a", 1)
        conn.send("note", "/a", 2)
        conn.send("note", "/a", 3)
        conn.send("note", "/a", 4, {"k": "v"})
        return "done"

    ws.add_message_handler("rpc", "/push", push_then_reply if is_async else sync_push_then_reply)
    client = await ws_client(ws)
    await client.send("rpc", "/push", message_id=1)
    frames = [await client.next_message() for _ in range(5)]
    assert [f.get("data") for f in frames[:4]] == [1, 2, 3, 4]
    assert frames[3] == {"event": "note", "path": "/a", "params": {"k": "v"}, "data": 4}
    assert frames[4] == {"id": 1, "data": "done"}


async def test_route_params_of_concurrent_messages_never_mix(ws_client) -> None:
    ws = make_app()
    count = 12
    gates = {i: asyncio.Event() for i in range(count)}
    started: list[int] = []
    all_started = asyncio.Event()

    async def slow() -> dict[str, Any]:
        n = use_ws_message().data
        started.append(n)
        if len(started) == count:
            all_started.set()
        await gates[n].wait()
        # Read everything after the await, while the other messages are in flight.
        return {
            "params": dict(use_route_params().params),
            "path": use_ws_message().path,
            "n": use_ws_message().data,
        }

    ws.add_message_handler("rpc", "/a/:x", slow)
    ws.add_message_handler("rpc", "/b/:y/:z", slow)
    client = await ws_client(ws)
    for i in range(count):
        path = f"/a/{i}" if i % 2 else f"/b/{i}/z{i}"
        await client.send("rpc", path, i, message_id=i)
    await asyncio.wait_for(all_started.wait(), TIMEOUT)
    for i in reversed(range(count)):  # release in the reverse order: results overlap
        gates[i].set()
    replies = {}
    for _ in range(count):
        reply = await client.next_message()
        replies[reply["id"]] = reply["data"]
    for i in range(count):
        if i % 2:
            expected = {"params": {"x": str(i)}, "path": f"/a/{i}", "n": i}
        else:
            expected = {"params": {"y": str(i), "z": f"z{i}"}, "path": f"/b/{i}/z{i}", "n": i}
        assert replies[i] == expected


async def test_max_in_flight_pauses_reading_until_a_handler_finishes(ws_client) -> None:
    ws = make_app(max_in_flight=2)
    gates = {name: asyncio.Event() for name in ("a", "b", "c")}
    started: list[str] = []
    two_started = asyncio.Event()

    @ws.on_message("rpc", "/block")
    async def block() -> str:
        name = use_ws_message().data
        started.append(name)
        if len(started) == 2:
            two_started.set()
        await gates[name].wait()
        return name

    @ws.on_message("rpc", "/count")
    def count() -> list[str]:
        return list(started)

    client = await ws_client(ws)
    other = await ws_client(ws)
    await client.send("rpc", "/block", "a", message_id="a")
    await client.send("rpc", "/block", "b", message_id="b")
    await asyncio.wait_for(two_started.wait(), TIMEOUT)
    await client.send("rpc", "/block", "c", message_id="c")
    await client.send("rpc", "/count", message_id="count")
    # A round trip on another connection: the server has had the chance to read "c".
    assert await other.call("rpc", "/count") == ["a", "b"]
    assert started == ["a", "b"]
    assert client.pending_messages() == []

    gates["a"].set()
    assert await client.next_message() == {"id": "a", "data": "a"}
    # "c" takes the free slot; reading pauses again before "/count".
    assert await other.call("rpc", "/count") == ["a", "b", "c"]
    assert client.pending_messages() == []
    gates["b"].set()
    assert await client.next_message() == {"id": "b", "data": "b"}
    assert await client.next_message() == {"id": "count", "data": ["a", "b", "c"]}
    gates["c"].set()
    assert await client.next_message() == {"id": "c", "data": "c"}
    assert await client.call("rpc", "/echo", "resumed") == "resumed"


async def test_sync_handlers_do_not_count_towards_max_in_flight(ws_client) -> None:
    ws = make_app(max_in_flight=1)
    client = await ws_client(ws)
    for i in range(5):
        await client.send("rpc", "/echo", i, message_id=i)
    assert [await client.next_message() for _ in range(5)] == [
        {"id": i, "data": i} for i in range(5)
    ]


async def test_object_with_async_call_is_dispatched_as_async(ws_client) -> None:
    ws = make_app()

    class Handler:
        async def __call__(self) -> str:
            await asyncio.sleep(0)
            return f"called {use_ws_message().path}"

    ws.add_message_handler("rpc", "/obj", Handler())
    client = await ws_client(ws)
    assert await client.call("rpc", "/obj") == "called /obj"


# -- connect ----------------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
async def test_on_connect_reads_the_upgrade_request(ws_client, is_async) -> None:
    ws = make_app()

    def record() -> None:
        conn = use_ws_connection()
        request = conn.request
        assert request is not None
        conn.state.update(
            header=request.headers.get("X-Token"),
            query=request.query.get("room"),
            cookie=request.cookies.get("session"),
            peer=request.remote,
            server=use_ws_server() is ws.server,
        )

    async def async_record() -> None:
        await asyncio.sleep(0)
        record()

    ws.on_connect(async_record if is_async else record)

    @ws.on_message("rpc", "/state")
    def state() -> dict[str, Any]:
        return use_ws_connection().state

    client = await ws_client(
        ws, headers={"X-Token": "t-1", "Cookie": "session=abc"}, query={"room": "lobby"}
    )
    assert await client.call("rpc", "/state") == {
        "header": "t-1",
        "query": "lobby",
        "cookie": "abc",
        "peer": "127.0.0.1",
        "server": True,
    }


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (WsError(400, "Bad token"), 1008, "Bad token"),
        (WsError(401, "Token expired"), 1008, "Token expired"),
        (WsError(403), 1008, "Forbidden"),
        (WsError(404, "No such tenant"), 1008, "No such tenant"),
        (WsError(429, "Too many connections"), 1008, "Too many connections"),
        (WsError(499, "Client gone"), 1008, "Client gone"),
        (WsError(500, "Try later"), 1011, "Try later"),
        (WsError(503), 1011, "Service Unavailable"),
    ],
)
async def test_on_connect_ws_error_closes_with_its_message(
    aiohttp_client, is_async, error, code, reason
) -> None:
    ws = make_app()

    def refuse() -> None:
        raise error

    async def async_refuse() -> None:
        await asyncio.sleep(0)
        raise error

    ws.on_connect(async_refuse if is_async else refuse)
    sock = await raw_socket(aiohttp_client, ws)
    msg = await sock.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, code, reason)
    assert ws.connections() == ()


@pytest.mark.parametrize("is_async", [False, True])
async def test_on_connect_exception_closes_1011_internal_error_and_is_logged(
    aiohttp_client, caplog, is_async
) -> None:
    ws = make_app()

    def explode() -> None:
        raise RuntimeError("db password is hunter2")

    async def async_explode() -> None:
        await asyncio.sleep(0)
        explode()

    ws.on_connect(async_explode if is_async else explode)
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        sock = await raw_socket(aiohttp_client, ws)
        msg = await sock.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1011, "Internal Error")
    assert "hunter2" in caplog.text


async def test_refused_connection_never_receives_replies(aiohttp_client) -> None:
    ws = make_app()

    @ws.on_connect
    def refuse() -> None:
        raise WsError(403, "no")

    sock = await raw_socket(aiohttp_client, ws)
    await sock.send_json({"event": "rpc", "path": "/echo", "data": 1, "id": 1})
    msg = await sock.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)


# -- disconnect -------------------------------------------------------------------------------


def count_disconnects(ws: WsApp) -> collections.Counter[str]:
    calls: collections.Counter[str] = collections.Counter()

    @ws.on_disconnect
    def record() -> None:
        calls[use_ws_connection().id] += 1

    return calls


async def test_on_disconnect_runs_once_when_the_client_closes(ws_client) -> None:
    ws = make_app()
    calls = count_disconnects(ws)
    done = track_disconnects(ws)
    client = await ws_client(ws)
    cid = await client.call("rpc", "/whoami")
    await client.close()
    assert await asyncio.wait_for(done.get(), TIMEOUT) == cid
    assert calls == {cid: 1}
    assert ws.connections() == ()


async def test_on_disconnect_runs_once_when_the_server_closes(ws_client) -> None:
    ws = make_app()
    calls = count_disconnects(ws)
    done = track_disconnects(ws)

    @ws.on_message("rpc", "/bye")
    def bye() -> None:
        use_ws_connection().close(4001, "bye")
        use_ws_connection().close(4002, "twice")  # a second close does nothing

    client = await ws_client(ws)
    cid = await client.call("rpc", "/whoami")
    await client.send("rpc", "/bye", message_id=1)
    assert await client.wait_closed() == 4001
    assert client.close_reason == "bye"
    assert await asyncio.wait_for(done.get(), TIMEOUT) == cid
    assert calls == {cid: 1}


async def test_on_disconnect_runs_once_for_a_kicked_connection(ws_client) -> None:
    ws = make_app()
    calls = count_disconnects(ws)
    done = track_disconnects(ws)

    @ws.on_message("rpc", "/kick")
    def kick() -> bool:
        target = use_ws_server().get_connection(use_ws_message().data)
        if target is None:
            return False
        target.close(4000, "kicked")
        return True

    victim = await ws_client(ws)
    admin = await ws_client(ws)
    victim_id = await victim.call("rpc", "/whoami")
    admin_id = await admin.call("rpc", "/whoami")
    assert await admin.call("rpc", "/kick", victim_id) is True
    assert await victim.wait_closed() == 4000
    assert victim.close_reason == "kicked"
    assert await asyncio.wait_for(done.get(), TIMEOUT) == victim_id
    assert await admin.call("rpc", "/kick", victim_id) is False
    await admin.close()
    assert await asyncio.wait_for(done.get(), TIMEOUT) == admin_id
    assert calls == {victim_id: 1, admin_id: 1}


async def test_on_disconnect_does_not_run_for_a_refused_connection(ws_client) -> None:
    ws = make_app()
    calls = count_disconnects(ws)
    done = track_disconnects(ws)

    @ws.on_connect
    def refuse_some() -> None:
        request = use_ws_connection().request
        if request is not None and request.query.get("token") == "bad":
            raise WsError(401, "Unauthorized")

    refused = await ws_client(ws, query={"token": "bad"})
    assert await refused.wait_closed() == 1008
    accepted = await ws_client(ws)
    cid = await accepted.call("rpc", "/whoami")
    await accepted.close()
    # The accepted connection's cleanup comes after the refusal: it is the first one seen.
    assert await asyncio.wait_for(done.get(), TIMEOUT) == cid
    assert calls == {cid: 1}
    assert done.empty()


async def test_sync_and_async_on_disconnect_hooks_see_the_connection_and_its_rooms(
    ws_client,
) -> None:
    ws = make_app()
    seen: list[tuple[str, str, tuple[str, ...]]] = []

    @ws.on_disconnect
    def sync_hook() -> None:
        conn = use_ws_connection()
        seen.append(("sync", conn.id, conn.rooms))

    @ws.on_disconnect
    async def async_hook() -> None:
        await asyncio.sleep(0)
        conn = use_ws_connection()
        assert use_ws_server() is ws.server
        seen.append(("async", conn.id, conn.rooms))

    @ws.on_message("rpc", "/join")
    async def join() -> None:
        await use_ws_rooms().join(use_ws_message().data)

    done = track_disconnects(ws)
    client = await ws_client(ws)
    cid = await client.call("rpc", "/whoami")
    await client.call("rpc", "/join", "r1")
    await client.call("rpc", "/join", "r2")
    await client.close()
    await asyncio.wait_for(done.get(), TIMEOUT)
    assert seen == [("sync", cid, ("r1", "r2")), ("async", cid, ("r1", "r2"))]
    assert ws.rooms.rooms() == ()


@pytest.mark.parametrize("is_async", [False, True])
async def test_on_disconnect_raising_still_leaves_rooms_and_runs_later_hooks(
    ws_client, caplog, is_async
) -> None:
    ws = make_app()

    def explode() -> None:
        raise RuntimeError("disconnect hook failed")

    async def async_explode() -> None:
        await asyncio.sleep(0)
        explode()

    ws.on_disconnect(async_explode if is_async else explode)
    later = count_disconnects(ws)

    @ws.on_message("rpc", "/join")
    async def join() -> int:
        await use_ws_rooms().join("room")
        return len(use_ws_server().room_connections("room"))

    done = track_disconnects(ws)
    leaving = await ws_client(ws)
    staying = await ws_client(ws)
    leaving_id = await leaving.call("rpc", "/whoami")
    assert await leaving.call("rpc", "/join") == 1
    assert await staying.call("rpc", "/join") == 2
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        await leaving.close()
        assert await asyncio.wait_for(done.get(), TIMEOUT) == leaving_id
    assert "disconnect hook failed" in caplog.text
    assert later == {leaving_id: 1}
    assert [c.id for c in ws.room_connections("room")] != [leaving_id]
    assert len(ws.room_connections("room")) == 1
    assert ws.get_connection(leaving_id) is None
    assert await staying.call("rpc", "/echo", "still here") == "still here"


class _StuckDirectory(MemoryTransport):
    """A directory whose registration never completes (a backend that hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.registering = asyncio.Event()

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        self.registering.set()
        await asyncio.Event().wait()


async def test_peer_leaving_during_directory_registration_leaves_no_connection(
    aiohttp_client,
) -> None:
    transport = _StuckDirectory()
    ws = WsApp(heartbeat=0, transport=transport)
    client = await aiohttp_client(attach(ws, web.Application()))
    # The server never answers the close frame while it is stuck: do not wait for it.
    sock = await client.ws_connect("/ws", timeout=ClientWSTimeout(ws_close=0.1))
    await asyncio.wait_for(transport.registering.wait(), 5)
    assert len(ws.connections()) == 1  # registered locally, directory still pending
    await sock.close()
    # The test server cancels the handler when the peer leaves; bounded wait for that.
    for _ in range(200):
        if not ws.connections():
            break
        await asyncio.sleep(0.01)
    assert ws.connections() == ()
