"""wsevents.testing: fake contexts, RecordingSocket, WsTestClient and the ws_client fixture."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from wsevents import (
    MemoryBus,
    MemoryTransport,
    WsApp,
    WsClientError,
    WsError,
    WsServer,
    use_route_params,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.rooms import ROOM_CHANNEL_PREFIX
from wsevents.testing import (
    RecordingSocket,
    prepare_test_ws_connection_context,
    prepare_test_ws_message_context,
)

TIMEOUT = 5.0
ROOT = Path(__file__).resolve().parent.parent


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


# -- the package and its plugin ---------------------------------------------------------------


def test_every_helper_imports_without_pytest() -> None:
    script = """
import sys
sys.modules["pytest"] = None  # importing pytest now fails
import wsevents.testing
fixtures = {"ws_client", "ws_cluster"}
for name in sorted(set(wsevents.testing.__all__) - fixtures):
    assert getattr(wsevents.testing, name) is not None, name
from wsevents.testing import ClientFactory, ClusterFactory
try:
    wsevents.testing.ws_client
except ImportError:
    print("the fixtures need pytest")
"""
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the fixtures need pytest"


def test_check_transport_runs_under_plain_asyncio_without_pytest() -> None:
    script = """
import asyncio
import sys
sys.modules["pytest"] = None
from wsevents import MemoryBus, MemoryTransport
from wsevents.testing import check_transport


class Silent(MemoryTransport):
    async def publish(self, channel, payload):
        pass


async def main():
    bus = MemoryBus()
    await check_transport(lambda: MemoryTransport(bus))
    print("memory passes")
    try:
        await check_transport(lambda: Silent(bus), timeout=0.2)
    except AssertionError as exc:
        print(str(exc).split(":")[0])


asyncio.run(main())
"""
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["memory passes", "check_transport [delivery]"]


def test_the_plugin_loads_nothing_of_wsevents_but_itself() -> None:
    # pytest imports the plugin before ``pytest --cov`` starts: whatever it imports is not
    # measured. Its parent package is imported too, and loads only the adapter registry.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    plugin = pyproject["project"]["entry-points"]["pytest11"]["wsevents"]
    script = f"""
import importlib
import sys
before = set(sys.modules)
module = importlib.import_module({plugin!r})
assert {{"ws_client", "ws_cluster"}} <= set(vars(module)), "the fixtures are in the plugin"
loaded = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("wsevents", "aiohttp"))
print(",".join(loaded))
"""
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "wsevents,wsevents._adapters,wsevents.testing,wsevents.testing.plugin"
    )


def test_the_fixtures_are_importable_from_the_package() -> None:
    import wsevents.testing
    from wsevents.testing import plugin

    assert wsevents.testing.ws_client is plugin.ws_client
    assert wsevents.testing.ws_cluster is plugin.ws_cluster
    assert {"ws_client", "ws_cluster", "WsTestClient"} <= set(dir(wsevents.testing))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        wsevents.testing.nothing  # noqa: B018


# -- fake contexts ----------------------------------------------------------------------------


def test_connection_context_gives_connection_and_server_and_records_sends() -> None:
    app = WsApp(heartbeat=0)
    with prepare_test_ws_connection_context(app, connection_id="c-1") as ctx:
        conn = use_ws_connection()
        assert conn is ctx.connection
        assert conn.id == "c-1"
        assert use_ws_server() is app.server is ctx.app.server
        conn.send("note", "/a", {"x": 1}, {"p": "v"})
        conn.reply(7, None)
        conn.reply_error("e", 403, "nope")
        with pytest.raises(RuntimeError, match="outside an on_message handler"):
            use_ws_message()
        with pytest.raises(RuntimeError, match="outside an on_message handler"):
            use_ws_rooms()
        assert ctx.sent == [
            {"event": "note", "path": "/a", "params": {"p": "v"}, "data": {"x": 1}},
            {"id": 7, "data": None},
            {"id": "e", "error": {"code": 403, "message": "nope"}},
        ]
        conn.close(4000, "bye")
        assert ctx.socket.close_code == 4000 and ctx.socket.close_reason == "bye"
        assert conn.send("late", "/a") is False
        assert len(ctx.sent) == 3
    with pytest.raises(RuntimeError):
        use_ws_connection()
    with pytest.raises(RuntimeError):
        use_ws_server()


def test_connection_context_creates_an_app_and_a_uuid_when_not_given() -> None:
    with prepare_test_ws_connection_context() as ctx:
        assert isinstance(use_ws_server(), WsServer)
        assert len(use_ws_connection().id) == 36
        assert ctx.connection.request is None


def test_connection_contexts_nest_and_restore() -> None:
    with prepare_test_ws_connection_context(connection_id="outer"):
        with prepare_test_ws_connection_context(connection_id="inner"):
            assert use_ws_connection().id == "inner"
        assert use_ws_connection().id == "outer"


def test_message_context_runs_a_handler_with_router_params() -> None:
    app = WsApp(heartbeat=0)

    @app.on_message("rpc", "/users/:id")
    def user() -> dict[str, Any]:
        msg = use_ws_message()
        return {"id": use_route_params().get("id"), "data": msg.data, "event": msg.event}

    with prepare_test_ws_message_context("rpc", "/users/7", {"x": 1}, app=app) as ctx:
        assert user() == {"id": "7", "data": {"x": 1}, "event": "rpc"}
        assert ctx.message.path == "/users/7"
        assert use_ws_connection() is ctx.connection
        assert use_ws_server() is app.server
    for fn in (use_ws_message, use_route_params, use_ws_rooms, use_ws_connection):
        with pytest.raises(RuntimeError):
            fn()


def test_message_context_ids_and_explicit_params() -> None:
    with prepare_test_ws_message_context("rpc", "/x") as ctx:
        assert (ctx.message.has_id, ctx.message.id) == (False, None)
        assert dict(use_route_params().params) == {}
    with prepare_test_ws_message_context("rpc", "/x", message_id=None) as ctx:
        assert (ctx.message.has_id, ctx.message.id) == (True, None)
    with prepare_test_ws_message_context("rpc", "/x", message_id=0, params={"a": "b"}):
        assert use_ws_message().id == 0
        assert use_route_params().get("a") == "b"


async def test_message_context_rooms_work_and_sends_are_recorded() -> None:
    app = WsApp(heartbeat=0)
    with prepare_test_ws_message_context("join", "/chat/1", app=app) as ctx:
        rooms = use_ws_rooms()
        assert await rooms.join() == "/chat/1"
        assert await rooms.join("other") == "other"
        assert rooms.rooms() == ("/chat/1", "other")
        assert app.room_connections("/chat/1") == (ctx.connection,)
        report = await rooms.broadcast("msg", "hi", exclude_self=False)
        assert report.sent == 1
        assert ctx.sent == [{"event": "msg", "path": "/chat/1", "data": "hi"}]
        assert await rooms.leave() == "/chat/1"
        assert rooms.rooms() == ("other",)


async def test_message_context_leaves_its_rooms_on_exit() -> None:
    app = WsApp(heartbeat=0)
    with prepare_test_ws_message_context("join", "/chat/1", app=app) as first:
        await use_ws_rooms().join()
        await use_ws_rooms().join("other")
    assert first.connection.rooms == ()
    assert app.room_connections("/chat/1") == ()
    assert app.rooms.rooms() == ()
    with prepare_test_ws_message_context("join", "/chat/1", app=app) as second:
        await use_ws_rooms().join()
        assert app.room_connections("/chat/1") == (second.connection,)


async def test_message_context_exit_keeps_the_other_members() -> None:
    app = WsApp(heartbeat=0)
    with prepare_test_ws_connection_context(app) as stays:
        await app.rooms.join(stays.connection, "/chat/1")
        with prepare_test_ws_message_context("join", "/chat/1", app=app):
            await use_ws_rooms().join()
            assert app.rooms.size("/chat/1") == 2
        assert app.room_connections("/chat/1") == (stays.connection,)
    assert app.rooms.rooms() == ()


async def test_connection_context_leaves_the_rooms_its_hook_joined() -> None:
    app = WsApp(heartbeat=0)
    with prepare_test_ws_connection_context(app) as ctx:
        await app.rooms.join(ctx.connection, "lobby")
    assert app.rooms.rooms() == ()
    assert ctx.connection.rooms == ()


async def test_async_message_context_leaves_its_rooms_and_unsubscribes() -> None:
    bus = MemoryBus()
    app = WsApp(heartbeat=0, transport=MemoryTransport(bus))
    async with prepare_test_ws_message_context("join", "/chat/1", app=app) as ctx:
        assert use_ws_message().path == "/chat/1"
        await use_ws_rooms().join()
        assert bus.subscriber_count(ROOM_CHANNEL_PREFIX + "/chat/1") == 1
    with pytest.raises(RuntimeError):
        use_ws_message()
    assert ctx.connection.rooms == ()
    assert app.rooms.rooms() == ()
    assert app.rooms.subscribed_rooms() == frozenset()
    assert bus.subscriber_count(ROOM_CHANNEL_PREFIX + "/chat/1") == 0
    async with prepare_test_ws_connection_context(app, connection_id="c") as conn_ctx:
        assert use_ws_connection().id == "c"
        await app.rooms.join(conn_ctx.connection, "lobby")
    assert app.rooms.rooms() == ()
    with pytest.raises(RuntimeError):
        use_ws_connection()


def test_context_classes_are_not_collected_by_pytest(tmp_path: Path) -> None:
    # A user test module importing them must not warn under filterwarnings = error.
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings =\n    error\n"
    )
    (tmp_path / "test_user.py").write_text(
        "from wsevents.testing import TestConnectionContext, TestMessageContext\n"
        "from wsevents.testing import prepare_test_ws_message_context\n\n\n"
        "def test_uses_a_context() -> None:\n"
        "    with prepare_test_ws_message_context() as ctx:\n"
        "        assert isinstance(ctx, TestMessageContext)\n"
        "        assert isinstance(ctx, TestConnectionContext)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-W", "error", "-p", "no:cacheprovider", "-rw"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "Warning" not in result.stdout + result.stderr


# -- RecordingSocket --------------------------------------------------------------------------


def test_recording_socket_records_frames_pings_and_the_first_close() -> None:
    sock = RecordingSocket()
    assert sock.write(b'{"a":1}', False) is True
    sock.ping()
    sock.close(1000, "done")
    sock.close(1011, "again")
    assert (sock.close_code, sock.close_reason, sock.pings) == (1000, "done", 1)
    assert sock.closed
    assert sock.write(b"{}", False) is False
    assert sock.messages == [{"a": 1}]
    other = RecordingSocket()
    other.abort()
    assert other.closed and other.aborted


# -- WsTestClient -----------------------------------------------------------------------------


def make_app() -> tuple[WsApp, asyncio.Event, asyncio.Event]:
    ws = WsApp(heartbeat=0, shutdown_timeout=1.0)
    started, gate = asyncio.Event(), asyncio.Event()

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    @ws.on_message("rpc", "/fail/:code")
    def fail() -> None:
        raise WsError(int(use_route_params().get("code", "0")), "failed on purpose")

    @ws.on_message("rpc", "/crash")
    def crash() -> None:
        raise ValueError("hidden")

    @ws.on_message("rpc", "/hang")
    async def hang() -> str:
        started.set()
        await gate.wait()  # replies only when the test opens the gate
        return "late"

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().id

    return ws, started, gate


async def test_call_maps_error_replies_to_ws_client_error(ws_client) -> None:
    ws, _, _ = make_app()
    client = await ws_client(ws)
    cases = [("/missing", 404, "Not found"), ("/crash", 500, "Internal Error")]
    cases.append(("/fail/418", 418, "failed on purpose"))
    for path, code, message in cases:
        with pytest.raises(WsClientError) as info:
            await client.call("rpc", path)
        assert (info.value.code, info.value.message) == (code, message)
        assert str(info.value) == f"{code}: {message}"
    assert await client.call("rpc", "/echo", "ok") == "ok"


async def test_calls_with_idem_run_once_and_repeat_the_kept_reply(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    runs: list[int] = []

    @ws.on_message("rpc", "/count")
    def count() -> int:
        runs.append(1)
        return len(runs)

    client = await ws_client(ws)
    assert await client.call("rpc", "/count", idem="k1") == 1
    assert await client.call("rpc", "/count", idem="k1") == 1
    assert await client.call_raw("rpc", "/count", message_id="x", idem="k1") == 1
    assert (await client.request("rpc", "/count", message_id="y", idem="k2"))["data"] == 2
    assert await client.call("rpc", "/count") == 3  # no idem: runs
    await client.send("rpc", "/count", message_id="z", idem="k2")
    assert (await client.next_message()) == {"id": "z", "data": 2}
    assert len(runs) == 3


async def test_call_times_out_with_408(ws_client) -> None:
    ws, started, gate = make_app()
    client = await ws_client(ws)
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/hang", timeout=0.2)
    assert info.value.code == 408
    assert started.is_set()
    gate.set()
    # The late reply has no waiter any more: it lands in the inbox, the client still works.
    assert await client.next_message() == {"id": 1, "data": "late"}
    assert await client.call("rpc", "/echo", 2) == 2


async def test_call_pending_when_the_server_closes_fails_with_503(ws_client) -> None:
    ws, started, gate = make_app()
    client = await ws_client(ws)
    cid = await client.call("rpc", "/whoami")
    pending = asyncio.create_task(client.call("rpc", "/hang"))
    await asyncio.wait_for(started.wait(), TIMEOUT)
    conn = ws.get_connection(cid)
    assert conn is not None
    conn.close(4002, "go away")
    with pytest.raises(WsClientError) as info:
        await asyncio.wait_for(pending, TIMEOUT)
    assert info.value.code == 503
    assert await client.wait_closed() == 4002
    assert (client.close_code, client.close_reason) == (4002, "go away")
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/echo")
    assert (info.value.code, info.value.message) == (503, "Not connected")
    gate.set()


async def test_call_raw_request_and_explicit_ids(ws_client) -> None:
    ws, _, _ = make_app()
    client = await ws_client(ws)
    for message_id in (None, 0, "", "abc", {"b": [1], "a": 2}, [1, "1"]):
        assert await client.call_raw("rpc", "/echo", "x", message_id=message_id) == "x"
        reply = await client.request("rpc", "/echo", message_id=message_id)
        assert reply == {"id": message_id, "data": None}
    with pytest.raises(WsClientError) as info:
        await client.call_raw("rpc", "/fail/409", message_id="e")
    assert info.value.code == 409


async def test_pushes_and_unclaimed_replies_go_to_the_inbox_in_order(ws_client) -> None:
    ws, _, _ = make_app()

    @ws.on_message("rpc", "/push")
    def push() -> str:
        use_ws_connection().send("note", "/n", 1)
        return "pushed"

    client = await ws_client(ws)
    assert await client.call("rpc", "/push") == "pushed"
    assert await client.next_push() == {"event": "note", "path": "/n", "data": 1}
    await client.send("rpc", "/echo", "stray", message_id="s")
    with pytest.raises(AssertionError, match="expected a push"):
        await client.next_push()
    await client.send_raw('{"event":"rpc","path":"/echo","data":"raw","id":[1]}')
    await client.send_raw(b'{"event":"rpc","path":"/echo","data":"bin","id":"b"}')
    assert await client.next_message() == {"id": [1], "data": "raw"}
    assert await client.next_message() == {"id": "b", "data": "bin"}
    assert client.pending_messages() == []
    with pytest.raises(AssertionError, match="no message"):
        await client.next_message(timeout=0.05)


async def test_ws_client_fixture_passes_headers_and_query_and_shares_one_server(
    ws_client,
) -> None:
    ws, _, _ = make_app()

    @ws.on_connect
    def remember() -> None:
        request = use_ws_connection().request
        assert request is not None
        use_ws_connection().state["seen"] = [
            request.headers.get("X-Name"),
            request.query.get("q"),
            request.path,
        ]

    @ws.on_message("rpc", "/seen")
    def seen() -> Any:
        return use_ws_connection().state["seen"]

    @ws.on_message("rpc", "/count")
    def count() -> int:
        return len(use_ws_server().connections())

    first = await ws_client(ws, "/socket", headers={"X-Name": "ann"}, query={"q": "1"})
    second = await ws_client(ws, "/socket")
    assert await first.call("rpc", "/seen") == ["ann", "1", "/socket"]
    assert await second.call("rpc", "/seen") == [None, None, "/socket"]
    assert await second.call("rpc", "/count") == 2
    await first.close()
    assert first.close_code == 1000
    with pytest.raises(WsClientError) as info:
        await first.call("rpc", "/count")
    assert info.value.code == 503


async def test_connect_spread_passes_query_and_headers(ws_cluster) -> None:
    def build(transport: MemoryTransport) -> WsApp:
        ws = WsApp(heartbeat=0, transport=transport)

        @ws.on_message("rpc", "/seen")
        def seen() -> Any:
            request = use_ws_connection().request
            assert request is not None
            return [request.query.get("token"), request.headers.get("X-Name")]

        return ws

    cluster = await ws_cluster(build, instances=2)
    clients = await cluster.connect_spread(
        3, first=1, query={"token": "t"}, headers={"X-Name": "ann"}
    )
    assert [cluster.instance_of(c) for c in clients] == [1, 0, 1]
    for client in clients:
        assert await client.call("rpc", "/seen") == ["t", "ann"]
    plain = await cluster.connect(0, query={"token": "q"})
    assert await plain.call("rpc", "/seen") == ["q", None]
