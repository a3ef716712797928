"""A chat server: rooms, a name per connection, join/leave notices, recent history that
survives a reconnect.

Run it with ``python -m examples.chat.server --port 8080`` and open http://127.0.0.1:8080/
in two browser tabs. One aiohttp application serves the page, the browser client module
and the WebSocket endpoint.

Protocol (paths are ``/chat/<room>``, room names are 1-32 of ``A-Z a-z 0-9 _ -``):

- connect to ``/ws?name=<name>``: the name is cleaned (printable, 1-24 characters) or
  becomes ``guest-xxxx``;
- ``subscribe`` joins and replies ``{room, name, members, history, offset, epoch}`` (the
  last messages of the room, and the room's stream position); the other members get a
  ``system`` push ``{kind: "join", name, text, members}``. Subscribing again (as a client
  does after a reconnect) only replies: the members as they are now;
- ``message`` with ``{"text"}`` (1-500 characters) pushes ``message`` ``{name, text, ts}``
  to every member, the sender included;
- ``unsubscribe`` (or closing the tab) leaves; the others get ``{kind: "leave", ...}``.

Every room is a history room: each push carries an ``offset`` and the last pushes are
kept. Sessions are on (``rpc /session``, then reconnect with ``/ws?session=<token>``): a
client whose connection dropped comes back as the same member, in its rooms, and a
``subscribe`` with ``data.since = {"offset", "epoch"}`` (the last push it had) replays what
it missed, each push once, in order, before the reply (``recovered: true``, and an empty
``history``: the replay is the history). When the gap cannot be filled, ``recovered`` is
false and ``history`` holds the recent messages again.

Every notice carries the room's member list after the change, so a page shows the
server's list rather than adding and removing names itself. The list comes from presence,
so it is right on every instance: ``--redis-url`` runs several chat servers as one.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
from aiohttp import web

from wsevents import (
    BroadcastTransport,
    WsError,
    create_ws_app,
    use_route_params,
    use_ws_connection,
    use_ws_data,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.server import add_client_route, run

HERE = Path(__file__).parent
ROOM = "/chat/:room([A-Za-z0-9_-]{1,32})"
MAX_NAME = 24
MAX_TEXT = 500


class Post(msgspec.Struct):
    """What a member sends: ``message`` data."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]


class Entry(msgspec.Struct):
    """A message as members get it (the ``message`` push) and as history keeps it."""

    name: str
    text: str
    ts: int


class Notice(msgspec.Struct):
    """A ``system`` push: someone joined or left; the room's members after the change."""

    kind: str
    name: str
    text: str
    members: list[str]


class Joined(msgspec.Struct, omit_defaults=True):
    """The reply to ``subscribe``: ``recovered`` only for a ``subscribe`` with ``since``."""

    room: str
    name: str
    members: list[str]
    history: list[Entry]
    offset: int
    epoch: str
    recovered: bool | None = None


class Sent(msgspec.Struct):
    sent: bool


class Since(msgspec.Struct):
    """Where a client's copy of a room's stream ends: its last push's offset, and the epoch."""

    offset: Annotated[int, msgspec.Meta(ge=0)]
    epoch: Annotated[str, msgspec.Meta(max_length=64)]


class Subscribe(msgspec.Struct):
    """``subscribe`` data (optional): ``since`` to recover the pushes missed after it."""

    since: Since | None = None


SubscribeData = Subscribe | None
"""``subscribe`` may come without data (as the browser client's subscribe sends it)."""


def clean_name(raw: str | None, fallback: str) -> str:
    """Printable characters, whitespace collapsed, at most ``MAX_NAME``; else ``fallback``."""
    text = "".join(ch if ch.isprintable() else " " if ch.isspace() else "" for ch in raw or "")
    return " ".join(text.split())[:MAX_NAME] or fallback


def create_app(
    *,
    history_size: int = 50,
    history_ttl: float = 3600.0,
    session_ttl: float = 60.0,
    transport: BroadcastTransport | None = None,
) -> web.Application:
    """The chat as an aiohttp application: ``/`` (page), ``/wsevents-client.js``, ``/ws``.

    Each room keeps its last ``history_size`` pushes (messages and notices) for
    ``history_ttl`` seconds; a dropped connection can resume for ``session_ttl`` seconds.
    """
    ws = create_ws_app(transport=transport)
    # Every room is a presence room: the member lists count every instance.
    ws.presence.track(ROOM, mode="list")
    # ... and a history room: pushes carry offsets, and a reconnecting client catches up.
    ws.history.track(ROOM, size=history_size, ttl=history_ttl)
    ws.sessions.enable(ttl=session_ttl)
    # Declared for the AsyncAPI export (python -m wsevents asyncapi examples.chat.server:app).
    ws.declare_push("message", ROOM, data=Entry, summary="A member's message")
    ws.declare_push("system", ROOM, data=Notice, summary="A member joined or left")

    def my_name() -> str:
        name: str = use_ws_connection().state["name"]
        return name

    async def members(room: str, leaving: str | None = None) -> list[str]:
        # Each connection is a presence user of its own (the user is the connection id).
        presence, names, offset = use_ws_server().presence, [], 0
        while True:
            page = await presence.users(room, offset, 100)
            names += [
                str((m.data or {}).get("name", "?")) for m in page.members if m.user != leaving
            ]
            offset += len(page.members)
            if not page.members or offset >= page.total:
                return sorted(names)

    async def recent(room: str, upto: int, epoch: str) -> list[dict[str, Any]]:
        """The messages among the room's kept pushes up to offset ``upto`` (those after it
        reach the member live), oldest first."""
        start = max(0, upto - history_size)
        _, entries = await ws.history.store.since(room, start, epoch, history_ttl)
        messages = []
        for entry in entries or ():
            push = msgspec.json.decode(entry.payload)
            if entry.offset <= upto and push.get("event") == "message":
                messages.append(push["data"])
        return messages

    async def notice(kind: str, name: str, room: str) -> dict[str, Any]:
        verb = "joined" if kind == "join" else "left"
        # The leaver is still a member while its notice goes out: leave it out of the list.
        leaving = use_ws_connection().id if kind == "leave" else None
        return {
            "kind": kind,
            "name": name,
            "text": f"{name} {verb}",
            "members": await members(room, leaving),
        }

    @ws.on_connect
    def take_name() -> None:
        conn = use_ws_connection()
        query = conn.request.query if conn.request is not None else {}
        conn.state["name"] = clean_name(query.get("name"), f"guest-{conn.id[:4]}")

    @ws.on_disconnect
    async def say_goodbye() -> None:
        conn = use_ws_connection()
        rooms = use_ws_server().rooms
        for room in conn.rooms:
            leave = await notice("leave", my_name(), room)
            await rooms.broadcast(room, "system", leave, exclude_id=conn.id)

    @ws.on_message("subscribe", ROOM, data=SubscribeData, reply=Joined)
    async def join() -> dict[str, Any]:
        """Join the room: its members and recent messages (or, with ``since``, the pushes
        missed since then, replayed before the reply)."""
        room = use_ws_message().path
        data = use_ws_data(SubscribeData)
        since = data.since if data is not None else None
        rooms = use_ws_rooms()
        new = room not in rooms.rooms()
        joined = await rooms.join_stream(
            since={"offset": since.offset, "epoch": since.epoch} if since else None,
            data={"name": my_name()},
        )
        # With since recovered, the replay was the history; otherwise (no since, or a gap
        # that could not be filled) the recent messages, up to where live pushes start.
        history = [] if joined.recovered else await recent(room, joined.offset, joined.epoch)
        # A resumed member's first subscribe with since is its return: announce it too.
        if new or (since is not None and use_ws_connection().resumed):
            await rooms.broadcast("system", await notice("join", my_name(), room))
        reply = {
            "room": use_route_params().get("room"),
            "name": my_name(),
            "members": await members(room),
            "history": history,
            "offset": joined.offset,
            "epoch": joined.epoch,
        }
        if joined.recovered is not None:
            reply["recovered"] = joined.recovered
        return reply

    @ws.on_message("unsubscribe", ROOM)
    async def leave() -> dict[str, bool]:
        room = use_ws_message().path
        rooms = use_ws_rooms()
        if room in rooms.rooms():
            await rooms.broadcast("system", await notice("leave", my_name(), room))
            await rooms.leave()
        return {"left": True}

    @ws.on_message("message", ROOM, data=Post, reply=Sent)
    async def message() -> dict[str, bool]:
        """Say something to the room (the sender included)."""
        msg = use_ws_message()
        rooms = use_ws_rooms()
        if msg.path not in rooms.rooms():
            raise WsError(403, "join the room first")
        text = use_ws_data(Post).text
        if not text.strip():
            raise WsError(400, "Invalid data: text: expected some visible characters")
        entry = {"name": my_name(), "text": text.strip(), "ts": int(time.time() * 1000)}
        await rooms.broadcast("message", entry, exclude_self=False)
        return {"sent": True}

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(HERE / "index.html")

    app = web.Application()
    app.router.add_get("/", index)
    add_client_route(app, "/wsevents-client.js")
    ws.attach(app, "/ws")
    return app


def app() -> web.Application:
    """The chat with its default options (a target for ``python -m wsevents``)."""
    return create_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="wsevents chat example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--history", type=int, default=50, help="pushes kept per room")
    parser.add_argument("--redis-url", help="share rooms and members with other instances")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("wsevents").info("chat on http://%s:%d/", args.host, args.port)
    transport = None
    if args.redis_url:
        from wsevents.transports.redis import RedisTransport

        transport = RedisTransport.from_url(args.redis_url)
    app = create_app(history_size=args.history, transport=transport)
    run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
