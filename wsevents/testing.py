"""Testing helpers: fake connection/message contexts, an in-process client, pytest fixtures.

Loaded as a pytest plugin (entry point ``wsevents``), it provides the fixture
``ws_client``: ``client = await ws_client(ws_app)`` connects a [`WsTestClient`][] to
``ws_app`` served by pytest-aiohttp's ``aiohttp_client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import random
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, web

from ._context import MessageScope, current_app, current_connection, current_message
from .app import WsApp
from .cluster import ROOM_CHANNEL_PREFIX
from .connection import Connection
from .exceptions import WsClientError
from .protocol import ClientMessage
from .server import attach
from .transports.base import BroadcastTransport
from .transports.memory import MemoryBus, MemoryTransport

__all__ = [
    "RecordingSocket",
    "TestConnectionContext",
    "TestMessageContext",
    "TransportFactory",
    "WsCluster",
    "WsTestClient",
    "assert_delivered_once",
    "check_transport",
    "prepare_test_ws_connection_context",
    "prepare_test_ws_message_context",
    "serve_memory_cluster",
    "ws_client",
    "ws_cluster",
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


def _id_key(message_id: Any) -> bytes:
    """A hashable key for any JSON id (lists and objects too; 1 and "1" stay apart)."""
    return orjson.dumps(message_id, option=orjson.OPT_SORT_KEYS)


class WsTestClient:
    """A protocol-aware client over an aiohttp client WebSocket.

    Replies are matched to [`call`][] by id; everything else (pushes, replies nobody
    waits for) is queued for [`next_push`][] / [`next_message`][].
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
            while True:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.CLOSE:
                    # aiohttp keeps the close code but not the reason: take it from the frame.
                    self.close_reason = msg.extra if isinstance(msg.extra, str) else None
                    break
                if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    frame = orjson.loads(msg.data)
                    is_reply = isinstance(frame, dict) and "event" not in frame
                    waiter = self._pending.pop(_id_key(frame.get("id")), None) if is_reply else None
                    if waiter is not None and not waiter.done():
                        waiter.set_result(frame)
                    else:
                        self._inbox.put_nowait(frame)
        finally:
            self.close_code = self.ws.close_code
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
        """Like [`call`][] with an explicit id (e.g. ``None``, ``0`` or ``""``)."""
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
        self._pending[_id_key(message_id)] = waiter
        await self.send(event, path, data, message_id=message_id)
        try:
            reply: dict[str, Any] = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self._pending.pop(_id_key(message_id), None)
            raise WsClientError(408, "Request timeout") from None
        return reply

    async def next_message(self, timeout: float = 5.0) -> Any:
        """The next frame that no [`call`][] claimed (push or stray reply)."""
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
        # The reader stops at CLOSING, before aiohttp knows the code of a close we started.
        self.close_code = self.ws.close_code


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


# -- broadcast transports: the conformance suite ------------------------------------------

TransportFactory = Callable[[], "BroadcastTransport | Awaitable[BroadcastTransport]"]
"""Makes one more transport on the shared medium (see [`check_transport`][])."""


class _Inbox:
    """What one subscriber received, per channel, and a way to wait for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: dict[str, list[str]] = {}
        self.generations: dict[str, list[int]] = {}
        self.not_str: list[Any] = []
        self._changed = asyncio.Event()

    def handler(self, channel: str, *, generation: int = 0, is_async: bool = False) -> Any:
        def record(payload: Any) -> None:
            if not isinstance(payload, str):
                self.not_str.append(payload)
                payload = repr(payload)
            self.received.setdefault(channel, []).append(payload)
            self.generations.setdefault(channel, []).append(generation)
            self._changed.set()

        if not is_async:
            return record

        async def handle(payload: Any) -> None:
            await asyncio.sleep(0)  # really suspend: the transport must await the handler
            record(payload)

        return handle

    def on(self, channel: str) -> list[str]:
        return self.received.get(channel, [])


class _TransportRun:
    """One check of [`check_transport`][]: its transports, channels and failures."""

    def __init__(
        self, factory: TransportFactory, prefix: str, check: str, timeout: float, quiet: float
    ) -> None:
        self.factory = factory
        self.prefix = prefix
        self.check = check
        self.timeout = timeout
        self.quiet = quiet
        self.opened: list[tuple[str, Any, set[str]]] = []

    def fail(self, text: str) -> AssertionError:
        return AssertionError(f"check_transport [{self.check}]: {text}")

    def channel(self, name: str) -> str:
        return f"{self.prefix}{self.check}:{name}"

    async def call(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Call an async transport method, bounded by the timeout."""
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await fn(*args)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise self.fail(f"{what} did not return within {self.timeout} s") from None
            raise self.fail(f"{what} raised {exc!r}") from exc

    async def open(self, name: str) -> _Probe:
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                transport = self.factory()
                if inspect.isawaitable(transport):
                    transport = await transport
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise self.fail(f"the factory did not return within {self.timeout} s") from None
            raise self.fail(f"the factory raised {exc!r}") from exc
        for method in ("publish", "subscribe", "unsubscribe", "start", "close"):
            fn = getattr(transport, method, None)
            if not callable(fn):
                raise self.fail(f"the factory returned {transport!r}, which has no {method}()")
            if not inspect.iscoroutinefunction(fn):
                raise self.fail(f"{name}: {method}() is not async (the contract is async)")
        probe = _Probe(self, name, transport)
        self.opened.append((name, transport, probe.channels))
        await self.call(f"{name}.start()", transport.start)
        return probe

    async def close(self) -> None:
        """Unsubscribe what each transport opened still has, then close it."""
        errors: list[str] = []
        for name, transport, channels in self.opened:
            try:
                for channel in sorted(channels):
                    await self.call(
                        f"{name}.unsubscribe({channel!r})", transport.unsubscribe, channel
                    )
                await self.call(f"{name}.close()", transport.close)
            except AssertionError as exc:
                errors.append(str(exc))
        self.opened.clear()
        if errors:
            raise AssertionError("; ".join(errors))

    async def wait(self, inbox: _Inbox, channel: str, count: int, what: str) -> None:
        """Wait until ``inbox`` holds ``count`` payloads on ``channel``."""
        try:
            async with asyncio.timeout(self.timeout):
                while len(inbox.on(channel)) < count:
                    inbox._changed.clear()
                    await inbox._changed.wait()
        except TimeoutError:
            got = inbox.on(channel)
            raise self.fail(
                f"{what}: subscriber {inbox.name} received {len(got)} of {count} payloads on "
                f"{channel!r} within {self.timeout} s (first received: {got[:5]!r})"
            ) from None

    async def quiet_window(self) -> None:
        """Let late (duplicate or stray) deliveries arrive before counting."""
        await asyncio.sleep(self.quiet)

    def expect(self, inbox: _Inbox, channel: str, expected: list[str], what: str) -> None:
        """``inbox`` received exactly ``expected`` on ``channel``, in that order."""
        if inbox.not_str:
            raise self.fail(
                f"{what}: subscriber {inbox.name} was called with a non-str payload "
                f"{inbox.not_str[0]!r} (handlers receive the published str)"
            )
        got = inbox.on(channel)
        if got == expected:
            return
        missing = [p for p in expected if p not in got]
        foreign = [p for p in got if p not in expected]
        dupes = sorted({p for p in got if got.count(p) > 1})
        if missing:
            detail = f"lost {len(missing)} payload(s), e.g. {missing[:3]!r}"
        elif foreign:
            detail = f"received {len(foreign)} payload(s) not published there, e.g. {foreign[:3]!r}"
        elif dupes:
            detail = f"received duplicates, e.g. {dupes[:3]!r}"
        else:
            first = next(i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e)
            detail = f"out of order from position {first}: {got[first : first + 3]!r}"
        raise self.fail(
            f"{what}: subscriber {inbox.name} on {channel!r} {detail} "
            f"({len(got)} received, {len(expected)} expected)"
        )


class _Probe:
    """One transport under test, with bounded calls and a record of its subscriptions."""

    def __init__(self, run: _TransportRun, name: str, transport: Any) -> None:
        self.run = run
        self.name = name
        self.transport = transport
        self.channels: set[str] = set()

    async def publish(self, channel: str, payload: str) -> None:
        await self.run.call(
            f"{self.name}.publish({channel!r})", self.transport.publish, channel, payload
        )

    async def subscribe(self, channel: str, handler: Any) -> None:
        await self.run.call(
            f"{self.name}.subscribe({channel!r})", self.transport.subscribe, channel, handler
        )
        self.channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.run.call(
            f"{self.name}.unsubscribe({channel!r})", self.transport.unsubscribe, channel
        )
        self.channels.discard(channel)


async def _check_delivery(run: _TransportRun) -> None:
    a, b, c = await run.open("a"), await run.open("b"), await run.open("c")
    channel = run.channel("room")
    inbox_a, inbox_b = _Inbox("a"), _Inbox("b")
    await a.subscribe(channel, inbox_a.handler(channel))
    await b.subscribe(channel, inbox_b.handler(channel, is_async=True))
    await c.publish(channel, "one")
    await c.publish(channel, "two")
    what = "a publish reaches every subscriber of the channel"
    for inbox in (inbox_a, inbox_b):
        await run.wait(inbox, channel, 2, what)
    await run.quiet_window()
    for inbox in (inbox_a, inbox_b):
        run.expect(inbox, channel, ["one", "two"], what)


async def _check_echo(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    channel = run.channel("room")
    inbox_a, inbox_b = _Inbox("a (the publisher)"), _Inbox("b")
    await a.subscribe(channel, inbox_a.handler(channel))
    await b.subscribe(channel, inbox_b.handler(channel))
    await a.publish(channel, "echo")
    what = "the publisher's own subscriber receives its publish (echo, like Redis pub/sub)"
    await run.wait(inbox_b, channel, 1, what)
    await run.wait(inbox_a, channel, 1, what)
    await run.quiet_window()
    run.expect(inbox_a, channel, ["echo"], what)
    run.expect(inbox_b, channel, ["echo"], what)


async def _check_subscribe_is_live(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    inbox_a, inbox_b = _Inbox("a"), _Inbox("b")
    rounds = 20
    for i in range(rounds):
        remote, own = run.channel(f"remote-{i}"), run.channel(f"own-{i}")
        await b.subscribe(remote, inbox_b.handler(remote))
        await a.publish(remote, f"remote-{i}")
        await a.subscribe(own, inbox_a.handler(own))
        await a.publish(own, f"own-{i}")
    what = "a publish right after subscribe() returned is delivered"
    for i in range(rounds):
        await run.wait(inbox_b, run.channel(f"remote-{i}"), 1, what)
        await run.wait(inbox_a, run.channel(f"own-{i}"), 1, what)
    await run.quiet_window()
    for i in range(rounds):
        run.expect(inbox_b, run.channel(f"remote-{i}"), [f"remote-{i}"], what)
        run.expect(inbox_a, run.channel(f"own-{i}"), [f"own-{i}"], what)


async def _check_unsubscribe(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    channel, other = run.channel("room"), run.channel("other")
    inbox_a, inbox_b = _Inbox("a"), _Inbox("b")
    await a.subscribe(channel, inbox_a.handler(channel))
    await b.subscribe(channel, inbox_b.handler(channel))
    await b.subscribe(other, inbox_b.handler(other))
    await a.publish(channel, "before")
    await run.wait(inbox_b, channel, 1, "delivery before unsubscribe")
    await b.unsubscribe(channel)
    await a.publish(channel, "after-1")
    await a.publish(channel, "after-2")
    await a.publish(other, "other")
    await run.wait(inbox_a, channel, 3, "a subscriber that stayed keeps receiving")
    await run.wait(inbox_b, other, 1, "unsubscribing one channel keeps the others")
    await run.quiet_window()
    run.expect(inbox_b, channel, ["before"], "unsubscribe() stops delivery")
    run.expect(inbox_a, channel, ["before", "after-1", "after-2"], "delivery to the others")
    await b.subscribe(channel, inbox_b.handler(channel, generation=1))
    await a.publish(channel, "again")
    what = "subscribing again after unsubscribe() delivers new payloads only"
    await run.wait(inbox_b, channel, 2, what)
    await run.quiet_window()
    run.expect(inbox_b, channel, ["before", "again"], what)


async def _check_order(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    channel = run.channel("room")
    inbox_a, inbox_b = _Inbox("a"), _Inbox("b")
    await a.subscribe(channel, inbox_a.handler(channel))
    await b.subscribe(channel, inbox_b.handler(channel))
    payloads = [f"{i:03d}" for i in range(200)]
    for payload in payloads:
        await a.publish(channel, payload)
    what = "payloads on one channel arrive in publish order"
    for inbox in (inbox_b, inbox_a):
        await run.wait(inbox, channel, len(payloads), what)
    await run.quiet_window()
    for inbox in (inbox_b, inbox_a):
        run.expect(inbox, channel, payloads, what)


# Room names are free text: glob characters and prefixes of each other must stay apart.
_ISOLATION_NAMES = (
    "plain",
    "plain:sub",
    "glob*",
    "glob?",
    "br[ac]ket",
    "/chat/general",
    "/chat/general/",
    "with space",
    "uni-ĉambro",
    "team:a:b",
)
_STRAY_NAMES = ("plain:", "glob-stray", "globZ", "braket", "/chat", "team:a")


async def _check_isolation(run: _TransportRun) -> None:
    a, b = await run.open("a"), await run.open("b")
    inbox = _Inbox("b")
    channels = [run.channel(name) for name in _ISOLATION_NAMES]
    channels += [run.channel(f"many-{i}") for i in range(20)]
    strays = [run.channel(name) for name in _STRAY_NAMES]
    for channel in channels:
        await b.subscribe(channel, inbox.handler(channel))
    per_channel = 5
    for k in range(per_channel):
        for i, channel in enumerate(channels):
            await a.publish(channel, f"{i}:{k}")
        for stray in strays:
            await a.publish(stray, f"stray:{k}")
    what = "payloads never cross channels"
    for channel in channels:
        await run.wait(inbox, channel, per_channel, what)
    await run.quiet_window()
    for i, channel in enumerate(channels):
        run.expect(inbox, channel, [f"{i}:{k}" for k in range(per_channel)], what)
    leaked = {ch: got for ch, got in inbox.received.items() if ch not in channels}
    if leaked:
        raise run.fail(f"{what}: unsubscribed channels were delivered: {leaked!r}")


async def _check_churn(run: _TransportRun) -> None:
    a, b, c = await run.open("a"), await run.open("b"), await run.open("c")
    rng = random.Random(20240601)  # fixed: a failure reproduces
    channels = [run.channel(f"churn-{i}") for i in range(24)]
    inboxes = {"a": _Inbox("a"), "b": _Inbox("b")}
    final: dict[tuple[str, str], int | None] = {}
    generations = itertools.count(1)

    async def churn(probe: _Probe, channel: str, ops: int, pauses: list[int]) -> None:
        for k in range(ops):
            if k % 2 == 0:
                generation = next(generations)
                handler = inboxes[probe.name].handler(channel, generation=generation)
                await probe.subscribe(channel, handler)
                final[probe.name, channel] = generation
            else:
                await probe.unsubscribe(channel)
                final[probe.name, channel] = None
            for _ in range(pauses[k]):
                await asyncio.sleep(0)  # interleave with the other channels' calls

    jobs = []
    for probe in (a, b):
        for channel in channels:
            ops = rng.randint(1, 6)
            jobs.append(churn(probe, channel, ops, [rng.randrange(3) for _ in range(ops)]))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    for channel in channels:
        await c.publish(channel, "final")
    what = "after concurrent subscribe/unsubscribe churn, exactly the last state holds"
    for (name, channel), generation in final.items():
        if generation is not None:
            await run.wait(inboxes[name], channel, 1, what)
    await run.quiet_window()
    for (name, channel), generation in sorted(final.items()):
        inbox = inboxes[name]
        run.expect(inbox, channel, ["final"] if generation is not None else [], what)
        if generation is not None and inbox.generations[channel] != [generation]:
            raise run.fail(
                f"{what}: {name} on {channel!r} delivered to the handler of an earlier "
                f"subscribe() (generation {inbox.generations[channel]}, latest {generation})"
            )


_TRANSPORT_CHECKS: tuple[tuple[str, Callable[[_TransportRun], Awaitable[None]]], ...] = (
    ("delivery", _check_delivery),
    ("echo", _check_echo),
    ("subscribe-is-live", _check_subscribe_is_live),
    ("unsubscribe", _check_unsubscribe),
    ("order", _check_order),
    ("isolation", _check_isolation),
    ("churn", _check_churn),
)


async def check_transport(
    factory: TransportFactory,
    *,
    channel_prefix: str = "wsevents-test:",
    timeout: float = 5.0,
    quiet: float = 0.2,
) -> None:
    """The conformance suite every [`BroadcastTransport`][wsevents.BroadcastTransport] must pass.

    ``factory`` is called several times per check (sync or async); every transport it
    returns must be on the **same medium** (one [`MemoryBus`][wsevents.MemoryBus], one Redis
    server...), since the checks publish on one and expect delivery on another. Its
    ``publish``, ``subscribe``, ``unsubscribe``, ``start`` and ``close`` must be ``async``
    (as [`BroadcastTransport`][wsevents.BroadcastTransport] says); ``start()`` is called
    after creation and ``close()`` at the end of each check.

    It checks, on fresh channels under ``channel_prefix`` plus a random run id: delivery
    to every subscriber of a channel (sync and async handlers); echo to the publisher's own
    subscriber (like Redis pub/sub); that a publish right after ``subscribe()`` returned is
    delivered; that ``unsubscribe()`` stops delivery on that channel only; per-channel
    order of 200 payloads; isolation of many channels (also names with glob characters and
    names that prefix each other); and that concurrent subscribe/unsubscribe churn leaves
    exactly the last state, each subscription delivering once to its latest handler.

    Every wait is bounded by ``timeout`` seconds; ``quiet`` is the window given to late
    duplicates before counting.

    Raises:
        AssertionError: the first check that fails, naming the check and what went wrong.

    Example:
        ``bus = MemoryBus(); await check_transport(lambda: MemoryTransport(bus))``
    """
    prefix = f"{channel_prefix}{uuid.uuid4().hex[:12]}:"
    for name, check in _TRANSPORT_CHECKS:
        run = _TransportRun(factory, prefix, name, timeout, quiet)
        try:
            await check(run)
        except BaseException:
            with contextlib.suppress(Exception):
                await run.close()
            raise
        await run.close()


# -- several instances on one bus ---------------------------------------------------------


class WsCluster:
    """Several [`WsApp`][wsevents.WsApp] instances on one [`MemoryBus`][wsevents.MemoryBus].

    Each instance is served on its own test server; clients connect to a chosen instance.
    Made by [`serve_memory_cluster`][] or the ``ws_cluster`` fixture.

    Attributes:
        bus: the shared bus (``bus.subscriber_count(channel)``, ``bus.directory``).
        apps: the instances, in order.
        servers: their pytest-aiohttp test clients, in the same order.
        path: the WebSocket path every instance is mounted on.
    """

    def __init__(self, bus: MemoryBus, apps: list[WsApp], servers: list[Any], path: str) -> None:
        self.bus = bus
        self.apps = apps
        self.servers = servers
        self.path = path
        self.clients: list[WsTestClient] = []
        self._instance_of: dict[int, int] = {}

    async def connect(
        self,
        instance: int = 0,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> WsTestClient:
        """Open one client on instance number ``instance``, with ``headers`` and the query
        string ``query`` on its upgrade request."""
        ws = await self.servers[instance].ws_connect(self.path, headers=headers, params=query)
        client = WsTestClient(ws)
        self.clients.append(client)
        self._instance_of[id(client)] = instance
        return client

    async def connect_spread(
        self,
        count: int,
        *,
        first: int = 0,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> list[WsTestClient]:
        """Open ``count`` clients round-robin over the instances, starting at ``first``;
        ``headers`` and ``query`` go to every upgrade request, as with [`connect`][]."""
        n = len(self.apps)
        return [
            await self.connect((first + i) % n, headers=headers, query=query) for i in range(count)
        ]

    def instance_of(self, client: WsTestClient) -> int:
        """The number of the instance ``client`` is connected to."""
        return self._instance_of[id(client)]

    def room_subscribers(self, room: str) -> int:
        """How many instances are subscribed to ``room``'s channel on the bus."""
        return self.bus.subscriber_count(ROOM_CHANNEL_PREFIX + room)

    async def close(self) -> None:
        """Close every client (the servers close with the ``aiohttp_client`` fixture)."""
        for client in self.clients:
            await client.close()
        self.clients.clear()


async def serve_memory_cluster(
    aiohttp_client: Any,
    build: Callable[[MemoryTransport], WsApp],
    *,
    instances: int = 3,
    path: str = "/ws",
) -> WsCluster:
    """Start ``instances`` WsApps on one new MemoryBus, each served by ``aiohttp_client``.

    ``build(transport)`` makes one instance and must pass ``transport`` to it (e.g.
    ``lambda t: make_app(transport=t)``); it is called once per instance, so handlers are
    registered on each.

    Raises:
        ValueError: ``build`` returned a WsApp that does not use the given transport.
    """
    bus = MemoryBus()
    apps: list[WsApp] = []
    servers: list[Any] = []
    for _ in range(instances):
        transport = MemoryTransport(bus)
        app = build(transport)
        if app.transport is not transport:
            raise ValueError("build(transport) must create the WsApp with that transport")
        servers.append(await aiohttp_client(attach(app, web.Application(), path)))
        apps.append(app)
    return WsCluster(bus, apps, servers, path)


ClusterFactory = Callable[..., Awaitable[WsCluster]]


@pytest.fixture
async def ws_cluster(aiohttp_client: Any) -> AsyncIterator[ClusterFactory]:
    """Factory fixture: ``cluster = await ws_cluster(build, instances=3, path="/ws")``.

    See [`serve_memory_cluster`][]; the clients of every cluster are closed at the end.
    """
    clusters: list[WsCluster] = []

    async def make(
        build: Callable[[MemoryTransport], WsApp], *, instances: int = 3, path: str = "/ws"
    ) -> WsCluster:
        cluster = await serve_memory_cluster(aiohttp_client, build, instances=instances, path=path)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        await cluster.close()


async def assert_delivered_once(
    clients: Iterable[WsTestClient],
    expected: Any,
    *,
    excluded: Iterable[WsTestClient] = (),
    quiet: float = 0.2,
    timeout: float = 5.0,
) -> None:
    """Each of ``clients`` received the frame ``expected`` exactly once; ``excluded`` never.

    Waits (up to ``timeout`` seconds) until every client got a frame equal to
    ``expected``, then lets a ``quiet`` window pass so that late duplicates, or a late
    delivery to an excluded client, can arrive. Other frames are put back in the client's
    inbox, in order, for the test to read.

    Raises:
        AssertionError: a client did not get ``expected`` in time, got it more than once,
            or an excluded client got it.
    """
    members = list(clients)
    outsiders = list(excluded)
    seen: dict[int, list[Any]] = {id(c): [] for c in members + outsiders}
    try:
        async with asyncio.timeout(timeout):
            for client in members:
                frames = seen[id(client)]
                while expected not in frames:
                    frames.append(await client._inbox.get())
    except TimeoutError:
        missing = [i for i, c in enumerate(members) if expected not in seen[id(c)]]
        raise AssertionError(
            f"clients {missing} of {len(members)} did not receive {expected!r} within {timeout} s"
        ) from None
    await asyncio.sleep(quiet)
    problems: list[str] = []
    for role, group in (("member", members), ("excluded", outsiders)):
        for i, client in enumerate(group):
            frames = seen[id(client)]
            frames += client.pending_messages()
            count = sum(1 for frame in frames if frame == expected)
            if count != (1 if role == "member" else 0):
                problems.append(f"{role} {i} received it {count} times")
            for frame in frames:  # give the other frames back, in order
                if frame != expected:
                    client._inbox.put_nowait(frame)
    if problems:
        raise AssertionError(f"{expected!r}: " + ", ".join(problems))
