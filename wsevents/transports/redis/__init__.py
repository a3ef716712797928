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
  holding it, with a TTL that the live instance refreshes (the directory);
* ``<prefix>ws:presence:...``: the presence store (see ``_presence``), keys of a room
  hash-tagged ``{<room>}``;
* ``<prefix>ws:history:...``: the history store (see ``_history``), a stream, an offset
  and an epoch per history room, hash-tagged ``{<room>}``;
* ``<prefix>ws:capacity:...``: the capacity store (see ``_capacity``), the places and the
  instances' leases per capped room, hash-tagged ``{<room>}``;
* ``<prefix>ws:kv:<key>``: the session store (see ``_sessions``): session snapshots, the
  kept replies of idempotent calls, counters;
* ``<prefix>ws:rl:<limit>|<key>``: a token bucket per key of a cluster-wide rate limit
  (see ``_ratelimit``), expiring once full again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ..._aio import TaskSet
from ...exceptions import TransportError
from ..base import BaseTransport, Capabilities, PayloadHandler, StateListener
from ._capacity import RedisCapacity
from ._commands import cause
from ._directory import RedisDirectory
from ._history import RedisHistory
from ._presence import RedisPresence
from ._pubsub import PubSub
from ._ratelimit import RedisRateLimits
from ._sessions import RedisSessions
from ._sharded import ShardedPubSub
from ._url import describe_client, is_cluster_url, parse_cluster_url, redact_url

__all__ = ["RedisClusterTransport", "RedisTransport", "StateListener", "redact_url"]

log = logging.getLogger("wsevents.transports.redis")

DEFAULT_MAX_CONNECTIONS = 64
"""How many pooled connections to Redis a transport made by ``from_url`` keeps at most."""

# Options of redis.asyncio.from_url that are the client's or the pool's, not a connection's:
# with one of them, from_url makes the client as redis-py does (no bounded pool).
_CLIENT_OPTIONS = frozenset(
    {
        "connection_pool",
        "connection_pool_class",
        "single_connection_client",
        "auto_close_connection_pool",
    }
)


def _poolable(redis_kwargs: dict[str, Any]) -> bool:
    return _CLIENT_OPTIONS.isdisjoint(redis_kwargs)


class RedisTransport(BaseTransport):
    """A [`BroadcastTransport`][wsevents.BroadcastTransport] over Redis, with a
    [`ConnectionDirectory`][wsevents.ConnectionDirectory], backend state events, a
    [`PresenceStore`][wsevents.PresenceStore], a [`HistoryStore`][wsevents.HistoryStore], a
    [`CapacityStore`][wsevents.CapacityStore], a [`SessionStore`][wsevents.SessionStore] and
    a [`RateLimitStore`][wsevents.RateLimitStore].

    One dedicated pub/sub connection per transport, read by one reader task. When it
    breaks (Redis restarted, connection killed, no PONG within ``ping_timeout``), the
    reader reconnects with exponential backoff and full jitter, resubscribes every live
    channel and reports the outage to the state listeners. Publishing and the directory go
    through the client's connection pool. [`capabilities`][] hands over the directory and
    the state events as objects of their own; the transport's own directory and listener
    methods do the same.

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

    _pubsub_class: type[PubSub] = PubSub

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
        # The options as given; the reader and the directory read them once, here.
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
        self._owns_client = False
        self._tasks = TaskSet()  # every task of the reader, the subscriptions and the hooks
        self._reader_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._pubsub = self._pubsub_class(
            client,
            prefix=prefix,
            url=describe_client(client),
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            reconnect_delay=self.reconnect_delay,
            reconnect_max_delay=self.reconnect_max_delay,
            tasks=self._tasks,
        )
        self._directory = RedisDirectory(
            client,
            prefix=prefix,
            ttl=self.directory_ttl,
            command_timeout=self.command_timeout,
            pubsub=self._pubsub,
            ensure_running=self._ensure_tasks,
        )
        self._presence = RedisPresence(client, prefix=prefix, command_timeout=self.command_timeout)
        self._history = RedisHistory(client, prefix=prefix, command_timeout=self.command_timeout)
        self._capacity = RedisCapacity(
            client, prefix=prefix, command_timeout=self.command_timeout, pubsub=self._pubsub
        )
        self._sessions = RedisSessions(client, prefix=prefix, command_timeout=self.command_timeout)
        self._rate_limits = RedisRateLimits(
            client, prefix=prefix, command_timeout=self.command_timeout
        )
        # Rewrite the directory whenever the connection comes up: Redis may have
        # restarted empty.
        self._pubsub.on_up = self._directory.wake

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
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
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

        At most ``max_connections`` pooled connections go to Redis (the pub/sub reader has
        one of its own besides): a command that finds them all busy waits for one, up to
        ``command_timeout``. A burst of connects or broadcasts therefore leaves no hundreds
        of idle connections behind (nor, after a Redis restart, as many dead ones). None:
        no bound (redis-py's default pool). Ignored with a ``connection_pool`` of your own,
        and for a Redis Cluster (redis-py keeps a pool per node there).

        A ``redis+cluster://host:port[,host:port...]`` URL (``rediss+cluster://`` over
        TLS, ``user:password@`` before the nodes) makes a
        [`RedisClusterTransport`][wsevents.transports.RedisClusterTransport] over a
        ``redis.asyncio.RedisCluster`` that starts from those nodes; ``redis_kwargs`` then go
        to ``RedisCluster``.

        Raises:
            ValueError: a malformed URL (the message names no password).
        """
        redis_kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.25, base=0.02), 2))
        redis_kwargs.setdefault("socket_timeout", None)
        client: aioredis.Redis | aioredis.RedisCluster
        target: type[RedisTransport]
        if is_cluster_url(url):
            nodes, options = parse_cluster_url(url)
            client = aioredis.RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                **{**options, **redis_kwargs},
            )
            target = cls if issubclass(cls, RedisClusterTransport) else RedisClusterTransport
        elif issubclass(cls, RedisClusterTransport):
            raise ValueError("a Redis Cluster URL starts with redis+cluster://")
        elif max_connections is None or not _poolable(redis_kwargs):
            client = aioredis.from_url(url, **redis_kwargs)
            target = cls
        else:
            if max_connections < 1:
                raise ValueError(f"max_connections must be at least 1, not {max_connections}")
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=command_timeout, **redis_kwargs
            )
            client = aioredis.Redis.from_pool(pool)
            target = cls
        transport = target(
            client,  # type: ignore[arg-type]
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
    def url(self) -> str:
        """Where Redis is, password redacted (for messages)."""
        return self._pubsub.url

    @url.setter
    def url(self, value: str) -> None:
        self._pubsub.url = value

    @property
    def publish_failures(self) -> int:
        """Publishes that raised [`TransportError`][wsevents.TransportError]."""
        return self._pubsub.publish_failures

    @property
    def published(self) -> int:
        """Publishes that Redis accepted."""
        return self._pubsub.published

    @property
    def reconnects(self) -> int:
        """Times the pub/sub connection came back after being lost."""
        return self._pubsub.reconnects

    @property
    def connected(self) -> bool:
        """True while the pub/sub connection is up with every subscription confirmed."""
        return self._pubsub.up

    @property
    def channels(self) -> frozenset[str]:
        """The channels registered (unprefixed), whether or not Redis is reachable."""
        return self._pubsub.channels

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(False)`` when the pub/sub connection is lost (or cannot be made
        at start) and ``listener(True)`` when it is back with every subscription restored.

        Pushes published by other instances while it was down are lost: the ``True`` call is
        the moment to resynchronise clients. An async listener runs in a task of its own.
        """
        self._pubsub.add_state_listener(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        self._pubsub.remove_state_listener(listener)

    async def health(self, timeout: float | None = None) -> bool:
        """True when a probe published now comes back through the pub/sub connection.

        It checks the whole path (publish, Redis, subscription, reader), not only that
        Redis answers.
        """
        return await self._pubsub.health(timeout)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader and the directory refresh; wait up to ``connect_timeout`` for
        the first connection (when Redis is not reachable yet, it keeps trying in the
        background and the app starts anyway, unless ``fail_fast``).

        Raises:
            TransportError: with ``fail_fast``, Redis did not answer in time (the message
                names the URL, password redacted, and the last error).
        """
        self._set_closed(False)
        pubsub = self._pubsub
        if pubsub.up:
            self._ensure_tasks()
            return
        pubsub.quiet_start = self.fail_fast
        self._ensure_tasks()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await pubsub.up_event.wait()
        except TimeoutError:
            reason = cause(pubsub.last_error) if pubsub.last_error is not None else "no answer"
            if self.fail_fast:
                await self._stop_background()
                raise TransportError(
                    f"Redis at {self.url} did not answer within {self.connect_timeout:g} s: "
                    f"{reason}"
                ) from pubsub.last_error
            log.warning(
                "Redis at %s did not answer within %g s (%s); starting anyway, retrying in "
                "the background",
                self.url,
                self.connect_timeout,
                reason,
            )
        finally:
            pubsub.quiet_start = False

    async def close(self) -> None:
        """Stop the tasks, drop every subscription with the pub/sub connection, delete this
        instance's directory entries and close the client if [`from_url`][] made it."""
        self._set_closed(True)
        tasks = [t for t in (self._reader_task, self._refresh_task) if t is not None]
        self._reader_task = self._refresh_task = None
        self._pubsub.shut()
        tasks += [t for t in self._tasks if not t.done()]
        await self._stop_tasks(tasks)
        await self._directory.clear()
        self._pubsub.forget_state()
        self._pubsub.renew_primitives()
        if self._owns_client:
            await self.client.aclose()

    def capabilities(self) -> Capabilities:
        """The connection directory, the backend state events, the presence store, the
        history store, the capacity store, the session store and the rate-limit buckets, each
        its own object."""
        return Capabilities(
            directory=self._directory,
            state_events=self._pubsub,
            presence=self._presence,
            history=self._history,
            capacity=self._capacity,
            sessions=self._sessions,
            rate_limits=self._rate_limits,
        )

    # -- BroadcastTransport -------------------------------------------------------------

    async def publish(self, channel: str, payload: str) -> None:
        """Publish ``payload`` on ``channel`` (prefixed).

        Publishes on one channel reach Redis in the order of the calls, also when they
        overlap (each waits for the previous one on its channel).

        Raises:
            TransportError: Redis failed or did not answer within ``command_timeout``.
        """
        await self._pubsub.publish(channel, payload)

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        """Deliver every later payload on ``channel`` to ``handler`` (sync or async).

        Returns once Redis confirmed the subscription, so a publish made afterwards is
        received. When Redis is unreachable it returns at once, keeping the registration:
        the subscription is made when the connection is back. Subscribing again replaces
        the handler.
        """
        if not self._pubsub.register(channel, handler):
            return
        if self._reader_task is None and not self._pubsub.closed:
            await self.start()
            return  # the first connection subscribed every registered channel
        await self._pubsub.subscribe_live(channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; payloads not yet handled are dropped."""
        await self._pubsub.unsubscribe(channel)

    # -- ConnectionDirectory (the same as capabilities().directory) ---------------------

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        """Record that ``connection_id`` lives on ``instance_id`` (refreshed while open).

        When Redis is unreachable the entry is kept locally and written on reconnect.
        """
        await self._directory.register_connection(connection_id, instance_id)

    async def unregister_connection(self, connection_id: str) -> None:
        """Delete ``connection_id``'s entry (if Redis is unreachable, it expires)."""
        await self._directory.unregister_connection(connection_id)

    async def locate_connection(self, connection_id: str) -> str | None:
        """The instance id holding ``connection_id``, or None.

        Raises:
            TransportError: Redis cannot answer.
        """
        return await self._directory.locate_connection(connection_id)

    # -- internals: the background tasks ------------------------------------------------

    def _set_closed(self, closed: bool) -> None:
        self._pubsub.closed = self._directory.closed = closed

    def _ensure_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader_task is None:
            self._reader_task = loop.create_task(self._pubsub.read_forever(), name="wsevents-redis")
        if self._refresh_task is None:
            self._refresh_task = loop.create_task(
                self._directory.refresh_forever(), name="wsevents-redis-directory"
            )

    async def _stop_background(self) -> None:
        """Stop the reader and the refresh after a failed fail-fast start (registrations
        stay, so a later [`start`][] can try again)."""
        tasks = [t for t in (self._reader_task, self._refresh_task) if t is not None]
        self._reader_task = self._refresh_task = None
        await self._stop_tasks([*tasks, *(t for t in self._tasks if not t.done())])
        self._pubsub.forget_state()

    @staticmethod
    async def _stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
        """Cancel ``tasks`` and wait for them, cancelling again if one ignores it.

        A cancellation can be lost inside redis-py on Python 3.11 (see [`from_url`][]);
        the loops also stop on ``closed``, so a second request ends them.
        """
        pending = {t for t in tasks if not t.done()}
        for _ in range(20):
            if not pending:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.25)
        log.warning("%d Redis transport task(s) did not stop", len(pending))


class RedisClusterTransport(RedisTransport):
    """A [`RedisTransport`][wsevents.transports.RedisTransport] over a Redis Cluster:
    the same capabilities, state events and health, on sharded pub/sub.

    Channels go through ``SPUBLISH``/``SSUBSCRIBE``: a channel lives on the master that
    owns its slot, so the room channels spread over the masters, and the server-wide
    broadcast and inbox channels each live on one master that every instance subscribes
    to. The reader keeps one pub/sub connection per master; when one breaks (a master
    died and a replica took over), stops answering, or Redis unsubscribes a channel (its
    slot moved), the transport reports the outage, reads the slot map again and
    resubscribes every channel on its current master, then reports the recovery.
    [`health`][wsevents.transports.RedisTransport.health] sends a probe through each
    master.

    Every key of a room (presence, history, capacity) carries the room as hash tag, so a
    room's keys share a slot and each Lua script runs on one shard; directory entries
    spread over the slots.

    Args:
        client: the ``redis.asyncio.RedisCluster`` to use (it stays open at
            [`close`][wsevents.transports.RedisTransport.close]; a client made by
            [`from_url`][wsevents.transports.RedisTransport.from_url] is closed).
        prefix: put before every channel and key name; it must not contain ``{`` or ``}``
            (they would make it the hash tag of every key).
        **options: the other options of
            [`RedisTransport`][wsevents.transports.RedisTransport].

    Raises:
        ValueError: a prefix with ``{`` or ``}``, or a bad option.

    Example:
        ``RedisTransport.from_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")`` makes one.
    """

    _pubsub_class = ShardedPubSub

    def __init__(
        self, client: aioredis.RedisCluster, *, prefix: str = "wsevents:", **options: Any
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the prefix of a Redis Cluster transport cannot contain { or }")
        super().__init__(client, prefix=prefix, **options)  # type: ignore[arg-type]

    async def start(self) -> None:
        """Read the slot map, then start like
        [`RedisTransport.start`][wsevents.transports.RedisTransport.start].

        The slot map is read before any command runs: redis-py sends the commands that
        arrive while it reads it lazily to arbitrary masters, and on the redirections that
        follow it closes connections with commands in flight, which it then runs again.
        """
        if not self._pubsub.up:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _ = await self._cluster.initialize()
            except Exception as exc:  # start() reports it, or retries in the background
                log.debug("reading the slot map of %s failed: %r", self.url, exc)
        await super().start()

    @property
    def _cluster(self) -> aioredis.RedisCluster:
        client: Any = self.client
        return client  # type: ignore[no-any-return]
