"""Fake connection and message contexts: call a handler or a hook as a plain function.

[`prepare_test_ws_message_context`][wsevents.testing.contexts.prepare_test_ws_message_context]
and
[`prepare_test_ws_connection_context`][wsevents.testing.contexts.prepare_test_ws_connection_context]
make the composables work without a server; the fake connection writes to a
[`RecordingSocket`][wsevents.testing.contexts.RecordingSocket].
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from .._context import MessageScope, current_app, current_connection, current_message
from ..app import WsApp
from ..connection import Connection
from ..protocol import ClientMessage

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "RecordingSocket",
    "TestConnectionContext",
    "TestMessageContext",
    "prepare_test_ws_connection_context",
    "prepare_test_ws_message_context",
]

_MISSING: Any = object()


class RecordingSocket:
    """A [`SocketLike`][wsevents.connection.SocketLike] that records what is sent to it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.pings = 0
        self.aborted = False
        self.buffered = 0

    @property
    def closed(self) -> bool:
        return self.close_code is not None or self.aborted

    def write(self, payload: bytes, binary: bool) -> bool:
        if self.closed:
            return False
        self.frames.append(payload)
        return True

    def buffer_size(self) -> int:
        return self.buffered

    def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    def ping(self) -> None:
        self.pings += 1

    def abort(self) -> None:
        self.aborted = True

    @property
    def messages(self) -> list[Any]:
        """Every recorded frame, decoded as JSON."""
        return [orjson.loads(f) for f in self.frames]


@dataclass
class TestConnectionContext:
    """What [`prepare_test_ws_connection_context`][] yields."""

    __test__ = False  # not a test class, although named like one (for pytest's collector)

    app: WsApp
    connection: Connection
    socket: RecordingSocket

    @property
    def sent(self) -> list[Any]:
        """Messages sent to the fake connection, decoded."""
        return self.socket.messages


@dataclass
class TestMessageContext(TestConnectionContext):
    """What [`prepare_test_ws_message_context`][] yields."""

    __test__ = False

    message: ClientMessage = field(default_factory=lambda: ClientMessage("", "/"))


_Ctx = TypeVar("_Ctx", bound=TestConnectionContext)


class _PreparedContext(Generic[_Ctx]):
    """A fake context for ``with`` or ``async with``.

    On exit the fake connection leaves every room it joined, so that later tests on the
    same app see only their own members. ``with`` removes the membership at once (a room
    left empty keeps its transport subscription); ``async with`` leaves through
    [`leave`][wsevents.RoomManager.leave], which also unsubscribes the room's channel.
    """

    __slots__ = ("_ctx", "_scope")

    def __init__(self, scope: contextlib.AbstractContextManager[_Ctx]) -> None:
        self._scope = scope

    def __enter__(self) -> _Ctx:
        self._ctx = self._scope.__enter__()
        return self._ctx

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._ctx.app.rooms._leave_all_now(self._ctx.connection)
        finally:
            self._scope.__exit__(*exc_info)

    async def __aenter__(self) -> _Ctx:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._ctx.app.rooms.leave_all(self._ctx.connection)
        finally:
            self._scope.__exit__(*exc_info)


@contextlib.contextmanager
def _connection_scope(
    app: WsApp | None, connection_id: str | None, request: web.Request | None
) -> Iterator[TestConnectionContext]:
    app = app if app is not None else WsApp(heartbeat=0)
    sock = RecordingSocket()
    conn = Connection(sock, id=connection_id, request=request, codec=app.codec)
    app_token = current_app.context_var.set(app)
    conn_token = current_connection.context_var.set(conn)
    try:
        yield TestConnectionContext(app, conn, sock)
    finally:
        current_connection.context_var.reset(conn_token)
        current_app.context_var.reset(app_token)


@contextlib.contextmanager
def _message_scope(
    event: str,
    path: str,
    data: Any,
    message_id: Any,
    params: Mapping[str, str] | None,
    app: WsApp | None,
    connection_id: str | None,
) -> Iterator[TestMessageContext]:
    with _connection_scope(app, connection_id, None) as ctx:
        has_id = message_id is not _MISSING
        msg = ClientMessage(event, path, data, message_id if has_id else None, has_id)
        if params is None:
            found = ctx.app.router.match(event, path)
            params = found.params if found is not None else {}
        token = current_message.context_var.set(MessageScope(msg, params, ctx.connection, ctx.app))
        try:
            yield TestMessageContext(ctx.app, ctx.connection, ctx.socket, msg)
        finally:
            current_message.context_var.reset(token)


def prepare_test_ws_connection_context(
    app: WsApp | None = None,
    *,
    connection_id: str | None = None,
    request: web.Request | None = None,
) -> _PreparedContext[TestConnectionContext]:
    """Run code as if inside a connection (``use_ws_connection()``, ``use_ws_server()``).

    A context manager for ``with`` or ``async with``. On exit the fake connection leaves
    every room it joined; ``async with`` also unsubscribes the channels of the rooms it
    left empty (use it with an app that has a transport).

    Example:
        ``with prepare_test_ws_connection_context() as ctx: use_ws_connection().send(...)``
    """
    return _PreparedContext(_connection_scope(app, connection_id, request))


def prepare_test_ws_message_context(
    event: str = "message",
    path: str = "/",
    data: Any = None,
    *,
    message_id: Any = _MISSING,
    params: Mapping[str, str] | None = None,
    app: WsApp | None = None,
    connection_id: str | None = None,
) -> _PreparedContext[TestMessageContext]:
    """Run code as if inside an ``on_message`` handler.

    ``params`` defaults to what ``app``'s router would extract for ``(event, path)`` when a
    route matches, else to no params. A context manager for ``with`` or ``async with``
    that leaves the rooms the handler joined on exit, like
    [`prepare_test_ws_connection_context`][].
    """
    return _PreparedContext(
        _message_scope(event, path, data, message_id, params, app, connection_id)
    )
