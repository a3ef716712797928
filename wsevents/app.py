"""WsApp: handlers, dispatch, connection lifecycle, server-wide delivery (no aiohttp here)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import copy_context
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import MessageScope, app_var, message_var
from .connection import DEFAULT_MAX_SEND_BUFFER, Connection
from .exceptions import ProtocolError, WsError
from .protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    INTERNAL_ERROR,
    NOT_FOUND,
    ClientMessage,
    Codec,
    JsonCodec,
    encode_error,
    encode_push,
    is_token,
    parse_client_message,
)
from .rooms import DeliveryReport, RoomManager, decode_envelope, push_frame_from_envelope
from .routing import Router
from .transports.base import BroadcastTransport, ConnectionDirectory, maybe_await

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "BROADCAST_CHANNEL",
    "INSTANCE_CHANNEL_PREFIX",
    "SHUTDOWN_CLOSE_CODE",
    "WsApp",
    "create_ws_app",
]

log = logging.getLogger("wsevents")

F = TypeVar("F", bound=Callable[..., Any])

BROADCAST_CHANNEL = "ws:broadcast"
"""Transport channel of server-wide broadcasts."""
INSTANCE_CHANNEL_PREFIX = "ws:instance:"
"""Transport channel prefix of each instance's inbox (``send_to`` across instances)."""
SHUTDOWN_CLOSE_CODE = 1001
SHUTDOWN_REASON = "Server shutting down"


@dataclass(frozen=True, slots=True)
class _Handler:
    fn: Callable[[], Any]
    is_async: bool


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


class WsApp:
    """A WebSocket application: routed message handlers, rooms and lifecycle hooks.

    Create it with [`create_ws_app`][] (or directly), register handlers with
    [`on_message`][], then mount it with [`attach`][] or run it with [`run`][].

    Args:
        heartbeat: seconds between pings to every connection (0 = no heartbeat).
        heartbeat_timeout: seconds a ping may wait for any frame back before the connection
            is dropped.
        max_message_size: largest accepted message in bytes (UTF-8 for text); a larger one
            is dropped and the socket stays open.
        max_frame_size: largest frame read at all; above it the socket is closed with 1009
            (memory protection). At least ``max_message_size``.
        codec: message codec (default JSON via orjson, text frames).
        transport: broadcast transport to other instances (None = single instance).
        compress: negotiate permessage-deflate when a client offers it (off: it costs CPU
            per recipient and memory per connection).
        allowed_origins: browser origins allowed to connect, or ``"*"``; by default an
            ``Origin`` must match the ``Host`` (requests without ``Origin`` are allowed).
        subprotocols: WebSocket subprotocols the server speaks, in order of preference:
            the first one the client offers is selected, and a client offering only others
            is refused with HTTP 400. None (the default) selects the first protocol the
            client offers, whatever it is. A client offering none connects without one.
        max_in_flight: async handlers that may run at once per connection; when reached,
            reading from that connection pauses until one finishes.
        max_send_buffer: bytes of unsent output after which a connection is closed as a slow
            consumer (close code 1013).
        shutdown_timeout: seconds running handlers get to finish at shutdown.
        ignore_case: match message paths case-insensitively (router option).
        ignore_trailing_slash: treat ``/a/`` like ``/a`` (router option).
        route_cache_size: resolved ``(event, path)`` pairs the router remembers (0 = none).
    """

    def __init__(
        self,
        *,
        heartbeat: float = 30.0,
        heartbeat_timeout: float = 5.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_frame_size: int = 16 << 20,
        codec: Codec | None = None,
        transport: BroadcastTransport | None = None,
        compress: bool = False,
        allowed_origins: Sequence[str] | str | None = None,
        subprotocols: Sequence[str] | str | None = None,
        max_in_flight: int = 64,
        max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER,
        shutdown_timeout: float = 10.0,
        ignore_case: bool = False,
        ignore_trailing_slash: bool = False,
        route_cache_size: int = 1024,
    ) -> None:
        if heartbeat < 0 or heartbeat_timeout <= 0:
            raise ValueError("heartbeat must be >= 0 and heartbeat_timeout > 0")
        if max_message_size <= 0 or max_in_flight <= 0 or max_send_buffer <= 0:
            raise ValueError("max_message_size, max_in_flight and max_send_buffer must be > 0")
        self.heartbeat = float(heartbeat)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.max_message_size = max_message_size
        self.max_frame_size = max(max_frame_size, max_message_size)
        self.codec: Codec = codec if codec is not None else JsonCodec()
        self.transport = transport
        self.compress = compress
        if isinstance(allowed_origins, str):
            allowed_origins = [allowed_origins]
        self.allowed_origins: tuple[str, ...] | None = (
            tuple(o.rstrip("/").lower() for o in allowed_origins) if allowed_origins else None
        )
        if isinstance(subprotocols, str):
            subprotocols = [subprotocols]
        if subprotocols is not None and not all(map(is_token, subprotocols)):
            raise ValueError("subprotocols must be HTTP tokens (no spaces, commas or quotes)")
        self.subprotocols: tuple[str, ...] | None = (
            tuple(subprotocols) if subprotocols is not None else None
        )
        self.max_in_flight = max_in_flight
        self.max_send_buffer = max_send_buffer
        self.shutdown_timeout = shutdown_timeout
        self.instance_id = uuid.uuid4().hex
        self.router: Router[_Handler] = Router(
            ignore_case=ignore_case,
            ignore_trailing_slash=ignore_trailing_slash,
            cache_size=route_cache_size,
        )
        self.rooms = RoomManager(transport, instance_id=self.instance_id, codec=self.codec)
        self._decode = self.codec.decode
        self._encode = self.codec.encode
        self._match = self.router.match
        self._connections: dict[str, Connection] = {}
        self._on_connect: list[_Handler] = []
        self._on_disconnect: list[_Handler] = []
        self._on_transport_state: list[tuple[bool, _Handler]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._runner: Any = None
        maybe_directory: object = transport
        self._directory: ConnectionDirectory | None = (
            maybe_directory if isinstance(maybe_directory, ConnectionDirectory) else None
        )

    # -- registration -------------------------------------------------------------------

    def add_message_handler(self, event: str, pattern: str, handler: Callable[[], Any]) -> None:
        """Route messages with ``event`` whose path matches ``pattern`` to ``handler``.

        The handler takes no arguments (composables reach the message) and may be sync or
        ``async``. Its return value is the RPC reply's ``data``.

        Raises:
            RoutingError: bad pattern or duplicate route.
        """
        self.router.add(event, pattern, _Handler(handler, _is_async(handler)))

    def on_message(self, event: str, pattern: str) -> Callable[[F], F]:
        """Decorator form of [`add_message_handler`][]."""

        def register(fn: F) -> F:
            self.add_message_handler(event, pattern, fn)
            return fn

        return register

    def on_connect(self, fn: F) -> F:
        """Run ``fn`` when a connection opens, before any of its messages.

        Raising ``WsError`` refuses the connection with the error's message as the close
        reason: a client error (4xx, e.g. 401, 403, 429) closes with 1008 (policy
        violation), any other code with 1011. Any other exception closes with 1011
        ``"Internal Error"`` (the exception is logged, never sent).
        """
        self._on_connect.append(_Handler(fn, _is_async(fn)))
        return fn

    def on_disconnect(self, fn: F) -> F:
        """Run ``fn`` once after an accepted connection closes (its rooms still readable)."""
        self._on_disconnect.append(_Handler(fn, _is_async(fn)))
        return fn

    def on_transport_down(self, fn: F) -> F:
        """Run ``fn`` when the transport loses its backend (e.g. Redis went away).

        Local delivery goes on; pushes between instances are lost until it is back. Needs a
        transport with ``add_state_listener`` (such as ``RedisTransport``).
        """
        self._on_transport_state.append((False, _Handler(fn, _is_async(fn))))
        return fn

    def on_transport_up(self, fn: F) -> F:
        """Run ``fn`` when the transport is back after [`on_transport_down`][] (every
        subscription restored): the moment to resynchronise clients."""
        self._on_transport_state.append((True, _Handler(fn, _is_async(fn))))
        return fn

    def set_transport(self, transport: BroadcastTransport | None) -> None:
        """Replace the transport before the app starts (what ``--redis-url`` does).

        Raises:
            RuntimeError: the app has already started.
        """
        if self._started:
            raise RuntimeError("set_transport() must be called before the app starts")
        self.transport = transport
        self.rooms.transport = transport
        maybe_directory: object = transport
        self._directory = (
            maybe_directory if isinstance(maybe_directory, ConnectionDirectory) else None
        )

    # -- server-side API (also what use_ws_server() returns) -------------------------------

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
        frame = encode_push(event, path, data, params, self._encode)
        sent = dropped = 0
        for conn in self._connections.values():
            if conn.send_frame(frame):
                sent += 1
            else:
                dropped += 1
        if self.transport is None:
            return DeliveryReport(sent, 0, dropped)
        fields: dict[str, Any] = {"event": event, "path": path}
        if data is not None:
            fields["data"] = data
        if params:
            fields["params"] = dict(params)
        error = await self.rooms.publish(BROADCAST_CHANNEL, fields)
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
            conn.send(event, path, data, params)
            return True
        if self._directory is None:
            return False
        try:
            instance = await self._directory.locate_connection(connection_id)
        except Exception as exc:
            log.warning("directory lookup of %s failed: %r", connection_id, exc)
            return False
        if instance is None or instance == self.instance_id:
            return False
        fields: dict[str, Any] = {"to": connection_id, "event": event, "path": path}
        if data is not None:
            fields["data"] = data
        if params:
            fields["params"] = dict(params)
        await self.rooms.publish(INSTANCE_CHANNEL_PREFIX + instance, fields)
        return True

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: new connections are refused."""
        return self._closing

    async def start(self) -> None:
        """Start the transport subscriptions and the heartbeat (idempotent)."""
        if self._started:
            return
        self._started = True
        self._closing = False
        transport = self.transport
        if transport is not None:
            add_listener = getattr(transport, "add_state_listener", None)
            if add_listener is not None:
                add_listener(self._transport_state_changed)
            start = getattr(transport, "start", None)
            if start is not None:
                await maybe_await(start())
            await maybe_await(transport.subscribe(BROADCAST_CHANNEL, self._on_broadcast_payload))
            await maybe_await(
                transport.subscribe(
                    INSTANCE_CHANNEL_PREFIX + self.instance_id, self._on_inbox_payload
                )
            )
        if self.heartbeat > 0:
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def shutdown(self) -> None:
        """Close every connection with 1001 and let running handlers finish (graceful)."""
        self._closing = True
        for conn in list(self._connections.values()):
            conn.close(SHUTDOWN_CLOSE_CODE, SHUTDOWN_REASON)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def close(self) -> None:
        """Shut down, stop the heartbeat and close the transport (and a [`listen`][] server)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # its shutdown and cleanup hooks call back here
            return
        await self.shutdown()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            self._heartbeat_task = None
        transport = self.transport
        if transport is not None and self._started:
            await self.rooms.close()
            for channel in (BROADCAST_CHANNEL, INSTANCE_CHANNEL_PREFIX + self.instance_id):
                with contextlib.suppress(Exception):
                    await maybe_await(transport.unsubscribe(channel))
            remove_listener = getattr(transport, "remove_state_listener", None)
            if remove_listener is not None:
                remove_listener(self._transport_state_changed)
            closer = getattr(transport, "close", None)
            if closer is not None:
                try:
                    await maybe_await(closer())
                except Exception as exc:
                    log.warning("closing the transport failed: %r", exc)
        self._started = False

    def attach(self, app: web.Application, path: str = "/ws") -> web.Application:
        """Mount on an aiohttp application at ``path`` (see [`wsevents.server.attach`][])."""
        from .server import attach  # the adapter is the only layer that imports aiohttp

        return attach(self, app, path)

    def run(self, *, host: str = "127.0.0.1", port: int = 8080, path: str = "/ws") -> None:
        """Serve standalone until Ctrl-C / SIGTERM (see [`wsevents.server.run`][])."""
        from .server import run

        run(self, host=host, port=port, path=path)

    async def listen(
        self, *, host: str = "127.0.0.1", port: int = 0, path: str = "/ws"
    ) -> tuple[str, int]:
        """Serve standalone inside the running loop until [`close`][].

        Returns:
            The bound ``(host, port)``; ``port=0`` picks a free one.
        """
        from .server import listen

        runner = await listen(self, host=host, port=port, path=path)
        self._runner = runner
        address = runner.addresses[0]
        return str(address[0]), int(address[1])

    # -- connection lifecycle (called by the adapter) ---------------------------------------

    async def open_connection(self, conn: Connection) -> bool:
        """Run ``on_connect`` hooks; False when refused.

        The caller runs it in the connection's context (the adapter sets the app and
        connection context variables around the whole connection).
        """
        for hook in self._on_connect:
            try:
                result = hook.fn()
                if hook.is_async:
                    await result
            except WsError as exc:
                code = 1008 if 400 <= exc.code < 500 else 1011
                log.debug("refused %s in on_connect (WsError %s): %d", conn.id, exc, code)
                conn.close(code, exc.message)
                return False
            except Exception:
                log.exception("on_connect failed, refused %s: 1011", conn.id)
                conn.close(1011, INTERNAL_ERROR)
                return False
        if conn.closed:  # the hook closed it itself
            log.debug("refused %s: on_connect closed it", conn.id)
            return False
        self._connections[conn.id] = conn
        if self._directory is not None:
            try:
                await self._directory.register_connection(conn.id, self.instance_id)
            except Exception as exc:
                log.warning("directory register of %s failed: %r", conn.id, exc)
            except BaseException:  # cancelled: the peer left during the handshake
                self._connections.pop(conn.id, None)
                raise
        return True

    async def close_connection(self, conn: Connection) -> None:
        """Run ``on_disconnect`` hooks, then leave every room and forget the connection."""
        try:
            for hook in self._on_disconnect:
                try:
                    result = hook.fn()
                    if hook.is_async:
                        await result
                except Exception:
                    log.exception("on_disconnect failed")
        finally:
            self._connections.pop(conn.id, None)
            try:
                await self.rooms.leave_all(conn)
            finally:
                if self._directory is not None:
                    try:
                        await self._directory.unregister_connection(conn.id)
                    except Exception as exc:
                        log.warning("directory unregister of %s failed: %r", conn.id, exc)

    def handle_frame(self, conn: Connection, raw: str | bytes) -> None:
        """Dispatch one received data frame (called in the connection's context).

        Malformed frames are dropped; sync handlers run to completion here, async ones in
        a task of their own.
        """
        try:
            msg = parse_client_message(raw, self.max_message_size, self._decode)
        except ProtocolError as exc:
            log.debug("dropped a frame from %s: %s", conn.id, exc)
            return
        found = self._match(msg.event, msg.path)
        if found is None:
            if msg.has_id:
                conn.reply_error(msg.id, 404, NOT_FOUND)
            return
        handler = found.handler
        scope = MessageScope(msg, found.params, conn, self)
        if handler.is_async:
            conn._inflight += 1
            task = asyncio.get_running_loop().create_task(
                self._run_async(handler.fn, scope), context=copy_context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            # A copy per message: what the handler sets in context variables stays there.
            copy_context().run(self._run_sync, handler.fn, scope)

    async def wait_capacity(self, conn: Connection) -> None:
        """Wait until ``conn`` runs fewer than ``max_in_flight`` async handlers."""
        while conn._inflight >= self.max_in_flight:
            conn._wake = asyncio.get_running_loop().create_future()
            await conn._wake
        conn._wake = None

    def _run_sync(self, fn: Callable[[], Any], scope: MessageScope) -> None:
        message_var.set(scope)
        try:
            result = fn()
        except WsError as exc:
            msg = scope.message
            if msg.has_id:
                scope.connection.reply_error(msg.id, exc.code, exc.message)
            return
        except Exception:
            msg = scope.message
            log.exception("handler failed: %s %s", msg.event, msg.path)
            if msg.has_id:
                scope.connection.reply_error(msg.id, 500, INTERNAL_ERROR)
            return
        msg = scope.message
        if msg.has_id:
            self._reply(scope.connection, msg, result)

    async def _run_async(self, fn: Callable[[], Awaitable[Any]], scope: MessageScope) -> None:
        message_var.set(scope)
        msg = scope.message
        conn = scope.connection
        try:
            result = await fn()
        except WsError as exc:
            if msg.has_id:
                conn.reply_error(msg.id, exc.code, exc.message)
        except Exception:
            log.exception("handler failed: %s %s", msg.event, msg.path)
            if msg.has_id:
                conn.reply_error(msg.id, 500, INTERNAL_ERROR)
        else:
            if msg.has_id:
                self._reply(conn, msg, result)
        finally:
            conn._inflight -= 1
            wake = conn._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    def _reply(self, conn: Connection, msg: ClientMessage, result: Any) -> None:
        """Send ``result`` as the reply to ``msg``; 500 when it cannot be encoded."""
        try:
            frame = self._encode({"id": msg.id, "data": result})
        except Exception:
            log.exception("reply of %s %s cannot be encoded", msg.event, msg.path)
            frame = encode_error(msg.id, 500, INTERNAL_ERROR, self._encode)
        conn.send_frame(frame)

    # -- cross-instance inbound -------------------------------------------------------------

    def _transport_state_changed(self, up: bool) -> None:
        for when, hook in self._on_transport_state:
            if when is up:
                copy_context().run(self._run_transport_hook, hook)

    def _run_transport_hook(self, hook: _Handler) -> None:
        app_var.set(self)  # use_ws_server() works in the hook
        try:
            result = hook.fn()
        except Exception:
            log.exception("transport state hook failed")
            return
        if hook.is_async:
            task = asyncio.get_running_loop().create_task(self._settle_hook(result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _settle_hook(result: Awaitable[Any]) -> None:
        try:
            await result
        except Exception:
            log.exception("transport state hook failed")

    def _on_broadcast_payload(self, payload: str) -> None:
        env = decode_envelope(payload, self.instance_id)
        if env is None:
            return
        frame = push_frame_from_envelope(env, self._encode)
        if frame is not None:
            for conn in self._connections.values():
                conn.send_frame(frame)

    def _on_inbox_payload(self, payload: str) -> None:
        env = decode_envelope(payload, self.instance_id)
        if env is None:
            return
        to = env.get("to")
        conn = self._connections.get(to) if isinstance(to, str) else None
        if conn is None:
            return
        frame = push_frame_from_envelope(env, self._encode)
        if frame is not None:
            conn.send_frame(frame)

    async def _heartbeat(self) -> None:
        interval, timeout = self.heartbeat, self.heartbeat_timeout
        while True:
            await asyncio.sleep(interval - timeout if interval > timeout else interval)
            pinged = []
            for conn in self._connections.values():
                if not conn.closed:
                    conn._seen = False
                    conn._socket.ping()
                    pinged.append(conn)
            await asyncio.sleep(min(timeout, interval))
            for conn in pinged:
                # A reader paused by max_in_flight cannot see the pong: not a dead peer.
                if not conn._seen and not conn.closed and conn._wake is None:
                    log.info("heartbeat timeout, dropping %s", conn.id)
                    conn._socket.abort()


def create_ws_app(
    *,
    heartbeat: float = 30.0,
    heartbeat_timeout: float = 5.0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_frame_size: int = 16 << 20,
    codec: Codec | None = None,
    transport: BroadcastTransport | None = None,
    compress: bool = False,
    allowed_origins: Sequence[str] | str | None = None,
    subprotocols: Sequence[str] | str | None = None,
    max_in_flight: int = 64,
    max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER,
    shutdown_timeout: float = 10.0,
    ignore_case: bool = False,
    ignore_trailing_slash: bool = False,
    route_cache_size: int = 1024,
) -> WsApp:
    """Create a [`WsApp`][]; keyword options as for [`WsApp`][]."""
    # Spelled out (not **options) so that readers, IDEs and type checkers see every option;
    # tests/test_app_signature.py keeps this signature identical to WsApp.__init__.
    return WsApp(
        heartbeat=heartbeat,
        heartbeat_timeout=heartbeat_timeout,
        max_message_size=max_message_size,
        max_frame_size=max_frame_size,
        codec=codec,
        transport=transport,
        compress=compress,
        allowed_origins=allowed_origins,
        subprotocols=subprotocols,
        max_in_flight=max_in_flight,
        max_send_buffer=max_send_buffer,
        shutdown_timeout=shutdown_timeout,
        ignore_case=ignore_case,
        ignore_trailing_slash=ignore_trailing_slash,
        route_cache_size=route_cache_size,
    )
