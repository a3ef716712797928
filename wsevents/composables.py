"""Composables: context-local access to the connection, message, params, rooms and server.

Each is a cheap synchronous function that reads a context variable; called where its
context does not exist, it raises a ``RuntimeError`` that says where it may be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, overload

from ._context import MessageScope, app_var, connection_var, message_var
from .connection import Connection
from .protocol import ClientMessage
from .rooms import DeliveryReport

if TYPE_CHECKING:
    from .app import WsApp

__all__ = [
    "RouteParams",
    "WsRooms",
    "use_route_params",
    "use_ws_connection",
    "use_ws_message",
    "use_ws_rooms",
    "use_ws_server",
]


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

    Raises:
        RuntimeError: called outside an ``on_message`` handler.
    """
    return _scope("use_ws_message").message


class RouteParams:
    """The route params of the current message (read-only, percent-decoded)."""

    __slots__ = ("params",)

    def __init__(self, params: Mapping[str, str]) -> None:
        self.params = params

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
    return RouteParams(_scope("use_route_params").params)


class WsRooms:
    """Rooms as seen from the current message (what [`use_ws_rooms`][] returns).

    The default room is the current message's path.
    """

    __slots__ = ("_scope",)

    def __init__(self, scope: MessageScope) -> None:
        self._scope = scope

    async def join(self, room: str | None = None) -> str:
        """Join ``room`` (default: the message path); returns the room name."""
        scope = self._scope
        name = scope.message.path if room is None else room
        await scope.app.rooms.join(scope.connection, name)
        return name

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


def use_ws_server() -> WsApp:
    """The current [`WsApp`][wsevents.WsApp]: connections, server-wide broadcast, send_to.

    Raises:
        RuntimeError: called outside any connection or message of a running app (use the
            ``WsApp`` object itself there).
    """
    app = app_var.get(None)
    if app is None:
        raise RuntimeError(
            "use_ws_server() called outside a wsevents connection; use the WsApp object itself"
        )
    return app
