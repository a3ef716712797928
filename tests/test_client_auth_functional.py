"""The Python client against authentication after connect: a token provider for login and
refresh, and no reconnect after 4401 / 4403 / 4408 / 4429."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from wsevents import (
    WsApp,
    WsClient,
    WsClientError,
    WsError,
    use_route_params,
    use_ws_connection,
    use_ws_message,
)
from wsevents.server import attach

TOKENS = {"t-alice": "alice", "t-bob": "bob"}


def auth_app(lifetime: float | None = 30.0) -> tuple[WsApp, list[str]]:
    """An app with login and refresh; returns it and the log of auth calls."""
    calls: list[str] = []
    ws = WsApp(heartbeat=0, auth_required=True, auth_timeout=5.0)

    def check() -> str:
        data = use_ws_message().data
        user = TOKENS.get(data.get("token")) if isinstance(data, dict) else None
        if user is None:
            raise WsError(401, "Unauthorized")
        return user

    @ws.on_message("rpc", "/auth/login", public=True)
    def login() -> dict[str, Any]:
        user = check()
        calls.append(f"login {user}")
        use_ws_connection().authenticate(user, expires_in=lifetime)
        return {"user": user, "expires_in": lifetime}

    @ws.on_message("rpc", "/auth/refresh", public=True)
    def refresh() -> dict[str, Any]:
        user = check()
        calls.append(f"refresh {user}")
        use_ws_connection().authenticate(user, expires_in=lifetime)
        return {"user": user, "expires_in": lifetime}

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().user

    @ws.on_message("rpc", "/close/:code")
    def close() -> None:
        code = int(use_route_params().get("code", "1000"))
        use_ws_connection().close(code, f"closed {code}")

    return ws, calls


async def serve(aiohttp_client: Any, ws: WsApp) -> str:
    server = await aiohttp_client(attach(ws, web.Application(), "/ws"))
    return str(server.make_url("/ws"))


async def test_the_token_provider_logs_in_on_every_connect(aiohttp_client) -> None:
    ws, calls = auth_app()
    url = await serve(aiohttp_client, ws)
    provided: list[int] = []

    async def token() -> str:
        provided.append(1)
        return "t-alice"

    opened = asyncio.Queue[None]()
    client = WsClient(
        url, token=token, reconnect=True, base_delay=0.0, on_open=lambda: opened.put_nowait(None)
    )
    try:
        await client.connect()
        await opened.get()
        assert await client.call("rpc", "/whoami") == "alice"
        # An ordinary loss reconnects, and logs in again before anything else.
        with pytest.raises(WsClientError):
            await client.call("rpc", "/close/4000")
        await opened.get()
        assert await client.call("rpc", "/whoami") == "alice"
        assert calls == ["login alice", "login alice"]
        assert len(provided) == 2
    finally:
        await client.close()


async def test_a_sync_token_provider_works(aiohttp_client) -> None:
    ws, _ = auth_app()
    client = WsClient(await serve(aiohttp_client, ws), token=lambda: "t-bob")
    try:
        await client.connect()
        assert await client.call("rpc", "/whoami") == "bob"
    finally:
        await client.close()


@pytest.mark.parametrize("reconnect", [False, True])
async def test_a_refused_login_fails_connect_with_the_server_error(
    aiohttp_client, reconnect: bool
) -> None:
    ws, _ = auth_app()
    errors: list[Exception] = []
    client = WsClient(
        await serve(aiohttp_client, ws),
        token=lambda: "stolen",
        reconnect=reconnect,
        on_error=errors.append,
    )
    try:
        with pytest.raises(WsClientError) as info:
            await client.connect()
        assert (info.value.code, info.value.message) == (401, "Unauthorized")
        assert not client.connected
        assert [(e.code, e.message) for e in errors if isinstance(e, WsClientError)] == [
            (401, "Unauthorized")
        ]
    finally:
        await client.close()


async def test_the_client_refreshes_before_the_expiry_without_reconnecting(
    aiohttp_client,
) -> None:
    ws, calls = auth_app(lifetime=0.6)
    server = await aiohttp_client(attach(ws, web.Application(), "/ws"))
    closes: list[tuple[int, str]] = []
    client = WsClient(
        str(server.make_url("/ws")),
        token=lambda: "t-alice",
        refresh_before=0.3,
        on_close=lambda code, reason: closes.append((code, reason)),
    )
    try:
        await client.connect()
        # A witness with the same lifetime and no refresh, logged in after the client.
        witness = await server.ws_connect("/ws")
        await witness.send_json(
            {"event": "rpc", "path": "/auth/login", "data": {"token": "t-bob"}, "id": 1}
        )
        assert (await witness.receive_json())["data"]["user"] == "bob"
        closing = await witness.receive()
        assert (closing.type, closing.data, closing.extra) == (
            WSMsgType.CLOSE,
            4401,
            "Token expired",
        )
        await witness.close()
        # Past the client's first expiry: it refreshed in-band, still on its first socket.
        assert await client.call("rpc", "/whoami") == "alice"
        assert calls[:3] == ["login alice", "login bob", "refresh alice"]
        assert closes == []
    finally:
        await client.close()


@pytest.mark.parametrize("code", [4401, 4403, 4408, 4429])
async def test_no_reconnect_after_a_final_close_code(aiohttp_client, code: int) -> None:
    ws, calls = auth_app()
    closed = asyncio.Queue[tuple[int, str]]()
    reconnects: list[int] = []
    client = WsClient(
        await serve(aiohttp_client, ws),
        token=lambda: "t-alice",
        reconnect=True,
        base_delay=0.0,
        on_close=lambda c, r: closed.put_nowait((c, r)),
        on_reconnect=reconnects.append,
    )
    try:
        await client.connect()
        with pytest.raises(WsClientError):
            await client.call("rpc", f"/close/{code}")
        assert await closed.get() == (code, f"closed {code}")
        assert client.last_close == (code, f"closed {code}")
        assert not client.connected
        assert not client._connecting  # no reconnect is under way
        with pytest.raises(WsClientError) as info:
            await client.call("rpc", "/whoami")
        assert info.value.code == 503
        assert reconnects == []
        # The application decides: connect() again (with a new token) works.
        await client.connect()
        assert await client.call("rpc", "/whoami") == "alice"
        assert calls == ["login alice", "login alice"]
    finally:
        await client.close()
