"""The app of ``benchmarks/c100k.py``: the routes its peer serves, and nothing else.

``rpc /echo`` and ``subscribe`` / ``unsubscribe`` / ``message`` / ``message-all`` on
``/chat/rooms/:room``, with default options (heartbeat on), as the peer servers of the
benchmark harness do. Unlike the reference app it tells no room when a member leaves: with
every connection in one large room, such a notice per disconnect makes a shutdown
quadratic in the room size, which measures the application, not the server. Run it with
``python -m wsevents run benchmarks.c100k_app:app``.
"""

from __future__ import annotations

from typing import Any

from wsevents import create_ws_app, use_ws_message, use_ws_rooms

app = create_ws_app()


@app.on_message("rpc", "/echo")
def echo() -> Any:
    return use_ws_message().data


@app.on_message("subscribe", "/chat/rooms/:room")
async def subscribe() -> dict[str, bool]:
    await use_ws_rooms().join()
    return {"subscribed": True}


@app.on_message("unsubscribe", "/chat/rooms/:room")
async def unsubscribe() -> dict[str, bool]:
    await use_ws_rooms().leave()
    return {"unsubscribed": True}


@app.on_message("message", "/chat/rooms/:room")
async def message() -> dict[str, bool]:
    await use_ws_rooms().broadcast("message", use_ws_message().data)
    return {"sent": True}


@app.on_message("message-all", "/chat/rooms/:room")
async def message_all() -> dict[str, bool]:
    await use_ws_rooms().broadcast("message", use_ws_message().data, exclude_self=False)
    return {"sent": True}
