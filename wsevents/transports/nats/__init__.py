"""Broadcasts between wsevents instances over NATS, with JetStream for the stores.

Import it from ``wsevents.transports.nats`` (``import wsevents`` never loads nats-py; install
it with ``pip install 'wsevents[nats]'``)::

    from wsevents.transports.nats import NatsTransport

    ws = create_ws_app(transport=NatsTransport.from_url("nats://127.0.0.1:4222"))

Layout (``P`` is the prefix, ``"wsevents:"`` by default, as one subject token
``wsevents_3A``, see ``_names``; ``N`` is the prefix with ``:`` and other characters a
JetStream name may not hold replaced by ``_``):

* core NATS subjects ``P.c.<channel>`` for rooms, server-wide broadcasts and each
  instance's inbox, the channel name encoded as one token (room names may hold ``/``,
  ``.``, ``*``, ``>``, spaces, any unicode);
* ``P.p.<random>``: this transport's private health-check subject;
* key-value bucket ``Ndirectory``: connection id -> instance, a TTL'd entry refreshed by
  the live instance;
* key-value buckets ``Npresence`` and ``Ncapacity``: one JSON document per room (and per
  instance heartbeat), updated by compare-and-set on the key's revision;
* key-value bucket ``Nsessions``: session snapshots, kept replies of idempotent calls and
  counters, one JSON document per key with its expiry;
* key-value bucket ``Nratelimits``: the token buckets of cluster-wide rate limits;
* stream ``Nhistory`` on subjects ``P.h.<room>``: the history rooms' pushes, the offset
  and epoch of each in its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..._aio import TaskSet, call_hook
from ...exceptions import TransportError
from ..base import BaseTransport, Capabilities, PayloadHandler, StateListener
from ..redis._subscription import Subscription
from ._capacity import NatsCapacity
from ._directory import NatsDirectory
from ._history import NatsHistory
from ._jet import Jet
from ._names import decode_token, encode_token, stream_safe
from ._presence import NatsPresence
from ._ratelimit import NatsRateLimits
from ._sessions import NatsSessions

__all__ = ["NatsTransport", "decode_token", "encode_token", "redact_url"]

log = logging.getLogger("wsevents.transports.nats")


def redact_url(url: str) -> str:
    """``url`` (one or several, comma separated) with passwords and tokens replaced by ``***``."""
    out = []
    for one in url.split(","):
        parts = urlsplit(one.strip())
        if parts.username is not None or parts.password is not None:
            host = parts.hostname or ""
            if parts.port is not None:
                host = f"{host}:{parts.port}"
            user = "***" if parts.password is None else f"{parts.username}:***"
            parts = parts._replace(netloc=f"{user}@{host}")
        out.append(urlunsplit(parts))
    return ",".join(out)


class NatsTransport(BaseTransport):
    """A [`BroadcastTransport`][wsevents.BroadcastTransport] over core NATS, with a
    [`ConnectionDirectory`][wsevents.ConnectionDirectory], backend state events, a
    [`PresenceStore`][wsevents.PresenceStore], a [`HistoryStore`][wsevents.HistoryStore], a
    [`CapacityStore`][wsevents.CapacityStore], a [`SessionStore`][wsevents.SessionStore] and a
    [`RateLimitStore`][wsevents.RateLimitStore] on JetStream.

    One NATS connection per transport. nats-py reconnects by itself and restores the
    subscriptions; the transport reports the outage to the state listeners and, until the
    first connection is made, keeps trying in the background.

    Args:
        servers: the NATS URLs (``nats://host:port``, ``tls://``, with credentials), a
            list or one comma-separated string.
        prefix: put before every subject, bucket and stream name, to share a NATS between
            apps.
        connect_timeout: seconds a connection attempt may take; [`start`][] waits this long
            for the first connection.
        command_timeout: seconds a publish, a flush or a JetStream request may take; also the
            default of [`health`][].
        reconnect_delay: seconds between reconnection attempts.
        ping_interval: seconds between the client's PINGs, so a silently dead connection is
            noticed (after two unanswered ones).
        directory_ttl: seconds a directory entry lives unless its instance refreshes it
            (every third of it); the entries of a crashed instance vanish after that.
        history_max_age: seconds the history stream keeps a push at most (the apps' own
            ``ttl`` is applied on reading, below it).
        history_max_size: pushes the stream keeps per room at most (the apps' own ``size``
            is applied on reading, below it).
        sessions_sweep_interval: seconds between two deletions of the expired session values
            and idempotent replies (by one instance at a time).
        fail_fast: make [`start`][] raise [`TransportError`][wsevents.TransportError] when
            the first connection is not made within ``connect_timeout``.
        nats_options: more keyword arguments for ``nats.connect`` (``user_credentials``,
            ``tls``, ``name``...).

    Failure semantics (as with [`RedisTransport`][wsevents.transports.RedisTransport]):
        * ``publish`` raises [`TransportError`][wsevents.TransportError] while the
          connection is down (it never buffers a push to send it late).
        * ``subscribe`` never raises because NATS is unreachable: it keeps the registration
          and the subscription is made when the connection is (back) up.
        * The stores raise [`TransportError`][wsevents.TransportError] when JetStream does
          not answer within ``command_timeout``.

    After [`close`][], [`start`][] may run it again (on any event loop).
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        prefix: str = "wsevents:",
        connect_timeout: float = 5.0,
        command_timeout: float = 2.0,
        reconnect_delay: float = 0.25,
        ping_interval: float = 10.0,
        directory_ttl: float = 30.0,
        history_max_age: float = 86400.0,
        history_max_size: int = 10_000,
        sessions_sweep_interval: float = 60.0,
        fail_fast: bool = False,
        **nats_options: Any,
    ) -> None:
        if min(connect_timeout, command_timeout, reconnect_delay, ping_interval) <= 0:
            raise ValueError("intervals and timeouts must be > 0")
        if directory_ttl < 0.01:
            raise ValueError("directory_ttl must be at least 0.01 s")
        if sessions_sweep_interval <= 0:
            raise ValueError("sessions_sweep_interval must be > 0")
        if history_max_age <= 0 or history_max_size < 1:
            raise ValueError("history_max_age and history_max_size must be > 0")
        if isinstance(servers, str):
            servers = [s.strip() for s in servers.split(",") if s.strip()]
        if not servers:
            raise ValueError("no NATS server URL")
        for server in servers:
            scheme = urlsplit(server).scheme
            if scheme not in ("nats", "tls", "ws", "wss"):
                raise ValueError(f"not a NATS URL (nats://host:port): {redact_url(server)}")
        self.servers = list(servers)
        self.prefix = prefix
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = float(command_timeout)
        self.reconnect_delay = float(reconnect_delay)
        self.ping_interval = float(ping_interval)
        self.fail_fast = fail_fast
        self.nats_options = nats_options
        self.url = redact_url(",".join(self.servers))
        self.published = 0
        self.publish_failures = 0
        self.reconnects = 0
        self.closed = False
        self._subject_prefix = encode_token(prefix)
        self._nc: Client | None = None
        self._js: Any = None
        self._up = False
        self._up_event = asyncio.Event()
        self._state: bool | None = None
        self._listeners: list[StateListener] = []
        self._subs: dict[str, tuple[Subscription, Any]] = {}  # channel: (handler, nats sub)
        self._inflight: dict[str, asyncio.Future[None]] = {}  # subscriptions being made
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._probe_subject = f"{self._subject_prefix}.p.{uuid.uuid4().hex}"
        self._probe_sub: Any = None
        self._tasks = TaskSet()
        self._connect_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None
        self._jet = Jet(
            context=self._context,
            name_prefix=stream_safe(prefix),
            subject_prefix=self._subject_prefix,
            command_timeout=self.command_timeout,
            url=lambda: self.url,
        )
        self._directory = NatsDirectory(self._jet, ttl=float(directory_ttl), owner=self)
        self._presence = NatsPresence(self._jet)
        self._capacity = NatsCapacity(self._jet)
        self._rate_limits = NatsRateLimits(self._jet)
        self._sessions = NatsSessions(self._jet, sweep_interval=float(sessions_sweep_interval))
        self._history = NatsHistory(
            self._jet, max_age=float(history_max_age), max_size=int(history_max_size)
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> NatsTransport:
        """A transport for ``url`` (``nats://host:port``, several comma separated); the
        ``options`` are those of the constructor. No I/O happens here."""
        return cls(url, **options)

    # -- state ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the NATS connection is up."""
        return self._up

    @property
    def channels(self) -> frozenset[str]:
        """The channels registered, whether or not NATS is reachable."""
        return frozenset(self._subs)

    def subject(self, channel: str) -> str:
        """The NATS subject of ``channel``."""
        return f"{self._subject_prefix}.c.{encode_token(channel)}"

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(False)`` when the connection is lost (or cannot be made at start)
        and ``listener(True)`` when it is back with the subscriptions restored.

        Pushes published by other instances while it was down are lost: the ``True`` call is
        the moment to resynchronise clients. An async listener runs in a task of its own.
        """
        self._listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def health(self, timeout: float | None = None) -> bool:
        """True when a probe published now comes back through the subscription (the whole
        path: publish, server, subscription, delivery)."""
        nc = self._nc
        if not self._up or nc is None:
            return False
        nonce = uuid.uuid4().hex
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[nonce] = arrived
        try:
            async with asyncio.timeout(self.command_timeout if timeout is None else timeout):
                await nc.publish(self._probe_subject, nonce.encode())
                await arrived
        except Exception as exc:
            log.debug("health probe failed: %r", exc)
            return False
        finally:
            self._probes.pop(nonce, None)
        return True

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (in the background when NATS is not reachable yet, unless ``fail_fast``),
        waiting up to ``connect_timeout`` for the first connection.

        Raises:
            TransportError: with ``fail_fast``, NATS did not answer in time.
        """
        self.closed = self._directory.closed = False
        if self._up:
            return
        if self._connect_task is None:
            self._connect_task = asyncio.get_running_loop().create_task(
                self._connect_forever(), name="wsevents-nats"
            )
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._up_event.wait()
        except TimeoutError:
            reason = type(self.last_error).__name__ if self.last_error else "no answer"
            if self.fail_fast:
                task, self._connect_task = self._connect_task, None
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                self._state = None
                raise TransportError(
                    f"NATS at {self.url} did not answer within {self.connect_timeout:g} s: {reason}"
                ) from self.last_error
            log.warning(
                "NATS at %s did not answer within %g s (%s); starting anyway, retrying in "
                "the background",
                self.url,
                self.connect_timeout,
                reason,
            )

    async def close(self) -> None:
        """Delete this instance's directory entries, drop every subscription and close the
        connection."""
        self._directory.closed = True
        await self._directory.stop()
        self.closed = True
        task, self._connect_task = self._connect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._sweep_task = None  # cancelled with the other tasks below
        for sub, _ in self._subs.values():
            sub.cancel()
        self._subs.clear()
        nc, self._nc = self._nc, None
        self._js = None
        self._probe_sub = None
        self._up = False
        self._state = None
        self._jet.forget()
        self._history.forget()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        await self._tasks.cancel_all(timeout=1.0)
        self._up_event = asyncio.Event()

    def capabilities(self) -> Capabilities:
        """The connection directory, the backend state events, the presence store, the
        history store, the capacity store, the session store and the rate-limit store, each
        its own object."""
        return Capabilities(
            directory=self._directory,
            state_events=self,
            presence=self._presence,
            history=self._history,
            capacity=self._capacity,
            sessions=self._sessions,
            rate_limits=self._rate_limits,
        )

    # -- BroadcastTransport -------------------------------------------------------------------

    async def publish(self, channel: str, payload: str) -> None:
        """Publish ``payload`` on ``channel``'s subject.

        Raises:
            TransportError: the connection is down (nothing is buffered for later).
        """
        nc = self._nc
        if self.closed or nc is None or not self._up or not nc.is_connected:
            self.publish_failures += 1
            what = "closed" if self.closed else "unavailable"
            raise TransportError(f"NATS at {self.url} is {what}, publish skipped")
        try:
            await nc.publish(self.subject(channel), payload.encode("utf-8"))
        except Exception as exc:
            self.publish_failures += 1
            raise TransportError(f"NATS at {self.url}: {type(exc).__name__}") from exc
        self.published += 1

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        """Deliver every later payload on ``channel`` to ``handler`` (sync or async).

        Returns once the server has the subscription, so a publish made afterwards is
        received. When NATS is unreachable it returns at once, keeping the registration.
        Subscribing again replaces the handler.
        """
        known = self._subs.get(channel)
        if known is not None:
            known[0].replace(handler)
            return
        self._subs[channel] = (Subscription(channel, handler, self._tasks), None)
        if self._connect_task is None and not self.closed:
            await self.start()
            return
        await self._subscribe_live(channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; payloads not yet handled are dropped."""
        known = self._subs.pop(channel, None)
        if known is None:
            return
        sub, nats_sub = known
        sub.cancel()
        if nats_sub is not None:
            with contextlib.suppress(Exception):
                await nats_sub.unsubscribe()

    # -- ConnectionDirectory (the same as capabilities().directory) ---------------------------

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        """Record that ``connection_id`` lives on ``instance_id`` (refreshed while open)."""
        await self._directory.register_connection(connection_id, instance_id)

    async def unregister_connection(self, connection_id: str) -> None:
        """Delete ``connection_id``'s entry."""
        await self._directory.unregister_connection(connection_id)

    async def locate_connection(self, connection_id: str) -> str | None:
        """The instance id holding ``connection_id``, or None.

        Raises:
            TransportError: NATS cannot answer.
        """
        return await self._directory.locate_connection(connection_id)

    # -- internals ------------------------------------------------------------------------------

    def _context(self) -> Any:
        if self._js is None or not self._up:
            raise TransportError(f"NATS at {self.url} is unavailable")
        return self._js

    async def _subscribe_live(self, channel: str, *, flush: bool = True) -> None:
        """Make ``channel``'s NATS subscription (once, however many callers ask at once) and,
        with ``flush``, return once the server has it."""
        waited = False
        while (inflight := self._inflight.get(channel)) is not None:
            # Another caller is making it (maybe for a handler unsubscribed meanwhile).
            waited = True
            with contextlib.suppress(Exception):
                await asyncio.shield(inflight)
        nc = self._nc
        known = self._subs.get(channel)
        if nc is None or not self._up or known is None:
            return
        if known[1] is not None:
            if waited and flush:  # made by a caller that did not wait for the server
                with contextlib.suppress(Exception):
                    await self._flush(nc)
            return
        sub = known[0]

        async def deliver(msg: Msg) -> None:
            try:
                payload = msg.data.decode("utf-8")
            except UnicodeDecodeError:
                log.warning("dropped a payload that is not UTF-8 on %s", channel)
                return
            current = self._subs.get(channel)
            if current is not None and current[0] is sub:  # not unsubscribed meanwhile
                sub.deliver(payload)

        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[channel] = done
        try:
            nats_sub = await nc.subscribe(self.subject(channel), cb=deliver)
            if self._subs.get(channel, (None,))[0] is not sub:  # unsubscribed meanwhile
                await nats_sub.unsubscribe()
                return
            self._subs[channel] = (sub, nats_sub)
            if flush:
                await self._flush(nc)
        except Exception as exc:
            log.warning("subscribing to %s at %s failed: %r", channel, self.url, exc)
        finally:
            del self._inflight[channel]
            done.set_result(None)

    async def _flush(self, nc: Any) -> None:
        """Return once the server has everything sent on ``nc`` so far (a SUB just made).

        nats-py's ``flush()`` writes its PING straight to the socket, ahead of commands
        still queued for its flusher task: its PONG can then come back before the server has
        read a SUB queued just before, and a publish from another connection right after
        ``subscribe()`` returned would be missed. The queue is handed to the socket first.
        """
        timeout = max(1, round(self.command_timeout))
        hand_over = getattr(nc, "_flush_pending", None)  # nats-py's own queue flush
        if hand_over is not None:
            async with asyncio.timeout(timeout):
                await hand_over(force_flush=True)  # returns once the flusher wrote the queue
        await nc.flush(timeout=timeout)

    async def _connect_forever(self) -> None:
        """Make the first connection (nats-py reconnects by itself afterwards)."""
        while not self.closed:
            try:
                nc = await nats.connect(
                    servers=self.servers,
                    connect_timeout=max(1, round(self.connect_timeout)),
                    reconnect_time_wait=self.reconnect_delay,
                    max_reconnect_attempts=-1,
                    ping_interval=max(1, round(self.ping_interval)),
                    allow_reconnect=True,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                    **self.nats_options,
                )
            except Exception as exc:
                self.last_error = exc
                self._went_down(exc)
                await asyncio.sleep(self.reconnect_delay)
                continue
            self._nc = nc
            self._js = nc.jetstream(timeout=self.command_timeout)
            await self._came_up(first=True)
            return

    async def _came_up(self, *, first: bool) -> None:
        nc = self._nc
        if nc is None:
            return
        self._up = True
        if self._probe_sub is None:
            try:
                self._probe_sub = await nc.subscribe(self._probe_subject, cb=self._on_probe)
            except Exception as exc:  # lost again at once: the reconnection comes back here
                log.debug("subscribing the health probe failed: %r", exc)
        if first and self._sweep_task is None:
            self._sweep_task = self._tasks.spawn(self._sessions.sweep_forever())
        # nats-py sent its subscriptions again; make those registered while down, and make
        # sure the server has them all.
        for channel, (_, nats_sub) in list(self._subs.items()):
            if nats_sub is None:
                await self._subscribe_live(channel, flush=False)
        with contextlib.suppress(Exception):
            await self._flush(nc)
        self._up_event.set()
        self.last_error = None
        self._directory.wake()
        if self._state is False:
            self.reconnects += 1
            log.info("NATS connection to %s restored", self.url)
            self._state = True
            self._notify(True)
        else:
            self._state = True

    def _went_down(self, exc: BaseException | None) -> None:
        self._up = False
        self._up_event.clear()
        self._jet.forget()
        self._history.forget()
        if self._state is not False:
            if self._state is True:
                log.warning("NATS connection to %s lost (%r); reconnecting", self.url, exc)
            elif not self.fail_fast:
                log.warning("NATS at %s is unreachable (%r); retrying", self.url, exc)
            self._state = False
            self._notify(False)

    async def _on_disconnected(self) -> None:
        if self.closed:
            return
        nc = self._nc
        self._went_down(nc.last_error if nc is not None else None)

    async def _on_reconnected(self) -> None:
        if not self.closed:
            await self._came_up(first=False)

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = exc
        log.debug("NATS client error at %s: %r", self.url, exc)

    async def _on_probe(self, msg: Msg) -> None:
        arrived = self._probes.pop(msg.data.decode("utf-8", "replace"), None)
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    def _notify(self, up: bool) -> None:
        for listener in list(self._listeners):
            call_hook(
                listener,
                up,
                tasks=self._tasks,
                logger=log,
                message="transport state listener failed",
            )
