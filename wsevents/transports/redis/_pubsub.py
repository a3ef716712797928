"""The pub/sub side: publishing, and one pub/sub connection read by one reader task that
reconnects with backoff, restores the subscriptions, PINGs, and reports state changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..._aio import TaskSet, call_hook
from ...exceptions import TransportError
from ..base import PayloadHandler, StateListener
from ._commands import RedisClient, cause, chunks, text
from ._subscription import Subscription

__all__ = ["PubSub"]

log = logging.getLogger("wsevents.transports.redis")

_SUBSCRIBE_BATCH = 512
_PUBLISH_STRIPES = 64


class _Stripe:
    """The publishes waiting on one stripe of channels, and the task sending them."""

    __slots__ = ("pending", "task")

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, asyncio.Future[None]]] = []
        self.task: asyncio.Task[None] | None = None


class PubSub:
    """Publishes through the client's pool and reads one dedicated pub/sub connection.

    ``read_forever`` is the reader: it connects, subscribes every registered channel,
    declares the connection up once Redis confirmed them all, PINGs it, and on any failure
    reconnects with exponential backoff and full jitter. Its view of Redis (``up``,
    ``fail_at_once``, ``last_error``) is the one the whole transport goes by. Whoever owns
    it runs the reader and sets ``closed``.
    """

    _server = "Redis"
    """What log messages call the server."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        url: str,
        ping_interval: float,
        ping_timeout: float,
        connect_timeout: float,
        command_timeout: float,
        reconnect_delay: float,
        reconnect_max_delay: float,
        tasks: TaskSet,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.url = url
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.on_up: Callable[[], None] | None = None
        """Called each time the connection comes up (the first time included)."""
        self.published = 0
        self.publish_failures = 0
        self.reconnects = 0
        self.closed = False
        self.up = False
        self.up_event = asyncio.Event()
        self.fail_at_once = False  # down and a publish failed: later commands fail at once
        self.last_error: BaseException | None = None
        self.quiet_start = False  # a fail-fast start() reports the failure itself
        self._tasks = tasks
        # Publishes on one channel must reach Redis in call order, although the pool would
        # send concurrent ones on several sockets: each stripe of channels has one sender
        # at a time, which takes everything queued meanwhile in one pipeline. A burst costs
        # one round trip per batch, not one per publish queued behind the others.
        self._stripes = [_Stripe() for _ in range(_PUBLISH_STRIPES)]
        self._subs: dict[str, Subscription] = {}
        self._confirm: dict[str, deque[asyncio.Future[bool]]] = {}
        self._pongs: deque[asyncio.Future[bool]] = deque()
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._probe_channel = f"{prefix}probe:{uuid.uuid4().hex}"
        self._conn: Any = None  # the live pub/sub connection, None while down
        self._state: bool | None = None  # last state reported to the listeners
        self._listeners: list[StateListener] = []
        self._watch_task: asyncio.Task[None] | None = None

    # -- state ----------------------------------------------------------------------------

    @property
    def unavailable(self) -> bool:
        """Down, and a command already failed: later commands fail at once."""
        return self.fail_at_once and not self.up

    def last_cause(self) -> str:
        return "none yet" if self.last_error is None else cause(self.last_error)

    @property
    def channels(self) -> frozenset[str]:
        n = len(self.prefix)
        return frozenset(channel[n:] for channel in self._subs)

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(False)`` on loss and ``listener(True)`` on recovery."""
        self._listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def health(self, timeout: float | None) -> bool:
        if not self.up:
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

    def forget_state(self) -> None:
        """Down, with nothing reported yet (a later start reports from scratch)."""
        self._set_down_quietly()
        self._state = None

    def shut(self) -> None:
        """Break the connection and drop every subscription (the transport closes)."""
        if self._conn is not None:
            self._abort(self._conn)
        for sub in self._subs.values():
            sub.cancel()
        self._subs.clear()

    def renew_primitives(self) -> None:
        """Fresh events and locks: a restarted transport may run on another event loop."""
        self.up_event = asyncio.Event()
        self._stripes = [_Stripe() for _ in range(_PUBLISH_STRIPES)]

    # -- publish and subscriptions ----------------------------------------------------------

    async def publish(self, channel: str, payload: str) -> None:
        if self.closed:
            self.publish_failures += 1
            raise TransportError("the Redis transport is closed")
        if self.unavailable:
            self.publish_failures += 1
            raise TransportError(
                f"Redis at {self.url} is unavailable, publish skipped "
                f"(last error: {self.last_cause()})"
            )
        full = self.prefix + channel
        stripe = self._stripes[hash(full) % _PUBLISH_STRIPES]
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stripe.pending.append((full, payload, sent))
        if stripe.task is None:
            stripe.task = self._tasks.spawn(self._send_stripe(stripe))
        try:
            await sent
        except Exception as exc:
            self.publish_failures += 1
            if not self.up:
                self.fail_at_once = True
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {self.command_timeout:g} s"
            else:
                reason = cause(exc)
                self.last_error = exc
            raise TransportError(f"Redis at {self.url}: {reason}") from exc
        self.published += 1

    async def _send_stripe(self, stripe: _Stripe) -> None:
        """Send a stripe's queued publishes, a batch per round trip, until none is left.

        Each batch has ``command_timeout`` to be answered, so a publish waits at most for
        the batch in flight and its own.
        """
        batch: list[tuple[str, str, asyncio.Future[None]]] = []
        try:
            while stripe.pending:
                batch, stripe.pending = stripe.pending, []
                failure: BaseException | None = None
                try:
                    async with asyncio.timeout(self.command_timeout):
                        if len(batch) == 1:
                            await self._publish_one(batch[0][0], batch[0][1])
                        else:
                            pipe = self.client.pipeline(transaction=False)
                            for full, payload, _sent in batch:
                                self._queue_publish(pipe, full, payload)
                            await pipe.execute()
                except Exception as exc:
                    failure = exc
                for _, _, sent in batch:
                    if sent.done():  # its publisher gave up waiting
                        continue
                    if failure is None:
                        sent.set_result(None)
                    elif isinstance(failure, TimeoutError):
                        sent.set_exception(TimeoutError())
                    else:
                        sent.set_exception(failure)
                batch = []
        finally:
            stripe.task = None
            # Cancelled (the transport closes): nobody is left waiting for nothing.
            for _, _, sent in (*batch, *stripe.pending):
                if not sent.done():
                    sent.set_exception(TransportError("the Redis transport is closed"))
            stripe.pending = []

    async def _publish_one(self, channel: str, payload: str) -> None:
        await self.client.publish(channel, payload)

    @staticmethod
    def _queue_publish(pipe: Any, channel: str, payload: str) -> None:
        _ = pipe.publish(channel, payload)  # queued: the pipeline returns it

    def register(self, channel: str, handler: PayloadHandler) -> bool:
        """Record ``handler`` for ``channel``; False when it only replaced a handler."""
        full = self.prefix + channel
        sub = self._subs.get(full)
        if sub is not None:
            sub.replace(handler)
            return False
        self._subs[full] = Subscription(full, handler, self._tasks)
        return True

    async def subscribe_live(self, channel: str) -> None:
        """SUBSCRIBE a registered ``channel`` on the live connection and await Redis's
        confirmation (nothing to do while down: the next connection subscribes it)."""
        full = self.prefix + channel
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
                "subscribing to %s at %s failed (%s); reconnecting", full, self.url, cause(exc)
            )
            self._abort(conn)

    async def unsubscribe(self, channel: str) -> None:
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
                cause(exc),
            )
            self._abort(conn)

    # -- the reader -------------------------------------------------------------------------

    async def read_forever(self) -> None:
        attempt = 0
        while not self.closed:
            pool: Any = getattr(self.client, "connection_pool")  # noqa: B009 (not a RedisCluster)
            conn: Any = pool.make_connection()
            # One attempt per connect: the backoff below is ours, with state reporting.
            conn.retry = Retry(NoBackoff(), 0)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await conn.connect()
                await self._serve(conn)
            except Exception as exc:
                if self.up:
                    attempt = 0  # it was working: retry at once, then back off
                self._went_down(exc)
            finally:
                await self._teardown(conn)
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        # Full jitter: instances that lost Redis together do not come back in lockstep.
        ceiling = min(self.reconnect_max_delay, self.reconnect_delay * 2 ** min(attempt, 30))
        return random.uniform(0.0, ceiling)

    async def _serve(self, conn: Any) -> None:
        # Snapshot and publish the connection with no await in between: a subscribe()
        # that runs after this point sends its own SUBSCRIBE on the new connection.
        channels = [self._probe_channel, *self._subs]
        self._conn = conn
        waiters = [self._expect_confirmation(channel) for channel in channels]
        for chunk in chunks(channels, _SUBSCRIBE_BATCH):
            await conn.send_command("SUBSCRIBE", *chunk, check_health=False)
        self._watch_task = self._tasks.spawn(self._watch(conn, waiters))
        while not self.closed:
            # math.inf: block without the connection's socket_timeout; the watcher's
            # PINGs notice a dead connection instead.
            response = await conn.read_response(timeout=math.inf, push_request=True)
            self._on_response(response)

    async def _watch(self, conn: Any, waiters: list[asyncio.Future[bool]]) -> None:
        """Declare the connection up once every subscription is confirmed, then PING it
        (every connection [`_send_pings`][] names) every ``ping_interval``."""
        try:
            async with asyncio.timeout(self.ping_timeout):
                confirmed = await asyncio.gather(*waiters)
        except TimeoutError:
            log.warning(
                "%s at %s did not confirm the subscriptions within %g s; reconnecting",
                self._server,
                self.url,
                self.ping_timeout,
            )
            self._abort(conn)
            return
        if not all(confirmed) or self._conn is not conn:
            return
        self._went_up()
        while True:
            await asyncio.sleep(self.ping_interval)
            if self._conn is not conn or self.closed:
                return
            try:
                pongs = await self._send_pings(conn)
                async with asyncio.timeout(self.ping_timeout):
                    alive = all(await asyncio.gather(*pongs))
            except Exception as exc:
                if self._conn is conn:
                    log.warning(
                        "%s pub/sub connection to %s unresponsive (%s); reconnecting",
                        self._server,
                        self.url,
                        cause(exc) if not isinstance(exc, TimeoutError) else "no PONG in time",
                    )
                    self._abort(conn)
                return
            if not alive:
                return

    async def _send_pings(self, conn: Any) -> list[asyncio.Future[bool]]:
        """PING the pub/sub connection ``conn``; the futures its PONGs resolve."""
        pong: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        await conn.send_command("PING", check_health=False)
        return [pong]

    def _expect_confirmation(self, channel: str) -> asyncio.Future[bool]:
        # Confirmations of one channel arrive in the order the SUBSCRIBEs were sent.
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(channel, deque()).append(waiter)
        return waiter

    def _on_response(self, response: Any) -> None:
        if isinstance(response, list | tuple) and response:
            kind = text(response[0]).lower()
            if kind == "message" and len(response) >= 3:
                self._on_message(text(response[1]), response[2])
            elif kind == "subscribe" and len(response) >= 2:
                self._on_subscribed(text(response[1]))
            elif kind == "pong":  # RESP2: ["pong", ""]
                self._on_pong()
            # unsubscribe confirmations and other pushes need nothing
        elif isinstance(response, bytes | str) and text(response).lower() == "pong":
            self._on_pong()  # RESP3 answers PING with a plain PONG

    def _on_subscribed(self, channel: str) -> None:
        queue = self._confirm.get(channel)
        if queue:
            waiter = queue.popleft()
            if not queue:
                del self._confirm[channel]
            if not waiter.done():
                waiter.set_result(True)

    def _on_pong(self) -> None:
        if self._pongs:
            pong = self._pongs.popleft()
            if not pong.done():
                pong.set_result(True)

    def _on_message(self, channel: str, data: Any) -> None:
        if channel == self._probe_channel:
            arrived = self._probes.pop(text(data), None)
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

    # -- state changes ----------------------------------------------------------------------

    def _went_up(self) -> None:
        self.up = True
        self.up_event.set()
        self.fail_at_once = False
        self.last_error = None
        if self.on_up is not None:
            self.on_up()
        if self._state is False:
            self.reconnects += 1
            log.info("Redis pub/sub connection to %s restored", self.url)
            self._state = True
            self._notify(True)
        else:
            self._state = True

    def _went_down(self, exc: BaseException) -> None:
        was_up = self.up
        self.last_error = exc
        self._set_down_quietly()
        if self._state is not False:
            if was_up:
                log.warning(
                    "Redis pub/sub connection to %s lost (%s); reconnecting", self.url, cause(exc)
                )
            elif self.quiet_start:  # start() raises with the cause if it does not come up
                log.debug("Redis at %s is unreachable (%s); retrying", self.url, cause(exc))
            else:
                log.warning("Redis at %s is unreachable (%s); retrying", self.url, cause(exc))
            self._state = False
            self._notify(False)
        else:
            log.debug("Redis at %s still unreachable (%s)", self.url, cause(exc))

    def _set_down_quietly(self) -> None:
        self.up = False
        self.up_event.clear()

    def _notify(self, up: bool) -> None:
        for listener in list(self._listeners):
            call_hook(
                listener,
                up,
                tasks=self._tasks,
                logger=log,
                message="transport state listener failed",
            )
