"""Command line: ``python -m wsevents run MODULE:ATTR [options]``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

USAGE_ERROR = 2


class TargetError(Exception):
    """The MODULE:ATTR target cannot be loaded or is not servable."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wsevents", description="wsevents tools")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve a WsApp or an aiohttp Application")
    run.add_argument("target", help="MODULE:ATTR, a WsApp, an aiohttp Application or a factory")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--path", default="/ws", help="WebSocket endpoint (for a WsApp)")
    run.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"]
    )
    run.add_argument(
        "--loop",
        default="asyncio",
        choices=["asyncio", "uvloop"],
        help="event loop implementation (uvloop needs: pip install 'wsevents[uvloop]')",
    )
    run.add_argument(
        "--redis-url",
        default=None,
        help="broadcast through Redis to the other instances (redis://, rediss://, unix://)",
    )
    return parser


def plug_redis(target: Any, url: str) -> None:
    """Give the target's WsApp a RedisTransport for ``url`` (before it starts).

    For an aiohttp Application, the WsApp is the one attached to it (``app[WS_APP]``).

    Raises:
        TargetError: no WsApp to plug into, or a bad URL.
    """
    from .app import WsApp
    from .server import WS_APP
    from .transports.redis import RedisTransport

    ws_app = target if isinstance(target, WsApp) else target.get(WS_APP)
    if not isinstance(ws_app, WsApp):
        raise TargetError("--redis-url needs a WsApp, or an aiohttp Application with one attached")
    try:
        transport = RedisTransport.from_url(url)
    except ValueError as exc:
        raise TargetError(f"bad --redis-url: {exc}") from exc
    if ws_app.transport is not None:
        logging.getLogger("wsevents").warning(
            "--redis-url replaces the transport the app was created with"
        )
    ws_app.set_transport(transport)


def load_target(spec: str, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """Import ``MODULE:ATTR`` and return a WsApp or an aiohttp Application.

    A callable that is neither is called as a factory. An async factory is awaited on
    ``loop`` (a throwaway loop when None): serve on that same loop, since what the factory
    creates (clients, pools, tasks) is bound to it.

    Raises:
        TargetError: with a message for the user.
    """
    from aiohttp import web

    from .app import WsApp

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"target must look like MODULE:ATTR, got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, WsApp | web.Application) and callable(obj):
        obj = obj()
        if inspect.isawaitable(obj):
            obj = asyncio.run(_await(obj)) if loop is None else loop.run_until_complete(obj)
    if not isinstance(obj, WsApp | web.Application):
        raise TargetError(
            f"{spec} is a {type(obj).__name__}, not a WsApp, an aiohttp Application "
            "or a factory returning one"
        )
    return obj


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        try:
            # Imported by name: uvloop is an optional extra, not needed to type-check.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            msg = "--loop uvloop needs uvloop: pip install 'wsevents[uvloop]'"
            raise TargetError(msg) from None
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        loop = _new_loop(args.loop)  # run() serves on it, then closes it
    except TargetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        target = load_target(args.target, loop)
        if args.redis_url:
            plug_redis(target, args.redis_url)
    except TargetError as exc:
        loop.close()
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    from .server import run

    logging.getLogger("wsevents").info(
        "serving %s on ws://%s:%d%s", args.target, args.host, args.port, args.path
    )
    run(target, host=args.host, port=args.port, path=args.path, loop=loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
