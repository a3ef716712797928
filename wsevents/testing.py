"""Testing helpers: fake connection/message contexts, an in-process client, pytest fixtures.

Loaded as a pytest plugin (entry point ``wsevents``), it provides the fixture
``ws_client``: ``client = await ws_client(ws_app)`` connects a :class:`WsTestClient` to
``ws_app`` served by pytest-aiohttp's ``aiohttp_client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, web

from ._context import MessageScope, current_app, current_connection, current_message
from .app import WsApp
from .connection import Connection
from .exceptions import WsClientError
from .protocol import ClientMessage
from .server import attach

__all__ = [
    "RecordingSocket",
    "TestConnectionContext",
    "TestMessageContext",
    "WsTestClient",
    "prepare_test_ws_connection_context",
    "prepare_test_ws_message_context",
    "ws_client",
]

_MISSING: Any = object()


class RecordingSocket:
    """A :class:`~wsevents.connection.SocketLike` that records what is sent to it."""

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
    """What :func:`prepare_test_ws_connection_context` yields."""

    app: WsApp
    connection: Connection
    socket: RecordingSocket

    @property
    def sent(self) -> list[Any]:
        """Messages sent to the fake connection, decoded."""
        return self.socket.messages


@dataclass
class TestMessageContext(TestConnectionContext):
    """What :func:`prepare_test_ws_message_context` yields."""

    message: ClientMessage = field(default_factory=lambda: ClientMessage("", "/"))


@contextlib.contextmanager
def prepare_test_ws_connection_context(
    app: WsApp | None = None,
    *,
    connection_id: str | None = None,
    request: web.Request | None = None,
) -> Iterator[TestConnectionContext]:
    """Run code as if inside a connection (``use_ws_connection()``, ``use_ws_server()``).

    Example:
        ``with prepare_test_ws_connection_context() as ctx: use_ws_connection().send(...)``
    """
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
def prepare_test_ws_message_context(
    event: str = "message",
    path: str = "/",
    data: Any = None,
    *,
    message_id: Any = _MISSING,
    params: Mapping[str, str] | None = None,
    app: WsApp | None = None,
    connection_id: str | None = None,
) -> Iterator[TestMessageContext]:
    """Run code as if inside an ``on_message`` handler.

    ``params`` defaults to what ``app``'s router would extract for ``(event, path)`` when a
    route matches, else to no params.
    """
    with prepare_test_ws_connection_context(app, connection_id=connection_id) as ctx:
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


class WsTestClient:
    """A protocol-aware client over an aiohttp client WebSocket.

    Replies are matched to :meth:`call` by id; everything else (pushes, replies nobody
    waits for) is queued for :meth:`next_push` / :meth:`next_message`.
    """

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[Any]] = {}
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    frame = orjson.loads(msg.data)
                    waiter = (
                        self._pending.pop(frame.get("id"), None)
                        if isinstance(frame, dict) and "event" not in frame
                        else None
                    )
                    if waiter is not None and not waiter.done():
                        waiter.set_result(frame)
                    else:
                        self._inbox.put_nowait(frame)
        finally:
            self.close_code = self.ws.close_code
            extra = getattr(self.ws, "_close_reason", None)
            self.close_reason = extra if isinstance(extra, str) else None
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(WsClientError(503, "Connection lost"))
            self._pending.clear()
            if not self._closed.done():
                self._closed.set_result(self.close_code)

    async def send(
        self, event: str, path: str, data: Any = _MISSING, *, message_id: Any = _MISSING
    ) -> None:
        """Send one message (fire-and-forget unless ``message_id`` is given)."""
        msg: dict[str, Any] = {"event": event, "path": path}
        if data is not _MISSING:
            msg["data"] = data
        if message_id is not _MISSING:
            msg["id"] = message_id
        await self.ws.send_str(orjson.dumps(msg).decode())

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is (text for ``str``, binary for ``bytes``)."""
        if isinstance(frame, str):
            await self.ws.send_str(frame)
        else:
            await self.ws.send_bytes(frame)

    async def call(
        self, event: str, path: str, data: Any = _MISSING, *, timeout: float = 5.0
    ) -> Any:
        """Send an RPC and return the reply's ``data``.

        Raises:
            WsClientError: the server's error reply, 408 on timeout, 503 when the
                connection closes first.
        """
        message_id = next(self._ids)
        return await self.call_raw(event, path, data, message_id=message_id, timeout=timeout)

    async def call_raw(
        self, event: str, path: str, data: Any = _MISSING, *, message_id: Any, timeout: float = 5.0
    ) -> Any:
        """Like :meth:`call` with an explicit id (e.g. ``None``, ``0`` or ``""``)."""
        reply = await self.request(event, path, data, message_id=message_id, timeout=timeout)
        if "error" in reply:
            err = reply["error"]
            raise WsClientError(err.get("code", 500), err.get("message"))
        return reply.get("data")

    async def request(
        self, event: str, path: str, data: Any = _MISSING, *, message_id: Any, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send an RPC and return the whole reply object."""
        if self.close_code is not None or self.ws.closed:
            raise WsClientError(503, "Not connected")
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = waiter
        await self.send(event, path, data, message_id=message_id)
        try:
            reply: dict[str, Any] = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self._pending.pop(message_id, None)
            raise WsClientError(408, "Request timeout") from None
        return reply

    async def next_message(self, timeout: float = 5.0) -> Any:
        """The next frame that no :meth:`call` claimed (push or stray reply)."""
        try:
            return await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no message within {timeout} s") from None

    async def next_push(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next push ``{"event", "path", ...}``; fails on a stray reply."""
        frame = await self.next_message(timeout)
        assert isinstance(frame, dict) and "event" in frame, f"expected a push, got {frame!r}"
        return frame

    def pending_messages(self) -> list[Any]:
        """Frames received and not yet taken, without waiting."""
        out = []
        while not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close the socket; returns the close code."""
        return await asyncio.wait_for(asyncio.shield(self._closed), timeout)

    async def close(self) -> None:
        """Close the socket and stop reading."""
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._reader, 2.0)


ClientFactory = Callable[..., Awaitable[WsTestClient]]


@pytest.fixture
async def ws_client(aiohttp_client: Any) -> AsyncIterator[ClientFactory]:
    """Factory fixture: ``await ws_client(ws_app, path="/ws", headers=None, query=None)``.

    Each WsApp is served once (on a test server from ``aiohttp_client``); every call opens
    one more connection to it. Everything is closed at the end of the test.
    """
    servers: dict[int, Any] = {}
    clients: list[WsTestClient] = []

    async def connect(
        ws_app: WsApp,
        path: str = "/ws",
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> WsTestClient:
        server = servers.get(id(ws_app))
        if server is None:
            server = servers[id(ws_app)] = await aiohttp_client(
                attach(ws_app, web.Application(), path)
            )
        ws = await server.ws_connect(path, headers=headers, params=query)
        client = WsTestClient(ws)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()
