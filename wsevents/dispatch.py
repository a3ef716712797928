"""The dispatch pipeline: parse → route → interceptors → guards → run (sync or async) → reply.

One path and one error mapping for every message:

* a frame that does not parse (bad JSON, no ``event``/``path``, too large) is dropped,
  logged at ``debug``;
* no route: the ``on_unhandled`` fallback when there is one, else ``404 "Not found"``
  when the message has an id, else nothing;
* the handler (through the interceptors, outermost first, then the guards: the app's,
  the groups', the route's) raises ``WsError``: an error reply with its code and message;
  a guard returns ``False``: ``403 "Forbidden"``; any other exception: logged with its
  traceback, ``500 "Internal Error"``;
* a return value that cannot be encoded: logged, ``500 "Internal Error"``.

What a message costs is decided before it arrives. A route's own guards (and its groups')
are compiled into its [`Endpoint`][] at registration: a route without them runs its
handler as registered, and one with only sync guards and a sync handler stays sync. The
app's guards, which may be added after the routes, are the innermost link of the
interceptor chain. Without interceptors and app guards, a sync endpoint runs to completion
inside ``Dispatcher.handle_frame`` and an async one in a task of its own (counted against
``max_in_flight``); with any, every routed message runs in a task of its own, through the
chain.

Metrics ([`WsApp.enable_metrics`][wsevents.WsApp.enable_metrics]) are not an interceptor:
a task per message would cost more than counting it. Each endpoint carries its
[`RouteStats`][wsevents.metrics.RouteStats] (``None`` while metrics are off, a single test
per message), and the sync path has a metered twin that adds the handler's duration and
outcome to it.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from contextvars import copy_context
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from ._aio import TaskSet, is_async
from ._context import MessageScope, message_var
from .contracts import DataContract, ParamsContract, compile_data_type, compile_params
from .exceptions import ProtocolError, RoutingError, WsError
from .protocol import INTERNAL_ERROR, NOT_FOUND, ClientMessage, Codec, encode_error, error_object
from .protocol import parse_client_message as _parse
from .ratelimit import FLOOD_CLOSE_CODE, FLOOD_REASON, TOO_MANY_REQUESTS, Limiter
from .routing import Guard, Route, Router, param_names
from .sessions import INVALID_IDEM, is_idem

if TYPE_CHECKING:
    from .app import WsApp
    from .connection import Connection
    from .metrics import Metrics, RouteStats
    from .tracing import Tracing

__all__ = ["FORBIDDEN", "CallNext", "Interceptor"]

# Handler errors have always been logged by "wsevents": users filter on it.
log = logging.getLogger("wsevents")

FORBIDDEN = "Forbidden"
"""The message of the 403 error reply when a guard returns ``False``."""

FALLBACK_PATTERN = "*"
"""``event`` and ``pattern`` of the fallback's [`Route`][wsevents.Route]: no real route
pattern (they all start with ``/``) looks like it."""

CallNext = Callable[[], Awaitable[Any]]
"""Runs the rest of the chain (the next interceptors, then the handler); returns the
handler's result or raises what it raised."""


class Interceptor(Protocol):
    """Wraps every routed message's handler: guards, validation, limits, metrics, tracing.

    An interceptor is an ``async`` callable ``(scope, call_next)``. It may:

    * inspect the message before the handler (``scope.message``, ``scope.params``,
      ``scope.connection``) and refuse it by raising [`WsError`][wsevents.WsError] (the
      client gets that error reply; the handler does not run);
    * ``await call_next()`` exactly once to run the rest of the chain, and observe the
      outcome: the handler's return value, or the exception it raised (re-raise it to keep
      the error mapping; a ``WsError`` carries the code the client will see);
    * measure the time around ``await call_next()``;
    * return another value, which becomes the reply's ``data``.

    Interceptors run in registration order (the first registered is the outermost), in
    the message's own task and context, so composables work in them.

    Example:
        ``async def timing(scope, call_next): t = perf_counter(); try: return await
        call_next() finally: record(scope.message.path, perf_counter() - t)``
    """

    async def __call__(self, scope: MessageScope, call_next: CallNext) -> Any:
        """Run around the handler of ``scope``'s message."""
        ...


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered message handler, with whether it must be awaited (decided once)."""

    fn: Callable[[], Any]
    is_async: bool

    @classmethod
    def of(cls, fn: Callable[[], Any]) -> Handler:
        """Wrap ``fn``, sync or async."""
        return cls(fn, is_async(fn))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route as the dispatcher runs it: ``fn`` runs the route's guards (its groups',
    then its own), converts its declared params and validates its declared ``data``,
    runs its handler and dumps a declared reply; ``is_async`` says whether ``fn`` must be
    awaited.

    Compiled once, at registration ([`of`][]): a route without guards or declared types
    gets its handler itself as ``fn``; sync guards and validation around a sync handler
    stay sync.
    """

    fn: Callable[[], Any]
    is_async: bool
    route: Route
    data: DataContract | None = None
    reply: DataContract | None = None
    params: ParamsContract | None = None
    stats: RouteStats | None = field(default=None, compare=False)
    """The route's counters while metrics are enabled (the dispatcher attaches them)."""

    @classmethod
    def of(cls, route: Route, *, require_auth: bool = False) -> Endpoint:
        """Compile ``route``; with ``require_auth``, a connection that is not
        authenticated gets 401 ``"Unauthorized"`` before anything else runs.

        Raises:
            TypeError: a guard is not callable, or a declared type is not supported.
            RoutingError: ``params`` names a param the pattern does not have.
        """
        for guard in route.guards:
            _check_guard(guard)
        data = compile_data_type(route.data) if route.data is not None else None
        reply = compile_data_type(route.reply) if route.reply is not None else None
        params = compile_params(route.params) if route.params else None
        _check_param_names(route, params)
        fn = route.handler
        fn_async = is_async(fn)
        limit = _limit_check(route.rate_limits) if route.rate_limits else None
        # A cluster-wide limit asks the backend: the check awaits.
        limit_async = any(limiter.limit.cluster for limiter in route.rate_limits)
        checks = tuple((guard, is_async(guard)) for guard in route.guards)
        if require_auth:
            checks = ((_require_auth, False), *checks)
        if not checks and data is None and reply is None and params is None:
            if limit is None:
                return cls(fn, fn_async, route)
            if limit_async:
                return cls(_limited_async(fn, limit, fn_async), True, route)
            return cls(_limited(fn, limit, fn_async), fn_async, route)
        prepare = _preparer(data, params)
        dump = reply.dumper() if reply is not None else None
        if not fn_async and not limit_async and not any(guard_async for _, guard_async in checks):
            sync_guards = tuple(guard for guard, _ in checks)

            def checked() -> Any:
                for guard in sync_guards:
                    if guard() is False:
                        raise WsError(403, FORBIDDEN)
                if limit is not None:
                    limit()
                if prepare is not None:
                    prepare()
                result = fn()
                return result if dump is None else dump(result)

            return cls(checked, False, route, data, reply, params)

        async def checked_async() -> Any:
            if checks:
                await _run_guards(checks)
            if limit is not None:
                if limit_async:
                    await limit()
                else:
                    limit()
            if prepare is not None:
                prepare()
            result = fn()
            if fn_async:
                result = await result
            return result if dump is None else dump(result)

        return cls(checked_async, True, route, data, reply, params)


UNAUTHORIZED = "Unauthorized"


def _require_auth() -> None:
    if not message_var.get().connection.authenticated:
        raise WsError(401, UNAUTHORIZED)


# -- rate limits ---------------------------------------------------------------------------

FLOOD_STRIKES = 50
"""Rejections a connection may collect within [`FLOOD_WINDOW`][] seconds; one more
closes it with 4429 ``"Rate limit exceeded"``."""

FLOOD_WINDOW = 10.0


def _limit_check(limiters: tuple[Limiter, ...]) -> Callable[[], Any]:
    """What takes a token from each of ``limiters`` (after the guards, before validation
    and the handler); the first empty bucket raises 429 with ``retry_after``.

    With a cluster-wide limit among them, the check is ``async`` (it awaits the backend).
    """
    if any(limiter.limit.cluster for limiter in limiters):
        shared = tuple(
            (limiter.take_shared if limiter.limit.cluster else None, limiter.take, _key_of(limiter))
            for limiter in limiters
        )

        async def check_async() -> None:
            conn = message_var.get().connection
            now = monotonic()
            for take_shared, take, key in shared:
                wait = await take_shared(key(conn), now) if take_shared else take(key(conn), now)
                if wait:
                    _reject(conn, now, wait)

        return check_async

    takes = tuple((limiter.take, _key_of(limiter)) for limiter in limiters)

    def check() -> None:
        conn = message_var.get().connection
        now = monotonic()
        for take, key in takes:
            wait = take(key(conn), now)
            if wait:
                _reject(conn, now, wait)

    return check


class _RateLimited(WsError):
    """The 429 of a rate limit (not one a handler raised): metrics count it apart."""


def _reject(conn: Connection, now: float, wait: float) -> NoReturn:
    _strike(conn, now)
    # Rounded up to the millisecond: a client that waits this long finds a token.
    raise _RateLimited(429, TOO_MANY_REQUESTS, retry_after=_ceil_ms(wait))


def _ceil_ms(seconds: float) -> float:
    return -(-seconds * 1000 // 1) / 1000


def _limited(fn: Callable[[], Any], check: Callable[[], None], fn_async: bool) -> Callable[[], Any]:
    """``fn`` behind ``check``; sync stays sync."""
    if fn_async:

        async def limited_async() -> Any:
            check()
            return await fn()

        return limited_async

    def limited() -> Any:
        check()
        return fn()

    return limited


def _limited_async(
    fn: Callable[[], Any], check: Callable[[], Any], fn_async: bool
) -> Callable[[], Any]:
    """``fn`` behind an ``async`` ``check`` (a cluster-wide limit)."""

    async def limited() -> Any:
        await check()
        result = fn()
        return await result if fn_async else result

    return limited


def _key_of(limiter: Limiter) -> Callable[[Connection], Hashable]:
    key = limiter.limit.key
    if callable(key):
        return key
    if key == "user":
        return _user_key
    if key == "ip":
        return _ip_key
    return _connection_key


def _connection_key(conn: Connection) -> Hashable:
    return conn.id


def _user_key(conn: Connection) -> Hashable:
    return conn.user


def _ip_key(conn: Connection) -> Hashable:
    return conn.ip


def _strike(conn: Connection, now: float) -> None:
    """Record a rejection; the one over [`FLOOD_STRIKES`][] within [`FLOOD_WINDOW`][]
    closes the connection with 4429."""
    strikes = conn._limit_strikes
    if strikes is None:
        strikes = conn._limit_strikes = deque(maxlen=FLOOD_STRIKES + 1)
    strikes.append(now)
    if len(strikes) > FLOOD_STRIKES and now - strikes[0] <= FLOOD_WINDOW:
        log.warning(
            "closing %s: it keeps flooding rate-limited routes",
            conn.id,
            extra={"conn": conn.id, "code": FLOOD_CLOSE_CODE, "reason": "rate_limit_flood"},
        )
        conn.close(FLOOD_CLOSE_CODE, FLOOD_REASON)


def _check_param_names(route: Route, params: ParamsContract | None) -> None:
    if params is None:
        return
    names = set(param_names(route.pattern))
    unknown = [name for name in params.params if name not in names]
    if unknown:
        raise RoutingError(
            f"params={{...}} of {route.event} {route.pattern} names {', '.join(unknown)}, "
            "which the pattern does not have"
        )


def _preparer(
    data: DataContract | None, params: ParamsContract | None
) -> Callable[[], None] | None:
    """What runs after the guards: convert the params, then validate ``data`` (400 on
    failure); the results go into the message's scope for the handler to read."""
    if data is None and params is None:
        return None
    validate = data.validate if data is not None else None
    convert = params.convert if params is not None else None

    def prepare() -> None:
        scope = message_var.get()
        if convert is not None:
            scope.typed_params = convert(scope.params)
        if validate is not None:
            msg = scope.message
            # A new message: what an interceptor holds keeps the data as it was sent.
            scope.message = ClientMessage(
                msg.event, msg.path, validate(msg.data), msg.id, msg.has_id, msg.raw, msg.idem
            )

    return prepare


def _check_guard(guard: object) -> None:
    if not callable(guard):
        raise TypeError(f"a guard must be a callable, got {guard!r}")


async def _run_guards(checks: Sequence[tuple[Guard, bool]]) -> None:
    """Run ``checks`` (guard, is async) in order; the first refusal raises."""
    for guard, guard_async in checks:
        verdict: Any = guard()
        if guard_async:
            verdict = await verdict
        if verdict is False:
            raise WsError(403, FORBIDDEN)


_NO_PARAMS: Mapping[str, str] = MappingProxyType({})


class Dispatcher:
    """Turns received data frames into handler runs and replies, for one [`WsApp`][]."""

    __slots__ = (
        "_app",
        "_chain",
        "_decode",
        "_encode",
        "_fallback",
        "_guards",
        "_interceptors",
        "_match",
        "_max_in_flight",
        "_max_message_size",
        "_metrics",
        "_tasks",
        "_tasks_add",
        "_tasks_discard",
        "_tracing",
    )

    def __init__(
        self,
        app: WsApp,
        router: Router[Endpoint],
        codec: Codec,
        *,
        max_message_size: int,
        max_in_flight: int,
        tasks: TaskSet,
    ) -> None:
        self._app = app
        self._decode = codec.decode
        self._encode = codec.encode
        self._match = router.match
        self._max_message_size = max_message_size
        self._max_in_flight = max_in_flight
        self._tasks = tasks
        self._tasks_add = tasks.add
        self._tasks_discard = tasks.discard
        self._interceptors: tuple[Interceptor, ...] = ()
        self._guards: tuple[tuple[Guard, bool], ...] = ()
        # What runs around every endpoint: the interceptors, then the app's guards.
        self._chain: tuple[Interceptor, ...] = ()
        self._fallback: Endpoint | None = None
        self._metrics: Metrics | None = None
        self._tracing: Tracing | None = None

    def enable_metrics(self, metrics: Metrics, routes: Router[Endpoint]) -> None:
        """Count every message in ``metrics`` from now on: attach a [`RouteStats`][] to
        each endpoint of ``routes`` and of the fallback (later ones get theirs from
        [`meter`][])."""
        self._metrics = metrics
        for _, _, endpoint in routes.routes():
            self.meter(endpoint)
        if self._fallback is not None:
            self.meter(self._fallback)

    def meter(self, endpoint: Endpoint) -> Endpoint:
        """Attach ``endpoint``'s counters when metrics are enabled; returns it."""
        metrics = self._metrics
        if metrics is not None and endpoint.stats is None:
            route = endpoint.route
            stats = (
                metrics.unmatched
                if endpoint is self._fallback
                else metrics.route(route.event, route.pattern)
            )
            # Endpoints are immutable for everyone else; their counters are attached once,
            # here, so that the dispatcher finds them without a lookup per message.
            object.__setattr__(endpoint, "stats", stats)
        return endpoint

    def set_tracing(self, tracing: Tracing | None) -> None:
        """Make a span of every message through ``tracing`` (None: stop)."""
        self._tracing = tracing

    def add_interceptor(self, interceptor: Interceptor) -> None:
        """Append ``interceptor`` to the chain (it runs inside the ones added before, and
        outside the guards).

        Raises:
            TypeError: ``interceptor`` is not an ``async`` callable.
        """
        if not is_async(interceptor):
            raise TypeError(f"an interceptor must be async, got {interceptor!r}")
        self._interceptors = (*self._interceptors, interceptor)
        self._rebuild_chain()

    def add_guard(self, guard: Guard) -> None:
        """Run ``guard`` before every endpoint (also those registered before), after the
        guards added before it.

        Raises:
            TypeError: ``guard`` is not callable.
        """
        _check_guard(guard)
        self._guards = (*self._guards, (guard, is_async(guard)))
        self._rebuild_chain()

    def set_fallback(self, endpoint: Endpoint) -> None:
        """Run ``endpoint`` for messages that no route matches (instead of a 404).

        Raises:
            RoutingError: a fallback is already set.
        """
        if self._fallback is not None:
            raise RoutingError("an on_unhandled fallback is already registered")
        self._fallback = endpoint
        self.meter(endpoint)

    def _rebuild_chain(self) -> None:
        # Guards sit innermost, so interceptors observe their refusals as outcomes.
        if self._guards:
            self._chain = (*self._interceptors, self._check_app_guards)
        else:
            self._chain = self._interceptors

    async def _check_app_guards(self, scope: MessageScope, call_next: CallNext) -> Any:
        await _run_guards(self._guards)
        return await call_next()

    def handle_frame(self, conn: Connection, raw: str | bytes) -> bool:
        """Dispatch one received data frame (called in the connection's context).

        Returns:
            True when ``conn`` now runs ``max_in_flight`` handler tasks: the reader should
            wait for [`Connection.wait_capacity`][wsevents.Connection.wait_capacity] before
            reading on.
        """
        try:
            msg = _parse(raw, self._max_message_size, self._decode)
        except ProtocolError as exc:
            log.debug("dropped a frame from %s: %s", conn.id, exc)
            if self._metrics is not None:
                self._metrics.invalid_frames += 1
            return False
        idem = msg.idem
        if idem is not None and not is_idem(idem):
            if msg.has_id:
                conn.reply_error(msg.id, 400, INVALID_IDEM)
            else:
                log.debug("dropped a frame from %s: invalid idem", conn.id)
            return False
        found = self._match(msg.event, msg.path)
        if found is None:
            handler = self._fallback
            if handler is None:
                if self._metrics is not None:
                    self._count_unmatched(msg.has_id)
                if self._tracing is not None:
                    self._tracing.unrouted(conn, msg)
                if msg.has_id:
                    conn.reply_error(msg.id, 404, NOT_FOUND)
                return False
            params = _NO_PARAMS
        else:
            handler = found.handler
            params = found.params
        scope = MessageScope(msg, params, conn, self._app, handler.route)
        if idem is not None and msg.has_id:
            coro: Any = self._run_idempotent(handler, scope, idem)
            tracing = self._tracing
            if tracing is not None:
                coro = tracing.run_async(tracing.start(scope), coro)
        elif self._tracing is not None:
            return self._dispatch_traced(self._tracing, handler, scope)
        elif self._chain:
            coro = self._run_intercepted(handler, scope)
        elif handler.is_async:
            coro = self._run_async(handler.fn, scope, handler.stats)
        else:
            # A copy per message: what the handler sets in context variables stays there.
            stats = handler.stats
            if stats is None:
                copy_context().run(self._run_sync, handler.fn, scope)
            else:
                copy_context().run(self._run_sync_metered, handler.fn, scope, stats)
            return False
        task = asyncio.get_running_loop().create_task(coro, context=copy_context())
        self._tasks_add(task)
        task.add_done_callback(self._tasks_discard)
        return conn.begin_task() >= self._max_in_flight

    def _dispatch_traced(self, tracing: Tracing, handler: Endpoint, scope: MessageScope) -> bool:
        """[`handle_frame`][] from the routed message on, inside the message's span."""
        span = tracing.start(scope)
        if self._chain:
            coro: Any = self._run_intercepted(handler, scope)
        elif handler.is_async:
            coro = self._run_async(handler.fn, scope, handler.stats)
        else:
            stats = handler.stats
            if stats is None:
                copy_context().run(tracing.run_sync, span, self._run_sync, handler.fn, scope)
            else:

                def run(fn: Callable[[], Any], scope: MessageScope) -> None:
                    self._run_sync_metered(fn, scope, stats)

                copy_context().run(tracing.run_sync, span, run, handler.fn, scope)
            return False
        task = asyncio.get_running_loop().create_task(
            tracing.run_async(span, coro), context=copy_context()
        )
        self._tasks_add(task)
        task.add_done_callback(self._tasks_discard)
        return scope.connection.begin_task() >= self._max_in_flight

    def _run_sync(self, fn: Callable[[], Any], scope: MessageScope) -> None:
        message_var.set(scope)
        try:
            result = fn()
        except Exception as exc:
            self._fail(scope, exc)
            return
        msg = scope.message
        if msg.has_id:
            self._reply(scope.connection, msg, result)

    def _run_sync_metered(
        self, fn: Callable[[], Any], scope: MessageScope, stats: RouteStats
    ) -> None:
        # _run_sync with counters, inlined: this is the path whose cost metrics must keep
        # tiny (a successful reply adds two clock reads, a bisect and two additions).
        message_var.set(scope)
        start = perf_counter()
        try:
            result = fn()
        except Exception as exc:
            stats.observe(perf_counter() - start)
            self._fail(scope, exc, stats)
            return
        elapsed = perf_counter() - start
        # Most handlers finish within the first bucket: a comparison instead of a bisect.
        if elapsed <= stats.first:
            stats.buckets[0] += 1
        else:
            stats.buckets[bisect_left(stats.bounds, elapsed)] += 1
        stats.seconds += elapsed
        msg = scope.message
        if not msg.has_id:
            stats.no_reply += 1
        elif not self._reply(scope.connection, msg, result):
            stats.error(500)

    async def _run_async(
        self, fn: Callable[[], Awaitable[Any]], scope: MessageScope, stats: RouteStats | None
    ) -> None:
        message_var.set(scope)
        msg = scope.message
        conn = scope.connection
        start = perf_counter() if stats is not None else 0.0
        try:
            result = await fn()
        except Exception as exc:
            if stats is not None:
                stats.observe(perf_counter() - start)
            self._fail(scope, exc, stats)
        else:
            if stats is not None:
                stats.observe(perf_counter() - start)
            self._done(conn, msg, result, stats)
        finally:
            conn.end_task()

    async def _run_intercepted(self, handler: Endpoint, scope: MessageScope) -> None:
        message_var.set(scope)
        msg = scope.message
        conn = scope.connection
        stats = handler.stats
        start = perf_counter() if stats is not None else 0.0
        try:
            result = await _call_chain(self._chain, 0, handler, scope)
        except Exception as exc:
            if stats is not None:
                stats.observe(perf_counter() - start)
            self._fail(scope, exc, stats)
        else:
            if stats is not None:
                stats.observe(perf_counter() - start)
            self._done(conn, msg, result, stats)
        finally:
            conn.end_task()

    def _done(
        self, conn: Connection, msg: ClientMessage, result: Any, stats: RouteStats | None
    ) -> None:
        """Reply with ``result`` when ``msg`` has an id, and count it."""
        if msg.has_id:
            if not self._reply(conn, msg, result) and stats is not None:
                stats.error(500)
        elif stats is not None:
            stats.no_reply += 1

    def _count_unmatched(self, has_id: bool) -> None:
        assert self._metrics is not None
        stats = self._metrics.unmatched
        stats.unobserved += 1
        if has_id:
            stats.error(404)
        else:
            stats.no_reply += 1

    async def _run_idempotent(self, handler: Endpoint, scope: MessageScope, idem: str) -> None:
        """Run a call with ``idem`` once per connection: a repeat gets the kept reply.

        Counted as any call (metrics, the span's code): a message received, a reply by code;
        a handler duration only when the handler ran (not for a kept reply).
        """
        message_var.set(scope)
        msg = scope.message
        conn = scope.connection
        sessions = self._app.sessions
        stats = handler.stats
        try:
            try:
                kept = await sessions.begin_call(conn, idem)
            except WsError as exc:
                self._count_unrun(scope, stats, exc.code, exc)
                conn.reply_error(msg.id, exc.code, exc.message)
                return
            if kept is not None:
                error = kept.get("error")
                code = 200 if error is None else error["code"]
                self._count_unrun(scope, stats, code, None)
                if self._tracing is not None:
                    self._tracing.kept(scope, code)
                self._send_body(conn, msg, kept)
                return
            body: dict[str, Any] | None = None
            start = perf_counter() if stats is not None else 0.0
            try:
                try:
                    if self._chain:
                        result = await _call_chain(self._chain, 0, handler, scope)
                    else:
                        result = handler.fn()
                        if handler.is_async:
                            result = await result
                except Exception as exc:
                    if stats is not None:
                        stats.observe(perf_counter() - start)
                    body = {"error": error_object(*self._failed(scope, exc, stats))}
                else:
                    if stats is not None:
                        stats.observe(perf_counter() - start)
                    body = self._data_body(scope.message, result)
                    if stats is not None and "error" in body:
                        stats.error(500)
            finally:
                await sessions.end_call(conn, idem, body)
            assert body is not None
            self._send_body(conn, msg, body)
        finally:
            conn.end_task()

    def _count_unrun(
        self, scope: MessageScope, stats: RouteStats | None, code: int, exc: Exception | None
    ) -> None:
        """Count an idempotent call answered without running its handler (a kept reply, or
        a refusal of the session store): received, replied with ``code``, no duration."""
        if stats is not None:
            stats.unobserved += 1
            if code != 200:
                stats.error(code)
        if exc is not None and self._tracing is not None:
            self._tracing.failed(scope, code, exc)

    def _data_body(self, msg: ClientMessage, result: Any) -> dict[str, Any]:
        """``{"data": result}``; a 500 error body when ``result`` cannot be encoded."""
        body = {"data": result}
        try:
            self._encode(body)
        except Exception:
            log.exception("reply of %s %s cannot be encoded", msg.event, msg.path)
            return {"error": error_object(500, INTERNAL_ERROR)}
        return body

    def _send_body(self, conn: Connection, msg: ClientMessage, body: Mapping[str, Any]) -> None:
        try:
            frame = self._encode({"id": msg.id, **body})
        except Exception:
            log.exception("reply of %s %s cannot be encoded", msg.event, msg.path)
            frame = encode_error(msg.id, 500, INTERNAL_ERROR, self._encode)
        conn.send_frame(frame)

    def _fail(self, scope: MessageScope, exc: Exception, stats: RouteStats | None = None) -> None:
        """Reply to ``scope``'s message (when it has an id) with the error ``exc`` maps to
        (see [`_failed`][])."""
        code, text, details, retry_after = self._failed(scope, exc, stats)
        msg = scope.message
        if msg.has_id:
            scope.connection.reply_error(
                msg.id, code, text, details=details, retry_after=retry_after
            )

    def _failed(
        self, scope: MessageScope, exc: Exception, stats: RouteStats | None = None
    ) -> tuple[int, str, Any, float | None]:
        """The one error mapping: WsError → its code, message, details and retry_after;
        anything else → logged, 500. Counted in ``stats`` and on the message's span."""
        msg = scope.message
        details = retry_after = None
        if isinstance(exc, WsError):
            code, text, details, retry_after = exc.code, exc.message, exc.details, exc.retry_after
        else:
            log.error("handler failed: %s %s", msg.event, msg.path, exc_info=exc)
            code, text = 500, INTERNAL_ERROR
        if stats is not None:
            if type(exc) is _RateLimited:
                stats.rate_limited += 1
            if msg.has_id:
                stats.error(code)
            else:
                stats.no_reply += 1
        if self._tracing is not None:
            self._tracing.failed(scope, code, exc)
        return code, text, details, retry_after

    def _reply(self, conn: Connection, msg: ClientMessage, result: Any) -> bool:
        """Send ``result`` as the reply to ``msg``; 500 (and False) when it cannot be
        encoded."""
        try:
            frame = self._encode({"id": msg.id, "data": result})
        except Exception as exc:
            log.exception("reply of %s %s cannot be encoded", msg.event, msg.path)
            frame = encode_error(msg.id, 500, INTERNAL_ERROR, self._encode)
            if self._tracing is not None:
                self._tracing.failed(message_var.get(), 500, exc)
            conn.send_frame(frame)
            return False
        conn.send_frame(frame)
        return True


async def _call_chain(
    chain: tuple[Interceptor, ...], index: int, handler: Endpoint, scope: MessageScope
) -> Any:
    if index == len(chain):
        result = handler.fn()
        return (await result) if handler.is_async else result

    def call_next() -> Awaitable[Any]:
        return _call_chain(chain, index + 1, handler, scope)

    return await chain[index](scope, call_next)
