"""Rate limits over real sockets: per route, group and app; keys; 429 with retry_after;
the flood close (4429); dry run; the handshake limit (HTTP 429); connections per user."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from wsevents import (
    CallNext,
    MessageScope,
    RateLimit,
    WsApp,
    WsClient,
    WsClientError,
    WsError,
    use_ws_connection,
    use_ws_message,
)
from wsevents.server import attach

# Slow refills: no token comes back while a test runs, whatever the machine's load.
SLOW = 3600.0


async def call_error(client: Any, path: str, data: Any = None) -> WsClientError:
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", path, data)
    return info.value


def echo() -> Any:
    return use_ws_message().data


async def test_over_the_route_limit_is_429_with_retry_after(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(3, per=SLOW))
    client = await ws_client(ws)
    assert [await client.call("rpc", "/limited", i) for i in range(3)] == [0, 1, 2]
    reply = await client.request("rpc", "/limited", 3, message_id=9)
    error = reply["error"]
    assert set(error) == {"code", "message", "retry_after"}
    assert (error["code"], error["message"]) == (429, "Too Many Requests")
    assert isinstance(error["retry_after"], float)
    # A token comes back every SLOW / 3 seconds.
    assert 0 < error["retry_after"] <= SLOW / 3 + 0.001
    assert error["retry_after"] > SLOW / 3 - 60


async def test_test_client_errors_expose_retry_after(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1, per=SLOW))
    client = await ws_client(ws)
    await client.call("rpc", "/limited")
    assert (await call_error(client, "/limited")).retry_after == pytest.approx(SLOW, rel=0.01)


async def test_python_client_error_has_retry_after(aiohttp_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1, per=SLOW))
    server = await aiohttp_client(attach(ws, web.Application(), "/ws"))
    client = WsClient(str(server.make_url("/ws")), reconnect=False)
    try:
        await client.connect()
        assert await client.call("rpc", "/limited", "a") == "a"
        with pytest.raises(WsClientError) as info:
            await client.call("rpc", "/limited", "b")
        assert info.value.code == 429
        assert info.value.retry_after == pytest.approx(SLOW, rel=0.01)
    finally:
        await client.close()


async def test_plain_errors_have_no_retry_after(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/boom")
    def boom() -> None:
        raise WsError(409, "Room is full")

    client = await ws_client(ws)
    reply = await client.request("rpc", "/boom", message_id=1)
    assert reply == {"id": 1, "error": {"code": 409, "message": "Room is full"}}
    assert (await call_error(client, "/boom")).retry_after is None


async def test_a_handler_may_raise_its_own_retry_after(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/busy")
    def busy() -> None:
        raise WsError(503, "Busy", retry_after=2.5)

    client = await ws_client(ws)
    reply = await client.request("rpc", "/busy", message_id=1)
    assert reply["error"] == {"code": 503, "message": "Busy", "retry_after": 2.5}


async def test_other_connections_are_unaffected_by_a_connection_key(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1, per=SLOW))
    alice, bob = await ws_client(ws), await ws_client(ws)
    await alice.call("rpc", "/limited")
    assert (await call_error(alice, "/limited")).code == 429
    assert await bob.call("rpc", "/limited", "b") == "b"


async def test_each_route_counts_its_own_limit(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/a", echo, rate_limit=RateLimit(1, per=SLOW))
    ws.add_message_handler("rpc", "/b", echo, rate_limit=RateLimit(1, per=SLOW))
    client = await ws_client(ws)
    await client.call("rpc", "/a")
    assert (await call_error(client, "/a")).code == 429
    assert await client.call("rpc", "/b", 1) == 1


async def test_a_group_limit_is_shared_by_its_routes(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    group = ws.group("/g", rate_limit=RateLimit(2, per=SLOW))
    group.add_message_handler("rpc", "/a", echo)
    group.add_message_handler("rpc", "/b", echo)
    ws.add_message_handler("rpc", "/outside", echo)
    client = await ws_client(ws)
    await client.call("rpc", "/g/a")
    await client.call("rpc", "/g/b")
    assert (await call_error(client, "/g/a")).code == 429
    assert (await call_error(client, "/g/b")).code == 429
    assert await client.call("rpc", "/outside", 1) == 1


async def test_an_inner_group_counts_the_outer_limit_and_its_own(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    outer = ws.group("/o", rate_limit=RateLimit(3, per=SLOW))
    inner = outer.group("/i", rate_limit=RateLimit(1, per=SLOW))
    inner.add_message_handler("rpc", "/x", echo)
    outer.add_message_handler("rpc", "/y", echo)
    client = await ws_client(ws)
    await client.call("rpc", "/o/i/x")
    assert (await call_error(client, "/o/i/x")).code == 429
    # The outer bucket paid for both calls above (the refused one too: taken first).
    await client.call("rpc", "/o/y")
    assert (await call_error(client, "/o/y")).code == 429


async def test_an_app_limit_counts_every_routed_message_and_unhandled_ones(ws_client) -> None:
    ws = WsApp(heartbeat=0, rate_limit=RateLimit(3, per=SLOW))
    ws.add_message_handler("rpc", "/a", echo)

    @ws.on_unhandled
    def fallback() -> str:
        return "fallback"

    ws.add_message_handler("rpc", "/b", echo)  # registered after: counted too
    client = await ws_client(ws)
    await client.call("rpc", "/a")
    await client.call("rpc", "/b")
    assert await client.call("rpc", "/nowhere") == "fallback"
    for path in ("/a", "/b", "/nowhere"):
        assert (await call_error(client, path)).code == 429


async def test_a_user_key_shares_the_bucket_of_every_connection_of_a_user(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_connect
    def identify() -> None:
        conn = use_ws_connection()
        assert conn.request is not None
        conn.user = conn.request.query["user"]

    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(2, per=SLOW, key="user"))
    tab1 = await ws_client(ws, query={"user": "alice"})
    tab2 = await ws_client(ws, query={"user": "alice"})
    bob = await ws_client(ws, query={"user": "bob"})
    await tab1.call("rpc", "/limited")
    await tab2.call("rpc", "/limited")
    assert (await call_error(tab1, "/limited")).code == 429
    assert (await call_error(tab2, "/limited")).code == 429
    assert await bob.call("rpc", "/limited", 1) == 1


async def test_an_ip_key_shares_the_bucket_of_every_connection_from_one_address(
    ws_client,
) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1, per=SLOW, key="ip"))
    first, second = await ws_client(ws), await ws_client(ws)  # both from 127.0.0.1
    await first.call("rpc", "/limited")
    assert (await call_error(second, "/limited")).code == 429


async def test_a_function_key(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    limit = RateLimit(1, per=SLOW, key=lambda conn: conn.request.query.get("team"))
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=limit)
    red1 = await ws_client(ws, query={"team": "red"})
    red2 = await ws_client(ws, query={"team": "red"})
    blue = await ws_client(ws, query={"team": "blue"})
    await red1.call("rpc", "/limited")
    assert (await call_error(red2, "/limited")).code == 429
    assert await blue.call("rpc", "/limited", 1) == 1


async def test_a_connection_that_keeps_flooding_is_closed_with_4429(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1, per=SLOW))
    ws.add_message_handler("rpc", "/free", echo)
    flooder, other = await ws_client(ws), await ws_client(ws)
    await flooder.call("rpc", "/limited")
    for _ in range(50):
        assert (await call_error(flooder, "/limited")).code == 429
    # 50 rejections are tolerated: the connection still works.
    assert await flooder.call("rpc", "/free", "still open") == "still open"
    await flooder.send("rpc", "/limited", message_id=99)
    assert await flooder.wait_closed() == 4429
    assert flooder.close_reason == "Rate limit exceeded"
    assert await other.call("rpc", "/limited", "ok") == "ok"


async def test_dry_run_never_refuses_and_counts(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1, per=SLOW, dry_run=True))
    client = await ws_client(ws)
    for i in range(60):  # past the flood threshold too
        assert await client.call("rpc", "/limited", i) == i
    (route,) = ws.routes()
    assert route.rate_limits[0].rejected == 59


async def test_interceptors_see_the_429(ws_client) -> None:
    seen: list[int] = []
    ws = WsApp(heartbeat=0)

    @ws.intercept
    async def metrics(scope: MessageScope, call_next: CallNext) -> Any:
        try:
            return await call_next()
        except WsError as exc:
            seen.append(exc.code)
            raise

    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1, per=SLOW))
    client = await ws_client(ws)
    await client.call("rpc", "/limited")
    assert (await call_error(client, "/limited")).code == 429
    assert seen == [429]


async def test_a_refusing_guard_costs_no_token_and_invalid_data_costs_one(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    allowed = {"yes": False}

    def gate() -> bool:
        return allowed["yes"]

    ws.add_message_handler(
        "rpc", "/limited", echo, guards=[gate], data=int, rate_limit=RateLimit(2, per=SLOW)
    )
    client = await ws_client(ws)
    for _ in range(3):
        assert (await call_error(client, "/limited", 1)).code == 403
    allowed["yes"] = True
    # Invalid data is refused after the limit took its token: a flood of it is limited.
    assert (await call_error(client, "/limited", "not an int")).code == 400
    assert await client.call("rpc", "/limited", 1) == 1
    assert (await call_error(client, "/limited", 2)).code == 429


@pytest.mark.parametrize("is_async", [False, True])
async def test_sync_and_async_handlers_are_limited(ws_client, is_async: bool) -> None:
    ws = WsApp(heartbeat=0)

    async def async_echo() -> Any:
        await asyncio.sleep(0)
        return use_ws_message().data

    handler = async_echo if is_async else echo
    ws.add_message_handler("rpc", "/limited", handler, rate_limit=RateLimit(1, per=SLOW))
    client = await ws_client(ws)
    assert await client.call("rpc", "/limited", 1) == 1
    assert (await call_error(client, "/limited")).code == 429


def test_a_route_without_a_limit_runs_its_handler_as_registered() -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/plain", echo)
    ws.add_message_handler("rpc", "/limited", echo, rate_limit=RateLimit(1))
    endpoints = {pattern: endpoint for _, pattern, endpoint in ws.router.routes()}
    assert endpoints["/plain"].fn is echo
    # A limited sync handler stays sync (no task per message).
    assert endpoints["/limited"].fn is not echo
    assert endpoints["/limited"].is_async is False


# -- handshakes and connections per user -------------------------------------------------


async def test_the_handshake_limit_answers_http_429_before_the_upgrade(aiohttp_client) -> None:
    ws = WsApp(heartbeat=0, handshake_rate=RateLimit(2, per=SLOW))
    server = await aiohttp_client(attach(ws, web.Application(), "/ws"))
    opened = [await server.ws_connect("/ws") for _ in range(2)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await server.ws_connect("/ws")
    assert info.value.status == 429
    assert 0 < int(info.value.headers["Retry-After"]) <= SLOW / 2 + 1
    assert len(ws.connections()) == 2
    for sock in opened:
        await sock.close()


async def test_max_connections_per_user_refuses_one_more_with_1008(
    ws_client, aiohttp_client
) -> None:
    closed = asyncio.Event()
    ws = WsApp(heartbeat=0, max_connections_per_user=2)

    @ws.on_connect
    def identify() -> None:
        conn = use_ws_connection()
        assert conn.request is not None
        conn.user = conn.request.query["user"]

    @ws.on_disconnect
    def gone() -> None:
        closed.set()

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().user

    tab1 = await ws_client(ws, query={"user": "alice"})
    tab2 = await ws_client(ws, query={"user": "alice"})
    tab3 = await ws_client(ws, query={"user": "alice"})
    assert await tab3.wait_closed() == 1008
    assert tab3.close_reason == "Too many connections"
    assert await ws_client(ws, query={"user": "bob"}) is not None
    assert await tab2.call("rpc", "/whoami") == "alice"
    # A closed connection frees its place.
    await tab1.close()
    await closed.wait()
    tab4 = await ws_client(ws, query={"user": "alice"})
    assert await tab4.call("rpc", "/whoami") == "alice"


def test_max_connections_per_user_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections_per_user"):
        WsApp(max_connections_per_user=0)
