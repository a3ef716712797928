"""One client connection: identity, rooms, user state, synchronous bounded sends, and the
state the adapter and the room registry work with (in-flight handlers, liveness, rooms)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import WsError
from .protocol import Codec, JsonCodec, encode_error, encode_push, encode_reply

if TYPE_CHECKING:
    from aiohttp import web

    from .cluster import DeliveryCounts

__all__ = ["SLOW_CONSUMER_CLOSE_CODE", "Connection", "SocketLike"]

log = logging.getLogger("wsevents.connection")

SLOW_CONSUMER_CLOSE_CODE = 1013
"""Close code for a connection whose unsent output went over ``max_send_buffer``."""

DEFAULT_MAX_SEND_BUFFER = 4 << 20


class SocketLike(Protocol):
    """What a [`Connection`][] needs from a WebSocket; the aiohttp adapter provides one.

    Every method is synchronous: sending never waits for the peer.
    """

    @property
    def closed(self) -> bool:
        """True once closing has started or the peer is gone."""
        ...

    def write(self, payload: bytes, binary: bool) -> bool:
        """Queue one data frame; False (and nothing queued) when the socket is closed."""
        ...

    def buffer_size(self) -> int:
        """Bytes accepted by [`write`][] and not yet handed to the network."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code`` and ``reason``."""
        ...

    def ping(self) -> None:
        """Send a ping control frame."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        ...


class Connection:
    """A client connection, as ``use_ws_connection()`` returns it.

    Sends are synchronous and never raise: on a closed socket they do nothing and return
    ``False``. A connection whose unsent output grows past ``max_send_buffer`` bytes is a
    slow consumer: it is closed with 1013 and its later sends are dropped.

    Attributes:
        id: a UUID string, unique across instances.
        request: the aiohttp upgrade request (headers, query, cookies, peer), or None.
        subprotocol: the WebSocket subprotocol selected at the handshake, or None.
        ip: the client's address: the peer of the upgrade request, or behind a trusted
            proxy (``WsApp(trusted_proxies=...)``) the address it forwarded; None when
            unknown.
        state: a dict for the application's own per-connection data.
        user: the user the connection belongs to; the connection id unless ``on_connect``
            (or a login handler) sets it, e.g. ``use_ws_connection().user = "alice"``.
        expires_at: when the session ends (``time.monotonic()`` seconds), set by
            [`authenticate`][] with ``expires_in``; None: never.
        session: the connection's session token (see [sessions](../recovery.md#sessions)):
            set once the client asked for it, or when the connection resumed a session;
            None otherwise.
        resumed: True when the connection resumed a previous one (its id, user, state
            and rooms are that connection's).
    """

    __slots__ = (
        "__weakref__",
        "_authenticated",
        "_binary",
        "_check_push",
        "_deliveries",
        "_encode",
        "_inflight",
        "_limit_strikes",
        "_max_send_buffer",
        "_on_expiry",
        "_overflowed",
        "_rooms",
        "_seen",
        "_socket",
        "_wake",
        "expires_at",
        "id",
        "ip",
        "request",
        "resumed",
        "session",
        "state",
        "subprotocol",
        "user",
    )

    def __init__(
        self,
        socket: SocketLike,
        *,
        id: str | None = None,
        request: web.Request | None = None,
        codec: Codec | None = None,
        max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER,
        subprotocol: str | None = None,
        ip: str | None = None,
    ) -> None:
        codec = codec if codec is not None else JsonCodec()
        self.id: str = id if id is not None else str(uuid.uuid4())
        self.request = request
        self.ip: str | None = ip if ip is not None or request is None else request.remote
        self.subprotocol = subprotocol
        self.state: dict[str, Any] = {}
        self.user: str = self.id
        self.session: str | None = None
        self.resumed = False
        # Rate-limit rejections, newest last (None: never rejected); see wsevents.dispatch.
        self._limit_strikes: deque[float] | None = None
        # -- authentication (see authenticate()) --
        self._authenticated = False
        self.expires_at: float | None = None
        # Set by the app: schedules the close at a session's expiry (wsevents.deadlines).
        self._on_expiry: Callable[[Connection, float], None] | None = None
        self._socket = socket
        self._encode = codec.encode
        self._binary = codec.binary
        # Set by an app created with check_pushes=True (a debug aid).
        self._check_push: Callable[[str, str, Any], None] | None = None
        # Set by the app: where pushes sent with send() are counted (metrics).
        self._deliveries: DeliveryCounts | None = None
        self._max_send_buffer = max_send_buffer
        self._overflowed = False
        self._rooms: dict[str, None] = {}
        self._seen = True
        self._inflight = 0
        # The future the reader awaits while too many handlers run (None: not paused).
        self._wake: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} {'closed' if self.closed else 'open'}>"

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed."""
        return self._socket.closed

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms this connection is in on this instance, in join order."""
        return tuple(self._rooms)

    # -- authentication ----------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """True once [`authenticate`][] succeeded (on an app with ``auth_required=True``,
        only public routes are served before)."""
        return self._authenticated

    @property
    def expires_in(self) -> float | None:
        """Seconds left before the session expires (0.0 once past), or None: no expiry."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - time.monotonic())

    def authenticate(self, user: str, *, expires_in: float | None = None) -> None:
        """Log the connection in as ``user`` (a login handler, or ``on_connect``), or
        extend its session (a refresh handler: the same ``user`` again).

        With ``expires_in``, the connection is closed with 4401 ``"Token expired"`` that
        many seconds from now unless a later call extends it; without, the session does
        not expire (a previous expiry is lifted). Check the token before calling it: this
        records what the token said.

        Raises:
            WsError: 403 ``"Forbidden"`` when the connection is authenticated as another
                user (a refresh may not switch users).
            ValueError: ``expires_in`` is not positive.
        """
        if self._authenticated and user != self.user:
            raise WsError(403, "Forbidden")
        if expires_in is not None and not expires_in > 0:
            raise ValueError("expires_in must be > 0")
        self.user = user
        self._authenticated = True
        if expires_in is None:
            self.expires_at = None
            return
        at = self.expires_at = time.monotonic() + expires_in
        if self._on_expiry is not None:
            self._on_expiry(self, at)

    # -- in-flight handlers (the dispatcher and the adapter's reader) ------------------------

    @property
    def in_flight(self) -> int:
        """Handlers of this connection running in tasks of their own."""
        return self._inflight

    def begin_task(self) -> int:
        """Count one more running handler task; returns how many run now."""
        self._inflight += 1
        return self._inflight

    def end_task(self) -> None:
        """A handler task finished: count it and wake a reader waiting for capacity."""
        self._inflight -= 1
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def wait_capacity(self, limit: int) -> None:
        """Return once fewer than ``limit`` handler tasks run (the reader pauses here)."""
        while self._inflight >= limit:
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        self._wake = None

    @property
    def reading_paused(self) -> bool:
        """True while the reader waits in [`wait_capacity`][] (it cannot see pongs then)."""
        return self._wake is not None

    # -- liveness (the adapter's reader and heartbeat) ---------------------------------------

    def mark_seen(self) -> None:
        """A frame arrived from the peer: it is alive."""
        self._seen = True

    def ping(self) -> None:
        """Send a ping; [`is_alive`][] stays False until a frame arrives."""
        self._seen = False
        self._socket.ping()

    @property
    def is_alive(self) -> bool:
        """True when a frame arrived since the last [`ping`][]."""
        return self._seen

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake (a dead peer)."""
        self._socket.abort()

    # -- rooms (kept by the RoomManager) -------------------------------------------------

    def add_room(self, room: str) -> None:
        """Record membership of ``room`` (the [`RoomManager`][wsevents.RoomManager] calls it)."""
        self._rooms[room] = None

    def remove_room(self, room: str) -> None:
        """Forget membership of ``room`` (the [`RoomManager`][wsevents.RoomManager] calls it)."""
        self._rooms.pop(room, None)

    def in_room(self, room: str) -> bool:
        """True while the connection is in ``room`` on this instance."""
        return room in self._rooms

    # -- sending -------------------------------------------------------------------------

    @property
    def slow_consumer(self) -> bool:
        """True once the connection was closed because its send buffer overflowed."""
        return self._overflowed

    @property
    def buffered_bytes(self) -> int:
        """Bytes sent to the connection and not yet handed to the network."""
        return self._socket.buffer_size()

    def send_frame(self, payload: bytes) -> bool:
        """Send an already encoded message (e.g. one broadcast frame shared by many).

        Returns:
            True when the frame was queued; False when the socket is closed or the
            connection was just closed as a slow consumer.
        """
        socket = self._socket
        if not socket.write(payload, self._binary):
            return False
        if socket.buffer_size() > self._max_send_buffer and not self._overflowed:
            self._overflowed = True
            log.warning(
                "closing slow consumer %s: send buffer over %d bytes",
                self.id,
                self._max_send_buffer,
                extra={
                    "conn": self.id,
                    "code": SLOW_CONSUMER_CLOSE_CODE,
                    "reason": "slow_consumer",
                },
            )
            socket.close(SLOW_CONSUMER_CLOSE_CODE, "Slow consumer")
            return False
        return True

    def send(
        self,
        event: str,
        path: str,
        data: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> bool:
        """Push ``{"event", "path", "params"?, "data"?}`` to this connection.

        Raises:
            InvalidPush: only with ``WsApp(check_pushes=True)``: the push does not match
                its declaration.
        """
        if self._socket.closed:
            sent = False
        else:
            if self._check_push is not None:
                self._check_push(event, path, data)
            sent = self.send_frame(encode_push(event, path, data, params, self._encode))
        deliveries = self._deliveries
        if deliveries is not None:
            if sent:
                deliveries.delivered += 1
            else:
                deliveries.dropped(self)
        return sent

    def reply(self, message_id: Any, data: Any = None) -> bool:
        """Send an RPC reply ``{"id", "data"}``."""
        if self._socket.closed:
            return False
        return self.send_frame(encode_reply(message_id, data, self._encode))

    def reply_error(
        self,
        message_id: Any,
        code: int,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> bool:
        """Send an RPC error reply ``{"id", "error": {"code", "message", "details"?,
        "retry_after"?}}`` (``details`` and ``retry_after`` left out when ``None``)."""
        if self._socket.closed:
            return False
        return self.send_frame(
            encode_error(
                message_id, code, message, self._encode, details=details, retry_after=retry_after
            )
        )

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start closing the connection; later sends do nothing.

        The reason is cut to the 123 UTF-8 bytes a close frame can carry.
        """
        if not self._socket.closed:
            self._socket.close(code, _close_reason(reason))


def _close_reason(reason: str) -> str:
    raw = reason.encode("utf-8")
    if len(raw) <= 123:
        return reason
    return raw[:123].decode("utf-8", "ignore")
