"""Composables: context-local access to the connection, message, params, rooms and server.

Each is a cheap synchronous function that reads a context variable; called where its
context does not exist, it raises a ``RuntimeError`` that says where it may be used.
[`WsServer`][], what [`use_ws_server`][] returns, is the server-side API handlers
need, without registration, lifecycle or adapter entry points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._context import MessageScope, app_var, connection_var, message_var
from .cluster import Envelope
from .connection import Connection
from .history import History, StreamJoin
from .presence import Presence
from .protocol import ClientMessage, Codec, encode_push
from .rooms import DeliveryReport, RoomManager
from .transports.base import StreamPosition

if TYPE_CHECKING:
    pass

T = TypeVar("T")

__all__ = [
    "RouteParams",
    "WsRooms",
    "WsServer",
    "use_route_params",
    "use_ws_connection",
    "use_ws_data",
    "use_ws_message",
    "use_ws_rooms",
    "use_ws_server",
]


class WsServer:
    """The server-side API of one instance: its connections, server-wide broadcasts,
    pushes to one connection, and its rooms (what [`use_ws_server`][] returns).

    Attributes:
        rooms: the instance's [`RoomManager`][wsevents.RoomManager].
        presence: the instance's [`Presence`][wsevents.Presence]: counts and user lists of
            presence rooms.
        history: the instance's [`History`][wsevents.History]: history rooms, their
            offsets and recovery.
        instance_id: this instance's id (the origin of its envelopes).
    """

    __slots__ = (
        "_cluster",
        "_connections",
        "_encode",
        "history",
        "instance_id",
        "presence",
        "rooms",
    )
    # The push check lives on the RoomManager shared with the app: one switch for every
    # kind of push.

    def __init__(
        self,
        connections: Mapping[str, Connection],
        rooms: RoomManager,
        codec: Codec,
        presence: Presence | None = None,
        history: History | None = None,
    ) -> None:
        self._connections = connections
        self._encode = codec.encode
        self._cluster = rooms.cluster
        self.rooms = rooms
        self.presence = presence if presence is not None else Presence(rooms)
        self.history = history if history is not None else History(rooms)
        self.instance_id = rooms.instance_id

    def connections(self) -> tuple[Connection, ...]:
        """Every open connection of this instance."""
        return tuple(self._connections.values())

    def get_connection(self, connection_id: str) -> Connection | None:
        """The local connection with that id, or None."""
        return self._connections.get(connection_id)

    def room_connections(self, room: str) -> tuple[Connection, ...]:
        """Local members of ``room``."""
        return self.rooms.connections(room)

    async def broadcast(
        self,
        event: str,
        path: str,
        data: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> DeliveryReport:
        """Push to every connection of every instance (the caller included)."""
        check = self.rooms.check_push
        if check is not None:
            check(event, path, data)
        frame = encode_push(event, path, data, params, self._encode)
        sent = dropped = 0
        deliveries = self._cluster.deliveries
        for conn in self._connections.values():
            if conn.send_frame(frame):
                sent += 1
            else:
                dropped += 1
                deliveries.dropped(conn)
        deliveries.delivered += sent
        cluster = self._cluster
        if cluster.transport is None:
            return DeliveryReport(sent, 0, dropped)
        error = await cluster.publish(
            Envelope(cluster.instance_id, "broadcast", None, event, path, data, params)
        )
        return DeliveryReport(sent, 0, dropped, error is None, error)

    async def send_to(
        self,
        connection_id: str,
        event: str,
        path: str,
        data: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> bool:
        """Push to one connection, on whichever instance it lives.

        Returns:
            True when the connection exists (here, or on another instance according to the
            transport's directory); False otherwise.
        """
        conn = self._connections.get(connection_id)
        if conn is not None:
            # Connection.send checks the push itself, and counts it (delivered or dropped).
            conn.send(event, path, data, params)
            return True
        check = self.rooms.check_push
        if check is not None:
            check(event, path, data)
        return await self._cluster.send_remote(connection_id, event, path, data, params)

    async def disconnect_user(self, user: str, code: int = 4403, reason: str = "Revoked") -> int:
        """Close every connection of ``user`` (``Connection.user``) on every instance with
        ``code`` and ``reason`` (by default 4403 ``"Revoked"``, after which clients do not
        reconnect by themselves).

        Connections here are closed before it returns; other instances close theirs when
        the instruction arrives through the transport (at once, without a transport).

        Returns:
            The connections closed on this instance.

        Raises:
            ValueError: ``code`` is not a close code an application may send (1000, or
                3000 to 4999).
        """
        if code != 1000 and not 3000 <= code <= 4999:
            raise ValueError(f"close code {code} cannot be sent by an application")
        return await self._cluster.disconnect_user(user, code, reason)


def _scope(name: str) -> MessageScope:
    scope = message_var.get(None)
    if scope is None:
        raise RuntimeError(f"{name}() called outside an on_message handler")
    return scope


def use_ws_connection() -> Connection:
    """The current connection (in ``on_connect``, ``on_message`` and ``on_disconnect``).

    Raises:
        RuntimeError: called outside a connection's context.
    """
    conn = connection_var.get(None)
    if conn is None:
        raise RuntimeError(
            "use_ws_connection() called outside a connection "
            "(use it in on_connect, on_message or on_disconnect)"
        )
    return conn


def use_ws_message() -> ClientMessage:
    """The current message: ``event``, ``path``, ``data``, ``id``, ``raw``.

    On a route with a declared ``data=`` type, ``data`` is the validated value (a Struct,
    dataclass, model...) and ``raw`` the frame as received.

    Raises:
        RuntimeError: called outside an ``on_message`` handler.
    """
    return _scope("use_ws_message").message


class RouteParams:
    """The route params of the current message (read-only, percent-decoded).

    ``get`` and ``params`` give the text matched in the path; ``typed`` gives the values
    converted to the route's declared ``params=`` types (``{"id": int}`` makes
    ``typed["id"]`` an ``int``), and the undeclared ones as text.

    Attributes:
        params: every param as text.
    """

    __slots__ = ("_typed", "params")

    def __init__(self, params: Mapping[str, str], typed: Mapping[str, Any] | None = None) -> None:
        self.params = params
        self._typed = typed

    @property
    def typed(self) -> Mapping[str, Any]:
        """Every param, the declared ones converted (the same as ``params`` when the route
        declares no types)."""
        return self.params if self._typed is None else self._typed

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        """One param by name (``"*"`` for a wildcard), or ``default``."""
        return self.params.get(name, default)

    def __repr__(self) -> str:
        return f"RouteParams({dict(self.params)!r})"


def use_route_params() -> RouteParams:
    """Params of the route that matched the current message.

    Raises:
        RuntimeError: called outside an ``on_message`` handler.
    """
    scope = _scope("use_route_params")
    return RouteParams(scope.params, scope.typed_params)


def use_ws_data(tp: type[T]) -> T:
    """The current message's ``data``, validated as the route's declared ``data=`` type.

    ``tp`` must be the type the route declared (``data=Message`` → ``use_ws_data(Message)``
    returns that ``Message``); it is what a type checker sees as the result.

    Raises:
        RuntimeError: called outside an ``on_message`` handler, or on a route whose
            declared ``data`` type is not ``tp``.
    """
    scope = _scope("use_ws_data")
    declared = scope.route.data
    if declared is not tp:
        what = "declares no data type" if declared is None else f"declares data={declared!r}"
        raise RuntimeError(
            f"use_ws_data({tp!r}): the route {scope.route.event} {scope.route.pattern} {what}"
        )
    data: T = scope.message.data
    return data


class WsRooms:
    """Rooms as seen from the current message (what [`use_ws_rooms`][] returns).

    The default room is the current message's path.
    """

    __slots__ = ("_scope",)

    def __init__(self, scope: MessageScope) -> None:
        self._scope = scope

    async def join(self, room: str | None = None, *, data: Mapping[str, Any] | None = None) -> str:
        """Join ``room`` (default: the message path); returns the room name.

        In a presence room, ``data`` is the member data others see (e.g.
        ``{"name": "Ada"}``).
        """
        scope = self._scope
        name = scope.message.path if room is None else room
        await scope.app.rooms.join(scope.connection, name, data=data)
        return name

    async def join_stream(
        self,
        room: str | None = None,
        *,
        since: StreamPosition | Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> StreamJoin:
        """Join history room ``room`` (default: the message path) and return its position.

        With ``since`` (``{"offset", "epoch"}`` from an earlier join or push), every kept
        push after it is sent to the connection first, in order;
        [`StreamJoin.recovered`][wsevents.StreamJoin] tells whether they all could be.

        Raises:
            ValueError: ``room`` is not a history room, or ``since`` is malformed.
        """
        scope = self._scope
        name = scope.message.path if room is None else room
        return await scope.app.history.join(scope.connection, name, since=since, data=data)

    async def update_presence(
        self, data: Mapping[str, Any] | None, *, room: str | None = None
    ) -> bool:
        """Replace the current user's member data in presence room ``room`` (default: the
        message path); False when the connection is not a presence member there."""
        scope = self._scope
        name = scope.message.path if room is None else room
        return await scope.app.presence.update(scope.connection, name, data)

    def member_data(self, room: str | None = None) -> Mapping[str, Any] | None:
        """The current connection's member data in ``room`` (default: the message path):
        what its join passed and the room's ``admit`` returned (see
        [`Admit`][wsevents.Admit]); None when it has none or is not a member."""
        scope = self._scope
        name = scope.message.path if room is None else room
        return scope.app.rooms.member_data(scope.connection, name)

    async def leave(self, room: str | None = None) -> str:
        """Leave ``room`` (default: the message path); returns the room name."""
        scope = self._scope
        name = scope.message.path if room is None else room
        await scope.app.rooms.leave(scope.connection, name)
        return name

    async def broadcast(
        self,
        event: str,
        data: Any = None,
        *,
        room: str | None = None,
        exclude_self: bool = True,
    ) -> DeliveryReport:
        """Push ``event`` to every member of ``room`` on every instance.

        The push's ``path`` is the room and its ``params`` the current route's params (when
        non-empty), even when ``room`` overrides the default.
        """
        scope = self._scope
        return await scope.app.rooms.broadcast(
            scope.message.path if room is None else room,
            event,
            data,
            params=scope.params,
            exclude_id=scope.connection.id if exclude_self else None,
        )

    def rooms(self) -> tuple[str, ...]:
        """The rooms the current connection is in, in join order."""
        return self._scope.connection.rooms


def use_ws_rooms() -> WsRooms:
    """Join, leave and broadcast to rooms from the current message.

    Raises:
        RuntimeError: called outside an ``on_message`` handler.
    """
    return WsRooms(_scope("use_ws_rooms"))


def use_ws_server() -> WsServer:
    """The current app's [`WsServer`][]: connections, server-wide broadcast, send_to.

    It is ``app.server`` of the current [`WsApp`][wsevents.WsApp] (the same object on
    every call).

    Raises:
        RuntimeError: called outside any connection or message of a running app (use the
            ``WsApp`` object itself there).
    """
    app = app_var.get(None)
    if app is None:
        raise RuntimeError(
            "use_ws_server() called outside a wsevents connection; use the WsApp object itself"
        )
    return app.server
