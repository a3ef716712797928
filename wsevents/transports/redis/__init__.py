"""Broadcasts between wsevents instances over Redis pub/sub, and the connection directory.

Import it from ``wsevents.transports.redis`` (``import wsevents`` never loads redis)::

    from wsevents.transports.redis import RedisTransport

    ws = create_ws_app(transport=RedisTransport.from_url("redis://127.0.0.1:6379/0"))

``rediss://`` URLs (TLS) and every option of ``redis.asyncio.from_url`` work. With
Sentinel, pass a client managed by it; the transport follows failovers by reconnecting::

    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel([("sentinel-1", 26379), ("sentinel-2", 26379)])
    transport = RedisTransport(sentinel.master_for("mymaster"))

Layout in Redis (every name starts with ``prefix``, ``"wsevents:"`` by default):

* ``<prefix>ws:room:<room>``: one channel per room with local members;
* ``<prefix>ws:broadcast``: server-wide broadcasts;
* ``<prefix>ws:instance:<instance id>``: each instance's inbox (``send_to``);
* ``<prefix>probe:<random>``: this transport's private health-check channel;
* ``<prefix>conn:<connection id>``: a key per open connection whose value is the instance
  holding it, with a TTL that the live instance refreshes (the directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from ..._aio import TaskSet, call_hook, is_async
from ...exceptions import TransportError
from ..base import BaseTransport, Capabilities, PayloadHandler, StateListener

__all__ = ["RedisTransport", "StateListener", "redact_url"]

log = logging.getLogger("wsevents.transports.redis")

_SUBSCRIBE_BATCH = 512
_DIRECTORY_BATCH = 500
_MAX_BACKLOG = 10_000
_PUBLISH_STRIPES = 64


_PASSWORD_IN_QUERY = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages.

    Works on malformed URLs too (it never raises); when in doubt it hides more.

    Example:
        ``redact_url("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"``
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, host = rest.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            rest = f"{user}:***@{host}"
        url = f"{scheme}{sep}{rest}"
    return _PASSWORD_IN_QUERY.sub(r"\1***", url)


def _describe_client(client: Any) -> str:
    """Where a client connects, as a URL without credentials (for messages)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    if kwargs.get("host"):
        ssl = "ssl" in getattr(getattr(pool, "connection_class", None), "__name__", "").lower()
        host, port, db = kwargs["host"], kwargs.get("port", 6379), kwargs.get("db", 0)
        return f"{'rediss' if ssl else 'redis'}://{host}:{port}/{db}"
    return f"a {type(pool).__name__}"  # e.g. a Sentinel-managed pool


def _cause(exc: BaseException) -> str:
    """``Type: message`` of an error, for messages that name the cause."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Subscription:
    """One channel's handler; payloads reach it in arrival order.

    A sync handler runs inline in the reader task. An async one (or a sync one that
    returned an awaitable) runs in a worker task that drains a bounded backlog, so a slow
    handler never blocks the other channels and never reorders its own.
    """

    __slots__ = ("_first", "backlog", "channel", "handler", "is_async", "owner", "task")

    def __init__(self, owner: RedisTransport, channel: str, handler: PayloadHandler) -> None:
        self.owner = owner
        self.channel = channel
        self.handler = handler
        self.is_async = is_async(handler)
        self.backlog: deque[str] = deque()
        self.task: asyncio.Task[None] | None = None
        self._first: Awaitable[None] | None = None

    def deliver(self, payload: str) -> None:
        if self.is_async or self.task is not None:
            if len(self.backlog) >= _MAX_BACKLOG:
                log.warning(
                    "dropped a payload on %s: its handler is %d behind",
                    self.channel,
                    len(self.backlog),
                )
                return
            self.backlog.append(payload)
            if self.task is None:
                self.task = self.owner._spawn(self._drain())
            return
        try:
            result = self.handler(payload)
        except Exception:
            log.exception("subscriber of %s failed", self.channel)
            return
        if inspect.isawaitable(result):
            self._first = result
            self.task = self.owner._spawn(self._drain())

    async def _drain(self) -> None:
        try:
            first, self._first = self._first, None
            if first is not None:
                await self._settle(first)
            while self.backlog:
                payload = self.backlog.popleft()
                try:
                    result = self.handler(payload)
                except Exception:
                    log.exception("subscriber of %s failed", self.channel)
                    continue
                if inspect.isawaitable(result):
                    await self._settle(result)
        finally:
            self.task = None

    async def _settle(self, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("subscriber of %s failed", self.channel)

    def cancel(self) -> None:
        self.backlog.clear()
        first, self._first = self._first, None
        if inspect.iscoroutine(first):
            first.close()  # never started: close it so it is not reported as never awaited
        if self.task is not None:
            self.task.cancel()


class RedisTransport(BaseTransport):
    """A [`BroadcastTransport`][wsevents.BroadcastTransport] and
    [`ConnectionDirectory`][wsevents.ConnectionDirectory] over Redis.

    One dedicated pub/sub connection per transport, read by one reader task. When it
    breaks (Redis restarted, connection killed, no PONG within ``ping_timeout``), the
    reader reconnects with exponential backoff and full jitter, resubscribes every live
    channel and reports the outage to the state listeners. Publishing and the directory go
    through the client's connection pool.

    Args:
        client: the ``redis.asyncio.Redis`` client to use (it stays open at [`close`][];
            a client made by [`from_url`][] is closed).
        prefix: put before every channel and key name, to share a Redis between apps.
        ping_interval: seconds between PINGs sent through the pub/sub connection, so a
            silently dead subscription is noticed.
        ping_timeout: seconds a PING (and the initial subscription confirmation) may take
            before the connection is considered dead; also the default of [`health`][].
        connect_timeout: seconds a (re)connection attempt may take; [`start`][] waits
            this long for the first connection.
        command_timeout: seconds a publish or a directory command may take.
        reconnect_delay: base of the exponential backoff between reconnection attempts.
        reconnect_max_delay: largest delay between two attempts.
        directory_ttl: seconds a directory entry lives unless its instance refreshes it
            (every third of it); the entries of a crashed instance vanish after that.
        fail_fast: make [`start`][] raise [`TransportError`][wsevents.TransportError] when the
            first connection is not made within ``connect_timeout``, instead of starting
            anyway and retrying in the background.

    Failure semantics:
        * ``publish`` raises [`TransportError`][wsevents.TransportError] (counted in
          [`publish_failures`][]); while the pub/sub connection is down and a publish has
          already failed, later publishes fail at once instead of waiting for a timeout.
        * ``subscribe`` never raises because Redis is unreachable: it keeps the
          registration, returns at once and the subscription is made on reconnect.
        * Directory writes of a live instance are restored by its refresh loop when they
          fail or when Redis loses them (a restart without persistence);
          ``locate_connection`` raises [`TransportError`][wsevents.TransportError] when Redis cannot
          answer.

    After [`close`][], [`start`][] may run it again (on any event loop).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "wsevents:",
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 2.0,
        reconnect_delay: float = 0.1,
        reconnect_max_delay: float = 5.0,
        directory_ttl: float = 30.0,
        fail_fast: bool = False,
    ) -> None:
        if min(ping_interval, ping_timeout, connect_timeout, command_timeout) <= 0:
            raise ValueError("intervals and timeouts must be > 0")
        if reconnect_delay <= 0 or reconnect_max_delay < reconnect_delay:
            raise ValueError("need 0 < reconnect_delay <= reconnect_max_delay")
        if directory_ttl < 0.01:
            raise ValueError("directory_ttl must be at least 0.01 s")
        self.client = client
        self.prefix = prefix
        self.ping_interval = float(ping_interval)
        self.ping_timeout = float(ping_timeout)
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = float(command_timeout)
        self.reconnect_delay = float(reconnect_delay)
        self.reconnect_max_delay = float(reconnect_max_delay)
        self.directory_ttl = float(directory_ttl)
        self.fail_fast = fail_fast
        self.url = _describe_client(client)
        """Where Redis is, password redacted (for messages)."""
        self.publish_failures = 0
        """Publishes that raised [`TransportError`][wsevents.TransportError]."""
        self.published = 0
        """Publishes that Redis accepted."""
        self.reconnects = 0
        """Times the pub/sub connection came back after being lost."""
        self._owns_client = False
        # One FIFO lock per stripe of channels: publishes on one channel reach Redis in
        # call order even though the pool would send concurrent ones on several sockets.
        self._publish_locks = [asyncio.Lock() for _ in range(_PUBLISH_STRIPES)]
        self._subs: dict[str, _Subscription] = {}
        self._confirm: dict[str, deque[asyncio.Future[bool]]] = {}
        self._pongs: deque[asyncio.Future[bool]] = deque()
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._probe_channel = f"{prefix}probe:{uuid.uuid4().hex}"
        self._conn: Any = None  # the live pub/sub connection, None while down
        self._up = False
        self._up_event = asyncio.Event()
        self._state: bool | None = None  # last state reported to the listeners
        self._fail_at_once = False  # down and a publish failed: later ones fail at once
        self._last_error: BaseException | None = None
        self._quiet_start = False  # a fail-fast start() reports the failure itself
        self._listeners: list[StateListener] = []
        self._local: dict[str, str] = {}  # directory entries of this process
        self._deleting: set[str] = set()  # entries whose DEL is in flight
        self._refresh_wakeup = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._tasks = TaskSet()
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "wsevents:",
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 2.0,
        reconnect_delay: float = 0.1,
        reconnect_max_delay: float = 5.0,
        directory_ttl: float = 30.0,
        fail_fast: bool = False,
        **redis_kwargs: Any,
    ) -> RedisTransport:
        """A transport over a new client for ``url`` (closed with the transport).

        ``redis_kwargs`` go to ``redis.asyncio.from_url`` (``password``,
        ``ssl_ca_certs``, ``client_name``...). No I/O happens here: it may run at import
        time, outside an event loop. Messages name ``url`` with its password redacted.

        Unless ``retry`` is given, a command that fails on a broken pooled connection (as
        every pooled connection is after a Redis restart) is retried twice on a fresh one.
        Pass ``retry=Retry(NoBackoff(), 0)`` to never retry a publish: a publish that Redis
        executed just before its connection broke would otherwise be delivered twice.

        ``socket_timeout`` defaults to None: every command is bounded by
        ``command_timeout`` instead. (With a socket timeout, redis-py writes through
        ``asyncio.wait_for``, which on Python 3.11 can lose a task's cancellation.)
        """
        redis_kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.25, base=0.02), 2))
        redis_kwargs.setdefault("socket_timeout", None)
        client = aioredis.from_url(url, **redis_kwargs)
        transport = cls(
            client,
            prefix=prefix,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            reconnect_delay=reconnect_delay,
            reconnect_max_delay=reconnect_max_delay,
            directory_ttl=directory_ttl,
            fail_fast=fail_fast,
        )
        transport.url = redact_url(url)
        transport._owns_client = True
        return transport

    # -- state --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the pub/sub connection is up with every subscription confirmed."""
        return self._up

    @property
    def channels(self) -> frozenset[str]:
        """The channels registered (unprefixed), whether or not Redis is reachable."""
        n = len(self.prefix)
        return frozenset(channel[n:] for channel in self._subs)

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(False)`` when the pub/sub connection is lost (or cannot be made
        at start) and ``listener(True)`` when it is back with every subscription restored.

        Pushes published by other instances while it was down are lost: the ``True`` call is
        the moment to resynchronise clients. An async listener runs in a task of its own.
        """
        self._listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def health(self, timeout: float | None = None) -> bool:
        """True when a probe published now comes back through the pub/sub connection.

        It checks the whole path (publish, Redis, subscription, reader), not only that
        Redis answers.
        """
        if not self._up:
            return False
        nonce = uuid.uuid4().hex
        arrived = asyncio.get_running_loop().create_future()
        self._probes[nonce] = arrived
        try:
            async with asyncio.timeout(self.ping_timeout if timeout is None else timeout):
                await self.client.publish(self._probe_channel, nonce)
                await arrived
        except Exception as exc:
            log.debug("health probe failed: %r", exc)
            return False
        finally:
            self._probes.pop(nonce, None)
        return True

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader and the directory refresh; wait up to ``connect_timeout`` for
        the first connection (when Redis is not reachable yet, it keeps trying in the
        background and the app starts anyway, unless ``fail_fast``).

        Raises:
            TransportError: with ``fail_fast``, Redis did not answer in time (the message
                names the URL, password redacted, and the last error).
        """
        self._closed = False
        if self._up:
            self._ensure_tasks()
            return
        self._quiet_start = self.fail_fast
        self._ensure_tasks()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._up_event.wait()
        except TimeoutError:
            cause = _cause(self._last_error) if self._last_error is not None else "no answer"
            if self.fail_fast:
                await self._stop_background()
                raise TransportError(
                    f"Redis at {self.url} did not answer within {self.connect_timeout:g} s: {cause}"
                ) from self._last_error
            log.warning(
                "Redis at %s did not answer within %g s (%s); starting anyway, retrying in "
                "the background",
                self.url,
                self.connect_timeout,
                cause,
            )
        finally:
            self._quiet_start = False

    async def _stop_background(self) -> None:
        """Stop the reader and the refresh after a failed fail-fast start (registrations
        stay, so a later [`start`][] can try again)."""
        tasks = [t for t in (self._reader_task, self._refresh_task) if t is not None]
        self._reader_task = self._refresh_task = None
        await self._stop_tasks([*tasks, *(t for t in self._tasks if not t.done())])
        self._set_down_quietly()
        self._state = None

    async def close(self) -> None:
        """Stop the tasks, drop every subscription with the pub/sub connection, delete this
        instance's directory entries and close the client if [`from_url`][] made it."""
        self._closed = True
        tasks = [t for t in (self._reader_task, self._refresh_task) if t is not None]
        self._reader_task = self._refresh_task = None
        if self._conn is not None:
            self._abort(self._conn)
        for sub in self._subs.values():
            sub.cancel()
        self._subs.clear()
        tasks += [t for t in self._tasks if not t.done()]
        await self._stop_tasks(tasks)
        keys = [self._key(cid) for cid in (*self._local, *self._deleting)]
        self._local.clear()
        for chunk in _chunks(keys, _DIRECTORY_BATCH):
            try:
                async with asyncio.timeout(self.command_timeout):
                    await self.client.delete(*chunk)
            except Exception as exc:
                log.debug("directory cleanup failed (entries expire by themselves): %r", exc)
                break
        self._set_down_quietly()
        self._state = None
        # Fresh primitives: a restarted transport may run on another event loop.
        self._up_event = asyncio.Event()
        self._refresh_wakeup = asyncio.Event()
        self._publish_locks = [asyncio.Lock() for _ in range(_PUBLISH_STRIPES)]
        if self._owns_client:
            await self.client.aclose()

    # -- BroadcastTransport -------------------------------------------------------------

    async def publish(self, channel: str, payload: str) -> None:
        """Publish ``payload`` on ``channel`` (prefixed).

        Publishes on one channel reach Redis in the order of the calls, also when they
        overlap (each waits for the previous one on its channel).

        Raises:
            TransportError: Redis failed or did not answer within ``command_timeout``.
        """
        if self._closed:
            self.publish_failures += 1
            raise TransportError("the Redis transport is closed")
        if self._fail_at_once and not self._up:
            self.publish_failures += 1
            raise TransportError(
                f"Redis at {self.url} is unavailable, publish skipped "
                f"(last error: {self._last_cause()})"
            )
        full = self.prefix + channel
        try:
            async with (
                asyncio.timeout(self.command_timeout),
                self._publish_locks[hash(full) % _PUBLISH_STRIPES],
            ):
                await self.client.publish(full, payload)
        except Exception as exc:
            self.publish_failures += 1
            if not self._up:
                self._fail_at_once = True
            if isinstance(exc, TimeoutError):
                cause = f"no answer within {self.command_timeout:g} s"
            else:
                cause = _cause(exc)
                self._last_error = exc
            raise TransportError(f"Redis at {self.url}: {cause}") from exc
        self.published += 1

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        """Deliver every later payload on ``channel`` to ``handler`` (sync or async).

        Returns once Redis confirmed the subscription, so a publish made afterwards is
        received. When Redis is unreachable it returns at once, keeping the registration:
        the subscription is made when the connection is back. Subscribing again replaces
        the handler.
        """
        full = self.prefix + channel
        sub = self._subs.get(full)
        if sub is not None:
            sub.handler = handler
            sub.is_async = is_async(handler)
            return
        self._subs[full] = _Subscription(self, full, handler)
        if self._reader_task is None and not self._closed:
            await self.start()
            return  # the first connection subscribed every registered channel
        conn = self._conn
        if conn is None or not conn.is_connected:
            return
        confirmed = self._expect_confirmation(full)
        try:
            await conn.send_command("SUBSCRIBE", full, check_health=False)
            async with asyncio.timeout(self.ping_timeout):
                await confirmed
        except Exception as exc:
            log.warning(
                "subscribing to %s at %s failed (%s); reconnecting", full, self.url, _cause(exc)
            )
            self._abort(conn)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; payloads not yet handled are dropped."""
        full = self.prefix + channel
        sub = self._subs.pop(full, None)
        if sub is None:
            return
        sub.cancel()
        conn = self._conn
        if conn is None or not conn.is_connected:
            return
        try:
            await conn.send_command("UNSUBSCRIBE", full, check_health=False)
        except Exception as exc:
            log.warning(
                "unsubscribing from %s at %s failed (%s); reconnecting",
                full,
                self.url,
                _cause(exc),
            )
            self._abort(conn)

    def capabilities(self) -> Capabilities:
        """A connection directory and backend state events (this transport implements both)."""
        return Capabilities(directory=self, state_events=self)

    # -- ConnectionDirectory ------------------------------------------------------------

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        """Record that ``connection_id`` lives on ``instance_id`` (refreshed while open).

        When Redis is unreachable the entry is kept locally and written on reconnect.
        """
        if self._closed:
            return
        self._local[connection_id] = instance_id
        if self._fail_at_once and not self._up:
            return
        self._ensure_tasks()
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.client.set(self._key(connection_id), instance_id, px=self._ttl_ms())
        except Exception as exc:
            log.debug("directory write of %s deferred: %r", connection_id, exc)

    async def unregister_connection(self, connection_id: str) -> None:
        """Delete ``connection_id``'s entry (if Redis is unreachable, it expires)."""
        if self._closed:
            return  # close() deletes every entry still in _local
        self._local.pop(connection_id, None)
        if self._fail_at_once and not self._up:
            return
        self._deleting.add(connection_id)  # close() deletes it too if this is cut short
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.client.delete(self._key(connection_id))
        except Exception as exc:
            log.debug("directory delete of %s failed (it expires): %r", connection_id, exc)
        finally:
            self._deleting.discard(connection_id)

    async def locate_connection(self, connection_id: str) -> str | None:
        """The instance id holding ``connection_id``, or None.

        Raises:
            TransportError: Redis cannot answer.
        """
        if self._closed:
            raise TransportError("the Redis transport is closed")
        if self._fail_at_once and not self._up:
            raise TransportError(
                f"Redis at {self.url} is unavailable (last error: {self._last_cause()})"
            )
        try:
            async with asyncio.timeout(self.command_timeout):
                value = await self.client.get(self._key(connection_id))
        except Exception as exc:
            raise TransportError(
                f"directory lookup of {connection_id} at {self.url} failed: {_cause(exc)}"
            ) from exc
        return None if value is None else _text(value)

    # -- internals: tasks ---------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    @staticmethod
    async def _stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
        """Cancel ``tasks`` and wait for them, cancelling again if one ignores it.

        A cancellation can be lost inside redis-py on Python 3.11 (see [`from_url`][]);
        the loops also stop on ``_closed``, so a second request ends them.
        """
        pending = {t for t in tasks if not t.done()}
        for _ in range(20):
            if not pending:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.25)
        log.warning("%d Redis transport task(s) did not stop", len(pending))

    def _ensure_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader_task is None:
            self._reader_task = loop.create_task(self._read_forever(), name="wsevents-redis")
        if self._refresh_task is None:
            self._refresh_task = loop.create_task(
                self._refresh_forever(), name="wsevents-redis-directory"
            )

    def _key(self, connection_id: str) -> str:
        return f"{self.prefix}conn:{connection_id}"

    def _ttl_ms(self) -> int:
        return max(int(self.directory_ttl * 1000), 10)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: instances that lost Redis together do not come back in lockstep.
        ceiling = min(self.reconnect_max_delay, self.reconnect_delay * 2 ** min(attempt, 30))
        return random.uniform(0.0, ceiling)

    # -- internals: the reader ----------------------------------------------------------

    async def _read_forever(self) -> None:
        attempt = 0
        while not self._closed:
            pool = self.client.connection_pool
            conn: Any = pool.make_connection()  # type: ignore[no-untyped-call]
            # One attempt per connect: the backoff below is ours, with state reporting.
            conn.retry = Retry(NoBackoff(), 0)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await conn.connect()
                await self._serve(conn)
            except Exception as exc:
                if self._up:
                    attempt = 0  # it was working: retry at once, then back off
                self._went_down(exc)
            finally:
                await self._teardown(conn)
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _serve(self, conn: Any) -> None:
        # Snapshot and publish the connection with no await in between: a subscribe()
        # that runs after this point sends its own SUBSCRIBE on the new connection.
        channels = [self._probe_channel, *self._subs]
        self._conn = conn
        waiters = [self._expect_confirmation(channel) for channel in channels]
        for chunk in _chunks(channels, _SUBSCRIBE_BATCH):
            await conn.send_command("SUBSCRIBE", *chunk, check_health=False)
        self._watch_task = self._spawn(self._watch(conn, waiters))
        while not self._closed:
            # math.inf: block without the connection's socket_timeout; the watcher's
            # PINGs notice a dead connection instead.
            response = await conn.read_response(timeout=math.inf, push_request=True)
            self._on_response(response)

    async def _watch(self, conn: Any, waiters: list[asyncio.Future[bool]]) -> None:
        """Declare the connection up once every subscription is confirmed, then PING it."""
        try:
            async with asyncio.timeout(self.ping_timeout):
                confirmed = await asyncio.gather(*waiters)
        except TimeoutError:
            log.warning(
                "Redis at %s did not confirm the subscriptions within %g s; reconnecting",
                self.url,
                self.ping_timeout,
            )
            self._abort(conn)
            return
        if not all(confirmed) or self._conn is not conn:
            return
        self._went_up()
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ping_interval)
            if self._conn is not conn or self._closed:
                return
            pong: asyncio.Future[bool] = loop.create_future()
            self._pongs.append(pong)
            try:
                await conn.send_command("PING", check_health=False)
                async with asyncio.timeout(self.ping_timeout):
                    alive = await pong
            except Exception as exc:
                if self._conn is conn:
                    log.warning(
                        "Redis pub/sub connection to %s unresponsive (%s); reconnecting",
                        self.url,
                        _cause(exc) if not isinstance(exc, TimeoutError) else "no PONG in time",
                    )
                    self._abort(conn)
                return
            if not alive:
                return

    def _expect_confirmation(self, channel: str) -> asyncio.Future[bool]:
        # Confirmations of one channel arrive in the order the SUBSCRIBEs were sent.
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(channel, deque()).append(waiter)
        return waiter

    def _on_response(self, response: Any) -> None:
        if isinstance(response, list | tuple) and response:
            kind = _text(response[0]).lower()
            if kind == "message" and len(response) >= 3:
                self._on_message(_text(response[1]), response[2])
            elif kind == "subscribe" and len(response) >= 2:
                channel = _text(response[1])
                queue = self._confirm.get(channel)
                if queue:
                    waiter = queue.popleft()
                    if not queue:
                        del self._confirm[channel]
                    if not waiter.done():
                        waiter.set_result(True)
            elif kind == "pong":  # RESP2: ["pong", ""]
                self._on_pong()
            # unsubscribe confirmations and other pushes need nothing
        elif isinstance(response, bytes | str) and _text(response).lower() == "pong":
            self._on_pong()  # RESP3 answers PING with a plain PONG

    def _on_pong(self) -> None:
        if self._pongs:
            pong = self._pongs.popleft()
            if not pong.done():
                pong.set_result(True)

    def _on_message(self, channel: str, data: Any) -> None:
        if channel == self._probe_channel:
            arrived = self._probes.pop(_text(data), None)
            if arrived is not None and not arrived.done():
                arrived.set_result(None)
            return
        sub = self._subs.get(channel)
        if sub is None:
            return  # unsubscribed while the payload was in flight
        if isinstance(data, bytes | bytearray):
            try:
                payload = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                log.warning("dropped a payload that is not UTF-8 on %s", channel)
                return
        elif isinstance(data, str):
            payload = data
        else:
            return
        sub.deliver(payload)

    @staticmethod
    def _abort(conn: Any) -> None:
        """Break ``conn`` at once; the reader notices and reconnects.

        A plain close could wait for unsent bytes to flush to a peer that is gone.
        """
        writer = getattr(conn, "_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is not None:
            transport.abort()

    async def _teardown(self, conn: Any) -> None:
        if self._conn is conn:
            self._conn = None
        watch, self._watch_task = self._watch_task, None
        if watch is not None:
            watch.cancel()
        for queue in self._confirm.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_result(False)
        self._confirm.clear()
        while self._pongs:
            pong = self._pongs.popleft()
            if not pong.done():
                pong.set_result(False)
        self._abort(conn)
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    def _went_up(self) -> None:
        self._up = True
        self._up_event.set()
        self._fail_at_once = False
        self._last_error = None
        self._refresh_wakeup.set()  # rewrite the directory (Redis may have restarted empty)
        if self._state is False:
            self.reconnects += 1
            log.info("Redis pub/sub connection to %s restored", self.url)
            self._state = True
            self._notify(True)
        else:
            self._state = True

    def _went_down(self, exc: BaseException) -> None:
        was_up = self._up
        self._last_error = exc
        self._set_down_quietly()
        if self._state is not False:
            if was_up:
                log.warning(
                    "Redis pub/sub connection to %s lost (%s); reconnecting", self.url, _cause(exc)
                )
            elif self._quiet_start:  # start() raises with the cause if it does not come up
                log.debug("Redis at %s is unreachable (%s); retrying", self.url, _cause(exc))
            else:
                log.warning("Redis at %s is unreachable (%s); retrying", self.url, _cause(exc))
            self._state = False
            self._notify(False)
        else:
            log.debug("Redis at %s still unreachable (%s)", self.url, _cause(exc))

    def _last_cause(self) -> str:
        return "none yet" if self._last_error is None else _cause(self._last_error)

    def _set_down_quietly(self) -> None:
        self._up = False
        self._up_event.clear()

    def _notify(self, up: bool) -> None:
        for listener in list(self._listeners):
            call_hook(
                listener,
                up,
                tasks=self._tasks,
                logger=log,
                message="transport state listener failed",
            )

    # -- internals: the directory refresh -----------------------------------------------

    async def _refresh_forever(self) -> None:
        interval = self.directory_ttl / 3
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._refresh_wakeup.wait()
            self._refresh_wakeup.clear()
            if self._closed:
                return
            if not self._local or (self._fail_at_once and not self._up):
                continue
            try:
                await self._refresh_directory()
            except Exception as exc:
                if self._up:
                    log.warning("directory refresh at %s failed: %s", self.url, _cause(exc))
                else:
                    log.debug("directory refresh failed: %r", exc)

    async def _refresh_directory(self) -> None:
        """Extend every local entry's TTL; rewrite the ones Redis lost; delete stragglers."""
        ttl = self._ttl_ms()
        snapshot = list(self._local.items())
        for chunk in _chunks(snapshot, _DIRECTORY_BATCH):
            async with asyncio.timeout(self.command_timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    for cid, instance in chunk:
                        _ = pipe.set(self._key(cid), instance, px=ttl, xx=True)
                    results = await pipe.execute()
                # XX never resurrects an entry deleted meanwhile; one that Redis lost is
                # written again only while the connection is still open here.
                missing = [
                    (cid, instance)
                    for (cid, instance), ok in zip(chunk, results, strict=True)
                    if not ok and self._local.get(cid) == instance
                ]
                if missing:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for cid, instance in missing:
                            _ = pipe.set(self._key(cid), instance, px=ttl)
                        await pipe.execute()
        gone = [self._key(cid) for cid, _ in snapshot if cid not in self._local]
        for keys in _chunks(gone, _DIRECTORY_BATCH):
            async with asyncio.timeout(self.command_timeout):
                await self.client.delete(*keys)
