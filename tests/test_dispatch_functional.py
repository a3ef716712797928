"""Interceptors in the dispatch pipeline, over real sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from wsevents import (
    CallNext,
    MessageScope,
    WsApp,
    WsError,
    use_ws_connection,
    use_ws_message,
)
from wsevents.server import attach

TIMEOUT = 5.0


def make_app(log: list[str]) -> WsApp:
    ws = WsApp(heartbeat=0)

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        log.append("echo")
        return use_ws_message().data

    @ws.on_message("rpc", "/async-echo")
    async def async_echo() -> Any:
        await asyncio.sleep(0)
        log.append("async-echo")
        return use_ws_message().data

    @ws.on_message("rpc", "/private")
    def private() -> str:
        log.append("private")
        return "secret"

    @ws.on_message("rpc", "/conflict")
    async def conflict() -> None:
        raise WsError(409, "already taken")

    @ws.on_message("rpc", "/crash")
    def crash() -> None:
        raise RuntimeError("internals at /srv/app.py")

    return ws


async def test_an_interceptor_rejects_with_ws_error_and_the_handler_does_not_run(
    ws_client,
) -> None:
    log: list[str] = []
    ws = make_app(log)

    @ws.intercept
    async def guard(scope: MessageScope, call_next: CallNext) -> Any:
        if scope.message.path == "/private":
            raise WsError(403, "not allowed")
        return await call_next()

    client = await ws_client(ws)
    denied = await client.request("rpc", "/private", message_id=1)
    assert denied == {"id": 1, "error": {"code": 403, "message": "not allowed"}}
    assert await client.request("rpc", "/echo", "hi", message_id=2) == {"id": 2, "data": "hi"}
    assert log == ["echo"]


@pytest.mark.parametrize("path", ["/echo", "/async-echo"])
async def test_an_interceptor_runs_around_the_handler_and_can_time_it(ws_client, path) -> None:
    log: list[str] = []
    ws = make_app(log)
    loop = asyncio.get_running_loop()
    times: dict[str, float] = {}

    @ws.on_message("rpc", "/timed")
    def timed() -> str:
        times["handler"] = loop.time()
        return "ok"

    @ws.intercept
    async def timing(scope: MessageScope, call_next: CallNext) -> Any:
        times["start"] = loop.time()
        try:
            return await call_next()
        finally:
            times["end"] = loop.time()
            times["elapsed"] = times["end"] - times["start"]

    client = await ws_client(ws)
    assert await client.call("rpc", "/timed") == "ok"
    assert times["start"] <= times["handler"] <= times["end"]
    assert times["elapsed"] >= 0
    assert await client.call("rpc", path, [1, 2]) == [1, 2]


async def test_an_interceptor_observes_the_outcome_code_and_the_replies_are_unchanged(
    aiohttp_client, caplog
) -> None:
    log: list[str] = []
    ws = make_app(log)
    outcomes: list[tuple[str, int]] = []

    @ws.intercept
    async def metrics(scope: MessageScope, call_next: CallNext) -> Any:
        try:
            result = await call_next()
        except WsError as exc:
            outcomes.append((scope.message.path, exc.code))
            raise
        except Exception:
            outcomes.append((scope.message.path, 500))
            raise
        outcomes.append((scope.message.path, 200))
        return result

    client = await aiohttp_client(attach(ws, web.Application()))
    sock = await client.ws_connect("/ws")
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        for i, path in enumerate(["/echo", "/conflict", "/crash", "/async-echo"], 1):
            await sock.send_json({"event": "rpc", "path": path, "data": i, "id": i})
            msg = await sock.receive(timeout=TIMEOUT)
            assert msg.type is WSMsgType.TEXT
            assert "internals" not in msg.data and "Traceback" not in msg.data
            if path == "/conflict":
                assert msg.json() == {"id": i, "error": {"code": 409, "message": "already taken"}}
            elif path == "/crash":
                assert msg.json() == {"id": i, "error": {"code": 500, "message": "Internal Error"}}
            else:
                assert msg.json() == {"id": i, "data": i}
    assert outcomes == [("/echo", 200), ("/conflict", 409), ("/crash", 500), ("/async-echo", 200)]
    crashes = [r for r in caplog.records if r.exc_info is not None]
    assert len(crashes) == 1 and "/crash" in crashes[0].getMessage()
    await sock.close()


async def test_several_interceptors_run_in_registration_order_outermost_first(ws_client) -> None:
    log: list[str] = []
    ws = make_app(log)

    def named(name: str) -> Any:
        async def interceptor(scope: MessageScope, call_next: CallNext) -> Any:
            log.append(f"{name}:before")
            result = await call_next()
            log.append(f"{name}:after")
            return result

        return interceptor

    ws.add_interceptor(named("a"))
    ws.add_interceptor(named("b"))
    ws.add_interceptor(named("c"))
    client = await ws_client(ws)
    assert await client.call("rpc", "/echo", 1) == 1
    assert log == ["a:before", "b:before", "c:before", "echo", "c:after", "b:after", "a:after"]


async def test_an_interceptor_may_replace_the_result_and_use_composables(ws_client) -> None:
    log: list[str] = []
    ws = make_app(log)

    @ws.intercept
    async def wrap(scope: MessageScope, call_next: CallNext) -> Any:
        assert use_ws_message() is scope.message
        assert use_ws_connection() is scope.connection
        return {"wrapped": await call_next(), "by": scope.connection.id}

    client = await ws_client(ws)
    me = await client.call("rpc", "/echo", "x")
    assert me["wrapped"] == "x" and isinstance(me["by"], str)


async def test_unrouted_and_malformed_messages_never_reach_interceptors(ws_client) -> None:
    log: list[str] = []
    ws = make_app(log)
    seen: list[str] = []

    @ws.intercept
    async def record(scope: MessageScope, call_next: CallNext) -> Any:
        seen.append(scope.message.path)
        return await call_next()

    client = await ws_client(ws)
    await client.send_raw("not json")
    reply = await client.request("rpc", "/nowhere", message_id=1)
    assert reply == {"id": 1, "error": {"code": 404, "message": "Not found"}}
    assert await client.call("rpc", "/echo", 2) == 2
    assert seen == ["/echo"]


def test_a_sync_interceptor_is_refused_at_registration() -> None:
    ws = WsApp(heartbeat=0)

    def sync_interceptor(scope: MessageScope, call_next: CallNext) -> Any:
        return None

    with pytest.raises(TypeError, match="must be async"):
        ws.add_interceptor(sync_interceptor)  # type: ignore[arg-type]
