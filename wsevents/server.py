"""The aiohttp adapter: the upgrade handler, the read loop, the heartbeat, mounting,
standalone serving.

This is the only module that touches ``aiohttp.web``. Data frames are written straight to
the connection's transport (uncompressed), framed by ``_frames``, so that sending is
synchronous: a broadcast never awaits a member, and order is the order of the calls.
Importing it registers it as the adapter behind ``WsApp.attach``, ``WsApp.run`` and
``WsApp.listen``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import logging
import math
import socket as _socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSCloseCode, WSMsgType, hdrs, web

from ._context import current_app, current_connection
from ._frames import BINARY_HEADERS as _BINARY_HEADERS
from ._frames import OP_BINARY, OP_PING, OP_PONG, OP_TEXT, encode_close, encode_frame, frame_header
from ._frames import TEXT_HEADERS as _TEXT_HEADERS
from .app import WsApp, register_adapter
from .connection import Connection
from .protocol import select_subprotocol

__all__ = [
    "CLIENT_JS",
    "WS_APP",
    "add_admin_routes",
    "add_asyncapi_route",
    "add_client_route",
    "add_health_routes",
    "add_metrics_route",
    "attach",
    "client_ip",
    "listen",
    "run",
]

log = logging.getLogger("wsevents.server")

WS_APP = web.AppKey("wsevents.app", WsApp)
"""Where [`attach`][] stores the WsApp on the aiohttp application."""

_PING_FRAME = encode_frame(OP_PING, b"")
_FORWARDED_FOR = "X-Forwarded-For"
_CLOSE_TIMEOUT = 5.0
"""Seconds a closing handshake may take, flushing included, before the socket is dropped."""
_LINGER_TIME = _CLOSE_TIMEOUT
_LINGER_IDLE = 1.0
_LINGER_BYTES = 64 << 20
"""After a frame over max_frame_size: how long (in all, and without any data) and how much
the server reads and discards before it closes, so the client reads the close code."""
_ORIGIN_WARNING_WINDOW = 60.0
_ORIGIN_WARNING_LINES = 5
"""Refused origins are logged once per origin per window, in at most so many lines."""


class _AiohttpSocket:
    """[`SocketLike`][wsevents.connection.SocketLike] over an aiohttp ``WebSocketResponse``.

    Every frame the adapter writes itself (uncompressed data, ping, pong, the close after
    an oversize frame) is built by ``_frames`` and written to the transport synchronously.
    Two kinds go through aiohttp's own writer instead: with permessage-deflate, data
    frames (aiohttp holds the compression context), in order, from one writer task; and
    the closing handshake ``close()`` starts (aiohttp tracks it and waits for the peer).
    """

    __slots__ = (
        "_close_task",
        "_closing",
        "_deflate",
        "_queue",
        "_queued",
        "_transport",
        "_writer_task",
        "_ws",
        "peer_closed",
        "sent_code",
    )

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self._ws = ws
        self._transport = transport
        self._closing = False
        self._close_task: asyncio.Task[Any] | None = None
        self._deflate = bool(ws.compress)
        # Only a deflate connection queues (an empty deque costs ~600 bytes per connection).
        self._queue: deque[tuple[bytes, bool]] | None = deque() if self._deflate else None
        self._queued = 0
        self._writer_task: asyncio.Task[None] | None = None
        self.sent_code: int | None = None  # the close code of a close the server started
        self.peer_closed = False  # the client sent a close frame

    @property
    def closed(self) -> bool:
        return self._closing or self._ws.closed or self._transport.is_closing()

    def write(self, payload: bytes, binary: bool) -> bool:
        if self._closing or self._ws.closed or self._transport.is_closing():
            return False
        if self._queue is not None:
            self._queue.append((payload, binary))
            self._queued += len(payload)
            if self._writer_task is None:
                self._writer_task = asyncio.get_running_loop().create_task(self._drain_queue())
            return True
        n = len(payload)
        if n < 126:  # the per-message path: a table lookup, one concatenation, one write
            self._transport.write((_BINARY_HEADERS if binary else _TEXT_HEADERS)[n] + payload)
        else:
            self._transport.write(frame_header(OP_BINARY if binary else OP_TEXT, n) + payload)
        return True

    def buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._queued

    def _write_control(self, frame: bytes) -> None:
        if not self.closed:
            self._transport.write(frame)

    def ping(self) -> None:
        self._write_control(_PING_FRAME)

    def pong(self, payload: bytes) -> None:
        # aiohttp's reader refuses pings over 125 bytes; the cut keeps a pong valid anyway.
        self._write_control(encode_frame(OP_PONG, payload[:125]))

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.sent_code = code
        self._close_task = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            # A peer that stopped reading never lets the close frame drain: drop it.
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                if self._writer_task is not None:
                    with contextlib.suppress(Exception):
                        await self._writer_task
                with contextlib.suppress(Exception):
                    await self._ws.close(code=code, message=reason.encode("utf-8"))
        except TimeoutError:
            self._transport.abort()

    def abort(self) -> None:
        if not self._closing:
            self.sent_code = WSCloseCode.ABNORMAL_CLOSURE
        self._closing = True
        self._transport.abort()

    async def close_after_oversize_frame(self, code: int) -> None:
        """Send the close frame, then read and discard what the client still sends.

        Closing the TCP connection with unread input resets it: a client still sending
        the rest of a large frame would lose the close frame and see 1006. This reads on,
        up to the bounds above or the client's own close, and then closes the transport.
        """
        if self._closing or self._transport.is_closing():
            return  # our own close, not aiohttp's reaction to an oversize frame
        self._closing = True
        self.sent_code = code
        transport = self._transport
        transport.write(encode_close(code))
        done = asyncio.get_running_loop().create_future()
        transport.set_protocol(_Discard(transport.get_protocol(), done))
        if not transport.is_reading():
            transport.resume_reading()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LINGER_TIME):
                await done
        transport.close()

    async def wait_closed(self) -> None:
        if self._close_task is not None:
            with contextlib.suppress(Exception):
                await self._close_task

    async def _drain_queue(self) -> None:
        ws, queue = self._ws, self._queue
        assert queue is not None
        try:
            while queue and not ws.closed:
                payload, binary = queue.popleft()
                self._queued -= len(payload)
                await ws.send_frame(payload, WSMsgType.BINARY if binary else WSMsgType.TEXT)
        except Exception as exc:
            log.debug("write failed: %r", exc)
            queue.clear()
            self._queued = 0
        finally:
            self._writer_task = None


class _Discard(asyncio.Protocol):
    """Reads and drops everything, within the linger bounds; forwards the connection's end."""

    def __init__(self, protocol: asyncio.BaseProtocol, done: asyncio.Future[None]) -> None:
        self._protocol = protocol
        self._done = done
        self._left = _LINGER_BYTES
        self._idle = asyncio.get_running_loop().call_later(_LINGER_IDLE, self._finish)

    def _finish(self) -> None:
        self._idle.cancel()
        if not self._done.done():
            self._done.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self._finish()
        elif not self._done.done():
            self._idle.cancel()
            self._idle = asyncio.get_running_loop().call_later(_LINGER_IDLE, self._finish)

    def eof_received(self) -> bool:
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        self._protocol.connection_lost(exc)


class _WebSocketResponse(web.WebSocketResponse):
    """aiohttp's response, but a frame over ``max_frame_size`` closes without a reset."""

    oversize: _AiohttpSocket | None = None

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        # aiohttp's reader refuses the frame, and receive() closes with 1009 and then
        # closes the transport at once, while the client is still sending.
        sock = self.oversize
        if code == WSCloseCode.MESSAGE_TOO_BIG and sock is not None and not self.closed:
            self.oversize = None
            await sock.close_after_oversize_frame(code)
        return await super().close(code=code, message=message, drain=drain)


class _OriginWarnings:
    """Rate limit of the refused-origin warning: a flood of handshakes logs a few lines."""

    __slots__ = ("_lines", "_seen", "_suppressed", "_window_end")

    def __init__(self) -> None:
        self._window_end = 0.0
        self._seen: set[str] = set()
        self._lines = 0
        self._suppressed = 0

    def refused(self, request: web.BaseRequest, origin: str) -> None:
        now = asyncio.get_running_loop().time()
        if now >= self._window_end:
            self._window_end = now + _ORIGIN_WARNING_WINDOW
            self._seen.clear()
            self._lines = 0
        if origin in self._seen or self._lines >= _ORIGIN_WARNING_LINES:
            self._suppressed += 1
            return
        self._seen.add(origin)
        self._lines += 1
        suppressed, self._suppressed = self._suppressed, 0
        log.warning(
            "refused a WebSocket from origin %r (Host %r); to accept it, add it to "
            "allowed_origins (CLI: --allow-origin). Refused origins are logged once per %d s "
            "(%d more refused since the last line)",
            origin[:200],
            request.host[:200],
            _ORIGIN_WARNING_WINDOW,
            suppressed,
        )


def _norm_authority(scheme: str, netloc: str) -> str:
    netloc = netloc.lower()
    default = {"http": ":80", "https": ":443", "ws": ":80", "wss": ":443"}.get(scheme)
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return netloc


def origin_allowed(request: web.BaseRequest, allowed: tuple[str, ...] | None) -> bool:
    """Cross-site WebSocket hijacking check.

    No ``Origin`` header (a non-browser client) is allowed. Otherwise the origin must be in
    ``allowed`` (``"*"`` allows all), or, when ``allowed`` is None, match the ``Host``.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if allowed is not None:
        return "*" in allowed or origin in allowed
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if not parts.netloc:
        return False
    host_scheme = "https" if request.secure else "http"
    return _norm_authority(parts.scheme, parts.netloc) == _norm_authority(
        host_scheme if parts.scheme in ("http", "https") else parts.scheme, request.host
    )


def _parse_hop(hop: str) -> IPv4Address | IPv6Address | None:
    """One ``X-Forwarded-For`` entry as an address (a port, ``[v6]:port``, tolerated)."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return ip_address(hop)
    except ValueError:
        return None


def _trusted(
    address: IPv4Address | IPv6Address, trusted: Sequence[IPv4Network | IPv6Network]
) -> bool:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)


def client_ip(
    peer: str | None,
    forwarded_for: Sequence[str],
    trusted: Sequence[IPv4Network | IPv6Network],
) -> str | None:
    """The client's address of a request from ``peer`` with the ``X-Forwarded-For``
    header values ``forwarded_for``, believing only the proxies in ``trusted``.

    When ``peer`` is trusted, the hops are read from the right (the nearest first): the
    first one that is not a trusted proxy is the client. When every hop is trusted, the
    left-most is; an entry that is not an address stops the walk at the hop before it.
    Otherwise (an untrusted peer, no header) the peer is the client: what it says is not
    believed.
    """
    if peer is None or not trusted or not forwarded_for:
        return peer
    current = _parse_hop(peer)
    if current is None or not _trusted(current, trusted):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _parse_hop(hop)
        if address is None:
            break
        current = address
        if not _trusted(address, trusted):
            break
    return str(current)


@contextlib.contextmanager
def _connection_context(ws_app: WsApp, conn: Connection) -> Iterator[None]:
    app_token = current_app.context_var.set(ws_app)
    conn_token = current_connection.context_var.set(conn)
    try:
        yield
    finally:
        current_connection.context_var.reset(conn_token)
        current_app.context_var.reset(app_token)


def make_handler(ws_app: WsApp) -> Any:
    """The aiohttp request handler that upgrades to WebSocket and serves ``ws_app``."""

    origin_warnings = _OriginWarnings()

    def refused(reason: str) -> None:
        metrics = ws_app.metrics
        if metrics is not None:
            metrics.connection_refused(reason)

    async def handler(request: web.Request) -> web.StreamResponse:
        if ws_app.closing:
            log.debug("refused an upgrade from %s: shutting down", request.remote)
            refused("shutting_down")
            raise web.HTTPServiceUnavailable(text="Server shutting down")
        if not origin_allowed(request, ws_app.allowed_origins):
            origin = request.headers.get(hdrs.ORIGIN, "")
            log.debug("refused an upgrade from %s: origin %r", request.remote, origin[:200])
            origin_warnings.refused(request, origin)
            refused("origin")
            raise web.HTTPForbidden(text="Origin not allowed")
        ip = request.remote
        if ws_app.trusted_proxies:
            ip = client_ip(ip, request.headers.getall(_FORWARDED_FOR, ()), ws_app.trusted_proxies)
        limiter = ws_app.handshake_limiter
        if limiter is not None:
            wait = limiter.take(ip, time.monotonic())
            if wait:
                log.debug("refused an upgrade from %s: handshake rate", ip)
                refused("rate_limit")
                raise web.HTTPTooManyRequests(
                    text="Too Many Requests", headers={"Retry-After": str(math.ceil(wait))}
                )
        protocols: tuple[str, ...] = ()
        offered = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL)
        if offered is not None:
            # aiohttp picks in the client's order and, without a match, answers without a
            # protocol (browsers then abort) and logs a warning: we choose, or refuse.
            try:
                protocols = (select_subprotocol(offered, ws_app.subprotocols),)
            except ValueError as exc:
                log.debug("refused an upgrade from %s: %s %r", request.remote, exc, offered[:200])
                refused("subprotocol")
                raise web.HTTPBadRequest(text=str(exc).capitalize()) from None
        resp = _WebSocketResponse(
            protocols=protocols,
            autoping=False,
            compress=ws_app.compress,
            max_msg_size=ws_app.max_frame_size,
            timeout=_CLOSE_TIMEOUT,
        )
        await resp.prepare(request)
        transport = request.transport
        if transport is None:  # the peer left during the handshake
            return resp
        sock = resp.oversize = _AiohttpSocket(resp, transport)
        conn = Connection(
            sock,
            request=request,
            codec=ws_app.codec,
            max_send_buffer=ws_app.max_send_buffer,
            subprotocol=resp.ws_protocol,
            ip=ip,
        )
        with _connection_context(ws_app, conn):
            if not await ws_app._open_connection(conn):
                await sock.wait_closed()
                return resp
            log.debug(
                "open %s from %s (subprotocol %s)",
                conn.id,
                request.remote,
                conn.subprotocol,
                extra={"conn": conn.id, "peer": request.remote, "event": "open"},
            )
            metrics = ws_app.metrics
            if metrics is not None:
                metrics.connection_opened()
            try:
                await _read_loop(ws_app, conn, resp, sock)
            finally:
                by_server = sock.sent_code is not None
                code = sock.sent_code if by_server else resp.close_code
                code = code or 1006
                log.debug(
                    "closed %s: %d by the %s",
                    conn.id,
                    code,
                    "server" if by_server else "client",
                    extra={
                        "conn": conn.id,
                        "code": code,
                        "by": "server" if by_server else "client",
                        "event": "close",
                    },
                )
                if metrics is not None:
                    metrics.connection_closed(
                        code, by_server=by_server, slow_consumer=conn.slow_consumer
                    )
                # aiohttp cancels this handler when the peer leaves if handler_cancellation
                # is on (its test server always is): the cleanup and the on_disconnect hooks
                # run in a task of their own, to completion (shutdown waits for it too).
                cleanup = ws_app._spawn(ws_app._close_connection(conn, resumable=_resumable(sock)))
                try:
                    await asyncio.shield(cleanup)
                finally:
                    if not sock.closed:
                        sock.close(1000, "")
                    await sock.wait_closed()
        return resp

    return handler


async def _read_loop(
    ws_app: WsApp, conn: Connection, resp: web.WebSocketResponse, sock: _AiohttpSocket
) -> None:
    receive = resp.receive
    handle = ws_app._handle_frame
    mark_seen = conn.mark_seen
    max_in_flight = ws_app.max_in_flight
    text, binary, ping, pong = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG
    while True:
        msg = await receive()
        kind = msg.type
        mark_seen()
        if kind is text or kind is binary:
            try:
                full = handle(conn, msg.data)
            except Exception:  # a bug of ours must not take the connection down
                log.exception("dispatch failed")
                full = conn.in_flight >= max_in_flight
            if full:
                await conn.wait_capacity(max_in_flight)
        elif kind is ping:
            sock.pong(msg.data)
        elif kind is pong:
            continue
        else:  # CLOSE, CLOSING, CLOSED, ERROR
            if kind is WSMsgType.CLOSE:
                sock.peer_closed = True
            return


_RESUMABLE_CODES = frozenset((WSCloseCode.ABNORMAL_CLOSURE, WSCloseCode.GOING_AWAY))
"""Server-side ends that keep a session resumable: a dropped peer (heartbeat timeout, a
resume taking over) and the shutdown (1001), so that a deploy does not end sessions."""


def _resumable(sock: _AiohttpSocket) -> bool:
    """Whether the connection ended without a clean close (see ``wsevents.sessions``)."""
    if sock.sent_code is not None:
        return sock.sent_code in _RESUMABLE_CODES
    return not sock.peer_closed


async def _heartbeat(ws_app: WsApp) -> None:
    """Ping every connection each ``heartbeat`` seconds; drop those silent for
    ``heartbeat_timeout`` after the ping."""
    interval, timeout = ws_app.heartbeat, ws_app.heartbeat_timeout
    server = ws_app.server
    while True:
        await asyncio.sleep(interval - timeout if interval > timeout else interval)
        pinged = []
        for conn in server.connections():
            if not conn.closed:
                conn.ping()
                pinged.append(conn)
        await asyncio.sleep(min(timeout, interval))
        for conn in pinged:
            # A reader paused by max_in_flight cannot see the pong: not a dead peer.
            if not conn.is_alive and not conn.closed and not conn.reading_paused:
                log.info(
                    "heartbeat timeout, dropping %s",
                    conn.id,
                    extra={"conn": conn.id, "reason": "heartbeat_timeout"},
                )
                conn.abort()


def attach(ws_app: WsApp, app: web.Application, path: str = "/ws") -> web.Application:
    """Mount ``ws_app`` on an aiohttp application at ``path``.

    Stores it under ``app[WS_APP]``, starts it with the application (transport, heartbeat)
    and, on shutdown, closes every connection with 1001 "Server shutting down", lets
    running handlers finish within ``shutdown_timeout`` and closes the transport.
    """
    app.router.add_get(path, make_handler(ws_app))
    app[WS_APP] = ws_app

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await ws_app.start()
        heartbeat = (
            asyncio.get_running_loop().create_task(_heartbeat(ws_app))
            if ws_app.heartbeat > 0
            else None
        )
        yield
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await ws_app._release()

    async def on_shutdown(_: web.Application) -> None:
        await ws_app.shutdown()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app


CLIENT_JS = Path(__file__).parent / "static" / "wsevents-client.js"
"""The browser client module shipped in the package (an ES module, no dependencies)."""


def add_client_route(app: web.Application, path: str = "/wsevents-client.js") -> web.Application:
    """Serve the browser client module at ``path`` (``import { WsClient } from path``).

    Sent as ``text/javascript`` with ``Cache-Control: no-cache`` (browsers revalidate
    with the ETag, so an upgraded wsevents is picked up).
    """

    async def client_js(_: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            CLIENT_JS,
            headers={
                "Content-Type": "text/javascript; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )

    app.router.add_get(path, client_js)
    return app


def add_asyncapi_route(
    app: web.Application,
    ws_app: WsApp,
    path: str = "/asyncapi.json",
    *,
    title: str = "wsevents app",
    version: str = "0.0.0",
    description: str | None = None,
    server: str | None = None,
) -> web.Application:
    """Serve ``ws_app``'s AsyncAPI document ([`WsApp.asyncapi`][wsevents.WsApp.asyncapi])
    as JSON at ``GET path``.

    The document is built on the first request (every route is registered by then) and
    kept; the keyword arguments are those of ``WsApp.asyncapi``.

    Raises:
        ValueError: ``server`` is not a ``ws://`` or ``wss://`` URL.
    """
    if server is not None:  # a bad URL fails here, not at the first request
        ws_app.asyncapi(title=title, version=version, server=server)
    body: list[bytes] = []

    async def asyncapi_json(_: web.Request) -> web.Response:
        if not body:
            document = ws_app.asyncapi(
                title=title, version=version, description=description, server=server
            )
            body.append(orjson.dumps(document))
        return web.Response(body=body[0], content_type="application/json")

    app.router.add_get(path, asyncapi_json)
    return app


def add_metrics_route(
    app: web.Application,
    ws_app: WsApp | None = None,
    path: str = "/metrics",
    *,
    registry: Any = None,
) -> web.Application:
    """Serve the Prometheus metrics at ``GET path`` (the text exposition format).

    With ``ws_app``, its metrics are enabled first (in ``registry``) unless they already
    are. The response is what ``registry`` holds (default: ``prometheus_client.REGISTRY``,
    which also has the process and Python collectors). With the
    ``PROMETHEUS_MULTIPROC_DIR`` environment variable set (``prometheus-client``'s
    multi-process mode), it is what every process of the server wrote there instead (see
    [monitoring](../monitoring.md#several-processes)).

    Raises:
        ImportError: ``prometheus-client`` is not installed.
    """
    from .metrics import require_prometheus_client

    prometheus = require_prometheus_client()
    multiprocess = importlib.import_module("prometheus_client.multiprocess")
    if ws_app is not None and ws_app.metrics is None:
        ws_app.enable_metrics(registry=registry)
    source = registry if registry is not None else prometheus.REGISTRY

    async def metrics(_: web.Request) -> web.Response:
        exported = source
        counted = ws_app.metrics if ws_app is not None else None
        if counted is not None and counted.multiprocess:
            # Every process writes its counters to PROMETHEUS_MULTIPROC_DIR; this one
            # writes its latest first, then answers with what all of them wrote.
            counted.sync()
            exported = prometheus.CollectorRegistry()
            multiprocess.MultiProcessCollector(exported)
        response = web.Response(body=prometheus.generate_latest(exported))
        response.headers[hdrs.CONTENT_TYPE] = prometheus.CONTENT_TYPE_LATEST
        return response

    app.router.add_get(path, metrics)
    return app


def add_admin_routes(
    app: web.Application, ws_app: WsApp, token: str, *, path: str = "/admin/snapshot", top: int = 10
) -> web.Application:
    """Serve [`WsApp.snapshot`][wsevents.WsApp.snapshot] as JSON at ``GET path``, to
    requests with ``Authorization: Bearer <token>`` (the read-only admin API).

    Any other request gets 401 with ``WWW-Authenticate: Bearer``; the token is compared
    in constant time.

    Raises:
        ValueError: ``token`` is empty.
    """
    if not token:
        raise ValueError("the admin token must not be empty")
    expected = token.encode("utf-8")

    async def snapshot(request: web.Request) -> web.Response:
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), expected
        ):
            log.warning(
                "refused an admin request from %s: bad or missing token",
                request.remote,
                extra={"peer": request.remote, "reason": "admin_token"},
            )
            return web.json_response(
                {"error": "Unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body = orjson.dumps(ws_app.snapshot(top=top))
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(path, snapshot)
    return app


def add_health_routes(
    app: web.Application, ws_app: WsApp, *, live: str = "/healthz", ready: str = "/readyz"
) -> web.Application:
    """Serve a liveness probe at ``GET live`` (200 while the process serves HTTP) and a
    readiness probe at ``GET ready`` (200 while ``ws_app`` accepts connections and its
    transport is up, else 503), both with a small JSON body. A path the application
    already routes is left alone."""
    taken = {
        resource.canonical for resource in app.router.resources() if hasattr(resource, "canonical")
    }

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        body = {
            "ready": ws_app.ready,
            "closing": ws_app.closing,
            "transport_up": ws_app.transport_up,
        }
        return web.json_response(body, status=200 if body["ready"] else 503)

    for path, probe in ((live, healthz), (ready, readyz)):
        if path in taken:
            log.info("%s is routed by the application already: no probe added there", path)
        else:
            app.router.add_get(path, probe)
    return app


def build_app(ws_app: WsApp, path: str = "/ws") -> web.Application:
    """A new aiohttp application serving only ``ws_app`` at ``path``."""
    return attach(ws_app, web.Application(), path)


def run(
    target: WsApp | web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    path: str = "/ws",
    shutdown_timeout: float | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM, then shut down gracefully."""
    app = build_app(target, path) if isinstance(target, WsApp) else target
    grace = shutdown_timeout
    if grace is None:
        ws_app = app.get(WS_APP)
        grace = ws_app.shutdown_timeout + 5.0 if ws_app is not None else 10.0
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=lambda text: log.info("%s", text.strip()),
        shutdown_timeout=grace,
        handle_signals=True,
        loop=loop,
    )


async def listen(
    ws_app: WsApp, *, host: str = "127.0.0.1", port: int = 0, path: str = "/ws"
) -> web.AppRunner:
    """Serve ``ws_app`` in the running loop; returns the runner (``await runner.cleanup()``).

    ``port=0`` picks a free port: read it from ``runner.addresses``.
    """
    runner = web.AppRunner(build_app(ws_app, path), access_log=None, handle_signals=False)
    await runner.setup()
    sock = _socket.socket(_socket.AF_INET6 if ":" in host else _socket.AF_INET)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock)
    await site.start()
    return runner


class _AiohttpAdapter:
    """The adapter ``WsApp.attach``/``run``/``listen`` delegate to (registered below)."""

    def attach(self, ws_app: WsApp, app: Any, path: str) -> Any:
        return attach(ws_app, app, path)

    def run(self, ws_app: WsApp, *, host: str, port: int, path: str) -> None:
        run(ws_app, host=host, port=port, path=path)

    async def listen(
        self, ws_app: WsApp, *, host: str, port: int, path: str
    ) -> tuple[str, int, Callable[[], Awaitable[None]]]:
        runner = await listen(ws_app, host=host, port=port, path=path)
        address = runner.addresses[0]
        return str(address[0]), int(address[1]), runner.cleanup


register_adapter(_AiohttpAdapter())
