"""WsClient over real sockets: the reference app, small apps, and server restarts."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import wsevents
from examples import reference_app
from wsevents import WsApp, WsError, use_ws_connection, use_ws_message
from wsevents.client import Push, WsClient, WsClientError, WsConnectionRefused

pytestmark = pytest.mark.functional

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., WsClient]


# -- helpers -------------------------------------------------------------------------------


class Hooks:
    """Records every client hook in order; tests await what they expect, never sleep."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._changed = asyncio.Event()

    def _add(self, *event: Any) -> None:
        self.events.append(event)
        self._changed.set()

    def on_open(self) -> None:
        self._add("open")

    def on_close(self, code: int, reason: str) -> None:
        self._add("close", code, reason)

    def on_error(self, exc: Exception) -> None:
        self._add("error", exc)

    def on_reconnect(self, attempt: int) -> None:
        self._add("reconnect", attempt)

    def kwargs(self) -> dict[str, Any]:
        return {
            "on_open": self.on_open,
            "on_close": self.on_close,
            "on_error": self.on_error,
            "on_reconnect": self.on_reconnect,
        }

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events if e[0] != "error"]

    async def until(self, kind: str, count: int = 1, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < count:
                self._changed.clear()
                await self._changed.wait()


def serve(ws_app: WsApp) -> web.Application:
    app = web.Application()
    ws_app.attach(app, "/ws")
    return app


def url_of(server: TestServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/ws{query}"


def recorder(log: list[Any], *, seen_headers: list[str] | None = None) -> WsApp:
    """A small app whose sync handlers log what arrives, in arrival order."""
    ws = WsApp(heartbeat=0)

    @ws.on_connect
    def connected() -> None:
        request = use_ws_connection().request
        if seen_headers is not None and request is not None:
            seen_headers.append(request.headers.get("X-Token", ""))

    @ws.on_message("note", "/*")
    def note() -> None:
        msg = use_ws_message()
        log.append(("note", msg.path, msg.data))

    @ws.on_message("subscribe", "/topics/:name")
    def subscribe() -> dict[str, bool]:
        msg = use_ws_message()
        log.append(("subscribe", msg.path, msg.data))
        return {"ok": True}

    @ws.on_message("unsubscribe", "/topics/:name")
    def unsubscribe() -> None:
        log.append(("unsubscribe", use_ws_message().path, None))

    @ws.on_message("subscribe", "/private/*")
    def private() -> None:
        log.append(("refused", use_ws_message().path, None))
        raise WsError(403, "private")

    @ws.on_message("rpc", "/log")
    def read_log() -> list[Any]:
        return [list(entry) for entry in log]

    @ws.on_message("rpc", "/id")
    def message_id() -> Any:
        return use_ws_message().id

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    return ws


@pytest.fixture
async def clients() -> AsyncIterator[ClientFactory]:
    made: list[WsClient] = []

    def make(url: str, **options: Any) -> WsClient:
        client = WsClient(url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def reference(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(serve(reference_app.app))


FAST = {"reconnect": True, "base_delay": 0.01, "max_delay": 0.05}


# -- calls -----------------------------------------------------------------------------------


async def test_call_returns_reply_data(reference: TestServer, clients: ClientFactory) -> None:
    async with WsClient(url_of(reference)) as client:
        assert await client.call("rpc", "/echo", {"a": [1, 2]}) == {"a": [1, 2]}
        assert await client.call("rpc", "/users/42") == {"id": "42"}
        assert await client.call("rpc", "/none") is None
        assert client.connected
    assert client.closed and not client.connected


async def test_call_ids_count_up_from_one_per_client(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    server = await aiohttp_server(serve(recorder([])))
    first = clients(url_of(server))
    second = clients(url_of(server))
    await first.connect()
    await second.connect()
    assert [await first.call("rpc", "/id") for _ in range(3)] == [1, 2, 3]
    assert await second.call("rpc", "/id") == 1


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("/error/418", 418, "custom error"),
        ("/crash", 500, "Internal Error"),
        ("/no/such/route", 404, "Not found"),
    ],
)
async def test_call_raises_the_servers_error(
    reference: TestServer, clients: ClientFactory, path: str, code: int, message: str
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", path)
    assert (info.value.code, info.value.message) == (code, message)
    assert await client.call("rpc", "/echo", "still fine") == "still fine"


async def test_validation_error_carries_details_and_plain_errors_none(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/typed/message", {"text": "hi", "tags": ["a", 1]})
    assert (info.value.code, info.value.message) == (
        400,
        "Invalid data: tags[1]: expected a string",
    )
    assert info.value.details == [{"path": ["tags", 1], "message": "expected a string"}]
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/error/418")
    assert info.value.details is None


async def test_call_timeout_raises_408_and_the_late_reply_is_dropped(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/slow", {"ms": 150}, timeout=0.02)
    assert (info.value.code, info.value.message) == (408, "RPC timeout")
    # The first reply ({"slept": 150}) arrives while this call waits: ids keep them apart.
    assert await client.call("rpc", "/slow", {"ms": 300}) == {"slept": 300}


async def test_rpc_timeout_option_is_the_default_timeout(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference), rpc_timeout=0.02)
    await client.connect()
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/slow", {"ms": 150})
    assert info.value.code == 408


async def test_call_before_connect_raises_503_at_once(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference), rpc_timeout=30.0)
    async with asyncio.timeout(2):
        with pytest.raises(WsClientError) as info:
            await client.call("rpc", "/echo", 1)
    assert (info.value.code, info.value.message) == (503, "Not connected")


async def test_pending_calls_fail_503_when_the_connection_is_lost(
    reference: TestServer, clients: ClientFactory
) -> None:
    hooks = Hooks()
    client = clients(url_of(reference), **hooks.kwargs())
    await client.connect()
    slow = asyncio.create_task(client.call("rpc", "/slow", {"ms": 400}))
    assert await client.call("rpc", "/echo", "ready") == "ready"  # the slow call is out
    with pytest.raises(WsClientError) as kicked:
        await client.call("rpc", "/kick")  # closes with 4000, never replies
    with pytest.raises(WsClientError) as lost:
        await slow
    assert (kicked.value.code, kicked.value.message) == (503, "Connection lost")
    assert (lost.value.code, lost.value.message) == (503, "Connection lost")
    await hooks.until("close")
    assert hooks.of("close") == [("close", 4000, "kicked")]
    assert not client.connected
    with pytest.raises(WsClientError) as later:
        await client.call("rpc", "/echo")
    assert (later.value.code, later.value.message) == (503, "Not connected")


async def test_unserializable_data_raises_type_error_and_the_client_goes_on(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    with pytest.raises(TypeError):
        await client.call("rpc", "/echo", object())
    with pytest.raises(TypeError):
        await client.send("rpc", "/echo", object())
    assert await client.call("rpc", "/echo", 1) == 1


# -- connecting ------------------------------------------------------------------------------


async def test_connect_fails_with_503_when_nothing_listens(
    unused_tcp_port: int, clients: ClientFactory
) -> None:
    hooks = Hooks()
    client = clients(f"ws://127.0.0.1:{unused_tcp_port}/ws", **hooks.kwargs())
    with pytest.raises(WsClientError) as info:
        await client.connect()
    assert (info.value.code, info.value.message) == (503, "Connection failed")
    assert isinstance(info.value.__cause__, aiohttp.ClientError)
    assert [type(e[1]) for e in hooks.of("error")] == [type(info.value.__cause__)]
    assert hooks.of("open") == [] and hooks.of("close") == []
    with pytest.raises(WsClientError) as call:
        await client.call("rpc", "/echo")
    assert call.value.code == 503


async def test_connect_with_reconnect_retries_until_the_server_is_up(
    aiohttp_server: ServerFactory, unused_tcp_port: int, clients: ClientFactory
) -> None:
    hooks = Hooks()
    client = clients(f"ws://127.0.0.1:{unused_tcp_port}/ws", **FAST, **hooks.kwargs())
    connecting = asyncio.create_task(client.connect())
    await hooks.until("reconnect", 2)  # two attempts after the first failed
    assert not connecting.done()
    await aiohttp_server(serve(recorder([])), port=unused_tcp_port)
    await connecting
    assert client.connected
    assert hooks.kinds()[-1] == "open"


def gatekeeper() -> WsApp:
    """An app whose ``on_connect`` refuses by the ``X-Token`` header, or by ``?refuse=``."""
    ws = WsApp(heartbeat=0)

    @ws.on_connect
    async def authenticate() -> None:
        request = use_ws_connection().request
        assert request is not None
        refuse = request.query.get("refuse") or request.headers.get("X-Token")
        if refuse == "401":
            raise WsError(401, "Unauthorized")
        if refuse == "403":
            raise WsError(403, "private")
        if refuse == "boom":
            raise RuntimeError("token service exploded")  # logged, never sent

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    @ws.on_message("rpc", "/kick")
    def kick() -> None:
        use_ws_connection().close(4000, "kicked")

    return ws


REFUSALS = [
    ("401", 1008, "Unauthorized"),
    ("403", 1008, "private"),
    ("boom", 1011, "Internal Error"),
]


@pytest.mark.parametrize("reconnect", [False, True], ids=["plain", "reconnect"])
@pytest.mark.parametrize(("refuse", "code", "reason"), REFUSALS)
async def test_connect_raises_the_refusal_with_its_close_code_and_reason(
    aiohttp_server: ServerFactory,
    clients: ClientFactory,
    refuse: str,
    code: int,
    reason: str,
    reconnect: bool,
) -> None:
    server = await aiohttp_server(serve(gatekeeper()))
    for _ in range(20):  # the refusal never loses a race against the setup
        hooks = Hooks()
        options = FAST if reconnect else {}
        client = clients(url_of(server, f"?refuse={refuse}"), **options, **hooks.kwargs())
        connecting = asyncio.create_task(client.connect())
        # Tasks start in order: connect() is under way when the call looks, so it waits.
        waiting = asyncio.create_task(client.call("rpc", "/echo", 1))
        with pytest.raises(WsConnectionRefused) as info:
            await connecting
        refusal = info.value
        assert isinstance(refusal, WsClientError)
        assert (refusal.close_code, refusal.reason) == (code, reason)
        assert (refusal.code, refusal.message, str(refusal)) == (code, reason, f"{code}: {reason}")
        # No on_open, so no on_close: the refusal is connect()'s error (and on_error's).
        assert hooks.events == [("error", refusal)]
        assert not client.connected
        with pytest.raises(WsConnectionRefused) as waited:
            await waiting
        assert waited.value is refusal
        with pytest.raises(WsConnectionRefused) as later:
            await client.call("rpc", "/echo", 2)
        assert later.value is refusal


@pytest.mark.parametrize(("refuse", "code", "reason"), REFUSALS)
async def test_async_with_raises_the_refusal(
    aiohttp_server: ServerFactory, refuse: str, code: int, reason: str
) -> None:
    server = await aiohttp_server(serve(gatekeeper()))
    entered = False
    with pytest.raises(WsConnectionRefused) as info:
        async with WsClient(url_of(server, f"?refuse={refuse}")):
            entered = True
    assert not entered
    assert (info.value.close_code, info.value.reason) == (code, reason)


async def test_refused_reconnects_go_to_on_error_and_end_after_max_retries(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    server = await aiohttp_server(serve(gatekeeper()))
    hooks = Hooks()
    client = clients(url_of(server), **FAST, max_retries=3, **hooks.kwargs())

    def revoke(attempt: int) -> None:
        hooks.on_reconnect(attempt)
        client.headers["X-Token"] = "401"  # the token was revoked meanwhile

    client.on_reconnect = revoke
    await client.connect()
    with pytest.raises(WsClientError):
        await client.call("rpc", "/kick")
    await hooks.until("error", 4)  # three refusals, then giving up
    kinds = [
        (e[0], type(e[1]).__name__, e[1].code, e[1].message) if e[0] == "error" else e
        for e in hooks.events
    ]
    refused = ("error", "WsConnectionRefused", 1008, "Unauthorized")
    assert kinds == [
        ("open",),
        ("close", 4000, "kicked"),
        ("reconnect", 1),
        refused,
        ("reconnect", 2),
        refused,
        ("reconnect", 3),
        refused,
        ("error", "WsClientError", 503, "Reconnect failed"),
    ]
    assert not client.connected
    with pytest.raises(WsConnectionRefused):
        await client.call("rpc", "/echo", 1)


def mute_server() -> web.Application:
    """Accepts the WebSocket and never reads from it: no pong, no close."""
    app = web.Application()
    stop = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await stop.wait()  # until the server shuts down (it cancels the handler)
        return ws

    app.router.add_get("/ws", handler)
    return app


async def test_connect_waits_for_the_pong_within_connect_timeout(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    server = await aiohttp_server(mute_server())
    hooks = Hooks()
    client = clients(url_of(server), connect_timeout=0.2, **hooks.kwargs())
    with pytest.raises(WsClientError) as info:
        await client.connect()
    assert (info.value.code, info.value.message) == (503, "Connection failed")
    assert isinstance(info.value.__cause__, TimeoutError)
    assert hooks.of("open") == []
    # Without the confirmation the handshake alone makes the connection.
    unconfirmed = clients(url_of(server), confirm_connect=False, **hooks.kwargs())
    await unconfirmed.connect()
    assert unconfirmed.connected and hooks.of("open") == [("open",)]


async def test_protocols_are_offered_in_the_handshake(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    offered: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        offered.append(request.headers.get("Sec-WebSocket-Protocol", ""))
        ws = web.WebSocketResponse(protocols=("wsevents.v2",))
        await ws.prepare(request)
        async for _ in ws:  # answers the client's ping
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = await aiohttp_server(app)
    client = clients(url_of(server), protocols=["wsevents.v1", "wsevents.v2"])
    assert client.protocol is None
    await client.connect()
    assert offered == ["wsevents.v1,wsevents.v2"]
    assert client.protocol == "wsevents.v2"
    plain = clients(url_of(server))
    await plain.connect()
    assert offered[-1] == "" and plain.protocol is None


async def test_async_with_opens_and_closes_with_1000(
    reference: TestServer,
) -> None:
    hooks = Hooks()
    async with WsClient(url_of(reference), **hooks.kwargs()) as client:
        assert client.connected
    assert hooks.events == [("open",), ("close", 1000, "Client closed")]


async def test_lazy_export_from_the_package_is_the_client() -> None:
    assert wsevents.WsClient is WsClient
    assert "WsClient" in wsevents.__all__


async def test_client_works_from_a_plain_script(reference: TestServer) -> None:
    script = f"""
import asyncio
from wsevents import WsClient

async def main():
    async with WsClient("{url_of(reference)}") as client:
        print(await client.call("rpc", "/users/7"))

asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().strip() == "{'id': '7'}"


# -- sends -------------------------------------------------------------------------------------


async def test_send_is_fire_and_forget(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    log: list[Any] = []
    server = await aiohttp_server(serve(recorder(log)))
    client = clients(url_of(server))
    await client.connect()
    assert await client.send("note", "/a", {"n": 1}) is True
    assert await client.send("note", "/b") is True
    assert await client.call("rpc", "/log") == [["note", "/a", {"n": 1}], ["note", "/b", None]]


async def test_send_without_connection_and_without_reconnect_is_dropped(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    assert await client.send("note", "/a") is False
    assert client.queued == 0


async def test_sends_before_connect_are_queued_with_reconnect_and_flushed_first(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    log: list[Any] = []
    server = await aiohttp_server(serve(recorder(log)))
    client = clients(url_of(server), reconnect=True)
    assert await client.send("note", "/early", 1) is True
    assert client.queued == 1
    await client.connect()
    assert client.queued == 0
    await client.send("note", "/late", 2)
    assert await client.call("rpc", "/log") == [["note", "/early", 1], ["note", "/late", 2]]


# -- subscriptions -----------------------------------------------------------------------------


async def test_subscribe_replies_and_pushes_reach_listeners(
    reference: TestServer, clients: ClientFactory
) -> None:
    alice = clients(url_of(reference))
    bob = clients(url_of(reference))
    await alice.connect()
    await bob.connect()
    sub = await alice.subscribe("/chat/rooms/a")
    assert sub.reply == {"subscribed": True}
    assert alice.subscriptions == {"/chat/rooms/a": None}
    got: asyncio.Future[Push] = asyncio.get_running_loop().create_future()
    alice.on("message", "/chat/rooms/a", got.set_result)
    assert await bob.call("message", "/chat/rooms/a", {"text": "hi"}) == {"sent": True}
    async with asyncio.timeout(5):
        push = await got
    assert push == Push("message", "/chat/rooms/a", {"room": "a"}, {"text": "hi"})


async def test_rejected_subscribe_raises_and_is_not_remembered(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    with pytest.raises(WsClientError) as info:
        await client.subscribe("/no/such/topic")
    assert info.value.code == 404
    assert client.subscriptions == {}


async def test_unsubscribe_forgets_and_sends_unsubscribe_once(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    log: list[Any] = []
    server = await aiohttp_server(serve(recorder(log)))
    client = clients(url_of(server))
    await client.connect()
    sub = await client.subscribe("/topics/a", {"since": 3})
    assert sub.active and client.subscriptions == {"/topics/a": {"since": 3}}
    await sub()
    await sub.unsubscribe()  # the second call does nothing
    assert not sub.active and client.subscriptions == {}
    assert await client.call("rpc", "/log") == [
        ["subscribe", "/topics/a", {"since": 3}],
        ["unsubscribe", "/topics/a", None],
    ]


# -- listeners ---------------------------------------------------------------------------------


async def test_exact_and_wildcard_listeners_and_off(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    for room in ("a", "b"):
        await client.subscribe(f"/chat/rooms/{room}")
    seen: list[tuple[str, str]] = []
    off_exact = client.on("message", "/chat/rooms/a", lambda p: seen.append(("exact", p.path)))
    client.on("message", "/chat/rooms/*", lambda p: seen.append(("prefix", p.path)))
    client.on("message", "*", lambda p: seen.append(("any", p.path)))
    client.on("other", "*", lambda p: seen.append(("other", p.path)))
    # message-all pushes to the sender too, before the reply: handlers ran when it returns.
    await client.call("message-all", "/chat/rooms/a", 1)
    await client.call("message-all", "/chat/rooms/b", 2)
    assert seen == [
        ("exact", "/chat/rooms/a"),
        ("prefix", "/chat/rooms/a"),
        ("any", "/chat/rooms/a"),
        ("prefix", "/chat/rooms/b"),
        ("any", "/chat/rooms/b"),
    ]
    seen.clear()
    off_exact()
    off_exact()
    await client.call("message-all", "/chat/rooms/a", 3)
    assert seen == [("prefix", "/chat/rooms/a"), ("any", "/chat/rooms/a")]


async def test_async_listeners_run_and_failing_ones_go_to_on_error(
    reference: TestServer, clients: ClientFactory
) -> None:
    hooks = Hooks()
    client = clients(url_of(reference), **hooks.kwargs())
    await client.connect()
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def async_handler(push: Push) -> None:
        got.set_result(push.data)

    async def async_failing(push: Push) -> None:
        raise LookupError("async handler bug")

    def failing(push: Push) -> None:
        raise ValueError("handler bug")

    client.on("notification", "/alerts", failing)
    client.on("notification", "/alerts", async_failing)
    client.on("notification", "/alerts", async_handler)
    assert await client.call("rpc", "/self-push") == {"ok": True}
    async with asyncio.timeout(5):
        assert await got == {"text": "welcome"}
    await hooks.until("error", 2)
    errors = sorted(type(e[1]).__name__ for e in hooks.of("error"))
    assert errors == ["LookupError", "ValueError"]
    assert client.connected
    assert await client.call("rpc", "/echo", "still reading") == "still reading"


async def test_pushes_iterator_yields_matching_pushes_in_order(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    await client.subscribe("/chat/rooms/a")
    stream = client.pushes("message", "/chat/rooms/*")
    for i in range(3):
        await client.call("message-all", "/chat/rooms/a", i)
    await client.call("rpc", "/self-push")  # another event: not in this stream
    received = []
    async with asyncio.timeout(5):
        async for push in stream:
            received.append(push.data)
            if len(received) == 3:
                break
    assert received == [0, 1, 2]
    assert stream.dropped == 0


async def test_pushes_iterator_drops_the_oldest_when_full(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    await client.subscribe("/chat/rooms/a")
    async with client.pushes("message", "/chat/rooms/a", max_queue=2) as stream:
        for i in range(5):
            await client.call("message-all", "/chat/rooms/a", i)
        assert stream.dropped == 3
        await client.close()
        assert [push.data async for push in stream] == [3, 4]


async def test_pushes_iterator_ends_when_the_connection_is_lost_without_reconnect(
    reference: TestServer, clients: ClientFactory
) -> None:
    client = clients(url_of(reference))
    await client.connect()
    stream = client.pushes("notification", "*")
    await client.call("rpc", "/self-push")
    with pytest.raises(WsClientError):
        await client.call("rpc", "/kick")
    async with asyncio.timeout(5):
        assert [push.path async for push in stream] == ["/alerts"]
    assert stream.ended


# -- close -------------------------------------------------------------------------------------


async def test_close_fails_pending_calls_ends_streams_and_is_final(
    reference: TestServer, clients: ClientFactory
) -> None:
    hooks = Hooks()
    client = clients(url_of(reference), **hooks.kwargs())
    await client.connect()
    stream = client.pushes("message", "*")
    slow = asyncio.create_task(client.call("rpc", "/slow", {"ms": 400}))
    assert await client.call("rpc", "/echo", 1) == 1
    await client.close()
    with pytest.raises(WsClientError) as info:
        await slow
    assert (info.value.code, info.value.message) == (503, "Connection closed")
    async with asyncio.timeout(5):
        assert [push async for push in stream] == []
    assert await client.send("note", "/a") is False
    with pytest.raises(WsClientError) as after:
        await client.call("rpc", "/echo")
    assert (after.value.code, after.value.message) == (503, "Connection closed")
    with pytest.raises(WsClientError):
        await client.connect()
    await client.close()  # idempotent
    assert hooks.events == [("open",), ("close", 1000, "Client closed")]
    assert client.pushes("message", "*").ended


async def test_close_while_reconnecting_clears_the_queue_and_stops(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    hooks = Hooks()
    server = await aiohttp_server(serve(recorder([])))
    client = clients(url_of(server), **FAST, **hooks.kwargs())
    await client.connect()
    await server.close()
    await hooks.until("reconnect")
    await client.send("note", "/a")
    waiting = asyncio.create_task(client.call("rpc", "/echo", timeout=30))
    assert client.queued == 1
    await client.close()
    assert client.queued == 0
    with pytest.raises(WsClientError) as info:
        await waiting
    assert (info.value.code, info.value.message) == (503, "Connection closed")
    assert all(task.done() for task in client._tasks)  # nothing left to reconnect
    # One close for the lost connection, none for close(): no connection was open.
    assert hooks.of("close") == [("close", 1001, "Server shutting down")]


# -- reconnect ---------------------------------------------------------------------------------


async def test_reconnect_after_restart_flushes_queue_replays_subscriptions_then_opens(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    first_log: list[Any] = []
    second_log: list[Any] = []
    server = await aiohttp_server(serve(recorder(first_log)))
    port = server.port
    hooks = Hooks()
    log_at_open: list[Any] = []

    async def on_open() -> None:
        hooks.on_open()
        log_at_open.append(await client.call("rpc", "/log"))

    client = clients(url_of(server), **FAST, **{**hooks.kwargs(), "on_open": on_open})
    await client.connect()
    await client.subscribe("/topics/a", {"since": 1})
    with pytest.raises(WsClientError):
        await client.subscribe("/private/x")
    assert client.subscriptions == {"/topics/a": {"since": 1}}

    await server.close()
    await hooks.until("close")
    assert hooks.of("close") == [("close", 1001, "Server shutting down")]
    assert not client.connected
    for i in range(3):
        assert await client.send("note", "/q", i) is True
    assert client.queued == 3
    offline_call = asyncio.create_task(client.call("rpc", "/echo", "waited", timeout=10))

    await aiohttp_server(serve(recorder(second_log)), port=port)
    await hooks.until("open", 2)
    assert await offline_call == "waited"
    assert client.connected and client.queued == 0
    # Queue first, in order; then the replayed subscription (not the refused one); and
    # on_open ran only after the replay was answered.
    expected = [
        ["note", "/q", 0],
        ["note", "/q", 1],
        ["note", "/q", 2],
        ["subscribe", "/topics/a", {"since": 1}],
    ]
    assert log_at_open[-1] == expected
    assert [list(e) for e in second_log[:4]] == expected
    attempts = [e[1] for e in hooks.of("reconnect")]
    assert attempts == list(range(1, len(attempts) + 1))
    assert hooks.kinds() == ["open", "close", *["reconnect"] * len(attempts), "open"]


async def test_offline_queue_drops_the_oldest_when_full(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    log: list[Any] = []
    server = await aiohttp_server(serve(recorder([])))
    port = server.port
    hooks = Hooks()
    client = clients(url_of(server), queue_size=3, **FAST, **hooks.kwargs())
    await client.connect()
    await server.close()
    await hooks.until("close")
    for i in range(5):
        assert await client.send("note", "/q", i) is True
    assert (client.queued, client.dropped) == (3, 2)
    await aiohttp_server(serve(recorder(log)), port=port)
    await hooks.until("open", 2)
    assert await client.call("rpc", "/log") == [["note", "/q", i] for i in (2, 3, 4)]


async def test_queue_size_zero_queues_nothing(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    server = await aiohttp_server(serve(recorder([])))
    hooks = Hooks()
    client = clients(url_of(server), queue_size=0, **FAST, **hooks.kwargs())
    await client.connect()
    await server.close()
    await hooks.until("close")
    assert await client.send("note", "/q") is False
    assert (client.queued, client.dropped) == (0, 1)


async def test_call_while_reconnecting_fails_503_after_its_timeout(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    server = await aiohttp_server(serve(recorder([])))
    hooks = Hooks()
    client = clients(url_of(server), **FAST, **hooks.kwargs())
    await client.connect()
    await server.close()
    await hooks.until("close")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/echo", timeout=0.2)
    assert (info.value.code, info.value.message) == (503, "Not connected")
    assert loop.time() - started >= 0.19  # it waited for a connection, then gave up


async def test_reconnect_gives_up_after_max_retries_and_connect_starts_again(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    server = await aiohttp_server(serve(recorder([])))
    port = server.port
    hooks = Hooks()
    client = clients(url_of(server), max_retries=2, **FAST, **hooks.kwargs())
    await client.connect()
    stream = client.pushes("any", "*")
    await server.close()
    await hooks.until("close")
    await client.send("note", "/q")
    waiting = asyncio.create_task(client.call("rpc", "/echo", timeout=30))
    async with asyncio.timeout(5):
        with pytest.raises(WsClientError) as info:
            await waiting
    assert (info.value.code, info.value.message) == (503, "Not connected")
    assert [e[1] for e in hooks.of("reconnect")] == [1, 2]
    final = hooks.of("error")[-1][1]
    assert isinstance(final, WsClientError)
    assert (final.code, final.message) == (503, "Reconnect failed")
    assert client.queued == 0
    assert await client.send("note", "/q") is False
    async with asyncio.timeout(5):
        assert [push async for push in stream] == []
    # A later connect() starts over, with a fresh retry budget.
    log: list[Any] = []
    await aiohttp_server(serve(recorder(log)), port=port)
    await client.connect()
    assert client.connected
    assert await client.call("rpc", "/log") == []


async def test_refused_subscription_on_replay_is_forgotten_and_reported(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    log: list[Any] = []
    server = await aiohttp_server(serve(recorder(log)))
    port = server.port
    hooks = Hooks()
    client = clients(url_of(server), **FAST, **hooks.kwargs())
    await client.connect()
    await client.subscribe("/topics/a")
    await server.close()
    await hooks.until("close")

    # The new server refuses /topics/*.
    strict = WsApp(heartbeat=0)

    @strict.on_message("subscribe", "/topics/:name")
    def refuse() -> None:
        raise WsError(403, "no more topics")

    await aiohttp_server(serve(strict), port=port)
    await hooks.until("open", 2)
    errors = [e[1] for e in hooks.of("error") if isinstance(e[1], WsClientError)]
    assert [(e.code, e.message) for e in errors] == [(403, "no more topics")]
    assert client.subscriptions == {}


async def test_on_reconnect_may_refresh_headers_for_the_next_handshake(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    seen: list[str] = []
    server = await aiohttp_server(serve(recorder([], seen_headers=seen)))
    port = server.port
    hooks = Hooks()

    async def refresh(attempt: int) -> None:
        hooks.on_reconnect(attempt)
        client.headers["X-Token"] = f"fresh-{attempt}"

    client = clients(
        url_of(server),
        headers={"X-Token": "first"},
        **FAST,
        **{**hooks.kwargs(), "on_reconnect": refresh},
    )
    await client.connect()
    await server.close()
    await hooks.until("reconnect")
    await aiohttp_server(serve(recorder([], seen_headers=seen)), port=port)
    await hooks.until("open", 2)
    last_attempt = hooks.of("reconnect")[-1][1]
    assert seen == ["first", f"fresh-{last_attempt}"]


async def test_reconnect_after_kick_replays_room_subscription_on_the_reference_app(
    reference: TestServer, clients: ClientFactory
) -> None:
    hooks = Hooks()
    alice = clients(url_of(reference), **FAST, **hooks.kwargs())
    bob = clients(url_of(reference))
    await alice.connect()
    await bob.connect()
    await alice.subscribe("/chat/rooms/r")
    with pytest.raises(WsClientError):
        await alice.call("rpc", "/kick")
    await hooks.until("open", 2)
    assert await alice.call("rpc", "/rooms") == ["/chat/rooms/r"]
    stream = alice.pushes("message", "/chat/rooms/r")
    await bob.call("message", "/chat/rooms/r", "after the reconnect")
    async with asyncio.timeout(5):
        push = await anext(stream)
    assert push.data == "after the reconnect"
    assert hooks.of("close") == [("close", 4000, "kicked")]
    # A second loss counts its attempts from 1 again: the backoff was reset on open.
    with pytest.raises(WsClientError):
        await alice.call("rpc", "/kick")
    await hooks.until("open", 3)
    second_close = hooks.events.index(("close", 4000, "kicked"), hooks.events.index(("open",), 1))
    second_attempts = [e[1] for e in hooks.events[second_close:] if e[0] == "reconnect"]
    assert second_attempts[0] == 1
    assert second_attempts == list(range(1, len(second_attempts) + 1))


# -- bad input from the server -----------------------------------------------------------------


async def test_malformed_server_frames_are_dropped_and_the_client_goes_on(
    aiohttp_server: ServerFactory, clients: ClientFactory
) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            call = msg.json()
            for junk in (
                "not json",
                "[1, 2]",
                '{"id": [1], "data": "unhashable id"}',
                '{"event": 5, "path": "/x"}',
                '{"id": 999, "data": "nobody waits"}',
                '{"event": "e", "path": "/p", "params": "not a dict", "data": 1}',
            ):
                await ws.send_str(junk)
            await ws.send_bytes(b"\xff\xfe binary garbage")
            await ws.send_bytes(b'{"event": "e", "path": "/p", "data": "binary push"}')
            await ws.send_json({"id": call["id"], "data": "the real reply"})
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = await aiohttp_server(app)
    hooks = Hooks()
    client = clients(url_of(server), **hooks.kwargs())
    await client.connect()
    pushes: list[Push] = []
    client.on("e", "/p", pushes.append)
    assert await client.call("rpc", "/anything") == "the real reply"
    assert pushes == [Push("e", "/p", {}, 1), Push("e", "/p", {}, "binary push")]
    assert client.connected
    assert hooks.of("error") == [] and hooks.of("close") == []
