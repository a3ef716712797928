"""Targets for ``python -m wsevents run tests.cli_targets:...`` in the CLI tests."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from wsevents import WsApp, create_ws_app, use_ws_connection, use_ws_message


def _tagged_echo(tag: str) -> WsApp:
    ws = create_ws_app(heartbeat=0)

    @ws.on_message("rpc", "/echo")
    def echo() -> dict[str, Any]:
        return {"tag": tag, "data": use_ws_message().data}

    @ws.on_message("rpc", "/ip")
    def ip() -> str | None:
        return use_ws_connection().ip

    return ws


def make_ws_app() -> WsApp:
    """A sync factory returning a WsApp."""
    return _tagged_echo("sync factory")


async def make_aiohttp_app() -> web.Application:
    """An async factory returning an aiohttp Application with its own WebSocket route."""
    app = web.Application()
    _tagged_echo("async factory").attach(app, "/custom")
    return app


async def make_loop_aware_app() -> WsApp:
    """An async factory whose app reports whether it serves on the factory's event loop."""
    factory_loop = asyncio.get_running_loop()
    ws = create_ws_app(heartbeat=0)

    @ws.on_message("rpc", "/same-loop")
    def same_loop() -> bool:
        return asyncio.get_running_loop() is factory_loop

    return ws


def make_nothing() -> None:
    """A factory returning something that cannot be served."""


async def make_text() -> str:
    """An async factory returning something that cannot be served."""
    return "not an app"


not_an_app = 42


loop_reporter = WsApp(heartbeat=0)


@loop_reporter.on_message("rpc", "/loop")
def report_loop() -> str:
    """The module of the running event loop's class (``uvloop`` under ``--loop uvloop``)."""
    return type(asyncio.get_running_loop()).__module__


def make_plain_aiohttp_app() -> web.Application:
    """An aiohttp Application without a WsApp attached."""
    return web.Application()


def make_capped_app() -> WsApp:
    """The reference app's capped rooms with a capacity lease of 1 s (the kill -9 tests)."""
    from examples.reference_app import add_capped_rooms

    ws = create_ws_app(heartbeat=0)
    add_capped_rooms(ws)
    ws.capacity.lease = 1.0
    return ws
