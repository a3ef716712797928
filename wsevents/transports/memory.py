"""An in-process broadcast transport: several WsApp instances in one process share a bus."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from .base import (
    BaseTransport,
    Capabilities,
    HistoryEntry,
    PayloadHandler,
    PresenceCount,
    PresenceMember,
    PresencePage,
    StreamPosition,
)

__all__ = [
    "MemoryBus",
    "MemoryCapacityStore",
    "MemoryHistoryStore",
    "MemoryPresenceStore",
    "MemoryRateLimitStore",
    "MemorySessionStore",
    "MemoryTransport",
]

log = logging.getLogger("wsevents.transports.memory")


@dataclass(eq=False, slots=True)
class _Subscription:
    handler: PayloadHandler
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _PresenceRoom:
    connections: dict[str, tuple[str, str]] = field(default_factory=dict)  # cid: user, instance
    users: dict[str, int] = field(default_factory=dict)  # user: connections
    data: dict[str, str | None] = field(default_factory=dict)  # user: JSON text


class MemoryPresenceStore:
    """A [`PresenceStore`][wsevents.transports.base.PresenceStore] in this process.

    A single instance uses one of its own; the [`MemoryTransport`][] instances of one
    [`MemoryBus`][] share the bus's. Every method runs without awaiting, so each is atomic.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, _PresenceRoom] = {}
        self._alive: dict[str, float] = {}  # instance: monotonic expiry

    async def add(
        self, room: str, connection_id: str, user: str, data: str | None, instance_id: str
    ) -> bool:
        """Add a connection; True when it is its user's first in ``room``."""
        entry = self._rooms.get(room)
        if entry is None:
            entry = self._rooms[room] = _PresenceRoom()
        if connection_id in entry.connections:
            return False
        entry.connections[connection_id] = (user, instance_id)
        count = entry.users.get(user, 0) + 1
        entry.users[user] = count
        if count == 1:
            entry.data[user] = data
        return count == 1

    async def remove(self, room: str, connection_id: str, instance_id: str) -> str | None:
        """Remove a connection; its user when it was their last in ``room``."""
        return self._remove(room, connection_id)

    def _remove(self, room: str, connection_id: str) -> str | None:
        entry = self._rooms.get(room)
        if entry is None:
            return None
        found = entry.connections.pop(connection_id, None)
        if found is None:
            return None
        user = found[0]
        count = entry.users[user] - 1
        if count:
            entry.users[user] = count
            return None
        del entry.users[user]
        entry.data.pop(user, None)
        if not entry.connections:
            del self._rooms[room]
        return user

    async def update(self, room: str, user: str, data: str | None) -> bool:
        """Replace ``user``'s data in ``room``; False when the user is not there."""
        entry = self._rooms.get(room)
        if entry is None or user not in entry.users:
            return False
        entry.data[user] = data
        return True

    async def count(self, room: str) -> PresenceCount:
        """Connections and distinct users in ``room``."""
        entry = self._rooms.get(room)
        if entry is None:
            return PresenceCount(0, 0)
        return PresenceCount(len(entry.connections), len(entry.users))

    async def members(self, room: str, offset: int, limit: int) -> PresencePage:
        """Users of ``room`` ordered by user id, ``limit`` from ``offset``."""
        entry = self._rooms.get(room)
        if entry is None:
            return PresencePage(0, ())
        users = sorted(entry.users)[offset : offset + limit] if limit > 0 else []
        return PresencePage(
            len(entry.users),
            tuple(PresenceMember(u, entry.data.get(u), entry.users[u]) for u in users),
        )

    async def heartbeat(self, instance_id: str, ttl: float) -> bool:
        """Mark ``instance_id`` alive for ``ttl`` seconds; True when it was unknown."""
        new = instance_id not in self._alive
        self._alive[instance_id] = time.monotonic() + ttl
        return new

    async def expired_instances(self) -> list[str]:
        """Instances whose heartbeat expired."""
        now = time.monotonic()
        return [i for i, t in self._alive.items() if t <= now]

    async def reap(self, instance_id: str, reaper_id: str) -> list[tuple[str, str]] | None:
        """Remove every entry of ``instance_id`` and forget it; the users who left (it
        never awaits, so a second reaper finds nothing left)."""
        self._alive.pop(instance_id, None)
        left: list[tuple[str, str]] = []
        for room, entry in list(self._rooms.items()):
            for cid, (_, instance) in list(entry.connections.items()):
                if instance == instance_id:
                    user = self._remove(room, cid)
                    if user is not None:
                        left.append((room, user))
        return left


# -- history ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    entries: deque[tuple[int, float, str]] = field(default_factory=deque)  # offset, time, payload


class MemoryHistoryStore:
    """A [`HistoryStore`][wsevents.transports.base.HistoryStore] in this process: a ring
    buffer per room. It never awaits, so offsets are atomic. [`clear`][] loses every
    stream (the next use starts a new epoch)."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}

    def _stream(self, room: str) -> _Stream:
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _Stream(uuid.uuid4().hex)
        return stream

    @staticmethod
    def _trim(stream: _Stream, size: int | None, ttl: float) -> None:
        entries = stream.entries
        if size is not None:
            while len(entries) > size:
                entries.popleft()
        cutoff = time.monotonic() - ttl
        while entries and entries[0][1] < cutoff:
            entries.popleft()

    async def append(self, room: str, payload: str, size: int, ttl: float) -> StreamPosition:
        """Keep ``payload`` as the room's next push."""
        stream = self._stream(room)
        stream.offset += 1
        stream.entries.append((stream.offset, time.monotonic(), payload))
        self._trim(stream, size, ttl)
        return StreamPosition(stream.offset, stream.epoch)

    async def position(self, room: str) -> StreamPosition:
        """The room's current position."""
        stream = self._stream(room)
        return StreamPosition(stream.offset, stream.epoch)

    async def since(
        self, room: str, offset: int, epoch: str, ttl: float
    ) -> tuple[StreamPosition, list[HistoryEntry] | None]:
        """The kept pushes after ``offset`` (None when they cannot all be given)."""
        stream = self._stream(room)
        position = StreamPosition(stream.offset, stream.epoch)
        if epoch != stream.epoch or offset > stream.offset or offset < 0:
            return position, None
        self._trim(stream, None, ttl)
        entries = stream.entries
        first = entries[0][0] if entries else stream.offset + 1
        if offset + 1 < first:
            return position, None
        return position, [HistoryEntry(o, p) for o, _, p in entries if o > offset]

    def clear(self) -> None:
        """Lose every stream (as a flushed backend would)."""
        self._streams.clear()


# -- capacity -----------------------------------------------------------------------------


@dataclass(slots=True)
class _CapacityRoom:
    places: dict[str, str] = field(default_factory=dict)  # member: instance
    leases: dict[str, float] = field(default_factory=dict)  # instance: monotonic expiry


class MemoryCapacityStore:
    """A [`CapacityStore`][wsevents.transports.base.CapacityStore] in this process.

    A single instance uses one of its own; the [`MemoryTransport`][] instances of one
    [`MemoryBus`][] share the bus's. Every method runs without awaiting, so each is atomic.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, _CapacityRoom] = {}

    def _room(self, room: str) -> _CapacityRoom | None:
        """The room with the places of expired leases dropped (None when it is empty)."""
        entry = self._rooms.get(room)
        if entry is None:
            return None
        now = time.monotonic()
        dead = {i for i, expiry in entry.leases.items() if expiry <= now}
        if dead:
            for instance in dead:
                del entry.leases[instance]
            for member, instance in list(entry.places.items()):
                if instance in dead:
                    del entry.places[member]
        if not entry.places and not entry.leases:
            del self._rooms[room]
            return None
        return entry

    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        """Take a place for ``member`` unless ``limit`` places are taken."""
        entry = self._room(room)
        if entry is None:
            entry = self._rooms[room] = _CapacityRoom()
        if member not in entry.places:
            if len(entry.places) >= limit:
                if not entry.places and not entry.leases:
                    del self._rooms[room]
                return False
            entry.places[member] = instance_id
        entry.leases[instance_id] = time.monotonic() + lease
        return True

    async def release(self, room: str, member: str, instance_id: str) -> bool:
        """Free ``member``'s place; False when it held none (held by ``instance_id``)."""
        entry = self._room(room)
        if entry is None or entry.places.get(member) != instance_id:
            return False
        del entry.places[member]
        if not entry.places:
            del self._rooms[room]
        return True

    async def count(self, room: str) -> int:
        """Places taken in ``room``."""
        entry = self._room(room)
        return len(entry.places) if entry is not None else 0

    async def renew(self, room: str, instance_id: str, lease: float) -> bool:
        """Extend ``instance_id``'s lease in ``room``; False when it had no live lease."""
        entry = self._room(room)
        if entry is None:
            return False
        known = instance_id in entry.leases
        entry.leases[instance_id] = time.monotonic() + lease
        return known


# -- sessions -----------------------------------------------------------------------------


class MemorySessionStore:
    """A [`SessionStore`][wsevents.transports.base.SessionStore] in this process: a dict of
    values with expiry times. It never awaits, so every method is atomic; expired values are
    dropped when read and, every 1000 writes, all at once."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, float]] = {}  # key: value, monotonic expiry
        self._writes = 0

    def _live(self, key: str) -> str | None:
        found = self._values.get(key)
        if found is None:
            return None
        if found[1] <= time.monotonic():
            del self._values[key]
            return None
        return found[0]

    async def put(self, key: str, value: str, ttl: float | None, *, only_new: bool = False) -> bool:
        """Set ``key`` for ``ttl`` seconds; with ``only_new``, only when it holds nothing."""
        if only_new and self._live(key) is not None:
            return False
        self._values[key] = (value, time.monotonic() + ttl if ttl is not None else _NEVER)
        self._writes += 1
        if self._writes % 1000 == 0:
            now = time.monotonic()
            for k in [k for k, (_, at) in self._values.items() if at <= now]:
                del self._values[k]
        return True

    async def get(self, key: str) -> str | None:
        """The value of ``key``, or None."""
        return self._live(key)

    async def take(self, key: str) -> str | None:
        """Get and delete ``key``."""
        value = self._live(key)
        self._values.pop(key, None)
        return value

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        self._values.pop(key, None)

    async def incr(self, key: str) -> int:
        """Add 1 to the integer at ``key`` and return it.

        Raises:
            ValueError: ``key`` holds something else than an integer.
        """
        found = self._live(key)
        value = int(found) + 1 if found is not None else 1
        expiry = self._values[key][1] if found is not None else _NEVER
        self._values[key] = (str(value), expiry)
        return value


_NEVER = float("inf")


class MemoryRateLimitStore:
    """A [`RateLimitStore`][wsevents.RateLimitStore] in this process (the
    [`MemoryTransport`][] instances of one [`MemoryBus`][] share the bus's): token buckets
    on the monotonic clock; each take runs without awaiting, so it is atomic."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key: tokens, stamp

    async def take(self, key: str, capacity: float, refill: float) -> float:
        """Take a token from bucket ``key``; 0.0, or the seconds until one is free."""
        now = time.monotonic()
        if len(self._buckets) > 4096:
            self._sweep(now, capacity, refill)
        tokens, stamp = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - stamp) * refill)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / refill

    def _sweep(self, now: float, capacity: float, refill: float) -> None:
        # Buckets of other limits may refill at other rates: only drop those full by now
        # at this rate and an hour old (a slower limit's bucket is then full as well).
        stale = [
            key
            for key, (tokens, stamp) in self._buckets.items()
            if now - stamp > 3600.0 or tokens + (now - stamp) * refill >= capacity
        ]
        for key in stale:
            del self._buckets[key]

    def __len__(self) -> int:
        """Buckets held."""
        return len(self._buckets)


class MemoryBus:
    """The shared medium of [`MemoryTransport`][] instances (one per simulated cluster).

    It also keeps the cluster's connection directory, presence store, history store,
    capacity store, session store and rate-limit buckets.
    """

    def __init__(self) -> None:
        self.channels: dict[str, list[_Subscription]] = {}
        self.directory: dict[str, str] = {}
        self.presence = MemoryPresenceStore()
        self.history = MemoryHistoryStore()
        self.capacity = MemoryCapacityStore()
        self.sessions = MemorySessionStore()
        self.rate_limits = MemoryRateLimitStore()
        self.published = 0

    def subscriber_count(self, channel: str) -> int:
        """How many transports are subscribed to ``channel``."""
        return len(self.channels.get(channel, ()))


class MemoryTransport(BaseTransport):
    """A [`BroadcastTransport`][wsevents.BroadcastTransport] over a [`MemoryBus`][].

    Like Redis pub/sub, a publish reaches every subscriber of the channel, the publisher's
    own included; payloads are delivered asynchronously, in publish order per channel.

    Example:
        ``bus = MemoryBus()``, then ``WsApp(transport=MemoryTransport(bus))`` per instance.
    """

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self._subs: dict[str, _Subscription] = {}

    @property
    def channels(self) -> frozenset[str]:
        """The channels this transport is subscribed to."""
        return frozenset(self._subs)

    async def publish(self, channel: str, payload: str) -> None:
        """Queue ``payload`` for every subscriber of ``channel``."""
        self.bus.published += 1
        for sub in self.bus.channels.get(channel, ()):
            sub.queue.put_nowait(payload)

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        """Subscribe (or replace the handler of) ``channel``."""
        old = self._subs.get(channel)
        if old is not None:
            old.handler = handler
            return
        sub = _Subscription(handler)
        sub.task = asyncio.get_running_loop().create_task(self._pump(channel, sub))
        self._subs[channel] = sub
        self.bus.channels.setdefault(channel, []).append(sub)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; payloads not yet delivered are dropped."""
        sub = self._subs.pop(channel, None)
        if sub is None:
            return
        subs = self.bus.channels.get(channel)
        if subs is not None:
            subs.remove(sub)
            if not subs:
                del self.bus.channels[channel]
        if sub.task is not None:
            sub.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub.task

    async def close(self) -> None:
        """Unsubscribe from everything."""
        for channel in list(self._subs):
            await self.unsubscribe(channel)

    def capabilities(self) -> Capabilities:
        """A connection directory, a presence store, a history store, a capacity store, a
        session store and rate-limit buckets, kept on the bus."""
        return Capabilities(
            directory=self,
            presence=self.bus.presence,
            history=self.bus.history,
            capacity=self.bus.capacity,
            sessions=self.bus.sessions,
            rate_limits=self.bus.rate_limits,
        )

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        """Directory: ``connection_id`` lives on ``instance_id``."""
        self.bus.directory[connection_id] = instance_id

    async def unregister_connection(self, connection_id: str) -> None:
        """Directory: forget ``connection_id``."""
        self.bus.directory.pop(connection_id, None)

    async def locate_connection(self, connection_id: str) -> str | None:
        """Directory: the instance holding ``connection_id``."""
        return self.bus.directory.get(connection_id)

    @staticmethod
    async def _pump(channel: str, sub: _Subscription) -> None:
        while True:
            payload = await sub.queue.get()
            try:
                result = sub.handler(payload)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("subscriber of %s failed", channel)
