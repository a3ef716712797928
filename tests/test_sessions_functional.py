"""Sessions and idempotent calls over real sockets: one instance, and three on a MemoryBus.

A connection is dropped without a close frame by aborting its TCP transport.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest

from examples.reference_app import add_history, add_presence, add_sessions
from examples.reference_app import app as reference_app
from wsevents import (
    BroadcastTransport,
    WsApp,
    WsClientError,
    WsError,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.testing import ClusterFactory, WsCluster, WsTestClient

from .test_history_functional import publish, push, room_name, subscribe

pytestmark = pytest.mark.functional


def drop(client: WsTestClient) -> None:
    """Cut the TCP connection: no close frame (a network drop)."""
    response = client.ws._response
    assert response.connection is not None and response.connection.transport is not None
    response.connection.transport.abort()


def add_test_routes(ws: WsApp) -> None:
    """What the tests need besides the reference app's helpers."""

    @ws.on_message("rpc", "/whoami")
    def whoami() -> dict[str, Any]:
        conn = use_ws_connection()
        return {"id": conn.id, "user": conn.user, "state": conn.state}

    @ws.on_message("rpc", "/rooms")
    def rooms() -> list[str]:
        return list(use_ws_rooms().rooms())

    @ws.on_message("rpc", "/state")
    def set_state() -> None:
        use_ws_connection().state.update(use_ws_message().data)

    @ws.on_message("subscribe", "/chat/rooms/:room")
    async def chat_subscribe() -> dict[str, bool]:
        await use_ws_rooms().join()
        return {"subscribed": True}

    @ws.on_message("message", "/chat/rooms/:room")
    async def chat_message() -> dict[str, bool]:
        await use_ws_rooms().broadcast("message", use_ws_message().data)
        return {"sent": True}

    @ws.on_message("rpc", "/direct")
    async def direct() -> dict[str, bool]:
        data = use_ws_message().data
        found = await use_ws_server().send_to(data["to"], "notification", "/private", data["x"])
        return {"sent": found}

    @ws.on_message("rpc", "/kick")
    def kick() -> None:
        use_ws_connection().close(4000, "kicked")

    @ws.on_message("rpc", "/slow-incr")
    async def slow_incr() -> dict[str, int]:
        await asyncio.sleep(use_ws_message().data["ms"] / 1000)
        return {"value": await ws.sessions.store.incr("counter:" + use_ws_message().data["key"])}

    @ws.on_message("publish-others", "/feed/rooms/:room")
    async def publish_others() -> dict[str, Any]:
        report = await use_ws_rooms().broadcast("message", use_ws_message().data)
        return {"offset": report.offset}

    @ws.on_message("rpc", "/fail")
    def fail() -> None:
        raise WsError(418, "teapot", details=[{"why": "always"}])


def build(transport: BroadcastTransport | None = None, *, ttl: float = 60.0) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport)
    add_presence(ws)
    add_history(ws)
    add_sessions(ws, ttl=ttl)
    add_test_routes(ws)
    return ws


@pytest.fixture
async def cluster(ws_cluster: ClusterFactory) -> WsCluster:
    return await ws_cluster(build, instances=3)


async def session_of(client: WsTestClient) -> dict[str, Any]:
    reply: dict[str, Any] = await client.call("rpc", "/session")
    return reply


async def idem_call(
    client: WsTestClient, path: str, data: Any, idem: Any, message_id: Any = None
) -> dict[str, Any]:
    """Send ``rpc path`` with ``idem``; the whole reply frame."""
    message_id = uuid.uuid4().hex if message_id is None else message_id
    waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    client._pending[orjson.dumps(message_id, option=orjson.OPT_SORT_KEYS)] = waiter
    frame = {"event": "rpc", "path": path, "data": data, "id": message_id, "idem": idem}
    await client.send_raw(orjson.dumps(frame).decode())
    reply: dict[str, Any] = await asyncio.wait_for(waiter, 10.0)
    return reply


# -- sessions --------------------------------------------------------------------------------


async def test_a_session_token_is_random_stable_and_urlsafe(cluster: WsCluster) -> None:
    a, b = await cluster.connect(0), await cluster.connect(1)
    first = await session_of(a)
    assert first["resumed"] is False
    token = first["session"]
    assert len(token) >= 22 and all(c.isalnum() or c in "-_" for c in token)
    assert await session_of(a) == first
    assert (await session_of(b))["session"] != token
    c = await cluster.connect(2)
    both = await asyncio.gather(session_of(c), session_of(c))
    assert both[0] == both[1]


async def test_a_dropped_connection_resumes_on_another_instance(cluster: WsCluster) -> None:
    alice = await cluster.connect(0, query={"user": "alice"})
    token = (await session_of(alice))["session"]
    room = "/chat/rooms/" + uuid.uuid4().hex[:8]
    await alice.call("subscribe", room)
    await alice.call("join", "/presence/rooms/lobby", {"name": "Alice"})
    await alice.call("rpc", "/state", {"cart": [1, 2]})
    before = await alice.call("rpc", "/whoami")
    drop(alice)
    back = await cluster.connect(1, query={"user": "alice", "session": token})
    assert await back.call("rpc", "/whoami") == before
    assert await session_of(back) == {"session": token, "resumed": True}
    assert sorted(await back.call("rpc", "/rooms")) == sorted([room, "/presence/rooms/lobby"])
    assert cluster.bus.directory[before["id"]] == cluster.apps[1].rooms.instance_id
    # send_to and room broadcasts from a third instance reach it.
    carol = await cluster.connect(2)
    assert await carol.call("rpc", "/direct", {"to": before["id"], "x": 1}) == {"sent": True}
    assert await back.next_push() == {"event": "notification", "path": "/private", "data": 1}
    await carol.call("subscribe", room)
    await carol.call("message", room, "hi")
    assert (await back.next_push())["data"] == "hi"
    # It is one connection again: presence counts it once, with its member data.
    count = await carol.call("rpc", "/presence/count", {"room": "/presence/rooms/lobby"})
    assert count == {"connections": 1, "users": 1}
    listed = await carol.call("rpc", "/presence/list", {"room": "/presence/rooms/lobby"})
    assert listed["members"] == [{"user": "alice", "name": "Alice", "connections": 1}]


async def test_a_resumed_session_resumes_again_with_the_same_token(cluster: WsCluster) -> None:
    first = await cluster.connect(0)
    token = (await session_of(first))["session"]
    cid = (await first.call("rpc", "/whoami"))["id"]
    drop(first)
    second = await cluster.connect(1, query={"session": token})
    assert (await second.call("rpc", "/whoami"))["id"] == cid
    drop(second)
    third = await cluster.connect(2, query={"session": token})
    assert (await third.call("rpc", "/whoami"))["id"] == cid
    assert await session_of(third) == {"session": token, "resumed": True}


async def test_a_clean_close_ends_the_session(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    await alice.close()
    await asyncio.sleep(0.1)
    back = await cluster.connect(1, query={"session": token})
    assert (await back.call("rpc", "/whoami"))["id"] != cid
    fresh = await session_of(back)
    assert fresh["resumed"] is False and fresh["session"] != token
    assert await back.call("rpc", "/rooms") == []


async def test_a_server_close_ends_the_session(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    with pytest.raises(WsClientError):
        await alice.call("rpc", "/kick")
    assert await alice.wait_closed() == 4000
    back = await cluster.connect(1, query={"session": token})
    assert (await back.call("rpc", "/whoami"))["id"] != cid


async def test_a_connection_without_a_session_keeps_nothing(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    await alice.call("rpc", "/whoami")
    drop(alice)
    await asyncio.sleep(0.2)
    assert not any(key.startswith("session") for key in cluster.bus.sessions._values)


async def test_unknown_and_malformed_tokens_start_a_new_session(cluster: WsCluster) -> None:
    for token in ("x" * 32, "short", "bad token!" * 4, "é" * 20, "a" * 200, ""):
        client = await cluster.connect(0, query={"session": token})
        assert await session_of(client) != {"session": token, "resumed": True}
        assert (await session_of(client))["resumed"] is False


async def test_a_session_expires_after_its_ttl(ws_cluster: ClusterFactory) -> None:
    cluster = await ws_cluster(lambda t: build(t, ttl=0.2), instances=2)
    alice = await cluster.connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    drop(alice)
    await asyncio.sleep(0.6)
    back = await cluster.connect(1, query={"session": token})
    assert (await back.call("rpc", "/whoami"))["id"] != cid
    assert (await session_of(back))["resumed"] is False


async def test_two_connections_racing_with_one_token_resume_once(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    drop(alice)
    racers = await asyncio.gather(
        cluster.connect(1, query={"session": token}), cluster.connect(2, query={"session": token})
    )
    await asyncio.sleep(0.3)
    # One holds the session: the other started a new one, or resumed first and was then
    # taken over by the second (a resume wins over an open connection of its session).
    holders = [app for app in cluster.apps if cid in app.server._connections]
    assert len(holders) == 1
    open_ids = [(await r.call("rpc", "/whoami"))["id"] for r in racers if not r.ws.closed]
    assert open_ids.count(cid) == 1


async def test_a_resume_takes_over_a_connection_that_still_looks_open(
    cluster: WsCluster,
) -> None:
    # Half-open TCP: the old instance has not noticed that the client is gone.
    old = await cluster.connect(0, query={"user": "alice"})
    token = (await session_of(old))["session"]
    cid = (await old.call("rpc", "/whoami"))["id"]
    new = await cluster.connect(1, query={"user": "alice", "session": token})
    assert (await new.call("rpc", "/whoami"))["id"] == cid
    await old.wait_closed()  # dropped by its instance
    assert cid not in cluster.apps[0].server._connections
    assert cluster.apps[1].server._connections[cid] is not None


async def test_a_resume_on_the_same_instance_takes_over_too(ws_client: Any) -> None:
    ws = build()
    old = await ws_client(ws)
    token = (await session_of(old))["session"]
    cid = (await old.call("rpc", "/whoami"))["id"]
    new = await ws_client(ws, query={"session": token})
    assert (await new.call("rpc", "/whoami"))["id"] == cid
    await old.wait_closed()
    assert list(ws.server._connections) == [cid]


async def test_a_shutdown_keeps_the_sessions_resumable(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    token = (await session_of(alice))["session"]
    cid = (await alice.call("rpc", "/whoami"))["id"]
    await cluster.apps[0].shutdown()  # a deploy: 1001
    assert await alice.wait_closed() == 1001
    back = await cluster.connect(1, query={"session": token})
    assert (await back.call("rpc", "/whoami"))["id"] == cid


async def test_on_connect_sees_the_resumed_connection(ws_client: Any) -> None:
    ws = build()
    seen: list[tuple[str, bool]] = []

    @ws.on_connect
    def record() -> None:
        conn = use_ws_connection()
        seen.append((conn.id, conn.resumed))

    first = await ws_client(ws)
    token = (await session_of(first))["session"]
    drop(first)
    await ws_client(ws, query={"session": token})
    await asyncio.sleep(0)
    assert seen[1] == (seen[0][0], True) and seen[0][1] is False


async def test_an_authenticated_session_resumes_authenticated(ws_client: Any) -> None:
    ws = WsApp(heartbeat=0, auth_required=True)
    ws.sessions.enable()

    @ws.on_message("rpc", "/login", public=True)
    def login() -> None:
        use_ws_connection().authenticate(use_ws_message().data, expires_in=60)

    @ws.on_message("rpc", "/me")
    def me() -> dict[str, Any]:
        conn = use_ws_connection()
        return {"user": conn.user, "left": round(conn.expires_in or 0)}

    alice = await ws_client(ws)
    with pytest.raises(WsClientError) as refused:
        await alice.call("rpc", "/session")
    assert refused.value.code == 401
    await alice.call("rpc", "/login", "alice")
    token = (await session_of(alice))["session"]
    drop(alice)
    back = await ws_client(ws, query={"session": token})
    assert await back.call("rpc", "/me") == {"user": "alice", "left": 60}


async def test_a_resumed_session_still_expires_on_time(ws_client: Any) -> None:
    ws = WsApp(heartbeat=0, auth_required=True)
    ws.sessions.enable()

    @ws.on_message("rpc", "/login", public=True)
    def login() -> None:
        use_ws_connection().authenticate("alice", expires_in=0.6)

    alice = await ws_client(ws)
    await alice.call("rpc", "/login")
    token = (await session_of(alice))["session"]
    drop(alice)
    back = await ws_client(ws, query={"session": token})
    assert (await session_of(back))["resumed"] is True
    assert await back.wait_closed() == 4401


async def test_enable_checks_its_options() -> None:
    ws = WsApp()
    with pytest.raises(ValueError):
        ws.sessions.enable(ttl=0)
    with pytest.raises(ValueError):
        ws.sessions.enable(idem_ttl=-1)
    ws.sessions.enable(path="/my/session")
    with pytest.raises(RuntimeError):
        ws.sessions.enable()
    assert [r.pattern for r in ws.routes()] == ["/my/session"]


async def test_a_failing_store_starts_new_sessions_and_never_crashes(ws_client: Any) -> None:
    ws = build()

    class Broken:
        async def put(self, *args: Any, **kwargs: Any) -> bool:
            raise ConnectionError("store down")

        get = take = delete = incr = put

    ws.sessions._store = Broken()  # type: ignore[assignment]
    alice = await ws_client(ws)
    with pytest.raises(WsClientError) as failed:
        await alice.call("rpc", "/session")
    assert (failed.value.code, failed.value.message) == (503, "Service unavailable")
    reply = await idem_call(alice, "/whoami", None, "k1")
    assert reply["error"] == {"code": 503, "message": "Service unavailable"}
    other = await ws_client(ws, query={"session": "x" * 32})
    assert (await other.call("rpc", "/whoami"))["id"] != (await alice.call("rpc", "/whoami"))["id"]


# -- history rooms across a resume -----------------------------------------------------------


async def test_away_during_500_pushes_resumes_elsewhere_and_recovers_them(
    cluster: WsCluster,
) -> None:
    room = room_name()
    away = await cluster.connect(0)
    token = (await session_of(away))["session"]
    start = await subscribe(away, room)
    drop(away)
    publishers = [await cluster.connect(1), await cluster.connect(2)]
    count = 500
    for i in range(count):
        await publish(publishers[i % 2], room, i)
    back = await cluster.connect(1, query={"session": token})
    assert await back.call("rpc", "/rooms") == [room]
    reply = await subscribe(back, room, {"offset": start["offset"], "epoch": start["epoch"]})
    assert reply == {
        "subscribed": True,
        "offset": count,
        "epoch": start["epoch"],
        "recovered": True,
    }
    assert back.pending_messages() == [push(room, i, i + 1) for i in range(count)]
    await publish(publishers[1], room, "live")
    assert await back.next_push() == push(room, "live", count + 1)
    await asyncio.sleep(0.1)
    assert back.pending_messages() == []


async def test_pushes_after_the_resume_wait_for_the_resubscribe_and_follow_in_order(
    cluster: WsCluster,
) -> None:
    room = room_name()
    away = await cluster.connect(0)
    token = (await session_of(away))["session"]
    start = await subscribe(away, room)
    drop(away)
    publisher = await cluster.connect(2)
    for i in range(3):
        await publish(publisher, room, f"missed{i}")
    back = await cluster.connect(1, query={"session": token})
    for i in range(2):
        await publish(publisher, room, f"live{i}")
    await asyncio.sleep(0.1)
    assert back.pending_messages() == []  # held for the resubscribe
    reply = await subscribe(back, room, {"offset": start["offset"], "epoch": start["epoch"]})
    assert reply["recovered"] is True and reply["offset"] == 5
    expected = [push(room, f"missed{i}", i + 1) for i in range(3)]
    expected += [push(room, f"live{i}", i + 4) for i in range(2)]
    assert back.pending_messages() == expected
    await publish(publisher, room, "after")
    assert await back.next_push() == push(room, "after", 6)
    # A second since from a member that has everything replays nothing.
    again = await subscribe(back, room, {"offset": 6, "epoch": start["epoch"]})
    assert again == {"subscribed": True, "offset": 6, "epoch": start["epoch"], "recovered": True}
    await publish(publisher, room, "last")
    assert await back.next_push() == push(room, "last", 7)
    await asyncio.sleep(0.1)
    assert back.pending_messages() == []


async def test_without_a_resubscribe_the_held_pushes_come_after_the_hold(
    cluster: WsCluster,
) -> None:
    for app in cluster.apps:
        app.sessions.hold = 0.3
    room = room_name()
    away = await cluster.connect(0)
    token = (await session_of(away))["session"]
    await subscribe(away, room)
    drop(away)
    publisher = await cluster.connect(2)
    await publish(publisher, room, "missed")
    back = await cluster.connect(1, query={"session": token})
    await publish(publisher, room, "held")
    assert await back.next_push() == push(room, "held", 2)
    await publish(publisher, room, "live")
    assert await back.next_push() == push(room, "live", 3)


async def test_a_resubscribe_of_another_epoch_gets_the_held_pushes(cluster: WsCluster) -> None:
    room = room_name()
    away = await cluster.connect(0)
    token = (await session_of(away))["session"]
    await subscribe(away, room)
    drop(away)
    publisher = await cluster.connect(2)
    await publish(publisher, room, "missed")
    back = await cluster.connect(1, query={"session": token})
    await publish(publisher, room, "held")
    await asyncio.sleep(0.1)
    reply = await subscribe(back, room, {"offset": 0, "epoch": "lost"})
    assert reply["recovered"] is False and reply["offset"] == 2
    assert back.pending_messages() == [push(room, "held", 2)]


async def test_leaving_a_held_room_drops_the_hold(cluster: WsCluster) -> None:
    room = room_name()
    away = await cluster.connect(0)
    token = (await session_of(away))["session"]
    await subscribe(away, room)
    drop(away)
    back = await cluster.connect(1, query={"session": token})
    history = cluster.apps[1].history
    assert len(history._holds) == 1
    await back.call("unsubscribe", room)
    assert history._holds == {} and history._streams.get(room) is None


async def test_a_member_with_since_of_another_epoch_is_not_recovered(cluster: WsCluster) -> None:
    room = room_name()
    alice = await cluster.connect(0)
    await subscribe(alice, room)
    await publish(alice, room, "x")
    await alice.next_push()
    reply = await subscribe(alice, room, {"offset": 0, "epoch": "other"})
    assert reply["recovered"] is False and reply["offset"] == 1
    await asyncio.sleep(0.05)
    assert alice.pending_messages() == []


# -- idempotent calls ------------------------------------------------------------------------


async def test_a_repeated_idem_returns_the_kept_reply_with_its_own_id(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    key = uuid.uuid4().hex
    first = await idem_call(alice, "/counter/incr", {"key": key}, "call-1", message_id=1)
    assert first == {"id": 1, "data": {"value": 1}}
    again = await idem_call(alice, "/counter/incr", {"key": key}, "call-1", message_id="two")
    assert again == {"id": "two", "data": {"value": 1}}
    other = await idem_call(alice, "/counter/incr", {"key": key}, "call-2")
    assert other["data"] == {"value": 2}
    assert await alice.call("rpc", "/counter/incr", {"key": key}) == {"value": 3}


async def test_idem_is_per_connection(cluster: WsCluster) -> None:
    a, b = await cluster.connect(0), await cluster.connect(0)
    key = uuid.uuid4().hex
    assert (await idem_call(a, "/counter/incr", {"key": key}, "same"))["data"] == {"value": 1}
    assert (await idem_call(b, "/counter/incr", {"key": key}, "same"))["data"] == {"value": 2}


async def test_an_error_reply_is_kept_too(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    first = await idem_call(alice, "/fail", None, "f", message_id=7)
    expected = {"code": 418, "message": "teapot", "details": [{"why": "always"}]}
    assert first == {"id": 7, "error": expected}
    assert await idem_call(alice, "/fail", None, "f", message_id=8) == {"id": 8, "error": expected}


async def test_a_repeat_while_the_first_runs_waits_for_its_reply(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    key = uuid.uuid4().hex
    data = {"key": key, "ms": 300}
    replies = await asyncio.gather(
        idem_call(alice, "/slow-incr", data, "slow", message_id=1),
        idem_call(alice, "/slow-incr", data, "slow", message_id=2),
    )
    assert replies == [{"id": 1, "data": {"value": 1}}, {"id": 2, "data": {"value": 1}}]


async def test_idem_survives_a_resume_on_another_instance(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    token = (await session_of(alice))["session"]
    key = uuid.uuid4().hex
    assert (await idem_call(alice, "/counter/incr", {"key": key}, "once"))["data"] == {"value": 1}
    drop(alice)
    back = await cluster.connect(2, query={"session": token})
    reply = await idem_call(back, "/counter/incr", {"key": key}, "once", message_id=5)
    assert reply == {"id": 5, "data": {"value": 1}}


async def test_a_call_cut_by_the_drop_is_answered_once_after_the_resume(
    cluster: WsCluster,
) -> None:
    alice = await cluster.connect(0)
    token = (await session_of(alice))["session"]
    key = uuid.uuid4().hex
    frame = {
        "event": "rpc",
        "path": "/slow-incr",
        "data": {"key": key, "ms": 300},
        "id": 1,
        "idem": "in-flight",
    }
    await alice.send_raw(orjson.dumps(frame).decode())
    await asyncio.sleep(0.05)
    drop(alice)
    back = await cluster.connect(1, query={"session": token})
    # The retry waits for the first run (still going on instance 0), then gets its reply.
    reply = await idem_call(back, "/slow-incr", frame["data"], "in-flight", message_id=2)
    assert reply == {"id": 2, "data": {"value": 1}}
    assert await back.call("rpc", "/counter/incr", {"key": key}) == {"value": 2}


@pytest.mark.parametrize("idem", [0, 1.5, True, "", "x" * 65, ["a"], {"a": 1}])
async def test_a_bad_idem_is_refused_with_400(ws_client: Any, idem: Any) -> None:
    alice = await ws_client(reference_app)
    reply = await idem_call(alice, "/echo", "x", idem, message_id=3)
    assert reply == {
        "id": 3,
        "error": {"code": 400, "message": "Invalid idem: a string of 1 to 64 characters"},
    }
    # Without an id, the frame is dropped; the connection goes on.
    frame = {"event": "rpc", "path": "/kick", "idem": idem}
    await alice.send_raw(orjson.dumps(frame).decode())
    assert await alice.call("rpc", "/echo", "still here") == "still here"


async def test_a_null_idem_is_no_idem_and_64_characters_are_fine(ws_client: Any) -> None:
    alice = await ws_client(reference_app)
    key = uuid.uuid4().hex
    assert (await idem_call(alice, "/counter/incr", {"key": key}, None))["data"] == {"value": 1}
    assert (await idem_call(alice, "/counter/incr", {"key": key}, None))["data"] == {"value": 2}
    long = "é" * 64
    assert (await idem_call(alice, "/counter/incr", {"key": key}, long))["data"] == {"value": 3}
    assert (await idem_call(alice, "/counter/incr", {"key": key}, long))["data"] == {"value": 3}


async def test_a_rate_limited_reply_is_not_kept(ws_client: Any) -> None:
    alice = await ws_client(reference_app)
    for _ in range(5):
        await alice.call("rpc", "/limited/echo", 1)
    refused = await idem_call(alice, "/limited/echo", 2, "later")
    assert refused["error"]["code"] == 429
    await asyncio.sleep(refused["error"]["retry_after"] + 0.05)
    assert (await idem_call(alice, "/limited/echo", 2, "later"))["data"] == 2


async def test_an_idempotent_call_goes_through_interceptors_and_guards(ws_client: Any) -> None:
    ws = build()
    calls: list[str] = []

    @ws.intercept
    async def record(scope: Any, call_next: Any) -> Any:
        calls.append(scope.message.path)
        return await call_next()

    ws.add_guard(lambda: use_ws_message().path != "/fail")
    alice = await ws_client(ws)
    assert (await idem_call(alice, "/fail", None, "g"))["error"]["code"] == 403
    assert (await idem_call(alice, "/fail", None, "g"))["error"]["code"] == 403
    assert calls == ["/fail"]
    assert (await idem_call(alice, "/nowhere", None, "g2"))["error"]["code"] == 404


async def test_the_reference_app_answers_session_and_counter(ws_client: Any) -> None:
    alice = await ws_client(reference_app)
    reply = await session_of(alice)
    assert reply["resumed"] is False and isinstance(reply["session"], str)
    key = uuid.uuid4().hex
    assert await alice.call("rpc", "/counter/incr", {"key": key}) == {"value": 1}
    for bad in (None, {"key": 1}, {"key": ""}, {"key": "k" * 201}):
        with pytest.raises(WsClientError) as refused:
            await alice.call("rpc", "/counter/incr", bad)
        assert refused.value.code == 400


async def test_a_heartbeat_timeout_keeps_the_session_resumable(aiohttp_client: Any) -> None:
    from aiohttp import web

    from wsevents.server import attach

    ws = build()
    ws.heartbeat, ws.heartbeat_timeout = 0.3, 0.2
    server = await aiohttp_client(attach(ws, web.Application(), "/ws"))
    silent = WsTestClient(await server.ws_connect("/ws", autoping=False))  # never pongs
    token = (await session_of(silent))["session"]
    cid = (await silent.call("rpc", "/whoami"))["id"]
    await silent.wait_closed()  # dropped by the heartbeat, without a close frame
    back = WsTestClient(await server.ws_connect("/ws", params={"session": token}))
    assert (await back.call("rpc", "/whoami"))["id"] == cid
    await back.close()


async def test_the_reference_app_resumes_a_dropped_connection(ws_client: Any) -> None:
    alice = await ws_client(reference_app, query={"user": "alice"})
    token = (await session_of(alice))["session"]
    await alice.call("subscribe", "/chat/rooms/tea")
    room = room_name()
    start = await subscribe(alice, room)
    me = await alice.call("rpc", "/whoami")
    drop(alice)
    bob = await ws_client(reference_app)
    await publish(bob, room, "while away")
    back = await ws_client(reference_app, query={"user": "alice", "session": token})
    assert await back.call("rpc", "/whoami") == me
    assert sorted(await back.call("rpc", "/rooms")) == sorted(["/chat/rooms/tea", room])
    reply = await subscribe(back, room, {"offset": start["offset"], "epoch": start["epoch"]})
    assert reply["recovered"] is True
    # Offset 1 is the reference app's "left" notice, which left the leaver out: so does
    # its replay.
    assert back.pending_messages() == [push(room, "while away", start["offset"] + 2)]


async def test_an_unreadable_snapshot_starts_a_new_session(cluster: WsCluster) -> None:
    for i, garbage in enumerate(("not json", "[]", '{"id": 1}', '{"id": "a", "user": "b"}')):
        token = f"garbage-token-{i}-" + "x" * 16
        await cluster.bus.sessions.put("session:" + token, garbage, 60.0)
        client = await cluster.connect(0, query={"session": token})
        assert (await session_of(client))["resumed"] is False
        assert await cluster.bus.sessions.get("session:" + token) is None


async def test_a_session_whose_expiry_passed_does_not_resume(ws_client: Any) -> None:
    ws = WsApp(heartbeat=0)
    ws.sessions.enable()

    @ws.on_message("rpc", "/login")
    def login() -> None:
        use_ws_connection().authenticate("alice", expires_in=0.2)

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().user

    alice = await ws_client(ws)
    await alice.call("rpc", "/login")
    token = (await session_of(alice))["session"]
    drop(alice)
    await asyncio.sleep(0.3)
    back = await ws_client(ws, query={"session": token})
    assert await back.call("rpc", "/whoami") != "alice"


async def test_malformed_take_over_envelopes_are_ignored(cluster: WsCluster) -> None:
    alice = await cluster.connect(0)
    cid = (await alice.call("rpc", "/whoami"))["id"]
    cluster_1 = cluster.apps[1].rooms.cluster
    for fields in ({"op": "take_over"}, {"op": "take_over", "connection": 5}, {"op": "x"}):
        await cluster_1.publish_fields("ws:control", fields)
    await cluster_1.publish_fields("ws:control", {"op": "take_over", "connection": "nobody"})
    await asyncio.sleep(0.1)
    assert (await alice.call("rpc", "/whoami"))["id"] == cid


async def test_a_replay_leaves_out_who_a_push_left_out(cluster: WsCluster) -> None:
    room = room_name()
    alice, bob = await cluster.connect(0), await cluster.connect(1)
    start = await subscribe(alice, room)
    await subscribe(bob, room)
    await alice.call("publish-others", room, "from alice")
    await bob.call("publish-others", room, "from bob")
    assert (await bob.next_push())["data"] == "from alice"
    since = {"offset": start["offset"], "epoch": start["epoch"]}
    for client, expected in (
        (alice, push(room, "from bob", 2)),
        (bob, push(room, "from alice", 1)),
    ):
        await client.call("unsubscribe", room)
        client.pending_messages()
        reply = await subscribe(client, room, since)
        assert reply["recovered"] is True and reply["offset"] == 2
        assert client.pending_messages() == [expected]


async def test_a_refused_resume_leaves_the_session_resumable(ws_client: Any) -> None:
    ws = build()

    @ws.on_connect
    def refuse() -> None:
        request = use_ws_connection().request
        if request is not None and "deny" in request.query:
            raise WsError(403, "not now")

    first = await ws_client(ws)
    token = (await session_of(first))["session"]
    cid = (await first.call("rpc", "/whoami"))["id"]
    drop(first)
    refused = await ws_client(ws, query={"session": token, "deny": "1"})
    assert await refused.wait_closed() == 1008
    await asyncio.sleep(0.1)
    back = await ws_client(ws, query={"session": token})
    assert (await back.call("rpc", "/whoami"))["id"] == cid


async def test_a_result_that_cannot_be_encoded_keeps_its_500(ws_client: Any) -> None:
    ws = build()
    runs: list[int] = []

    @ws.on_message("rpc", "/huge-int")
    def huge_int() -> dict[str, int]:
        runs.append(1)
        return {"value": 1 << 70}  # orjson cannot encode it: the reply is an error

    alice = await ws_client(ws)
    first = await idem_call(alice, "/huge-int", None, "h")
    assert first["error"] == {"code": 500, "message": "Internal Error"}
    assert (await idem_call(alice, "/huge-int", None, "h"))["error"]["code"] == 500
    assert len(runs) == 1  # the 500 reply was kept
