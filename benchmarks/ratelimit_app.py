"""Servers for ``benchmarks/ratelimit_cost.py --wire``: ``rpc /echo`` with and without a
rate limit that never runs dry.

The load generator sends ``rpc /echo`` and checks the reply, so each app serves that path
alone, the same handler as the reference app's ``/echo``; only the limit differs. The
bucket's rate is so high that nothing is ever refused: every call pays the whole check
(a clock read, a bucket lookup, the arithmetic) and goes through. Run one with
``python -m wsevents run benchmarks.ratelimit_app:limited_app``.
"""

from __future__ import annotations

from typing import Any

from wsevents import RateLimit, WsApp, create_ws_app, use_ws_message

GENEROUS = 1e12
"""Tokens per second of the limited apps: no call is ever refused."""


def _echo_app(limit: RateLimit | None) -> WsApp:
    app = create_ws_app()

    @app.on_message("rpc", "/echo", rate_limit=limit)
    def echo() -> Any:
        return use_ws_message().data

    return app


plain_app = _echo_app(None)
limited_app = _echo_app(RateLimit(GENEROUS))
limited_user_app = _echo_app(RateLimit(GENEROUS, key="user"))
