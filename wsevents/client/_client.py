"""WsClient: an asyncio client for wsevents (and ``@wooksjs/event-ws``) servers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from enum import Enum
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from .._aio import TaskSet, await_hook, call_hook
from ..exceptions import WsClientError, WsConnectionRefused
from ..protocol import JsonCodec
from ._backoff import Backoff, BackoffStrategy
from ._listeners import Listeners, Push
from ._presence import RoomPresence
from ._recovery import Recovery, with_since
from ._rpc import Reply, RpcTracker, build_message, parse_server_message

__all__ = [
    "DEFAULT_PUSH_QUEUE_SIZE",
    "DEFAULT_QUEUE_SIZE",
    "FINAL_CLOSE_CODES",
    "CloseHook",
    "ErrorHook",
    "OpenHook",
    "PushHandler",
    "PushStream",
    "ReconnectHook",
    "RecoveryFailedHook",
    "Subscription",
    "TokenProvider",
    "WsClient",
]

log = logging.getLogger("wsevents.client")

OpenHook = Callable[[], Awaitable[None] | None]
CloseHook = Callable[[int, str], Awaitable[None] | None]
ErrorHook = Callable[[Exception], Awaitable[None] | None]
ReconnectHook = Callable[[int], Awaitable[None] | None]
TokenProvider = Callable[[], Awaitable[str] | str]
"""``token()``, sync or async: the token to log in (or refresh) with."""
RecoveryFailedHook = Callable[[str], Awaitable[None] | None]
"""``on_recovery_failed(path)``: the missed pushes of history room ``path`` are lost."""

MAX_IDEM_LENGTH = 64

FINAL_CLOSE_CODES = frozenset({4401, 4403, 4408, 4429})
"""Close codes after which the client does not reconnect by itself: token expired,
revoked, authentication timeout, rate limit exceeded. ``on_close`` gets them."""
PushHandler = Callable[[Push], Awaitable[None] | None]

DEFAULT_QUEUE_SIZE = 1000
"""Messages [`WsClient.send`][] keeps while (re)connecting; the oldest go first."""

DEFAULT_PUSH_QUEUE_SIZE = 1000
"""Pushes one [`WsClient.pushes`][] iterator keeps unread; the oldest go first."""

CLIENT_CLOSE_REASON = "Client closed"

_TEXT = aiohttp.WSMsgType.TEXT
_BINARY = aiohttp.WSMsgType.BINARY
_CLOSE = aiohttp.WSMsgType.CLOSE
_PING = aiohttp.WSMsgType.PING
_PONG = aiohttp.WSMsgType.PONG
_CONFIRM_PING = b"wsevents"
_encode = JsonCodec.encode
_decode = JsonCodec.decode


class _State(Enum):
    IDLE = "idle"  # connect() not called yet
    CONNECTING = "connecting"  # first connect or reconnect in progress
    OPEN = "open"
    DISCONNECTED = "disconnected"  # lost, and nothing reconnects by itself
    CLOSED = "closed"  # close() was called: final


class Subscription:
    """What [`WsClient.subscribe`][] returns: await it (or [`unsubscribe`][]) to stop.

    Attributes:
        path: the subscribed path.
        data: the data sent with the subscribe (sent again on every replay).
        reply: the data of the server's reply to the first subscribe.
    """

    __slots__ = ("_active", "_client", "data", "path", "reply")

    def __init__(self, client: WsClient, path: str, data: Any, reply: Any) -> None:
        self._client = client
        self.path = path
        self.data = data
        self.reply = reply
        self._active = True

    @property
    def active(self) -> bool:
        """False once [`unsubscribe`][] was called."""
        return self._active

    async def unsubscribe(self) -> None:
        """Forget the subscription (no replay) and send ``unsubscribe`` fire-and-forget.

        The message is sent only while connected: after a loss the server has forgotten
        the subscription anyway. Calling it again does nothing.
        """
        if self._active:
            self._active = False
            await self._client._unsubscribe(self.path)

    async def __call__(self) -> None:
        await self.unsubscribe()

    def __repr__(self) -> str:
        return f"<Subscription {self.path!r} {'active' if self._active else 'ended'}>"


class PushStream:
    """An async iterator over pushes matching one ``(event, pattern)``.

    Pushes are buffered from creation on, up to ``max_queue``: when a push arrives and
    the buffer is full, the oldest buffered push is dropped and counted in
    [`dropped`][]. Iteration ends once the client is closed or has lost its connection
    for good (no reconnect), after the buffered pushes. Use ``async with`` (or
    [`aclose`][]) to stop listening early; an abandoned stream also stops when it is
    garbage-collected.
    """

    __slots__ = ("__weakref__", "_ended", "_finalizer", "_max", "_queue", "_waiter", "dropped")

    def __init__(self, listeners: Listeners[PushHandler], event: str, pattern: str, max_queue: int):
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self._queue: deque[Push] = deque()
        self._max = max_queue
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        ref = weakref.ref(self)

        def deliver(push: Push) -> None:
            stream = ref()
            if stream is not None:
                stream._put(push)

        off = listeners.add(event, pattern, deliver)
        # Holds only the off function, never the stream: a stream dropped by ``break``
        # unregisters itself when collected.
        self._finalizer = weakref.finalize(self, off)

    @property
    def ended(self) -> bool:
        """True once no more pushes will be added."""
        return self._ended

    def _put(self, push: Push) -> None:
        if self._ended:
            return
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(push)
        self._wake()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._finalizer()
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Push:
        while not self._queue:
            if self._ended:
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._queue.popleft()

    async def aclose(self) -> None:
        """Stop listening; pushes already buffered are still yielded."""
        self._end()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end()


class WsClient:
    """A WebSocket client speaking the wsevents / ``@wooksjs/event-ws`` protocol.

    Use it as ``async with WsClient(url) as client:`` or ``await client.connect()`` …
    ``await client.close()``. Construct it anywhere; use it inside one event loop.

    Args:
        url: ``ws://`` or ``wss://`` address of the endpoint.
        reconnect: reconnect after the connection is lost (not after [`close`][]).
        base_delay: seconds; the ceiling of the first reconnect delay. Attempt ``n``
            (from 0) waits a random delay in ``[0, min(max_delay, base_delay * 2**n)]``
            (exponential) or ``[0, min(max_delay, base_delay * (n + 1))]`` (linear):
            full jitter.
        max_delay: seconds; no reconnect delay is longer.
        max_retries: reconnect attempts per loss (None = unlimited); then the client
            gives up.
        backoff: ``"exponential"`` or ``"linear"``.
        queue_size: messages [`send`][] keeps while connecting or reconnecting. When
            full, the **oldest** queued message is dropped and counted in
            [`dropped`][] (the newest state wins; memory stays bounded). 0 queues
            nothing.
        rpc_timeout: default seconds a [`call`][] may take, waiting for a connection
            included.
        headers: sent with every handshake; the dict may be changed (say, from
            ``on_reconnect``) and the next handshake uses it.
        heartbeat: seconds between client pings (None = only answer the server's).
        connect_timeout: seconds one connection attempt may take, the confirmation
            included.
        confirm_connect: after the handshake, ping the server and wait for its pong
            before the connection counts as open. A wsevents server answers only once
            its ``on_connect`` hooks accepted the connection; one that refuses closes
            instead, and the attempt fails with
            [`WsConnectionRefused`][wsevents.WsConnectionRefused]. False saves the round trip;
            a refusal then shows as a lost connection.
        protocols: WebSocket subprotocols to offer; the one the server picked is
            [`protocol`][].
        session: an ``aiohttp.ClientSession`` to use (not closed by the client); by
            default the client makes and closes its own.
        on_open: ``on_open()``, after each connection is ready (queue flushed,
            subscriptions replayed).
        on_close: ``on_close(code, reason)``, after each open connection ends (once
            per ``on_open``).
        on_error: ``on_error(exc)``: a failed connection attempt, a refused one
            ([`WsConnectionRefused`][wsevents.WsConnectionRefused]), a push handler that
            raised, a subscription the server refused on replay, or giving up reconnecting
            (``WsClientError(503)``).
        on_reconnect: ``on_reconnect(attempt)``, before each reconnect attempt (1, 2, …
            since the last success), after its delay.
        token: ``token()`` (sync or async) for servers with authentication after connect:
            on every connect, before anything else is sent, the client calls
            ``rpc login_path {"token": token()}``; when the reply has a number
            ``expires_in``, it calls ``rpc refresh_path {"token": token()}`` before then
            (``refresh_before`` seconds ahead, at the latest halfway), without
            reconnecting. A refused login fails the attempt with the server's error.
        login_path: the path of the login RPC.
        refresh_path: the path of the refresh RPC.
        refresh_before: seconds before the expiry at which the client refreshes.
        resume: keep the server's session across reconnects: on every connect, after
            the login, the client calls ``rpc session_path`` and keeps the token of the
            reply ``{"session", "resumed"}``; reconnects open the url with
            ``?session=<token>``, so the server may resume the connection (same id, user,
            rooms). Every [`call`][] but a ``subscribe`` then carries an ``idem`` (a
            random hex string unless given), and a call whose connection drops before the
            reply is sent again after the reconnect, with the same ``idem``: the server
            answers it from its kept reply instead of running it twice. A ``subscribe``
            cut off is sent again as it is (joining twice is harmless, and a kept reply
            would not repeat a replay with ``since``).
        session_path: the path of the session RPC.
        on_recovery_failed: ``on_recovery_failed(path)``: after a reconnect the
            server could not replay what history room ``path`` missed (its reply has
            ``"recovered": false``): reload that state another way.

    History rooms are recovered by themselves: a [`subscribe`][] whose reply carries
    ``offset`` and ``epoch`` is followed (see [`positions`][]); after every reconnect it
    is sent again with ``since`` = the last push's offset and epoch, and the pushes are
    handed over in offset order, each once.

    After a close with one of ``FINAL_CLOSE_CODES`` (4401 token expired, 4403 revoked,
    4408 authentication timeout, 4429 rate limit exceeded) the client does not reconnect,
    ``reconnect`` on or not: ``on_close(code, reason)`` tells the application, which may
    get a new token and call [`connect`][] again. [`last_close`][] keeps it.

    Hooks may be sync or async. ``on_open`` and ``on_reconnect`` are awaited before the
    client goes on (so ``on_reconnect`` can refresh ``headers``); async ``on_close``
    and ``on_error`` run as tasks, so they cannot stall reading.
    """

    def __init__(
        self,
        url: str,
        *,
        reconnect: bool = False,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        max_retries: int | None = None,
        backoff: BackoffStrategy = "exponential",
        queue_size: int = DEFAULT_QUEUE_SIZE,
        rpc_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        heartbeat: float | None = None,
        connect_timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        on_open: OpenHook | None = None,
        on_close: CloseHook | None = None,
        on_error: ErrorHook | None = None,
        on_reconnect: ReconnectHook | None = None,
        confirm_connect: bool = True,
        protocols: Sequence[str] = (),
        token: TokenProvider | None = None,
        login_path: str = "/auth/login",
        refresh_path: str = "/auth/refresh",
        refresh_before: float = 5.0,
        resume: bool = False,
        session_path: str = "/session",
        on_recovery_failed: RecoveryFailedHook | None = None,
    ) -> None:
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        if rpc_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("rpc_timeout and connect_timeout must be > 0")
        self.url = url
        self.reconnect = reconnect
        self.rpc_timeout = float(rpc_timeout)
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.heartbeat = heartbeat
        self.connect_timeout = float(connect_timeout)
        self.confirm_connect = confirm_connect
        self.protocols = tuple(protocols)
        self.queue_size = queue_size
        self.on_open = on_open
        self.on_close = on_close
        self.on_error = on_error
        self.on_reconnect = on_reconnect
        self._backoff = Backoff(
            base_delay=base_delay, max_delay=max_delay, max_retries=max_retries, strategy=backoff
        )
        self._session = session
        self._owns_session = session is None
        self._state = _State.IDLE
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting = False
        self._queue: deque[bytes] = deque()
        self._dropped = 0
        self._rpc = RpcTracker()
        self._listeners: Listeners[PushHandler] = Listeners()
        self._streams: weakref.WeakSet[PushStream] = weakref.WeakSet()
        self._subscriptions: dict[str, Any] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._tasks = TaskSet()
        self._confirming: asyncio.Future[None] | None = None  # the pong awaited by _setup
        # Why the last attempt was refused (a closed socket, or a login the server refused).
        self._refusal: WsClientError | None = None
        self._presences: dict[str, RoomPresence] = {}
        # -- authentication after connect --
        self.token = token
        self.login_path = login_path
        self.refresh_path = refresh_path
        self.refresh_before = float(refresh_before)
        self._refresher: asyncio.Task[None] | None = None
        self.last_close: tuple[int, str] | None = None
        """``(code, reason)`` of the last connection that ended (None: none yet)."""
        # -- recovery and sessions --
        self.resume = resume
        self.session_path = session_path
        self.on_recovery_failed = on_recovery_failed
        self._recovery = Recovery()
        self._session_token: str | None = None
        self._resumed = False

    def __repr__(self) -> str:
        return f"<WsClient {self.url} {self._state.value}>"

    # -- state ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the connection is open and ready (after flush and replay)."""
        return self._state is _State.OPEN

    @property
    def closed(self) -> bool:
        """True once [`close`][] was called; the client cannot be used again."""
        return self._state is _State.CLOSED

    @property
    def protocol(self) -> str | None:
        """The subprotocol the server picked for the current connection, if any."""
        ws = self._ws
        return ws.protocol if ws is not None else None

    @property
    def queued(self) -> int:
        """Messages waiting in the offline queue."""
        return len(self._queue)

    @property
    def dropped(self) -> int:
        """Queued messages dropped so far because the queue was full (oldest first)."""
        return self._dropped

    @property
    def subscriptions(self) -> dict[str, Any]:
        """Remembered subscriptions (path → data), replayed after every reconnect; a copy."""
        return dict(self._subscriptions)

    @property
    def positions(self) -> dict[str, tuple[int, str]]:
        """History rooms followed (path → ``(offset, epoch)`` of the last push handed
        over, or the position given at subscribe); a copy."""
        return self._recovery.positions()

    @property
    def session_token(self) -> str | None:
        """The session token (``resume=True``) of the current or last connection; None
        without one (``resume`` off, a server without sessions, or after [`close`][])."""
        return self._session_token

    @property
    def resumed(self) -> bool:
        """True when the current connection resumed the previous one (``resume=True``)."""
        return self._resumed

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.connect()
        except BaseException:
            await self.close()  # __aexit__ will not run: release the session now
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect; returns once the connection is ready and ``on_open`` has run.

        With ``reconnect`` on, failed attempts are retried with backoff until one
        succeeds or ``max_retries`` is spent; a refusal ends it at once. Returns at once
        when already connected.

        Raises:
            WsConnectionRefused: the server closed the connection right after the
                handshake (an ``on_connect`` hook refused it): its close code and reason.
            WsClientError: 503 when no connection could be made (the cause is chained),
                or when the client was closed.
        """
        if self._state is _State.CLOSED:
            raise WsClientError(503, "Connection closed")
        if self._state is _State.OPEN:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout)
            )
        if self._state is not _State.CONNECTING:
            self._state = _State.CONNECTING
            self._refusal = None
            if self.reconnect:
                self._backoff.reset()
                self._start_connector(immediate=True)
            else:
                await self._connect_once()
                return
        await self._wait_for_change(None)
        if self._state is not _State.OPEN and self._state is not _State.CONNECTING:
            if self._refusal is not None and not self.closed:
                raise self._refusal
            raise WsClientError(503, "Connection closed" if self.closed else "Connection failed")

    async def close(self) -> None:
        """Close for good: stop reconnecting, fail pending calls (503), clear the queue.

        Closes the socket with 1000 ``"Client closed"``, runs ``on_close`` for it, ends
        every [`pushes`][] iterator and closes the client's own HTTP session. Calling
        it again does nothing.
        """
        if self._state is _State.CLOSED:
            return
        was_open = self._state is _State.OPEN
        self._state = _State.CLOSED
        self._queue.clear()
        self._session_token = None  # a clean close ends the session on the server
        self._recovery.clear()
        self._rpc.fail_all(503, "Connection closed")
        self._release_waiters()
        current = asyncio.current_task()
        reader, self._reader = self._reader, None
        # Reconnecting, push handlers and hook tasks stop now; the reader ends with the socket.
        tasks = [t for t in self._tasks if t is not current and t is not reader]
        for task in tasks:
            task.cancel()
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(code=1000, message=CLIENT_CLOSE_REASON.encode())
            if reader is not None and reader is not current:
                tasks.append(reader)
        if tasks:
            await asyncio.wait(tasks, timeout=self.connect_timeout)
            for task in tasks:
                task.cancel()
        self._end_streams()
        if was_open:  # on_close pairs with on_open: a half-set-up socket never opened
            await self._fire(self.on_close, 1000, CLIENT_CLOSE_REASON)
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- messaging ------------------------------------------------------------------------

    async def send(self, event: str, path: str, data: Any = None) -> bool:
        """Send ``{"event", "path", "data"?}`` without waiting for a reply.

        While the client is connecting or reconnecting the message goes to the bounded
        offline queue, flushed in order once connected (when full, the oldest queued
        message is dropped: see [`dropped`][]).

        Returns:
            True when written or queued; False when dropped: not connected and not about
            to be (``reconnect`` off, gave up, or closed), or ``queue_size`` is 0.
        """
        frame = _encode(build_message(event, path, data))
        ws = self._ws
        if self._state is _State.OPEN and ws is not None:
            try:
                await ws.send_frame(frame, _TEXT)
                return True
            except Exception as exc:
                log.debug("send failed, connection going down: %r", exc)
                if not self.reconnect:
                    return False
                return self._enqueue(frame)
        if self._state is _State.CONNECTING or (self.reconnect and self._state is _State.IDLE):
            return self._enqueue(frame)
        return False

    async def call(
        self,
        event: str,
        path: str,
        data: Any = None,
        timeout: float | None = None,
        *,
        idem: str | None = None,
    ) -> Any:
        """Send an RPC (ids 1, 2, 3, … per client) and return the reply's ``data``.

        While the client is connecting or reconnecting, the call waits for the connection
        within the same ``timeout``.

        ``idem`` (1 to 64 characters) is sent as the frame's ``idem``: a server with
        idempotent calls answers a repeated ``idem`` with the kept reply. With
        ``resume=True`` every call has one (``uuid4().hex`` unless given), and a call
        whose connection is lost before the reply is sent again, with the same ``idem``,
        once reconnected (within ``timeout``).

        Raises:
            ValueError: ``idem`` is not a string of 1 to 64 characters.
            WsClientError: the server's error reply (its code and message); 408 when no
                reply came within ``timeout`` (default ``rpc_timeout``); 503 when not
                connected (and not reconnecting, or not within ``timeout``), when the
                connection is lost before the reply, or when the client is closed.
        """
        if idem is None:
            # Never on a subscribe: a kept reply would not repeat the pushes its first run
            # sent (a replay with since); joining again is harmless, so it is retried as is.
            if self.resume and event != "subscribe":
                idem = uuid.uuid4().hex
        elif not isinstance(idem, str) or not 1 <= len(idem) <= MAX_IDEM_LENGTH:  # type: ignore[redundant-expr]
            raise ValueError(f"idem must be a string of 1 to {MAX_IDEM_LENGTH} characters")
        if timeout is None:
            timeout = self.rpc_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        retry = self.resume and (idem is not None or event == "subscribe")
        lost: WsClientError | None = None  # a send of this call lost with its connection
        while True:
            try:
                ws = await self._ready_socket(deadline)
            except WsClientError:
                if lost is None:
                    raise
                if loop.time() >= deadline:
                    # The server may have run it: a timeout, not "never sent".
                    raise WsClientError(408, "RPC timeout") from None
                raise lost from None
            try:
                return await self._request(ws, event, path, data, deadline, idem)
            except WsClientError as exc:
                if not retry or exc.code != 503 or not self.reconnect or self.closed:
                    raise
                lost = exc
                reader = self._reader
                if self._ws is ws and reader is not None and not reader.done():
                    # The send failed before the reader saw the loss: wait for it.
                    await asyncio.wait([reader], timeout=max(0.0, deadline - loop.time()))

    async def subscribe(
        self,
        path: str,
        data: Any = None,
        timeout: float | None = None,
        *,
        idem: str | None = None,
    ) -> Subscription:
        """``call("subscribe", path, data)``, remembered and replayed after every reconnect.

        One subscription is remembered per path: subscribing to a path again replaces its
        data. A subscribe the server refuses raises and is not remembered.

        When the reply carries ``offset`` and ``epoch`` (a history room) and ``data`` is
        None or a mapping, the room is recovered after reconnects: the replay carries
        ``since`` and the pushes are handed over in offset order, each once.

        Raises:
            ValueError: as [`call`][].
            WsClientError: as [`call`][].
        """
        new = self._recovery.begin(path)
        try:
            reply = await self.call("subscribe", path, data, timeout, idem=idem)
        except BaseException:
            if new:
                self._recovery.forget(path)
            raise
        self._subscriptions[path] = data
        self._recovery.subscribed(path, data, reply)
        return Subscription(self, path, data, reply)

    async def presence(
        self,
        room: str,
        join: Any = None,
        *,
        join_event: str = "join",
        leave_event: str = "leave",
        count_path: str = "/presence/count",
        list_path: str = "/presence/list",
    ) -> RoomPresence:
        """Join presence room ``room`` (``call(join_event, room, join)``) and follow who is
        in it: a [`RoomPresence`][wsevents.client.RoomPresence] with the current
        ``members``, ``on_change(handler)``, ``count()`` and ``list(offset, limit)``.

        ``count()`` and ``list()`` call the app's ``count_path`` and ``list_path`` routes
        (the reference app's by default). After a reconnect the room is joined again and
        the members fetched anew (never replayed from the old state); ``leave()`` leaves.

        Raises:
            WsClientError: the join or the first list failed.
        """
        existing = self._presences.get(room)
        if existing is not None:
            return existing
        presence = RoomPresence(
            self,
            room,
            join=join,
            join_event=join_event,
            leave_event=leave_event,
            count_path=count_path,
            list_path=list_path,
        )
        self._presences[room] = presence
        try:
            await presence.start()
        except BaseException:
            self._presences.pop(room, None)
            presence.stop_listening()
            raise
        presence.on_leave = lambda: self._presences.pop(room, None)
        return presence

    def on(self, event: str, pattern: str, handler: PushHandler) -> Callable[[], None]:
        """Call ``handler(push)`` for each push of ``event`` on a path matching ``pattern``.

        ``pattern`` is an exact path, or ends in ``*`` to match every path with that
        prefix. Sync handlers run in order as pushes arrive; async ones run as tasks. A
        handler that raises is reported to ``on_error``.

        Returns:
            A function removing this handler (idempotent).
        """
        return self._listeners.add(event, pattern, handler)

    def pushes(
        self, event: str, pattern: str, *, max_queue: int = DEFAULT_PUSH_QUEUE_SIZE
    ) -> PushStream:
        """An async iterator of pushes, like [`on`][] (buffer bounded by ``max_queue``).

        Example:
            ``async for push in client.pushes("message", "/chat/rooms/*"): ...``
        """
        stream = PushStream(self._listeners, event, pattern, max_queue)
        if self._state is _State.CLOSED or self._state is _State.DISCONNECTED:
            stream._end()
        else:
            self._streams.add(stream)
        return stream

    # -- internals: connecting --------------------------------------------------------------

    async def _dial(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        # autoping off: the reader answers pings itself and sees the pong of _confirm.
        return await self._session.ws_connect(
            self._dial_url(),
            headers=self.headers,
            heartbeat=self.heartbeat,
            autoping=False,
            protocols=self.protocols,
        )

    def _dial_url(self) -> str:
        """The url, with ``session=<token>`` in the query when there is a session."""
        token = self._session_token
        if not self.resume or token is None:
            return self.url
        parts = urlsplit(self.url)
        query = [
            (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "session"
        ]
        query.append(("session", token))
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _connect_once(self) -> None:
        try:
            ws = await self._dial()
            opened = await self._setup(ws)
        except BaseException as exc:
            self._abort_connecting()
            if not isinstance(exc, Exception):
                raise  # cancelled
            if isinstance(exc, _LoginFailed):
                await self._fire(self.on_error, exc.error)
                raise exc.error from None
            await self._fire(self.on_error, exc)
            if isinstance(exc, WsConnectionRefused):
                raise exc from None
            raise WsClientError(503, "Connection failed") from exc
        if not opened:
            self._release_waiters()
            raise WsClientError(503, "Connection closed" if self.closed else "Connection lost")
        await self._fire(self.on_open)
        self._release_waiters()

    def _abort_connecting(self) -> None:
        if self._state is _State.CONNECTING:
            self._state = _State.DISCONNECTED
        ws, self._ws = self._ws, None
        if ws is not None:
            self._start(_close_quietly(ws))
        self._release_waiters()

    def _start_connector(self, *, immediate: bool) -> None:
        self._connecting = True
        self._start(self._connect_loop(immediate))

    async def _connect_loop(self, immediate: bool) -> None:
        # Started by connect() (immediate) rather than by a loss: a refusal ends it.
        first = immediate
        try:
            while self._state is _State.CONNECTING:
                if not immediate:
                    delay = self._backoff.next_delay()
                    if delay is None:
                        await self._give_up()
                        return
                    await asyncio.sleep(delay)
                    await self._fire(self.on_reconnect, self._backoff.attempt)
                    if self._state is not _State.CONNECTING:
                        return
                immediate = False
                try:
                    ws = await self._dial()
                except Exception as exc:
                    log.debug("connection attempt failed: %r", exc)
                    self._refusal = None
                    await self._fire(self.on_error, exc)
                    continue
                if self._state is not _State.CONNECTING:
                    await ws.close()
                    return
                try:
                    ready = await self._setup(ws)
                except Exception as exc:
                    login_failed = isinstance(exc, _LoginFailed)
                    if isinstance(exc, _LoginFailed):
                        exc = self._refusal = exc.error
                    if self._ws is ws:
                        self._ws = None
                        self._start(_close_quietly(ws))
                    refused = login_failed or isinstance(exc, WsConnectionRefused)
                    if not refused:
                        self._refusal = None
                    log.debug("connection attempt failed: %r", exc)
                    if refused and first and self._state is _State.CONNECTING:
                        # The server said no to connect(): retrying would hide its reason.
                        self._state = _State.DISCONNECTED
                        self._queue.clear()
                        self._release_waiters()
                        self._end_streams()
                    await self._fire(self.on_error, exc)
                    continue
                if ready:
                    # A loss from here on starts a new connector: this one is done.
                    self._connecting = False
                    await self._fire(self.on_open)
                    self._release_waiters()
                    for room in list(self._presences.values()):
                        _ = self._spawn(room._reopened())  # resynchronise, never replay
                    return
        finally:
            self._connecting = False

    async def _give_up(self) -> None:
        log.warning("giving up reconnecting to %s", self.url)
        self._state = _State.DISCONNECTED
        self._queue.clear()
        self._release_waiters()
        self._end_streams()
        await self._fire(self.on_error, WsClientError(503, "Reconnect failed"))

    async def _setup(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Make a fresh socket ready: reader, confirm, flush, replay, flush; True when OPEN.

        Raises:
            WsConnectionRefused: the server closed the socket instead of answering the
                confirmation ping.
            TimeoutError: no pong within ``connect_timeout``.
        """
        self._ws = ws
        self._resumed = False
        # Before the reader starts: what history rooms get from now on waits for their
        # resubscribe with since (a resumed connection gets live pushes at once).
        self._recovery.hold()
        self._reader = self._spawn(self._read(ws))
        if self.confirm_connect:
            await self._confirm(ws)
        self._backoff.reset()
        if self.token is not None:
            await self._login(ws)
        if self.resume:
            await self._start_session(ws)
        if not await self._flush(ws):
            return False
        await self._replay(ws)
        if not await self._flush(ws):
            return False
        if self._ws is not ws or ws.closed or self._state is not _State.CONNECTING:
            return False
        self._state = _State.OPEN
        return True

    # -- internals: sessions -------------------------------------------------------------

    async def _start_session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Ask for the session token of a fresh socket (``{"session", "resumed"}``).

        A server without sessions (an error reply) leaves the client without a token:
        reported to ``on_error``, and the connection goes on.

        Raises:
            WsClientError: 503, the socket went away (an ordinary failed attempt).
        """
        deadline = asyncio.get_running_loop().time() + self.rpc_timeout
        try:
            reply = await self._request(ws, "rpc", self.session_path, None, deadline)
        except WsClientError as exc:
            if exc.code == 503:
                raise
            self._session_token = None
            await self._fire(self.on_error, exc)
            return
        token = reply.get("session") if isinstance(reply, Mapping) else None
        if isinstance(token, str) and token:
            self._session_token = token
            self._resumed = reply.get("resumed") is True
        else:
            self._session_token = None
            log.warning("the session reply of %s has no token: not resumable", self.url)

    # -- internals: authentication after connect ------------------------------------------

    async def _login(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Log in on a fresh socket, before the queue and the subscriptions go out.

        Raises:
            _LoginFailed: the server refused the token (its error inside).
        """
        deadline = asyncio.get_running_loop().time() + self.rpc_timeout
        try:
            reply = await self._request(ws, "rpc", self.login_path, await self._token(), deadline)
        except WsClientError as exc:
            if exc.code == 503:
                raise  # the socket went away: an ordinary failed attempt
            # Closed here, to completion: the socket is open and no longer ours.
            if self._ws is ws:
                self._ws = None
            await _close_quietly(ws)
            raise _LoginFailed(exc) from None
        self._schedule_refresh(ws, reply)

    async def _token(self) -> dict[str, Any]:
        assert self.token is not None
        token = self.token()
        if inspect.isawaitable(token):
            token = await token
        return {"token": token}

    def _schedule_refresh(self, ws: aiohttp.ClientWebSocketResponse, reply: Any) -> None:
        expires_in = reply.get("expires_in") if isinstance(reply, Mapping) else None
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            return
        delay = max(expires_in - self.refresh_before, expires_in / 2, 0.0)
        self._refresher = self._spawn(self._refresh(ws, delay))

    async def _refresh(self, ws: aiohttp.ClientWebSocketResponse, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._ws is not ws:
            return
        deadline = asyncio.get_running_loop().time() + self.rpc_timeout
        try:
            reply = await self._request(ws, "rpc", self.refresh_path, await self._token(), deadline)
        except Exception as exc:
            # The server closes with 4401 at the expiry; on_close tells the application.
            log.debug("refresh failed: %r", exc)
            await self._fire(self.on_error, exc)
            return
        if self._ws is ws:
            self._schedule_refresh(ws, reply)

    def _stop_refresh(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None and refresher is not asyncio.current_task():
            refresher.cancel()

    async def _confirm(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Ping and await the pong: the server reads, so its ``on_connect`` accepted us.

        A wsevents server (and an ``@wooksjs/event-ws`` one) runs ``on_connect`` before it
        reads any frame, so a refusal's close always comes before the pong.
        """
        waiter = asyncio.get_running_loop().create_future()
        self._confirming = waiter
        try:
            async with asyncio.timeout(self.connect_timeout):
                try:
                    await ws.ping(_CONFIRM_PING)
                except Exception as exc:  # closing already: the reader settles the waiter
                    log.debug("confirmation ping failed: %r", exc)
                await waiter
        finally:
            self._confirming = None
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved

    async def _flush(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        queue = self._queue
        while queue:
            if self._ws is not ws:
                return False
            frame = queue.popleft()
            try:
                await ws.send_frame(frame, _TEXT)
            except Exception as exc:
                log.debug("flush failed: %r", exc)
                queue.appendleft(frame)
                self._trim()
                return False
        return True

    async def _replay(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        subs = list(self._subscriptions.items())
        if not subs:
            return
        deadline = asyncio.get_running_loop().time() + self.rpc_timeout
        recovery = self._recovery
        sinces = [recovery.since(path) for path, _ in subs]
        results = await asyncio.gather(
            *(
                self._request(
                    ws,
                    "subscribe",
                    path,
                    data if since is None else with_since(data, since),
                    deadline,
                )
                for (path, data), since in zip(subs, sinces, strict=True)
            ),
            return_exceptions=True,
        )
        for (path, data), since, result in zip(subs, sinces, results, strict=True):
            if path not in self._subscriptions:
                # Unsubscribed while the replay was in flight: undo it on the server.
                if not isinstance(result, BaseException) and self._ws is ws:
                    with contextlib.suppress(Exception):
                        await ws.send_frame(_encode(build_message("unsubscribe", path)), _TEXT)
                continue
            if isinstance(result, WsClientError) and result.code not in (408, 503):
                # The server refuses it now: forget it, as a refused first subscribe.
                if self._subscriptions.get(path) is data:
                    del self._subscriptions[path]
                    self._deliver(recovery.release(path))
                    recovery.forget(path)
                await self._fire(self.on_error, result)
            elif isinstance(result, BaseException):
                log.debug("replaying subscribe %s failed: %r", path, result)
            elif since is not None:
                pushes, failed = recovery.recovered(path, result)
                if failed:
                    self._fire_nowait(self.on_recovery_failed, path)
                self._deliver(pushes)
            else:
                recovery.subscribed(path, data, result)
        if self._ws is ws and not ws.closed:
            self._deliver(recovery.release_all())  # timed out: go on live

    # -- internals: traffic ---------------------------------------------------------------

    async def _ready_socket(self, deadline: float) -> aiohttp.ClientWebSocketResponse:
        while True:
            state = self._state
            if state is _State.OPEN and self._ws is not None:
                return self._ws
            if state is _State.CLOSED:
                raise WsClientError(503, "Connection closed")
            if state is not _State.CONNECTING:
                raise self._refusal or WsClientError(503, "Not connected")
            try:
                await self._wait_for_change(deadline)
            except TimeoutError:
                raise WsClientError(503, "Not connected") from None

    async def _wait_for_change(self, deadline: float | None) -> None:
        """Wait until the connecting ends (open, failed or closed) or ``deadline``."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        finally:
            self._waiters.discard(waiter)

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _request(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        event: str,
        path: str,
        data: Any,
        deadline: float,
        idem: str | None = None,
    ) -> Any:
        message_id = self._rpc.next_id()
        frame = _encode(build_message(event, path, data, message_id, idem))
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._rpc.track(message_id, reply)
        try:
            try:
                await ws.send_frame(frame, _TEXT)
            except Exception as exc:
                raise WsClientError(503, "Connection lost") from exc
            try:
                async with asyncio.timeout_at(deadline):
                    return await reply
            except TimeoutError:
                raise WsClientError(408, "RPC timeout") from None
        finally:
            self._rpc.discard(message_id)
            if reply.done() and not reply.cancelled():
                reply.exception()  # retrieved: no "never retrieved" noise after a timeout

    def _enqueue(self, frame: bytes) -> bool:
        if self.queue_size == 0:
            self._dropped += 1
            return False
        self._queue.append(frame)
        self._trim()
        return True

    def _trim(self) -> None:
        while len(self._queue) > self.queue_size:
            self._queue.popleft()
            self._dropped += 1
            log.debug("offline queue full: dropped the oldest message")

    async def _unsubscribe(self, path: str) -> None:
        self._subscriptions.pop(path, None)
        self._recovery.forget(path)
        ws = self._ws
        if self._state is _State.OPEN and ws is not None:
            with contextlib.suppress(Exception):
                await ws.send_frame(_encode(build_message("unsubscribe", path)), _TEXT)

    # -- internals: reading ---------------------------------------------------------------

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        code, reason = 1006, ""
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is _TEXT or kind is _BINARY:
                    self._on_frame(msg.data)
                elif kind is _PING:
                    with contextlib.suppress(Exception):
                        await ws.pong(msg.data)
                elif kind is _PONG:
                    confirming = self._confirming
                    if confirming is not None and not confirming.done():
                        confirming.set_result(None)
                elif kind is _CLOSE:
                    code = msg.data if isinstance(msg.data, int) else 1005
                    reason = msg.extra if isinstance(msg.extra, str) else ""
                    break
                elif kind is aiohttp.WSMsgType.ERROR:
                    code = ws.close_code or 1006
                    if isinstance(msg.data, Exception):
                        self._fire_nowait(self.on_error, msg.data)
                    break
                else:
                    code = ws.close_code or 1006  # CLOSING (our close) or CLOSED
                    break
        except Exception as exc:
            self._fire_nowait(self.on_error, exc)
        self._lost(ws, code, reason)

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            obj = _decode(raw)
        except Exception:
            log.debug("dropped a frame that is not JSON")
            return
        msg = parse_server_message(obj)
        if isinstance(msg, Reply):
            if not self._rpc.resolve(msg):
                log.debug("dropped a reply nobody waits for: id %r", msg.id)
        elif msg is not None:
            for push in self._recovery.push(msg):
                self._dispatch(push)
        else:
            log.debug("dropped a frame that is neither a reply nor a push")

    def _deliver(self, pushes: list[Push]) -> None:
        for push in pushes:
            self._dispatch(push)

    def _dispatch(self, push: Push) -> None:
        for handler in self._listeners.match(push.event, push.path):
            try:
                result = handler(push)
            except Exception as exc:
                self._report(exc)
                continue
            if inspect.isawaitable(result):
                self._start(self._run_handler(result))

    async def _run_handler(self, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception as exc:
            self._report(exc)

    def _lost(self, ws: aiohttp.ClientWebSocketResponse, code: int, reason: str) -> None:
        confirming = self._confirming
        if confirming is not None and not confirming.done() and self._ws is ws:
            # Closed instead of answering the confirmation ping: refused (1006: it broke).
            if code == 1006:
                confirming.set_exception(WsClientError(503, "Connection lost"))
            else:
                # Stored before the waiters are released below: they raise it.
                self._refusal = WsConnectionRefused(code, reason)
                confirming.set_exception(self._refusal)
        if self._ws is not ws:
            return
        self._ws = None
        self._stop_refresh()
        self.last_close = (code, reason)
        was_open = self._state is _State.OPEN
        self._rpc.fail_all(503, "Connection lost")
        # After these the server would only close the next connection the same way.
        if self.reconnect and code not in FINAL_CLOSE_CODES:
            self._state = _State.CONNECTING
            if not self._connecting:
                self._start_connector(immediate=False)
        else:
            self._state = _State.DISCONNECTED
            self._release_waiters()
            self._end_streams()
        if was_open:  # on_close pairs with on_open: a socket lost while set up never opened
            self._fire_nowait(self.on_close, code, reason)

    def _end_streams(self) -> None:
        for stream in list(self._streams):
            stream._end()
        self._streams.clear()

    # -- internals: hooks and tasks -------------------------------------------------------

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that [`close`][] cancels if it is still running."""
        _ = self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self._tasks.spawn(coro)

    async def _fire(self, hook: Callable[..., Awaitable[None] | None] | None, *args: Any) -> None:
        if hook is None:
            return
        await await_hook(hook, *args, logger=log, message=_hook_failed(hook))

    def _report(self, exc: Exception) -> None:
        """A push handler failed: tell ``on_error``, or log it when there is none."""
        if self.on_error is None:
            log.error("push handler failed", exc_info=exc)
        else:
            self._fire_nowait(self.on_error, exc)

    def _fire_nowait(self, hook: Callable[..., Awaitable[None] | None] | None, *args: Any) -> None:
        if hook is None:
            return
        call_hook(hook, *args, tasks=self._tasks, logger=log, message=_hook_failed(hook))


class _LoginFailed(Exception):
    """The server refused the login of a fresh socket; ``error`` is its reply."""

    def __init__(self, error: WsClientError) -> None:
        super().__init__(error)
        self.error = error


def _hook_failed(hook: Callable[..., Any]) -> str:
    return f"{getattr(hook, '__name__', 'client')} hook failed"


async def _close_quietly(ws: aiohttp.ClientWebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        await ws.close()
