"""The wsevents reference app: every public feature, driven by the benchmarks and checks.

Run it with ``python -m wsevents run examples.reference_app:app`` (add
``--redis-url redis://127.0.0.1:6379/0`` to run several instances).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec

from wsevents import (
    RateLimit,
    WsApp,
    WsError,
    create_ws_app,
    use_route_params,
    use_ws_connection,
    use_ws_data,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)

app = create_ws_app()


@app.on_connect
def authenticate() -> None:
    request = use_ws_connection().request
    token = request.query.get("token") if request is not None else None
    if token == "bad":
        raise WsError(401, "Unauthorized")
    if token == "boom":
        raise RuntimeError("token service exploded")  # logged, never sent


@app.on_disconnect
async def say_goodbye() -> None:
    conn = use_ws_connection()
    rooms = use_ws_server().rooms
    for room in conn.rooms:
        await rooms.broadcast(room, "system", {"text": "left", "id": conn.id}, exclude_id=conn.id)


@app.on_message("rpc", "/echo")
def echo() -> Any:
    return use_ws_message().data


@app.on_message("rpc", "/users/:id")
def user() -> dict[str, Any]:
    return {"id": use_route_params().get("id")}


@app.on_message("rpc", "/error/:code")
def error() -> None:
    raise WsError(int(use_route_params().get("code", "500")), "custom error")


@app.on_message("rpc", "/crash")
def crash() -> None:
    raise RuntimeError("secret internals")  # the client only sees 500 "Internal Error"


@app.on_message("rpc", "/none")
def nothing() -> None:
    return None


@app.on_message("rpc", "/whoami")
def whoami() -> dict[str, str]:
    return {"id": use_ws_connection().id}


@app.on_message("rpc", "/slow")
async def slow() -> dict[str, Any]:
    data = use_ws_message().data
    ms = data.get("ms", 0) if isinstance(data, dict) else 0
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms <= 60_000:
        raise WsError(400, "data.ms must be a number of milliseconds up to 60000")
    await asyncio.sleep(ms / 1000)
    return {"slept": ms}


@app.on_message("subscribe", "/chat/rooms/:room")
async def subscribe() -> dict[str, bool]:
    await use_ws_rooms().join()
    return {"subscribed": True}


@app.on_message("unsubscribe", "/chat/rooms/:room")
async def unsubscribe() -> dict[str, bool]:
    await use_ws_rooms().leave()
    return {"unsubscribed": True}


app.declare_push(
    "message",
    "/chat/rooms/:room",
    summary="A member's message (its data as sent), to the other members of the room",
)


@app.on_message("message", "/chat/rooms/:room")
async def message() -> dict[str, bool]:
    await use_ws_rooms().broadcast("message", use_ws_message().data)
    return {"sent": True}


@app.on_message("message-all", "/chat/rooms/:room")
async def message_all() -> dict[str, bool]:
    await use_ws_rooms().broadcast("message", use_ws_message().data, exclude_self=False)
    return {"sent": True}


@app.on_message("message-to", "/chat/rooms/:room")
async def message_to() -> dict[str, bool]:
    data = use_ws_message().data
    if not isinstance(data, dict) or not isinstance(data.get("room"), str):
        raise WsError(400, "data.room must be a string")
    await use_ws_rooms().broadcast("message", data.get("payload"), room=data["room"])
    return {"sent": True}


def _team_room() -> str:
    params = use_route_params()
    return f"team:{params.get('team')}:{params.get('channel')}"


@app.on_message("join", "/teams/:team/channels/:channel")
async def join_team() -> dict[str, bool]:
    await use_ws_rooms().join(_team_room())
    return {"joined": True}


@app.on_message("say", "/teams/:team/channels/:channel")
async def say() -> dict[str, bool]:
    await use_ws_rooms().broadcast("say", use_ws_message().data, room=_team_room())
    return {"sent": True}


@app.on_message("rpc", "/rooms")
def rooms() -> list[str]:
    return list(use_ws_rooms().rooms())


@app.on_message("rpc", "/room-size")
def room_size() -> dict[str, int]:
    data = use_ws_message().data
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str):
        raise WsError(400, "data.room must be a string")
    return {"size": len(use_ws_server().room_connections(room))}


@app.on_message("rpc", "/announce")
async def announce() -> dict[str, bool]:
    await use_ws_server().broadcast("announcement", "/announce", use_ws_message().data)
    return {"sent": True}


@app.on_message("rpc", "/direct")
async def direct() -> dict[str, bool]:
    data = use_ws_message().data
    if not isinstance(data, dict) or not isinstance(data.get("to"), str):
        raise WsError(400, "data.to must be a connection id")
    found = await use_ws_server().send_to(
        data["to"], "notification", "/private", data.get("payload")
    )
    return {"sent": found}


@app.on_message("rpc", "/self-push")
def self_push() -> dict[str, bool]:
    use_ws_connection().send("notification", "/alerts", {"text": "welcome"})
    return {"ok": True}


@app.on_message("rpc", "/kick")
def kick() -> None:
    use_ws_connection().close(4000, "kicked")


# -- contracts: every route under /admin/ sits behind one group guard ----------------------


def is_admin() -> bool:
    """Only connections opened with ``?role=admin`` pass; the others get 403 "Forbidden"."""
    request = use_ws_connection().request
    return request is not None and request.query.get("role") == "admin"


admin = app.group("/admin", guards=[is_admin])


@admin.on_message("rpc", "/stats")
def admin_stats() -> dict[str, int]:
    """Open connections on this instance."""
    return {"connections": len(use_ws_server().connections())}


@admin.on_message("rpc", "/echo")
def admin_echo() -> Any:
    return use_ws_message().data


# -- contracts: declared data, reply and param types ---------------------------------------


class Message(msgspec.Struct):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    tags: Annotated[list[str], msgspec.Meta(max_length=5)] = []


class Ack(msgspec.Struct):
    ok: bool
    length: int


class Item(msgspec.Struct):
    id: int


@app.on_message("rpc", "/typed/message", data=Message, reply=Ack)
def typed_message() -> Ack:
    """Check a message and count its characters (code points)."""
    return Ack(ok=True, length=len(use_ws_data(Message).text))


@app.on_message("rpc", "/typed/items/:id", params={"id": int}, reply=Item)
def typed_item() -> Item:
    """An item by its integer id."""
    return Item(id=use_route_params().typed["id"])


# -- presence: who is in a room, on every instance, by user ------------------------------


def add_presence(ws: WsApp) -> None:
    """The presence routes (a function, so that tests can build several instances)."""
    ws.presence.track("/presence/rooms/:room", mode="list")

    @ws.on_connect
    def identify() -> None:
        """``?user=<id>`` names the connection's user (by default the connection id)."""
        request = use_ws_connection().request
        user = request.query.get("user") if request is not None else None
        if user:
            use_ws_connection().user = user

    @ws.on_message("join", "/presence/rooms/:room")
    async def presence_join() -> dict[str, bool]:
        data = use_ws_message().data
        name = data.get("name") if isinstance(data, dict) else None
        await use_ws_rooms().join(data={"name": name})
        return {"joined": True}

    @ws.on_message("leave", "/presence/rooms/:room")
    async def presence_leave() -> dict[str, bool]:
        await use_ws_rooms().leave()
        return {"left": True}

    @ws.on_message("message", "/presence/rooms/:room")
    async def presence_message() -> dict[str, bool]:
        await use_ws_rooms().broadcast("message", use_ws_message().data)
        return {"sent": True}

    @ws.on_message("rpc", "/presence/count")
    async def presence_count() -> dict[str, int]:
        room, _ = _presence_query()
        count = await use_ws_server().presence.count(room)
        return {"connections": count.connections, "users": count.users}

    @ws.on_message("rpc", "/presence/list")
    async def presence_list() -> dict[str, Any]:
        room, data = _presence_query()
        offset, limit = data.get("offset", 0), data.get("limit", 50)
        for value in (offset, limit):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise WsError(400, "data.offset and data.limit must be integers >= 0")
        page = await use_ws_server().presence.users(room, offset, min(limit, 100))
        members = [
            {"user": m.user, "name": (m.data or {}).get("name"), "connections": m.connections}
            for m in page.members
        ]
        return {"total": page.total, "members": members}


def _presence_query() -> tuple[str, dict[str, Any]]:
    data = use_ws_message().data
    if not isinstance(data, dict) or not isinstance(data.get("room"), str):
        raise WsError(400, "data.room must be a string")
    return data["room"], data


add_presence(app)


# -- recovery: history rooms with offsets and epochs ---------------------------------------


def add_history(ws: WsApp) -> None:
    """The history routes (a function, so that tests can build several instances)."""
    ws.history.track("/feed/rooms/:room", size=1000, ttl=600.0)

    @ws.on_message("subscribe", "/feed/rooms/:room")
    async def feed_subscribe() -> dict[str, Any]:
        data = use_ws_message().data
        since = data.get("since") if isinstance(data, dict) else None
        if since is not None and not _is_position(since):
            raise WsError(400, 'data.since must be {"offset": <int >= 0>, "epoch": <string>}')
        joined = await use_ws_rooms().join_stream(since=since)
        return joined.as_reply()

    @ws.on_message("unsubscribe", "/feed/rooms/:room")
    async def feed_unsubscribe() -> dict[str, bool]:
        await use_ws_rooms().leave()
        return {"unsubscribed": True}

    @ws.on_message("publish", "/feed/rooms/:room")
    async def feed_publish() -> dict[str, Any]:
        report = await use_ws_rooms().broadcast(
            "message", use_ws_message().data, exclude_self=False
        )
        return {"sent": True, "offset": report.offset}


def _is_position(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    offset, epoch = value.get("offset"), value.get("epoch")
    return type(offset) is int and offset >= 0 and isinstance(epoch, str) and len(epoch) <= 64


add_history(app)


# -- recovery: sessions and idempotent calls -------------------------------------------------


def add_sessions(ws: WsApp, *, ttl: float = 60.0) -> None:
    """Sessions (``rpc /session``, ``?session=`` on reconnect) and a counter shared by every
    instance (a function, so that tests can build several instances)."""
    ws.sessions.enable(ttl=ttl)

    @ws.on_message("rpc", "/counter/incr")
    async def counter_incr() -> dict[str, int]:
        """Add 1 to the counter ``data.key`` and return its new value (retry it with the
        same ``idem``: it counts once)."""
        data = use_ws_message().data
        key = data.get("key") if isinstance(data, dict) else None
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise WsError(400, "data.key must be a string of 1 to 200 characters")
        return {"value": await ws.sessions.store.incr("counter:" + key)}


add_sessions(app)


# -- access and flow control: rate limits -----------------------------------------------------


@app.on_message("rpc", "/limited/echo", rate_limit=RateLimit(5, per=1.0, burst=5))
def limited_echo() -> Any:
    """Echo ``data``, at most 5 calls a second per connection (429 with retry_after)."""
    return use_ws_message().data


# -- access and flow control: revocation (``?user=`` is read by identify(), above) ----------


@app.on_message("rpc", "/revoke")
async def revoke() -> dict[str, bool]:
    """Close every connection of ``data.user``, on every instance, with 4403 "Revoked"."""
    data = use_ws_message().data
    user = data.get("user") if isinstance(data, dict) else None
    if not isinstance(user, str):
        raise WsError(400, "data.user must be a string")
    await use_ws_server().disconnect_user(user, 4403, "Revoked")
    return {"ok": True}


# -- access and flow control: join admission ------------------------------------------------


def knows_the_key(conn: object, room: str) -> bool:
    """Admit a join of a private room only with ``data.key == "sesame"``."""
    data = use_ws_message().data
    return isinstance(data, dict) and data.get("key") == "sesame"


app.room_policy("/private/rooms/:room", admit=knows_the_key)


@app.on_message("subscribe", "/private/rooms/:room")
async def private_subscribe() -> dict[str, bool]:
    await use_ws_rooms().join()  # the policy refuses with 403 "Forbidden"
    return {"subscribed": True}


@app.on_message("unsubscribe", "/private/rooms/:room")
async def private_unsubscribe() -> dict[str, bool]:
    await use_ws_rooms().leave()
    return {"unsubscribed": True}


@app.on_message("message", "/private/rooms/:room")
async def private_message() -> dict[str, bool]:
    await use_ws_rooms().broadcast("message", use_ws_message().data)
    return {"sent": True}


# -- access and flow control: room capacity -------------------------------------------------


def add_capped_rooms(ws: WsApp) -> None:
    """The capped rooms: at most 3 members per room, counted across every instance (a
    function, so that tests can build several instances)."""
    ws.room_policy("/capped/rooms/:room", max_members=3)
    ws.declare_push(
        "message",
        "/capped/rooms/:room",
        summary="A member's message (its data as sent), to the other members of the room",
    )

    @ws.on_message("subscribe", "/capped/rooms/:room")
    async def capped_subscribe() -> dict[str, bool]:
        await use_ws_rooms().join()  # a 4th member is refused with 409 "Room is full"
        return {"subscribed": True}

    @ws.on_message("unsubscribe", "/capped/rooms/:room")
    async def capped_unsubscribe() -> dict[str, bool]:
        await use_ws_rooms().leave()  # frees the place
        return {"unsubscribed": True}

    @ws.on_message("message", "/capped/rooms/:room")
    async def capped_message() -> dict[str, bool]:
        await use_ws_rooms().broadcast("message", use_ws_message().data)
        return {"sent": True}


add_capped_rooms(app)
