"""examples/reference_auth_app.py over real sockets: its timeline, with tolerances."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from examples.reference_auth_app import app
from wsevents import WsClientError
from wsevents.server import attach

LATE = 1.0  # the contract: closed within 1 s after the deadline


async def call_error(client: Any, path: str, data: Any = None) -> WsClientError:
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", path, data)
    return info.value


async def test_login_whoami_echo_and_refresh(ws_client) -> None:
    client = await ws_client(app)
    assert (await call_error(client, "/echo", 1)).code == 401
    assert (await call_error(client, "/whoami")).code == 401
    assert await client.call("rpc", "/auth/login", {"token": "alice"}) == {
        "user": "alice",
        "expires_in": 30,
    }
    who = await client.call("rpc", "/whoami")
    assert who["user"] == "alice" and who["id"] != "alice"
    assert await client.call("rpc", "/echo", {"x": 1}) == {"x": 1}
    assert await client.call("rpc", "/auth/refresh", {"token": "short:alice"}) == {
        "user": "alice",
        "expires_in": 2,
    }
    error = await call_error(client, "/auth/refresh", {"token": "bob"})
    assert (error.code, error.message) == (403, "Forbidden")
    assert (await client.call("rpc", "/whoami"))["user"] == "alice"
    await client.close()


async def test_the_timeline_of_timeout_expiry_and_refresh(ws_client) -> None:
    """Four connections at once: each event at its time, within tolerances."""
    started = time.monotonic()
    idle = await ws_client(app)  # never logs in: 4408 at 2 s
    wrong = await ws_client(app)  # a bad token: 401, kept open until the timeout
    short = await ws_client(app)  # a 2 s token: 4401 at 2 s after login
    refreshed = await ws_client(app)  # a 2 s token refreshed with a 30 s one: still open

    error = await call_error(wrong, "/auth/login", {"token": "mallory"})
    assert (error.code, error.message) == (401, "Unauthorized")
    assert await short.call("rpc", "/auth/login", {"token": "short:bob"}) == {
        "user": "bob",
        "expires_in": 2,
    }
    short_login = time.monotonic()
    await refreshed.call("rpc", "/auth/login", {"token": "short:alice"})
    await refreshed.call("rpc", "/auth/refresh", {"token": "alice"})

    for client in (idle, wrong):
        assert await client.wait_closed(timeout=5.0) == 4408
        assert client.close_reason == "Authentication timeout"
    timed_out = time.monotonic() - started
    assert 2.0 <= timed_out <= 2.0 + LATE + 0.5  # + the time the four handshakes took

    assert await short.wait_closed(timeout=5.0) == 4401
    assert short.close_reason == "Token expired"
    assert 2.0 - 0.05 <= time.monotonic() - short_login <= 2.0 + LATE
    # short:alice would have expired by now: the refresh extended it, no reconnect.
    assert await refreshed.call("rpc", "/echo", "on") == "on"
    await refreshed.close()


def fresh_app() -> Any:
    """A copy of the module with its own app (and so its own handshake buckets)."""
    path = Path(__file__).resolve().parent.parent / "examples" / "reference_auth_app.py"
    spec = importlib.util.spec_from_file_location("reference_auth_app_copy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


async def test_more_than_20_handshakes_a_second_get_http_429(aiohttp_client) -> None:
    server = await aiohttp_client(attach(fresh_app(), web.Application(), "/ws"))
    results = await asyncio.gather(
        *(server.ws_connect("/ws") for _ in range(25)), return_exceptions=True
    )
    opened = [r for r in results if isinstance(r, aiohttp.ClientWebSocketResponse)]
    refused = [r for r in results if isinstance(r, aiohttp.WSServerHandshakeError)]
    assert len(opened) + len(refused) == 25
    assert 20 <= len(opened) <= 22  # a token comes back every 50 ms while they run
    assert refused and all(r.status == 429 for r in refused)
    for sock in opened:
        await sock.close()
