"""WsClient with ``resume=True`` over real sockets cut by a TCP relay: the session token,
``?session=`` on reconnects, ``idem`` on calls, in-flight calls sent again and resolved once.

The server here is a small app speaking the session wire (``rpc /session`` with
``{"session", "resumed"}``, replies kept by ``idem``): it checks what the client does.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from wsevents import WsApp, use_ws_connection, use_ws_message
from wsevents.client import WsClient, WsClientError

from .redis_support import wait_until
from .tcp_proxy import TcpProxy
from .test_client_recovery_functional import FAST, cut, restore

pytestmark = pytest.mark.functional

ServerFactory = Callable[..., Awaitable[TestServer]]


class SessionServer:
    """The session wire in a few lines: tokens resume any earlier connection, replies are
    kept per (session, idem), and a repeat while the first runs waits for it."""

    def __init__(self) -> None:
        self.app = WsApp(heartbeat=0)
        self.sessions: dict[str, str] = {}  # token -> the id of its first connection
        self.handshakes: list[dict[str, str]] = []  # the query of every handshake
        self.idems: list[Any] = []  # the idem of every /counter/incr frame
        self.subscribe_idems: list[Any] = []  # the idem of every subscribe frame
        self.runs = 0  # how often /counter/incr really ran
        self.value = 0
        self.kept: dict[tuple[str, str], asyncio.Future[Any]] = {}
        app = self.app

        @app.on_connect
        def connect() -> None:
            conn = use_ws_connection()
            assert conn.request is not None
            query = dict(conn.request.query)
            self.handshakes.append(query)
            token = query.get("session")
            resumed = token is not None and token in self.sessions
            if not resumed:
                token = secrets.token_urlsafe(16)
                self.sessions[token] = conn.id
            conn.state.update(session=token, resumed=resumed)

        @app.on_message("rpc", "/session")
        def session() -> dict[str, Any]:
            state = use_ws_connection().state
            return {"session": state["session"], "resumed": state["resumed"]}

        @app.on_message("rpc", "/whoami")
        def whoami() -> dict[str, str]:
            return {"id": self.sessions[use_ws_connection().state["session"]]}

        @app.on_message("rpc", "/counter/incr")
        async def incr() -> Any:
            msg = use_ws_message()
            idem = orjson.loads(msg.raw).get("idem")
            self.idems.append(idem)
            delay = msg.data.get("delay", 0) if isinstance(msg.data, dict) else 0
            if idem is None:
                return await self._incr(delay)
            key = (use_ws_connection().state["session"], idem)
            kept = self.kept.get(key)
            if kept is None:
                kept = self.kept[key] = asyncio.get_running_loop().create_future()
                kept.set_result(await self._incr(delay))
            return await asyncio.shield(kept)

        @app.on_message("subscribe", "/slow/:room")
        async def subscribe() -> dict[str, bool]:
            msg = use_ws_message()
            self.subscribe_idems.append(orjson.loads(msg.raw).get("idem"))
            await asyncio.sleep(0.3)
            return {"subscribed": True}

    async def _incr(self, delay: float) -> dict[str, int]:
        self.runs += 1
        self.value += 1
        value = self.value
        await asyncio.sleep(delay)
        return {"value": value}


@pytest.fixture
async def made() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.close()


@pytest.fixture
async def sessions(
    aiohttp_server: ServerFactory, made: list[Any]
) -> tuple[SessionServer, TcpProxy]:
    server = SessionServer()
    web_app = web.Application()
    server.app.attach(web_app, "/ws")
    served = await aiohttp_server(web_app)
    proxy = await TcpProxy(served.port).start()
    made.append(proxy)
    return server, proxy


def client(made: list[Any], url: str, **options: Any) -> WsClient:
    made_client = WsClient(url, **options)
    made.append(made_client)
    return made_client


async def test_resume_keeps_the_token_and_reconnects_with_it(
    sessions: tuple[SessionServer, TcpProxy], made: list[Any]
) -> None:
    server, proxy = sessions
    alice = client(made, proxy.url("/ws?name=ada"), resume=True, **FAST)
    await alice.connect()
    token = alice.session_token
    assert isinstance(token, str) and alice.resumed is False
    me = await alice.call("rpc", "/whoami")
    await cut(proxy, alice)
    await restore(proxy, alice)
    assert alice.resumed is True and alice.session_token == token
    assert await alice.call("rpc", "/whoami") == me
    assert server.handshakes[0] == {"name": "ada"}
    assert server.handshakes[-1] == {"name": "ada", "session": token}
    assert alice.url == proxy.url("/ws?name=ada")  # the app's url is left alone


async def test_a_call_cut_off_in_flight_is_sent_again_with_its_idem_and_runs_once(
    sessions: tuple[SessionServer, TcpProxy], made: list[Any]
) -> None:
    server, proxy = sessions
    alice = client(made, proxy.url(), resume=True, **FAST)
    await alice.connect()
    call = asyncio.ensure_future(alice.call("rpc", "/counter/incr", {"delay": 0.3}))
    await wait_until(lambda: server.runs == 1)  # the server has it
    await cut(proxy, alice)
    await restore(proxy, alice)
    assert await call == {"value": 1}
    assert server.runs == 1 and server.value == 1
    first, again = server.idems
    assert first == again and isinstance(first, str) and len(first) == 32
    assert await alice.call("rpc", "/counter/incr") == {"value": 2}  # a new call, a new idem
    assert len(set(server.idems)) == 2


async def test_a_subscribe_gets_no_idem_and_is_sent_again_as_it_is_when_cut_off(
    sessions: tuple[SessionServer, TcpProxy], made: list[Any]
) -> None:
    # A kept reply would not repeat what the first run pushed (a replay with since):
    # subscribes carry no automatic idem, and a cut-off one is simply sent again.
    server, proxy = sessions
    alice = client(made, proxy.url(), resume=True, **FAST)
    await alice.connect()
    sub = asyncio.ensure_future(alice.subscribe("/slow/lobby"))
    await wait_until(lambda: len(server.subscribe_idems) == 1)
    await cut(proxy, alice)
    await restore(proxy, alice)
    assert (await sub).reply == {"subscribed": True}
    assert server.subscribe_idems and set(server.subscribe_idems) == {None}
    assert len(server.subscribe_idems) >= 2  # sent again after the reconnect


async def test_a_given_idem_is_sent_as_is_and_a_bad_one_is_refused(
    sessions: tuple[SessionServer, TcpProxy], made: list[Any]
) -> None:
    server, proxy = sessions
    alice = client(made, proxy.url())  # no resume: only given idems go out
    await alice.connect()
    assert await alice.call("rpc", "/counter/incr") == {"value": 1}
    assert await alice.call("rpc", "/counter/incr", idem="order-7") == {"value": 2}
    assert await alice.call("rpc", "/counter/incr", idem="order-7") == {"value": 2}
    # The repeat may be answered before the handler (a server keeping replies itself).
    assert server.idems[:2] == [None, "order-7"] and set(server.idems) == {None, "order-7"}
    assert server.runs == 2
    for bad in ("", "x" * 65, 7):
        with pytest.raises(ValueError, match="idem"):
            await alice.call("rpc", "/counter/incr", idem=bad)
    assert server.runs == 2


async def test_without_resume_a_call_cut_off_in_flight_fails_503(
    sessions: tuple[SessionServer, TcpProxy], made: list[Any]
) -> None:
    server, proxy = sessions
    alice = client(made, proxy.url(), **FAST)
    await alice.connect()
    assert alice.session_token is None
    call = asyncio.ensure_future(alice.call("rpc", "/counter/incr", {"delay": 0.3}))
    await wait_until(lambda: server.runs == 1)
    await cut(proxy, alice)
    with pytest.raises(WsClientError) as caught:
        await call
    assert (caught.value.code, caught.value.message) == (503, "Connection lost")
    await restore(proxy, alice)
    assert "session" not in server.handshakes[-1]


async def test_a_call_away_longer_than_its_timeout_fails_408(
    sessions: tuple[SessionServer, TcpProxy], made: list[Any]
) -> None:
    server, proxy = sessions
    alice = client(made, proxy.url(), resume=True, **FAST)
    await alice.connect()
    call = asyncio.ensure_future(alice.call("rpc", "/counter/incr", {"delay": 0.2}, timeout=0.5))
    await wait_until(lambda: server.runs == 1)
    await cut(proxy, alice)
    with pytest.raises(WsClientError) as caught:
        await call  # the server ran it: not a 503 "never sent"
    assert (caught.value.code, caught.value.message) == (408, "RPC timeout")


async def test_a_call_cut_off_ends_with_the_client_closed(
    sessions: tuple[SessionServer, TcpProxy], made: list[Any]
) -> None:
    server, proxy = sessions
    alice = client(made, proxy.url(), resume=True, **FAST)
    await alice.connect()
    call = asyncio.ensure_future(alice.call("rpc", "/counter/incr", {"delay": 0.2}))
    await wait_until(lambda: server.runs == 1)
    await cut(proxy, alice)
    await alice.close()
    with pytest.raises(WsClientError) as caught:
        await call
    assert caught.value.code == 503
    assert alice.session_token is None  # a clean close ends the session


async def test_a_server_without_sessions_is_reported_and_the_client_goes_on(
    aiohttp_server: ServerFactory, made: list[Any]
) -> None:
    plain = WsApp(heartbeat=0)

    @plain.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    web_app = web.Application()
    plain.attach(web_app, "/ws")
    served = await aiohttp_server(web_app)
    errors: list[Exception] = []
    alice = client(made, f"ws://127.0.0.1:{served.port}/ws", resume=True, on_error=errors.append)
    await alice.connect()
    assert alice.session_token is None and alice.resumed is False
    assert [getattr(e, "code", None) for e in errors] == [404]
    assert await alice.call("rpc", "/echo", "still here") == "still here"
