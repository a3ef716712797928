"""The backend contract: what carries broadcasts between instances, and what else it can do.

Every method is ``async``. A transport implements [`BroadcastTransport`][] (usually by
subclassing [`BaseTransport`][], which gives no-op ``start``/``close`` and no
capabilities) and declares what more it offers in
[`BroadcastTransport.capabilities`][wsevents.BroadcastTransport.capabilities]: a
[`Capabilities`][] value naming the object that implements each optional protocol.
wsevents never probes a transport with ``getattr`` or ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "BaseTransport",
    "BroadcastTransport",
    "Capabilities",
    "CapacityStore",
    "ConnectionDirectory",
    "HistoryEntry",
    "HistoryStore",
    "PayloadHandler",
    "PresenceCount",
    "PresenceMember",
    "PresencePage",
    "PresenceStore",
    "RateLimitStore",
    "SessionStore",
    "StateListener",
    "StreamPosition",
    "TransportStateEvents",
]

PayloadHandler = Callable[[str], "Awaitable[None] | None"]
"""Called with each payload published on a subscribed channel, in publish order (wsevents'
own handlers are sync; a transport awaits the result when it is awaitable)."""

StateListener = Callable[[bool], "Awaitable[None] | None"]
"""Called with False when the transport loses its backend, True when it is back."""


@runtime_checkable
class ConnectionDirectory(Protocol):
    """Which instance holds which connection id, so ``send_to`` can reach it.

    A transport whose [`Capabilities`][] name a directory lets ``send_to()`` reach a
    connection on another instance and answer ``False`` for an id that exists nowhere.
    """

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        """Record that ``connection_id`` lives on ``instance_id``."""
        ...

    async def unregister_connection(self, connection_id: str) -> None:
        """Forget ``connection_id`` (it closed)."""
        ...

    async def locate_connection(self, connection_id: str) -> str | None:
        """The instance id holding ``connection_id``, or None."""
        ...


class TransportStateEvents(Protocol):
    """Reports when the transport loses its backend and when it is back.

    It backs ``WsApp.on_transport_down`` / ``on_transport_up``.
    """

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(False)`` on loss and ``listener(True)`` on recovery."""
        ...

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        ...


@dataclass(frozen=True, slots=True)
class PresenceCount:
    """How many are in a presence room, on every instance.

    Attributes:
        connections: connections in the room.
        users: distinct users among them.
    """

    connections: int
    users: int


@dataclass(frozen=True, slots=True)
class PresenceMember:
    """One user of a presence room.

    Attributes:
        user: the user id.
        data: the user's member data as JSON text (set by their first connection, or by an
            update), or None.
        connections: how many of the user's connections are in the room.
    """

    user: str
    data: str | None
    connections: int


@dataclass(frozen=True, slots=True)
class PresencePage:
    """A page of a presence room's users, ordered by user id.

    Attributes:
        total: distinct users in the room.
        members: the users of the page.
    """

    total: int
    members: tuple[PresenceMember, ...]


class PresenceStore(Protocol):
    """Who is in which presence room, for every instance at once.

    Entries are ``(room, connection id)`` with the connection's user and instance. The
    store decides atomically whether an add is the user's first connection in the room and
    whether a remove was their last, so that each join and leave is decided by exactly one
    instance. Instances prove they are alive with [`heartbeat`][]; the entries of one that
    stops are removed by one survivor through [`reap`][].

    Member data travels as JSON text: the store never decodes it.
    """

    async def add(
        self, room: str, connection_id: str, user: str, data: str | None, instance_id: str
    ) -> bool:
        """Add a connection; True when it is its user's first connection in ``room`` (then
        ``data`` becomes the user's data). Adding a present connection changes nothing."""
        ...

    async def remove(self, room: str, connection_id: str, instance_id: str) -> str | None:
        """Remove a connection; its user when it was their last one in ``room``, else None
        (also for an unknown connection)."""
        ...

    async def update(self, room: str, user: str, data: str | None) -> bool:
        """Replace ``user``'s data in ``room``; False when the user is not there."""
        ...

    async def count(self, room: str) -> PresenceCount:
        """Connections and distinct users in ``room``."""
        ...

    async def members(self, room: str, offset: int, limit: int) -> PresencePage:
        """Users of ``room`` ordered by user id (code point order), ``limit`` from ``offset``."""
        ...

    async def heartbeat(self, instance_id: str, ttl: float) -> bool:
        """Mark ``instance_id`` alive for ``ttl`` seconds; True when the store did not know
        it (a new instance, or one reaped meanwhile: it should add its entries again)."""
        ...

    async def expired_instances(self) -> list[str]:
        """Instances whose heartbeat expired and that nobody has reaped yet."""
        ...

    async def reap(self, instance_id: str, reaper_id: str) -> list[tuple[str, str]] | None:
        """Remove every entry of ``instance_id`` and forget it; returns the ``(room, user)``
        pairs whose last connection that was, or None when another reaper is at it.

        Of several instances reaping the same one at once, one gets the pairs (each pair
        once): the others get None or an empty list. An instance reaps itself at shutdown.
        """
        ...


# -- history: a room's recent pushes with offsets and an epoch ----------------------------


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a history room's stream is.

    Attributes:
        offset: the offset of the room's last push (0 before the first one).
        epoch: the identity of the stream: it changes when the history is lost (a flush,
            a failover), so an offset of another epoch means nothing.
    """

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One kept push of a history room.

    Attributes:
        offset: its offset (1 for the room's first push, then +1 per push).
        payload: the push as the store got it (text, never decoded by the store).
    """

    offset: int
    payload: str


class HistoryStore(Protocol):
    """The recent pushes of history rooms, for every instance at once.

    ``append`` assigns offsets atomically: of concurrent appends to one room on any
    instance, each gets its own offset, +1 per push, and the store keeps the entries in
    offset order. The epoch changes whenever the stream is lost.
    """

    async def append(self, room: str, payload: str, size: int, ttl: float) -> StreamPosition:
        """Keep ``payload`` as the room's next push; keep at most ``size`` entries, none
        older than ``ttl`` seconds. Returns the new push's offset and the epoch."""
        ...

    async def position(self, room: str) -> StreamPosition:
        """The room's current position (offset 0 and a new epoch for a new room)."""
        ...

    async def since(
        self, room: str, offset: int, epoch: str, ttl: float
    ) -> tuple[StreamPosition, list[HistoryEntry] | None]:
        """The room's position and every kept push after ``offset``, in offset order;
        None instead of the list when they cannot all be given (another epoch, an offset
        ahead of the stream, or pushes trimmed by size or by age ``ttl``)."""
        ...


# -- capacity: places in rooms with a maximum of members ---------------------------------


class CapacityStore(Protocol):
    """The places taken in rooms with a maximum of members, for every instance at once.

    A place is ``(room, member)`` (the member is a connection id) held by an instance.
    [`try_acquire`][] decides atomically: of concurrent acquisitions of a room's last
    place, on any instance, exactly one succeeds.

    Places are leased per room and instance: each acquisition, and [`renew`][], extends the
    holding instance's lease in that room by ``lease`` seconds. The places of an instance
    whose lease in a room ran out (it died, or lost the backend for longer than the lease)
    are free: the store drops them before it counts or acquires in that room.
    """

    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        """Take a place in ``room`` for ``member``, held by ``instance_id``, unless the room
        already has ``limit`` places taken; True when ``member`` holds a place (also when it
        already held one: a member never takes two places). Renews the instance's lease
        in ``room`` either way."""
        ...

    async def release(self, room: str, member: str, instance_id: str) -> bool:
        """Free ``member``'s place in ``room``; False when it held none there (or one held
        by another instance, which is left alone)."""
        ...

    async def count(self, room: str) -> int:
        """How many places are taken in ``room`` (on every instance, live leases only)."""
        ...

    async def renew(self, room: str, instance_id: str, lease: float) -> bool:
        """Extend ``instance_id``'s lease in ``room`` to ``lease`` seconds from now; False
        when it had no live lease there (its places may have been freed: it should acquire
        them again)."""
        ...


# -- sessions: small shared values with a TTL ---------------------------------------------


class SessionStore(Protocol):
    """Small text values shared by every instance, each with an optional time to live:
    session snapshots, the kept replies of idempotent calls, counters.

    Keys are plain strings chosen by wsevents (``session:<token>``,
    ``idem:<connection id>:<idem>``) or by the application (``counter:<name>``); a store
    may put a prefix of its own before them. Every method is atomic: of two instances
    calling [`take`][] on one key, one gets the value; of two calling [`put`][] with
    ``only_new``, one succeeds.
    """

    async def put(self, key: str, value: str, ttl: float | None, *, only_new: bool = False) -> bool:
        """Set ``key`` to ``value`` for ``ttl`` seconds (None: no expiry); with
        ``only_new``, only when ``key`` holds nothing. True when it was set."""
        ...

    async def get(self, key: str) -> str | None:
        """The value of ``key``, or None (never set, deleted or expired)."""
        ...

    async def take(self, key: str) -> str | None:
        """Get and delete ``key`` at once (None when it holds nothing)."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        ...

    async def incr(self, key: str) -> int:
        """Add 1 to the integer at ``key`` (0 when it holds nothing; no expiry) and return it."""
        ...


# -- rate limits shared by every instance ------------------------------------------------


class RateLimitStore(Protocol):
    """Token buckets shared by every instance (the cluster-wide rate limits,
    ``RateLimit(..., cluster=True)``).

    A bucket holds up to ``capacity`` tokens and gains ``refill`` tokens per second; a
    missing bucket is a full one. [`take`][] is atomic: of concurrent takes on any
    instance, no more succeed than the bucket holds. A bucket may be forgotten once it has
    refilled (a full bucket is the same as none).
    """

    async def take(self, key: str, capacity: float, refill: float) -> float:
        """Take one token from bucket ``key``.

        Returns:
            0.0 when a token was taken; otherwise the seconds until one is free (> 0),
            and the bucket is left as it was, but refilled to now.
        """
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport offers beyond pub/sub; each field is the implementing object or None.

    Attributes:
        directory: where connection ids are registered, for ``send_to`` across instances.
        state_events: backend loss and recovery notifications.
        presence: who is in which presence room on every instance.
        history: the recent pushes of history rooms, with offsets and epochs.
        capacity: the places taken in rooms with a maximum of members, on every instance.
        sessions: small shared values with a TTL: session snapshots, the kept replies of
            idempotent calls, counters.
        rate_limits: token buckets shared by every instance (cluster-wide rate limits).
    """

    directory: ConnectionDirectory | None = None
    state_events: TransportStateEvents | None = None
    presence: PresenceStore | None = None
    history: HistoryStore | None = None
    capacity: CapacityStore | None = None
    sessions: SessionStore | None = None
    rate_limits: RateLimitStore | None = None


@runtime_checkable
class BroadcastTransport(Protocol):
    """A pub/sub bus between wsevents instances; every method is ``async``.

    Contract:

    * ``publish`` delivers ``payload`` to every subscriber of ``channel``, the publishing
      instance's own subscriber included (echoing to the publisher is fine: wsevents drops
      its own envelopes by origin id);
    * payloads on one channel arrive in publish order;
    * ``subscribe`` registers ``handler`` for ``channel`` and returns once messages
      published afterwards will be delivered; a transport that cannot reach its backend
      keeps the registration and restores it when the backend is back;
    * ``unsubscribe`` stops delivery on that channel;
    * ``start`` runs when the app starts (before the first subscription) and ``close``
      when it closes;
    * ``capabilities`` declares the optional protocols the transport implements.
    """

    async def publish(self, channel: str, payload: str) -> None:
        """Publish ``payload`` on ``channel``."""
        ...

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        """Deliver every later payload on ``channel`` to ``handler``."""
        ...

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``."""
        ...

    async def start(self) -> None:
        """Connect to the backend (called once before first use)."""
        ...

    async def close(self) -> None:
        """Release the backend (called at shutdown)."""
        ...

    def capabilities(self) -> Capabilities:
        """The optional protocols this transport implements."""
        ...


class BaseTransport:
    """A base for transports: no-op [`start`][] and [`close`][], no capabilities.

    Subclasses implement [`publish`][], [`subscribe`][] and [`unsubscribe`][], and
    override [`capabilities`][] to declare what else they offer.
    """

    async def publish(self, channel: str, payload: str) -> None:
        """Publish ``payload`` on ``channel``."""
        raise NotImplementedError

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        """Deliver every later payload on ``channel`` to ``handler``."""
        raise NotImplementedError

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``."""
        raise NotImplementedError

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to close."""

    def capabilities(self) -> Capabilities:
        """No optional capability."""
        return Capabilities()
