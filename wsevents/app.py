"""WsApp: options, registration, lifecycle, and the shortcuts to the adapter (no aiohttp here).

Messages go through ``wsevents.dispatch``, cross-instance delivery through
``wsevents.cluster``, rooms through ``wsevents.rooms``. The aiohttp adapter
(``wsevents.server``) sits above this module: it registers itself with
``register_adapter`` when imported, and ``WsApp.attach``, ``WsApp.run`` and ``WsApp.listen``
reach it through that registry, so this module never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import copy_context
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network, ip_network
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from ._adapters import ADAPTERS, Adapter, register_adapter
from ._aio import TaskSet, await_hook, call_hook, is_async
from ._context import app_var
from .asyncapi import RouteSpec, build_asyncapi, docstring_summary
from .capacity import Capacity
from .cluster import BROADCAST_CHANNEL, INSTANCE_CHANNEL_PREFIX
from .composables import WsServer
from .connection import DEFAULT_MAX_SEND_BUFFER, Connection
from .contracts import PushChecker, PushSpec, compile_data_type
from .deadlines import DeadlineClock
from .dispatch import FALLBACK_PATTERN, Dispatcher, Endpoint, Handler, Interceptor
from .exceptions import WsError
from .history import History
from .presence import Presence, PresenceListener
from .protocol import DEFAULT_MAX_MESSAGE_SIZE, INTERNAL_ERROR, Codec, JsonCodec, is_token
from .ratelimit import Limiter, RateLimit
from .rooms import Admit, RoomManager
from .routing import Guard, Route, Router, join_pattern
from .sessions import Sessions
from .transports.base import BroadcastTransport, RateLimitStore

if TYPE_CHECKING:
    from aiohttp import web
    from opentelemetry.trace import TracerProvider

    from .metrics import Metrics

__all__ = [
    "BROADCAST_CHANNEL",
    "INSTANCE_CHANNEL_PREFIX",
    "SHUTDOWN_CLOSE_CODE",
    "Adapter",
    "DefaultRoom",
    "RouteGroup",
    "WsApp",
    "create_ws_app",
    "register_adapter",
]

log = logging.getLogger("wsevents")

F = TypeVar("F", bound=Callable[..., Any])
PL = TypeVar("PL", bound=PresenceListener)
IC = TypeVar("IC", bound=Interceptor)
G = TypeVar("G", bound=Guard)

DefaultRoom = str | Callable[[Connection], "Iterable[str] | Awaitable[Iterable[str]]"]
"""A default room: a room name, or a function of the connection returning names."""

SHUTDOWN_CLOSE_CODE = 1001
SHUTDOWN_REASON = "Server shutting down"
TOO_MANY_CONNECTIONS = "Too many connections"


class _MessageDecorators:
    """``@on_message``, the decorator form of ``add_message_handler``, for the app and its
    route groups alike."""

    __slots__ = ()

    def add_message_handler(
        self,
        event: str,
        pattern: str,
        handler: Callable[[], Any],
        *,
        guards: Iterable[Guard] = (),
        data: Any = None,
        reply: Any = None,
        params: Mapping[str, Any] | None = None,
        rate_limit: RateLimit | None = None,
        public: bool = False,
    ) -> None:
        raise NotImplementedError

    def on_message(
        self,
        event: str,
        pattern: str,
        *,
        guards: Iterable[Guard] = (),
        data: Any = None,
        reply: Any = None,
        params: Mapping[str, Any] | None = None,
        rate_limit: RateLimit | None = None,
        public: bool = False,
    ) -> Callable[[F], F]:
        """Decorator form of ``add_message_handler`` (same arguments, the handler decorated)."""

        def register(fn: F) -> F:
            self.add_message_handler(
                event,
                pattern,
                fn,
                guards=guards,
                data=data,
                reply=reply,
                params=params,
                rate_limit=rate_limit,
                public=public,
            )
            return fn

        return register


class WsApp(_MessageDecorators, WsServer):
    """A WebSocket application: routed message handlers, rooms and lifecycle hooks.

    Create it with [`create_ws_app`][] (or directly), register handlers with
    [`on_message`][wsevents.WsApp.on_message], then mount it with [`attach`][] or run it
    with [`run`][]. It also offers the whole [`WsServer`][wsevents.WsServer] API
    (connections, broadcast, send_to); handlers reach that part alone through
    [`use_ws_server`][wsevents.use_ws_server].

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
        check_pushes: check every push against its declaration ([`declare_push`][]) before
            it is sent, and raise [`InvalidPush`][wsevents.contracts.InvalidPush] from the
            sending call when it does not match (a debug aid; off, pushes cost nothing
            more).
        rate_limit: a [`RateLimit`][wsevents.RateLimit] every routed message counts
            against (one set of buckets for the whole app), before the limits of its
            groups and route; over it, error 429 with ``retry_after``.
        handshake_rate: a [`RateLimit`][wsevents.RateLimit] on WebSocket handshakes per
            peer IP address (its ``key`` is ignored): an extra upgrade request gets HTTP
            429 with a ``Retry-After`` header, before any WebSocket exists.
        max_connections_per_user: open connections one user (``Connection.user`` once
            ``on_connect`` ran) may have on this instance; one more is closed with 1008
            ``"Too many connections"`` (None: no limit).
        auth_required: authentication after connect: a connection is served only the
            routes registered with ``public=True`` (the login) until a handler calls
            ``use_ws_connection().authenticate(...)``; other routes answer 401
            ``"Unauthorized"``.
        auth_timeout: with ``auth_required``, seconds a connection has to authenticate
            before it is closed with 4408 ``"Authentication timeout"``.
        default_rooms: rooms every connection joins once ``on_connect`` accepted it,
            before its first message is read: room names, and functions of the
            [`Connection`][wsevents.Connection] (sync or ``async``) returning names, e.g.
            ``lambda conn: [f"/users/{conn.user}"]``. Each join goes through the normal
            join path (room policies apply); a refused join or a failing function is
            logged and skipped, the connection stays.
        trusted_proxies: addresses and networks (``"10.0.0.0/8"``, ``"::1"``) of the
            reverse proxies in front of the app. When the peer of an upgrade request is
            one of them, the client's address is taken from ``X-Forwarded-For``: the
            right-most hop that is not a trusted proxy. It is
            [`Connection.ip`][wsevents.Connection], what the ``"ip"`` rate-limit key
            and the handshake limit count. Other peers' headers are ignored.
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
        check_pushes: bool = False,
        rate_limit: RateLimit | None = None,
        handshake_rate: RateLimit | None = None,
        max_connections_per_user: int | None = None,
        auth_required: bool = False,
        auth_timeout: float = 10.0,
        default_rooms: Iterable[DefaultRoom] = (),
        trusted_proxies: Iterable[str] = (),
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
        """The broadcast transport to other instances (None: single instance)."""
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
        self.router: Router[Endpoint] = Router(
            ignore_case=ignore_case,
            ignore_trailing_slash=ignore_trailing_slash,
            cache_size=route_cache_size,
        )
        self._connections: dict[str, Connection] = {}
        instance_id = uuid.uuid4().hex
        rooms = RoomManager(transport, instance_id=instance_id, codec=self.codec)
        presence = Presence(rooms)
        history = History(rooms)
        super().__init__(self._connections, rooms, self.codec, presence, history)
        self._server = WsServer(self._connections, rooms, self.codec, presence, history)
        self._pushes = PushChecker()
        self.check_pushes = check_pushes
        """Whether pushes are checked against their declarations (see the option)."""
        if check_pushes:
            rooms.check_push = self._pushes.check
        self._tasks = TaskSet()
        self._dispatcher = Dispatcher(
            self,
            self.router,
            self.codec,
            max_message_size=max_message_size,
            max_in_flight=max_in_flight,
            tasks=self._tasks,
        )
        # The adapter's reader calls this once per data frame (bound: no extra layer).
        self._handle_frame = self._dispatcher.handle_frame
        self._on_connect: list[Handler] = []
        self._on_disconnect: list[Handler] = []
        self._on_transport_state: list[tuple[bool, Handler]] = []
        self._started = False
        self._closing = False
        self._stop_listening: Callable[[], Awaitable[None]] | None = None
        # -- access and flow control --
        if max_connections_per_user is not None and max_connections_per_user <= 0:
            raise ValueError("max_connections_per_user must be > 0")
        self._limiter = Limiter(rate_limit, "app") if rate_limit is not None else None
        self.handshake_limiter = (
            Limiter(handshake_rate, "handshake") if handshake_rate is not None else None
        )
        # Cluster-wide limits by identity; they get the backend's buckets at start().
        self._shared_limiters: dict[int, Limiter] = {}
        self._rate_limit_store: RateLimitStore | None = None
        if self._limiter is not None and rate_limit is not None and rate_limit.cluster:
            self._shared_limiters[id(self._limiter)] = self._limiter
        """The buckets of ``handshake_rate`` (None: no handshake limit); the adapter
        takes a token per upgrade request."""
        self.max_connections_per_user = max_connections_per_user
        # user -> open connections, and what each connection was counted as.
        self._user_counts: dict[str, int] = {}
        self._counted_as: dict[str, str] = {}
        if auth_timeout <= 0:
            raise ValueError("auth_timeout must be > 0")
        self.auth_required = auth_required
        self.auth_timeout = float(auth_timeout)
        self._deadlines = DeadlineClock(self._connections)
        # Join admission: room patterns -> (admit or None, admit is async, max_members).
        self._room_policies: Router[tuple[Callable[..., Any] | None, bool, int | None]] | None = (
            None
        )
        self.capacity = Capacity(rooms, self._max_members)
        """Room capacity: places taken in rooms with ``max_members``, on every instance
        (see [`room_policy`][])."""
        self.sessions = Sessions(self)
        """Sessions (resume after a dropped connection) and idempotent calls: see
        [`Sessions`][wsevents.Sessions]."""
        self.trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = tuple(
            _network(proxy) for proxy in trusted_proxies
        )
        """The networks whose ``X-Forwarded-For`` is believed (see the option)."""
        self.default_rooms: tuple[DefaultRoom, ...] = tuple(default_rooms)
        """What every connection joins on connect (see the option)."""
        for room in self.default_rooms:
            if not isinstance(room, str) and not callable(room):
                raise TypeError(f"a default room is a name or a function, got {room!r}")
        # -- operability --
        self._metrics: Metrics | None = None
        self._metrics_sync: asyncio.Task[None] | None = None
        self._transport_up = True

    @property
    def metrics(self) -> Metrics | None:
        """The app's [`Metrics`][wsevents.Metrics] once
        [`enable_metrics`][wsevents.WsApp.enable_metrics] was called, else None."""
        return self._metrics

    def enable_metrics(
        self, *, registry: Any = None, buckets: Sequence[float] | None = None
    ) -> Metrics:
        """Count connections, messages, replies, handler durations, pushes and the
        transport's publishes, and export them to Prometheus (see
        [monitoring](../monitoring.md)).

        Needs ``prometheus-client`` (``pip install "wsevents[metrics]"``). The counters
        are registered in ``registry`` (default: ``prometheus_client.REGISTRY``, what
        ``prometheus_client.generate_latest()`` and ``start_http_server`` export); serve
        them with [`add_metrics_route`][wsevents.server.add_metrics_route] (the CLI's
        ``--metrics``). Call it once, before the app serves; routes registered later are
        counted too.

        Args:
            registry: a ``prometheus_client.CollectorRegistry``, or None for the default.
            buckets: the upper bounds (seconds) of the handler duration histogram.

        Raises:
            ImportError: ``prometheus-client`` is not installed.
            RuntimeError: metrics are already enabled.
            ValueError: a bad bucket list.
        """
        from .metrics import Metrics, require_prometheus_client

        if self._metrics is not None:
            raise RuntimeError("metrics are already enabled for this app")
        prometheus = require_prometheus_client()
        metrics = Metrics(self, buckets=buckets)
        (registry if registry is not None else prometheus.REGISTRY).register(metrics)
        self._metrics = metrics
        self._dispatcher.enable_metrics(metrics, self.router)
        return metrics

    @property
    def transport_up(self) -> bool:
        """False while the transport reports its backend lost (always True without a
        transport, or with one that does not report its state)."""
        return self._transport_up

    @property
    def ready(self) -> bool:
        """True while the app serves (started, not shutting down) and its transport is up:
        what a readiness probe asks."""
        return self._started and not self._closing and self._transport_up

    def snapshot(self, *, top: int = 10, max_rooms: int = 1000) -> dict[str, Any]:
        """A JSON-ready picture of this instance (the read-only admin API).

        ``{"instance", "connections", "rooms": [{"room", "members"}...], "rooms_total",
        "transport": {"up", "kind", "publishes", "publish_errors", "subscribed_rooms"},
        "slowest": [{"connection", "user", "buffered_bytes"}...]}``: rooms by local member
        count (the largest ``max_rooms``), ``slowest`` the ``top`` connections with unsent
        bytes, the fullest send buffer first.
        """
        rooms = self.rooms
        names = rooms.rooms()
        largest = heapq.nlargest(max_rooms, names, key=rooms.size)
        buffered = ((conn.buffered_bytes, conn) for conn in self._connections.values())
        slowest = heapq.nlargest(top, (item for item in buffered if item[0] > 0), key=_first)
        cluster = rooms.cluster
        transport = self.transport
        return {
            "instance": self.rooms.instance_id,
            "connections": len(self._connections),
            "rooms": [{"room": name, "members": rooms.size(name)} for name in largest],
            "rooms_total": len(names),
            "transport": {
                "up": self._transport_up,
                "kind": type(transport).__name__ if transport is not None else None,
                "publishes": cluster.publishes,
                "publish_errors": cluster.publish_errors,
                "subscribed_rooms": len(cluster.subscribed_rooms()),
            },
            "slowest": [
                {"connection": conn.id, "user": conn.user, "buffered_bytes": size}
                for size, conn in slowest
            ],
        }

    @property
    def server(self) -> WsServer:
        """The server-side API handlers get from [`use_ws_server`][wsevents.use_ws_server]."""
        return self._server

    # -- registration -------------------------------------------------------------------

    def add_message_handler(
        self,
        event: str,
        pattern: str,
        handler: Callable[[], Any],
        *,
        guards: Iterable[Guard] = (),
        data: Any = None,
        reply: Any = None,
        params: Mapping[str, Any] | None = None,
        rate_limit: RateLimit | None = None,
        public: bool = False,
    ) -> None:
        """Route messages with ``event`` whose path matches ``pattern`` to ``handler``.

        The handler takes no arguments (composables reach the message) and may be sync or
        ``async``. Its return value is the RPC reply's ``data``. ``guards`` run before it,
        in order, after the app's guards (see [`Guard`][wsevents.Guard]).

        Declared types (see [contracts](../contracts.md)) are checked after the guards:

        * ``params={"id": int}`` converts route params (a bad value: 400 ``"Invalid
          param id: ..."``); read them with ``use_route_params().typed``;
        * ``data=Message`` (a msgspec Struct, dataclass, ``TypedDict``, builtin type or
          pydantic model) validates ``data`` (invalid: 400 ``"Invalid data: ..."`` with
          ``details``); the handler reads the typed value with
          [`use_ws_data`][wsevents.use_ws_data] or ``use_ws_message().data``;
        * ``reply=Ack`` dumps the handler's return value to JSON values through the type
          and describes the reply in the AsyncAPI export.

        ``rate_limit`` (a [`RateLimit`][wsevents.RateLimit]) limits this route alone; a
        call over it gets error 429 with ``retry_after`` (see [rate limits](../rate-limits.md)).
        ``public=True`` serves the route to connections not yet authenticated on an app
        with ``auth_required=True`` (see [authentication](../authentication.md)).

        Raises:
            RoutingError: bad pattern, duplicate route, or ``params`` names a param the
                pattern does not have.
            TypeError: a guard is not callable, or a declared type is not supported.
        """
        self._add_route(
            Route(
                event,
                pattern,
                handler,
                tuple(guards),
                data,
                reply,
                _params(params),
                summary=_summary(handler),
                rate_limits=_limiters(rate_limit, f"route {event} {pattern}"),
                public=public,
            )
        )

    def declare_push(
        self,
        event: str,
        pattern: str,
        *,
        data: Any = None,
        summary: str | None = None,
        description: str | None = None,
    ) -> None:
        """Declare a push the server sends: ``event`` on paths matching ``pattern``, with
        ``data`` of the given type (``None``: anything).

        Declarations describe the pushes in the AsyncAPI export ([`asyncapi`][]) and,
        with ``check_pushes=True``, every push of a declared event is checked against
        them before it is sent.

        Raises:
            RoutingError: bad pattern, or the same event and pattern declared twice.
            TypeError: the data type is not supported.
        """
        contract = compile_data_type(data) if data is not None else None
        self._pushes.add(PushSpec(event, pattern, contract, summary, description))

    def pushes(self) -> tuple[PushSpec, ...]:
        """The declared pushes, in declaration order."""
        return self._pushes.specs()

    def _add_route(self, route: Route) -> None:
        """Register ``route`` (every registration, by the app or a group, ends here)."""
        if self._limiter is not None:
            route = replace(route, rate_limits=(self._limiter, *route.rate_limits))
        for limiter in route.rate_limits:
            if limiter.limit.cluster:
                self._shared_limiters[id(limiter)] = limiter
                limiter.store = self._rate_limit_store
        require_auth = self.auth_required and not route.public
        endpoint = self._dispatcher.meter(Endpoint.of(route, require_auth=require_auth))
        self.router.add(route.event, route.pattern, endpoint)

    def routes(self) -> tuple[Route, ...]:
        """Every registered route with its metadata, in registration order (the
        ``on_unhandled`` fallback is not a route)."""
        return tuple(endpoint.route for _, _, endpoint in self.router.routes())

    def asyncapi(
        self,
        *,
        title: str = "wsevents app",
        version: str = "0.0.0",
        description: str | None = None,
        server: str | None = None,
    ) -> dict[str, Any]:
        """An AsyncAPI 3.0 document of every route and declared push (a JSON-ready dict).

        See [the AsyncAPI page](../asyncapi.md) for what maps to what.

        Args:
            title: ``info.title``.
            version: ``info.version``: the application's version.
            description: text before the explanation of the envelope in
                ``info.description``.
            server: a ``ws://`` or ``wss://`` URL described as the server ``default``,
                e.g. ``ws://localhost:8080/ws``.

        Raises:
            ValueError: ``server`` is not a ``ws://`` or ``wss://`` URL.
        """
        specs = []
        for _, _, endpoint in self.router.routes():
            route = endpoint.route
            summary, text = docstring_summary(route.handler)
            params = endpoint.params.params.values() if endpoint.params is not None else ()
            specs.append(
                RouteSpec(
                    route.event,
                    route.pattern,
                    endpoint.data,
                    endpoint.reply,
                    tuple(params),
                    summary,
                    text,
                )
            )
        return build_asyncapi(
            specs,
            self._pushes.specs(),
            title=title,
            version=version,
            description=description,
            server=server,
        )

    def group(
        self, prefix: str, *, guards: Iterable[Guard] = (), rate_limit: RateLimit | None = None
    ) -> RouteGroup:
        """A [`RouteGroup`][]: routes registered through it get ``prefix`` before their
        pattern and ``guards`` before their own. ``rate_limit`` is counted by every route
        of the group together (one set of buckets), before the routes' own limits.

        Example:
            ``admin = ws.group("/admin", guards=[is_admin])``, then
            ``@admin.on_message("rpc", "/stats")`` registers ``/admin/stats``.

        Raises:
            RoutingError: ``prefix`` does not start with ``/``.
            TypeError: a guard is not callable.
        """
        return RouteGroup(self, prefix, guards, _limiters(rate_limit, f"group {prefix}"))

    def room_policy(
        self,
        pattern: str,
        *,
        admit: Callable[[Connection, str], Any] | None = None,
        max_members: int | None = None,
    ) -> None:
        """Admit joins of the rooms whose name matches ``pattern`` (``:param`` syntax,
        e.g. ``/private/rooms/:room``) through ``admit(connection, room)``, and/or cap
        them at ``max_members`` members.

        ``admit`` runs before a connection joins such a room (sync or ``async``; in a
        handler, composables such as [`use_ws_message`][wsevents.use_ws_message] work):

        * ``True`` or ``None`` admits;
        * [`Admit(data)`][wsevents.Admit] or a mapping admits with member data: merged
          over the join's own ``data`` (the admitted keys win), kept as the member's data
          ([`RoomManager.member_data`][wsevents.RoomManager.member_data]) and, in a
          presence room, the presence member data;
        * ``False`` refuses the join with 403 ``"Forbidden"``, raising
          [`WsError`][wsevents.WsError] refuses it with that error; any other return
          value is a bug: the join is refused (500 ``"Internal Error"``, logged).

        With ``max_members``, an admitted connection then takes a place in the room,
        counted on every instance (see [`Capacity`][wsevents.Capacity]); when all are
        taken, the join is refused with 409 ``"Room is full"``. The place is freed when
        the connection leaves the room, disconnects, or its instance dies.

        A refused connection is not a member. Rooms that match no policy are open.

        Raises:
            RoutingError: bad pattern, or a policy for the same pattern exists.
            TypeError: ``admit`` is not callable.
            ValueError: neither ``admit`` nor ``max_members`` given, or ``max_members``
                is not an int above 0.
        """
        if admit is None and max_members is None:
            raise ValueError("room_policy needs admit, max_members or both")
        if admit is not None and not callable(admit):
            raise TypeError(f"admit must be a callable, got {admit!r}")
        if max_members is not None and (type(max_members) is not int or max_members <= 0):
            raise ValueError(f"max_members must be an int above 0, got {max_members!r}")
        if self._room_policies is None:
            self._room_policies = Router(cache_size=256)
            self.rooms.add_join_policy(self._admit)
        self._room_policies.add(
            "join", pattern, (admit, admit is not None and is_async(admit), max_members)
        )
        if max_members is not None:
            self.rooms.capacity_hooks = self.capacity

    async def _admit(self, conn: Connection, room: str) -> Mapping[str, Any] | None:
        policies = self._room_policies
        found = policies.match("join", room) if policies is not None else None
        if found is None:
            return None
        admit, admit_async, _ = found.handler
        if admit is None:
            return None
        verdict = admit(conn, room)
        if admit_async:
            verdict = await verdict
        if verdict is None or verdict is True:
            return None
        if verdict is False:
            raise WsError(403, "Forbidden")
        if isinstance(verdict, Admit):
            return verdict.data
        if isinstance(verdict, Mapping):
            return verdict
        raise TypeError(
            f"admit of {found.pattern} returned {type(verdict).__name__}: expected True, "
            "None, False, Admit or a mapping"
        )

    def _max_members(self, room: str) -> int | None:
        policies = self._room_policies
        found = policies.match("join", room) if policies is not None else None
        return found.handler[2] if found is not None else None

    def enable_tracing(
        self, tracer_provider: TracerProvider | None = None, *, client_context: bool = True
    ) -> None:
        """Trace every message with OpenTelemetry (needs ``pip install 'wsevents[tracing]'``).

        Each routed message gets a span ``ws <event> <route pattern>`` around its handler
        (current while it runs, so the handler's own spans are its children), with the
        route pattern, event, path, connection id and reply code; a 5xx sets the error
        status. Broadcasts and ``send_to`` to other instances carry the trace context in
        their envelope, so their delivery there makes a span of the same trace. See the
        [tracing guide](../tracing.md).

        Until it is called, OpenTelemetry is not even imported. Calling it again replaces
        the provider.

        Args:
            tracer_provider: where the spans go; None: the global provider
                (``opentelemetry.trace.set_tracer_provider``), also one set later.
            client_context: continue the trace named by a ``traceparent`` key of a client
                frame (a wire extension); False: each message starts its own trace.

        Raises:
            ImportError: opentelemetry-api is not installed.
        """
        from .tracing import Tracing

        tracing = Tracing(
            tracer_provider,
            client_context=client_context,
            decode=self.codec.decode,
        )
        self._dispatcher.set_tracing(tracing)
        self.rooms.cluster.tracing = tracing

    @property
    def tracing_enabled(self) -> bool:
        """Whether [`enable_tracing`][] was called."""
        return self.rooms.cluster.tracing is not None

    def add_guard(self, guard: Guard) -> None:
        """Run ``guard`` before the handler of every routed message and of the
        ``on_unhandled`` fallback, also for routes registered before it.

        App guards run in the order they were added, inside the interceptors and before
        the guards of groups and routes. Like interceptors, they make every message run
        in a task of its own.

        Raises:
            TypeError: ``guard`` is not callable.
        """
        self._dispatcher.add_guard(guard)

    def guard(self, guard: G) -> G:
        """Decorator form of [`add_guard`][]."""
        self.add_guard(guard)
        return guard

    def on_unhandled(self, fn: F) -> F:
        """Run ``fn`` for every message that no route matches, instead of replying 404.

        Like a handler, it takes no arguments (``use_ws_message()`` gives the message), may
        be sync or ``async``, replies with its return value and may raise
        [`WsError`][wsevents.WsError]. It runs inside the interceptors and after the app's
        guards; its ``scope.route`` has ``event`` and ``pattern`` ``"*"``.

        Raises:
            RoutingError: a fallback is already registered (one per app).
        """
        route = Route(
            FALLBACK_PATTERN,
            FALLBACK_PATTERN,
            fn,
            summary=_summary(fn),
            rate_limits=(self._limiter,) if self._limiter is not None else (),
        )
        self._dispatcher.set_fallback(Endpoint.of(route, require_auth=self.auth_required))
        return fn

    def add_interceptor(self, interceptor: Interceptor) -> None:
        """Run every routed message's handler through ``interceptor`` (an ``async``
        ``(scope, call_next)`` callable, see [`Interceptor`][wsevents.Interceptor]).

        The first one added is the outermost. With at least one interceptor, every routed
        message (sync handlers too) runs in a task of its own, counted against
        ``max_in_flight``.

        Raises:
            TypeError: ``interceptor`` is not async.
        """
        self._dispatcher.add_interceptor(interceptor)

    def intercept(self, interceptor: IC) -> IC:
        """Decorator form of [`add_interceptor`][]."""
        self.add_interceptor(interceptor)
        return interceptor

    def on_connect(self, fn: F) -> F:
        """Run ``fn`` when a connection opens, before any of its messages.

        Raising ``WsError`` refuses the connection with the error's message as the close
        reason: a client error (4xx, e.g. 401, 403, 429) closes with 1008 (policy
        violation), any other code with 1011. Any other exception closes with 1011
        ``"Internal Error"`` (the exception is logged, never sent).
        """
        self._on_connect.append(Handler.of(fn))
        return fn

    def on_disconnect(self, fn: F) -> F:
        """Run ``fn`` once after an accepted connection closes (its rooms still readable)."""
        self._on_disconnect.append(Handler.of(fn))
        return fn

    def on_transport_down(self, fn: F) -> F:
        """Run ``fn`` when the transport loses its backend (e.g. Redis went away).

        Local delivery goes on; pushes between instances are lost until it is back. Needs a
        transport with the ``state_events`` capability (such as ``RedisTransport``).
        """
        self._on_transport_state.append((False, Handler.of(fn)))
        return fn

    def on_transport_up(self, fn: F) -> F:
        """Run ``fn`` when the transport is back after [`on_transport_down`][] (every
        subscription restored): the moment to resynchronise clients."""
        self._on_transport_state.append((True, Handler.of(fn)))
        return fn

    def on_presence(self, fn: PL) -> PL:
        """Call ``fn(change)`` for every [`PresenceChange`][wsevents.PresenceChange]: a
        user's first connection joined a presence room, or their last one left it. Each
        change is reported once in the whole cluster, on the instance that decided it
        (see [`Presence.add_listener`][wsevents.Presence.add_listener])."""
        self.presence.add_listener(fn)
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

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: new connections are refused."""
        return self._closing

    async def start(self) -> None:
        """Start the transport and its subscriptions (idempotent)."""
        if self._started:
            return
        self._started = True
        self._closing = False
        await self.rooms.cluster.start(self._connections, self._transport_state_changed)
        await self.presence.start()
        await self.capacity.start()
        store = self._rate_limit_store = self.rooms.cluster.capabilities.rate_limits
        if self._shared_limiters and store is None and self.transport is not None:
            log.warning(
                "cluster-wide rate limits count on this instance only: the transport has "
                "no rate-limit store"
            )
        for limiter in self._shared_limiters.values():
            limiter.store = store
        if self._metrics is not None and self._metrics.multiprocess:
            self._metrics_sync = asyncio.get_running_loop().create_task(self._metrics.run_sync())

    async def shutdown(self) -> None:
        """Close every connection with 1001 and let running handlers finish (graceful)."""
        self._closing = True
        for conn in list(self._connections.values()):
            conn.close(SHUTDOWN_CLOSE_CODE, SHUTDOWN_REASON)
        pending = await self._tasks.wait(self.shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def close(self) -> None:
        """Shut down and close the transport (and stop a [`listen`][] server)."""
        stop, self._stop_listening = self._stop_listening, None
        if stop is not None:
            await stop()  # the adapter's cleanup releases the app (_release), once
            return
        await self._release()

    async def _release(self) -> None:
        """Shut down and close the transport; the adapter's cleanup calls it."""
        await self.shutdown()
        self._deadlines.close()
        sync, self._metrics_sync = self._metrics_sync, None
        if sync is not None:
            sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sync
        if self._metrics is not None:
            self._metrics.sync()
        if self._started:
            await self.capacity.close()
            await self.presence.close()
            await self.history.close()
            await self.rooms.cluster.close()
        self._started = False

    def attach(self, app: web.Application, path: str = "/ws") -> web.Application:
        """Mount on an aiohttp application at ``path`` (see [`attach`][wsevents.server.attach])."""
        mounted: web.Application = ADAPTERS.get().attach(self, app, path)
        return mounted

    def run(self, *, host: str = "127.0.0.1", port: int = 8080, path: str = "/ws") -> None:
        """Serve standalone until Ctrl-C / SIGTERM (see [`run`][wsevents.server.run])."""
        ADAPTERS.get().run(self, host=host, port=port, path=path)

    async def listen(
        self, *, host: str = "127.0.0.1", port: int = 0, path: str = "/ws"
    ) -> tuple[str, int]:
        """Serve standalone inside the running loop until [`close`][].

        Returns:
            The bound ``(host, port)``; ``port=0`` picks a free one.
        """
        bound_host, bound_port, stop = await ADAPTERS.get().listen(
            self, host=host, port=port, path=path
        )
        self._stop_listening = stop
        return bound_host, bound_port

    # -- connection lifecycle (called by the adapter) ---------------------------------------

    async def _open_connection(self, conn: Connection) -> bool:
        """Resume the session ``conn`` names (sessions enabled), run ``on_connect`` hooks,
        register ``conn`` and re-join a resumed session's rooms; False when refused (a
        claimed session is then kept again).

        The caller runs it in the connection's context (the adapter sets the app and
        connection context variables around the whole connection).
        """
        conn._on_expiry = self._deadlines.expiry
        conn._deliveries = self.rooms.cluster.deliveries
        claimed = await self.sessions.claim(conn) if self.sessions.enabled else None
        opened = False
        try:
            opened = await self._admit_connection(conn)
        finally:
            if claimed is not None and not opened:
                # Refused (or the peer left): the session stays resumable.
                _ = self._spawn(self.sessions.give_back(conn, claimed))
        if opened and claimed is not None:
            await self.sessions.restore_rooms(conn, claimed.rooms)
        return opened

    async def _admit_connection(self, conn: Connection) -> bool:
        """Run ``on_connect`` hooks and register ``conn``; False when refused."""
        for hook in self._on_connect:
            try:
                result = hook.fn()
                if hook.is_async:
                    await result
            except WsError as exc:
                code = 1008 if 400 <= exc.code < 500 else 1011
                log.warning(
                    "refused %s in on_connect (WsError %s): %d",
                    conn.id,
                    exc,
                    code,
                    extra={"conn": conn.id, "code": code, "reason": "on_connect"},
                )
                self._refused("on_connect")
                conn.close(code, exc.message)
                return False
            except Exception:
                log.exception(
                    "on_connect failed, refused %s: 1011",
                    conn.id,
                    extra={"conn": conn.id, "code": 1011, "reason": "on_connect"},
                )
                self._refused("on_connect")
                conn.close(1011, INTERNAL_ERROR)
                return False
        if conn.closed:  # the hook closed it itself
            log.warning(
                "refused %s: on_connect closed it",
                conn.id,
                extra={"conn": conn.id, "reason": "on_connect"},
            )
            self._refused("on_connect")
            return False
        if self.check_pushes:
            conn._check_push = self._pushes.check
        if self.max_connections_per_user is not None and not self._count_user(conn):
            return False
        self._connections[conn.id] = conn
        if self.auth_required and not conn.authenticated:
            self._deadlines.auth_deadline(conn, self.auth_timeout)
        cluster = self.rooms.cluster
        if cluster.directory is not None:
            try:
                await cluster.register(conn.id)
            except BaseException:  # cancelled: the peer left during the handshake
                self._connections.pop(conn.id, None)
                raise
        if self.default_rooms:
            try:
                await self._join_default_rooms(conn)
            except BaseException:  # cancelled: the peer left; the adapter will not clean up
                # Not a clean close: a session it has stays resumable.
                _ = self._spawn(self._close_connection(conn, resumable=True))
                raise
        return True

    async def _join_default_rooms(self, conn: Connection) -> None:
        """Join ``conn`` to the default rooms; refusals and failures are logged."""
        for entry in self.default_rooms:
            if isinstance(entry, str):
                names: Iterable[str] = (entry,)
            else:
                try:
                    result = entry(conn)
                    if inspect.isawaitable(result):
                        result = await result
                    names = (result,) if isinstance(result, str) else tuple(result or ())
                except Exception:
                    log.exception("default rooms of %s: %r failed", conn.id, entry)
                    continue
            for room in names:
                if conn.closed:
                    return
                if not isinstance(room, str):
                    log.error("default rooms of %s: %r is not a room name", conn.id, room)
                    continue
                try:
                    await self.rooms.join(conn, room)
                except WsError as exc:
                    log.debug("default room %s refused for %s: %s", room, conn.id, exc)
                except Exception:
                    log.exception("default room %s: the join of %s failed", room, conn.id)

    async def _close_connection(self, conn: Connection, *, resumable: bool = False) -> None:
        """Run ``on_disconnect`` hooks, then leave every room and forget the connection;
        keep its session when ``resumable`` (it ended without a clean close)."""
        snapshot = None
        try:
            for hook in self._on_disconnect:
                await await_hook(hook.fn, logger=log, message="on_disconnect failed")
        finally:
            self._connections.pop(conn.id, None)
            self._uncount_user(conn)
            try:
                snapshot = self.sessions.snapshot(conn)
                await self.rooms.leave_all(conn)
            finally:
                await self.rooms.cluster.unregister(conn.id)
                # Last: a resume waits for this, so the id is free everywhere by then.
                await self.sessions.ended(conn, snapshot, resumable)

    def _count_user(self, conn: Connection) -> bool:
        """Count ``conn`` for its user; False (and ``conn`` closed) over the maximum."""
        user = conn.user
        count = self._user_counts.get(user, 0)
        if self.max_connections_per_user is not None and count >= self.max_connections_per_user:
            log.warning(
                "refused %s: user %r has %d connections",
                conn.id,
                user,
                count,
                extra={"conn": conn.id, "code": 1008, "reason": "max_per_user"},
            )
            self._refused("max_per_user")
            conn.close(1008, TOO_MANY_CONNECTIONS)
            return False
        self._user_counts[user] = count + 1
        self._counted_as[conn.id] = user
        return True

    def _refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.connection_refused(reason)

    def _uncount_user(self, conn: Connection) -> None:
        user = self._counted_as.pop(conn.id, None)
        if user is None:
            return
        left = self._user_counts[user] - 1
        if left:
            self._user_counts[user] = left
        else:
            del self._user_counts[user]

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` in a task that [`shutdown`][] waits for."""
        return self._tasks.spawn(coro)

    # -- transport state ------------------------------------------------------------------

    def _transport_state_changed(self, up: bool) -> None:
        self._transport_up = up
        for when, hook in self._on_transport_state:
            if when is up:
                copy_context().run(self._run_transport_hook, hook)

    def _run_transport_hook(self, hook: Handler) -> None:
        app_var.set(self)  # use_ws_server() works in the hook
        call_hook(hook.fn, tasks=self._tasks, logger=log, message="transport state hook failed")


class RouteGroup(_MessageDecorators):
    """Routes that share a path prefix and guards (made by
    [`WsApp.group`][wsevents.WsApp.group]).

    A group registers into its app at once: a route registered as
    ``group.on_message("rpc", "/stats")`` is an ordinary route of the app, with the full
    pattern and the group's guards before its own. Groups nest
    ([`group`][wsevents.RouteGroup.group]); an inner group's guards run after the outer
    group's. A group's guards are fixed when it is created.

    Attributes:
        prefix: the pattern prefix of the group's routes (``"/"`` for none).
        guards: the guards every route of the group runs first (the outer groups' first).
        rate_limits: the group's rate limits (the outer groups' first), counted by its
            routes together.
    """

    __slots__ = ("_app", "guards", "prefix", "rate_limits")

    def __init__(
        self,
        app: WsApp,
        prefix: str,
        guards: Iterable[Guard] = (),
        rate_limits: tuple[Limiter, ...] = (),
    ) -> None:
        self._app = app
        self.rate_limits = rate_limits
        self.prefix = join_pattern(prefix, "/")
        self.guards: tuple[Guard, ...] = tuple(guards)
        for guard in self.guards:
            if not callable(guard):
                raise TypeError(f"a guard must be a callable, got {guard!r}")

    def add_message_handler(
        self,
        event: str,
        pattern: str,
        handler: Callable[[], Any],
        *,
        guards: Iterable[Guard] = (),
        data: Any = None,
        reply: Any = None,
        params: Mapping[str, Any] | None = None,
        rate_limit: RateLimit | None = None,
        public: bool = False,
    ) -> None:
        """Register ``handler`` on the group's prefix joined with ``pattern``
        ([`join_pattern`][wsevents.routing.join_pattern]), behind the group's guards,
        then ``guards``; ``data``, ``reply`` and ``params`` as for
        [`WsApp.add_message_handler`][wsevents.WsApp.add_message_handler] (``params`` may
        name the prefix's params too). ``rate_limit`` limits this route alone, after the
        group's limits; ``public`` as for the app's.

        Raises:
            RoutingError: bad pattern, duplicate route, or an unknown param in ``params``.
            TypeError: a guard is not callable, or a declared type is not supported.
        """
        self._app._add_route(
            Route(
                event,
                join_pattern(self.prefix, pattern),
                handler,
                (*self.guards, *guards),
                data,
                reply,
                _params(params),
                summary=_summary(handler),
                rate_limits=(
                    *self.rate_limits,
                    *_limiters(rate_limit, f"route {event} {join_pattern(self.prefix, pattern)}"),
                ),
                public=public,
            )
        )

    def declare_push(
        self,
        event: str,
        pattern: str,
        *,
        data: Any = None,
        summary: str | None = None,
        description: str | None = None,
    ) -> None:
        """[`WsApp.declare_push`][wsevents.WsApp.declare_push] on the group's prefix joined
        with ``pattern``.

        Raises:
            RoutingError: bad pattern, or the same event and pattern declared twice.
            TypeError: the data type is not supported.
        """
        self._app.declare_push(
            event,
            join_pattern(self.prefix, pattern),
            data=data,
            summary=summary,
            description=description,
        )

    def group(
        self, prefix: str, *, guards: Iterable[Guard] = (), rate_limit: RateLimit | None = None
    ) -> RouteGroup:
        """A group inside this one: prefixes joined, this group's guards and rate limits
        first."""
        return RouteGroup(
            self._app,
            join_pattern(self.prefix, prefix),
            (*self.guards, *guards),
            (
                *self.rate_limits,
                *_limiters(rate_limit, f"group {join_pattern(self.prefix, prefix)}"),
            ),
        )

    def __repr__(self) -> str:
        return f"RouteGroup({self.prefix!r}, guards={len(self.guards)})"


def _first(item: tuple[int, Connection]) -> int:
    return item[0]


def _limiters(limit: RateLimit | None, name: str) -> tuple[Limiter, ...]:
    """The buckets of one declaration site named ``name`` (None: no limit)."""
    return (Limiter(limit, name),) if limit is not None else ()


def _network(proxy: str) -> IPv4Network | IPv6Network:
    """``proxy`` (an address or a network) as a network.

    Raises:
        ValueError: not an IP address or network.
    """
    try:
        return ip_network(proxy.strip(), strict=False)
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"a trusted proxy is an IP address or network: {proxy!r}") from None


def _params(params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(params)) if params else MappingProxyType({})


def _summary(fn: Callable[..., Any]) -> str | None:
    """The first line of ``fn``'s docstring (the route summary), or None."""
    doc = inspect.getdoc(fn)
    if not doc:
        return None
    return doc.strip().splitlines()[0].strip() or None


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
    check_pushes: bool = False,
    rate_limit: RateLimit | None = None,
    handshake_rate: RateLimit | None = None,
    max_connections_per_user: int | None = None,
    auth_required: bool = False,
    auth_timeout: float = 10.0,
    default_rooms: Iterable[DefaultRoom] = (),
    trusted_proxies: Iterable[str] = (),
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
        check_pushes=check_pushes,
        rate_limit=rate_limit,
        handshake_rate=handshake_rate,
        max_connections_per_user=max_connections_per_user,
        auth_required=auth_required,
        auth_timeout=auth_timeout,
        default_rooms=default_rooms,
        trusted_proxies=trusted_proxies,
    )
