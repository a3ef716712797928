"""Authentication after connect over real sockets: public routes, 401, the authentication
timeout (4408), expiry (4401) and in-band refresh, one timer for every connection."""

from __future__ import annotations

import time
from typing import Any

import pytest

from wsevents import WsApp, WsClientError, use_ws_connection, use_ws_message
from wsevents.connection import Connection
from wsevents.testing.contexts import RecordingSocket

# Closes must come at their deadline, and within 1 s after it (loaded machines included).
LATE = 1.0


async def call_error(client: Any, path: str, data: Any = None) -> WsClientError:
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", path, data)
    return info.value


def auth_app(**options: Any) -> WsApp:
    ws = WsApp(heartbeat=0, auth_required=True, **options)

    @ws.on_message("rpc", "/login", public=True)
    def login() -> str:
        data = use_ws_message().data
        conn = use_ws_connection()
        conn.authenticate(data["user"], expires_in=data.get("ttl"))
        return conn.user

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    return ws


async def test_only_public_routes_are_served_before_login(ws_client) -> None:
    ws = auth_app()

    @ws.on_unhandled
    def fallback() -> str:
        return "fallback"

    client = await ws_client(ws)
    error = await call_error(client, "/echo", 1)
    assert (error.code, error.message) == (401, "Unauthorized")
    assert (await call_error(client, "/nowhere")).code == 401
    assert await client.call("rpc", "/login", {"user": "alice"}) == "alice"
    assert await client.call("rpc", "/echo", 1) == 1
    assert await client.call("rpc", "/nowhere") == "fallback"


async def test_without_auth_required_every_route_is_served(ws_client) -> None:
    ws = WsApp(heartbeat=0)
    ws.add_message_handler("rpc", "/echo", lambda: use_ws_message().data)
    client = await ws_client(ws)
    assert await client.call("rpc", "/echo", 1) == 1


async def test_not_authenticated_in_time_closes_4408(ws_client) -> None:
    ws = auth_app(auth_timeout=0.3)
    started = time.monotonic()
    client = await ws_client(ws)
    assert await client.wait_closed() == 4408
    elapsed = time.monotonic() - started
    assert client.close_reason == "Authentication timeout"
    assert 0.3 <= elapsed <= 0.3 + LATE


async def test_a_connection_that_logged_in_is_not_closed_at_the_timeout(ws_client) -> None:
    ws = auth_app(auth_timeout=0.3)
    member = await ws_client(ws)
    await member.call("rpc", "/login", {"user": "alice"})
    # Opened later, its deadline comes later: once it is closed, member's has passed.
    witness = await ws_client(ws)
    assert await witness.wait_closed() == 4408
    assert await member.call("rpc", "/echo", "still here") == "still here"


async def test_on_connect_may_authenticate(ws_client) -> None:
    ws = auth_app(auth_timeout=0.3)

    @ws.on_connect
    def from_query() -> None:
        conn = use_ws_connection()
        assert conn.request is not None
        user = conn.request.query.get("user")
        if user:
            conn.authenticate(user)

    member = await ws_client(ws, query={"user": "alice"})
    witness = await ws_client(ws)
    assert await witness.wait_closed() == 4408
    assert await member.call("rpc", "/echo", 1) == 1


async def test_a_session_is_closed_4401_at_its_expiry(ws_client) -> None:
    ws = auth_app()
    client = await ws_client(ws)
    await client.call("rpc", "/login", {"user": "alice", "ttl": 0.3})
    logged_in = time.monotonic()
    assert await client.wait_closed() == 4401
    elapsed = time.monotonic() - logged_in
    assert client.close_reason == "Token expired"
    assert 0.3 - 0.05 <= elapsed <= 0.3 + LATE


async def test_a_refresh_extends_the_session_without_reconnecting(ws_client) -> None:
    ws = auth_app()
    client = await ws_client(ws)
    await client.call("rpc", "/login", {"user": "alice", "ttl": 0.3})
    assert await client.call("rpc", "/login", {"user": "alice", "ttl": 30}) == "alice"
    witness = await ws_client(ws)
    await witness.call("rpc", "/login", {"user": "bob", "ttl": 0.4})
    # The witness expires after alice's first expiry: alice's session was extended.
    assert await witness.wait_closed() == 4401
    assert await client.call("rpc", "/echo", "on") == "on"


async def test_a_refresh_may_not_switch_users(ws_client) -> None:
    ws = auth_app()

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().user

    client = await ws_client(ws)
    await client.call("rpc", "/login", {"user": "alice"})
    error = await call_error(client, "/login", {"user": "bob"})
    assert (error.code, error.message) == (403, "Forbidden")
    assert await client.call("rpc", "/whoami") == "alice"


async def test_a_refresh_without_expiry_lifts_it(ws_client) -> None:
    ws = auth_app()
    client = await ws_client(ws)
    await client.call("rpc", "/login", {"user": "alice", "ttl": 0.3})
    await client.call("rpc", "/login", {"user": "alice"})
    witness = await ws_client(ws)
    await witness.call("rpc", "/login", {"user": "bob", "ttl": 0.4})
    assert await witness.wait_closed() == 4401
    assert await client.call("rpc", "/echo", 1) == 1


async def test_expiry_works_without_auth_required(ws_client) -> None:
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/login")
    def login() -> None:
        use_ws_connection().authenticate("alice", expires_in=0.2)

    client = await ws_client(ws)
    await client.call("rpc", "/login")
    assert await client.wait_closed() == 4401


async def test_every_deadline_shares_one_timer(ws_client) -> None:
    ws = auth_app(auth_timeout=30.0)
    clients = [await ws_client(ws) for _ in range(5)]
    for i, client in enumerate(clients):
        await client.call("rpc", "/login", {"user": f"u{i}", "ttl": 60 + i})
    clock = ws._deadlines
    assert len(clock) == 10  # 5 authentication deadlines, 5 expiries
    assert clock._timer is not None and clock._timer_at < time.monotonic() + 31


def test_authenticate_refuses_a_non_positive_lifetime() -> None:
    conn = Connection(RecordingSocket())
    with pytest.raises(ValueError, match="expires_in"):
        conn.authenticate("alice", expires_in=0)
    assert not conn.authenticated
    assert conn.user == conn.id


def test_authenticate_sets_user_and_expiry() -> None:
    conn = Connection(RecordingSocket())
    assert conn.expires_in is None
    conn.authenticate("alice", expires_in=30)
    assert (conn.authenticated, conn.user) == (True, "alice")
    assert conn.expires_in is not None and 29 < conn.expires_in <= 30


def test_auth_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="auth_timeout"):
        WsApp(auth_timeout=0)


async def test_closing_the_app_stops_the_timer(ws_client) -> None:
    ws = auth_app(auth_timeout=30.0)
    await ws_client(ws)
    assert ws._deadlines._timer is not None
    await ws.close()
    assert ws._deadlines._timer is None
