"""The server of ``benchmarks/history_wire.py``: the reference app with history on its chat
rooms, and a replay room with room for 20 000 pushes.

``app`` is a fresh copy of ``examples.reference_app``'s app (the module is loaded again
under another name, so the reference app itself stays as it is) that also tracks
``/chat/rooms/:room`` as history rooms (last 1000 pushes, 10 minutes): every broadcast of
the S2 fan-out gets an offset, is kept, and goes out in offset order. ``/replay/rooms/:room``
(``subscribe`` with ``since``, ``publish``) keeps the last 20 000 pushes. Run it with
``python -m wsevents run benchmarks.history_app:app``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from wsevents import WsApp, use_ws_message, use_ws_rooms

_SOURCE = Path(__file__).resolve().parent.parent / "examples" / "reference_app.py"


def load_app() -> WsApp:
    """A new reference app, with history on ``/chat/rooms/:room`` and a replay room."""
    spec = importlib.util.spec_from_file_location("wsevents_bench_history_app", _SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its declared types resolve their names through it
    spec.loader.exec_module(module)
    ws: WsApp = module.app
    ws.history.track("/chat/rooms/:room", size=1000, ttl=600.0)
    # Room for the --missed pushes (at most 10 000) and the pushes the app itself makes.
    ws.history.track("/replay/rooms/:room", size=20_000, ttl=600.0)

    @ws.on_message("subscribe", "/replay/rooms/:room")
    async def replay_subscribe() -> dict[str, Any]:
        data = use_ws_message().data
        since = data.get("since") if isinstance(data, dict) else None
        return (await use_ws_rooms().join_stream(since=since)).as_reply()

    @ws.on_message("publish", "/replay/rooms/:room")
    async def replay_publish() -> dict[str, Any]:
        report = await use_ws_rooms().broadcast("message", use_ws_message().data)
        return {"sent": True, "offset": report.offset}

    return ws


app = load_app()
