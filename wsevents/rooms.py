"""Rooms: which local connections are in which room, and local fan-out.

Delivery is local-first: local members get the push directly, once, from one encoded
frame; other instances get an envelope on the room's channel ``ws:room:<room>`` through
the manager's [`Cluster`][wsevents.cluster.Cluster] (see ``cluster.py``). A join policy may
refuse a join; change hooks hear of every join and leave.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._aio import await_hook
from .cluster import ROOM_CHANNEL_PREFIX, Cluster, Envelope
from .connection import Connection
from .protocol import Codec, JsonCodec, encode_push
from .transports.base import BroadcastTransport

__all__ = [
    "ROOM_CHANNEL_PREFIX",
    "Admit",
    "CapacityHooks",
    "DeliveryReport",
    "HistoryHooks",
    "JoinPolicy",
    "PresenceHooks",
    "RoomHook",
    "RoomManager",
]

log = logging.getLogger("wsevents.rooms")
_NO_MEMBERS: Mapping[str, Connection] = {}

RoomHook = Callable[[Connection, str], "Awaitable[None] | None"]
"""Called with ``(connection, room)`` after a connection joined or left a room."""

JoinPolicy = Callable[
    [Connection, str], "Awaitable[Mapping[str, Any] | None] | Mapping[str, Any] | None"
]
"""Called with ``(connection, room)`` before a join; raising ``WsError`` refuses it, and a
mapping it returns is member data for the join (see
[`RoomManager.join`][wsevents.RoomManager.join])."""


@dataclass(frozen=True, slots=True)
class Admit:
    """What an ``admit`` function of [`WsApp.room_policy`][wsevents.WsApp.room_policy]
    returns to admit a join *with member data*.

    ``data`` becomes the member's data in the room (merged over the data the join itself
    passed, the admitted keys winning): readable with
    [`RoomManager.member_data`][wsevents.RoomManager.member_data], and the presence
    member data in a presence room. Returning the mapping itself does the same;
    ``Admit()`` (no data) is the same as ``True``.

    Example:
        ``return Admit({"role": "moderator"})``
    """

    data: Mapping[str, Any] | None = None


class HistoryHooks(Protocol):
    """What the room registry asks of history (``wsevents.history.History`` implements it)."""

    def tracks(self, room: str) -> bool:
        """Whether ``room`` is a history room."""
        ...

    async def broadcast(
        self,
        room: str,
        event: str,
        data: Any,
        params: Mapping[str, str] | None,
        exclude_id: str | None,
    ) -> DeliveryReport:
        """Broadcast in a history room: assign an offset, keep, deliver in order."""
        ...


class CapacityHooks(Protocol):
    """What the room registry asks of room capacity (``wsevents.capacity.Capacity``
    implements it)."""

    async def acquire(self, conn: Connection, room: str) -> None:
        """Take a place in ``room`` for ``conn`` before it joins (raising refuses the join)."""
        ...

    async def release(self, conn: Connection, room: str) -> None:
        """Free ``conn``'s place in ``room`` unless it is a member."""
        ...


class PresenceHooks(Protocol):
    """What the room registry tells presence (``wsevents.presence.Presence`` implements it)."""

    async def joined(self, conn: Connection, room: str, data: Mapping[str, Any] | None) -> None:
        """``conn`` joined ``room`` with member ``data``."""
        ...

    async def left(self, conn: Connection, room: str) -> None:
        """``conn`` left ``room``."""
        ...


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a broadcast did on this instance.

    Attributes:
        sent: local connections the push was written to.
        skipped: local connections left out on purpose (the excluded sender).
        dropped: local connections that were closed, closing, or closed as slow consumers.
        published: the envelope was handed to the transport for other instances.
        publish_error: why publishing failed, when it did (the push still reached local
            members).
        offset: the push's offset in a history room (None elsewhere).
    """

    sent: int = 0
    skipped: int = 0
    dropped: int = 0
    published: bool = False
    publish_error: Exception | None = None
    offset: int | None = None

    def merged(self, other: DeliveryReport) -> DeliveryReport:
        """Add up two reports (e.g. of several rooms)."""
        return DeliveryReport(
            self.sent + other.sent,
            self.skipped + other.skipped,
            self.dropped + other.dropped,
            self.published or other.published,
            self.publish_error or other.publish_error,
        )


class RoomManager:
    """The room registry of one instance; usable on its own, without a WsApp.

    Args:
        transport: carries broadcasts to other instances (None = this process only).
        instance_id: this instance's origin id; random when not given.
        codec: how pushes are encoded for local members.
    """

    def __init__(
        self,
        transport: BroadcastTransport | None = None,
        *,
        instance_id: str | None = None,
        codec: Codec | None = None,
    ) -> None:
        self._encode = (codec if codec is not None else JsonCodec()).encode
        self.cluster = Cluster(
            transport,
            instance_id=instance_id if instance_id is not None else uuid.uuid4().hex,
            encode=self._encode,
        )
        """The cross-instance side: channels, envelopes, publishing, subscriptions."""
        self.cluster.bind_rooms(self._members_contains, self.deliver_local)
        self._members: dict[str, dict[str, Connection]] = {}
        # room -> connection id -> member data (only members that have some)
        self._data: dict[str, dict[str, Mapping[str, Any]]] = {}
        self.check_push: Callable[[str, str, Any], None] | None = None
        """Checks every push before it is sent (``WsApp(check_pushes=True)`` sets it)."""
        self._join_policies: list[JoinPolicy] = []
        self._join_hooks: list[RoomHook] = []
        self._leave_hooks: list[RoomHook] = []
        self.presence_hooks: PresenceHooks | None = None
        """Set once a presence pattern is tracked (None: joins and leaves cost nothing more)."""
        self.history_hooks: HistoryHooks | None = None
        """Set once a history pattern is tracked (None: broadcasts cost nothing more)."""
        self.capacity_hooks: CapacityHooks | None = None
        """Set once a room has a maximum of members (None: joins cost nothing more)."""

    @property
    def transport(self) -> BroadcastTransport | None:
        """The transport to other instances (None = this process only)."""
        return self.cluster.transport

    @transport.setter
    def transport(self, transport: BroadcastTransport | None) -> None:
        self.cluster.set_transport(transport)

    @property
    def instance_id(self) -> str:
        """This instance's origin id."""
        return self.cluster.instance_id

    @instance_id.setter
    def instance_id(self, instance_id: str) -> None:
        self.cluster.instance_id = instance_id

    # -- policy and change hooks --------------------------------------------------------

    def add_join_policy(self, policy: JoinPolicy) -> None:
        """Call ``policy(conn, room)`` (sync or async) before a connection joins a room it
        is not in; a ``WsError`` it raises refuses the join and reaches the caller of
        [`join`][] (in a handler: the error reply). A mapping it returns is merged over the
        join's member data (see [`join`][]). Policies run in registration order."""
        self._join_policies.append(policy)

    def add_join_hook(self, hook: RoomHook) -> None:
        """Call ``hook(conn, room)`` (sync or async) after a connection joined a room (and
        the room's channel is live); its errors are logged, never raised."""
        self._join_hooks.append(hook)

    def add_leave_hook(self, hook: RoomHook) -> None:
        """Call ``hook(conn, room)`` (sync or async) after a connection left a room, also
        when it leaves every room on disconnect; its errors are logged, never raised."""
        self._leave_hooks.append(hook)

    # -- membership -------------------------------------------------------------------

    async def join(
        self,
        conn: Connection,
        room: str,
        *,
        data: Mapping[str, Any] | None = None,
        admitted: bool = False,
    ) -> None:
        """Add ``conn`` to ``room``; with a transport, return once the instance is subscribed.

        A closed connection joins nothing: its rooms are being (or have been) left, and a
        handler still running after the disconnect must not bring it back. ``data`` is the
        member data: the mappings the join policies return are merged over it (their keys
        win), and the result is kept for [`member_data`][] and, in a presence room, is the
        presence member data (see [`Presence`][wsevents.Presence]). A connection already
        in the room keeps its data. ``admitted=True`` skips the join policies (a resumed
        session re-joins the rooms it was admitted to, with its presence member data).

        In a room with a maximum of members, the connection takes a place after the join
        policies admitted it (see [`Capacity`][wsevents.Capacity]).

        Raises:
            WsError: a join policy refused the join, or the room is full (409).
        """
        if conn.closed:
            return
        members = self._members.get(room)
        new = members is None or conn.id not in members
        if new and self._join_policies and not admitted:
            for policy in self._join_policies:
                result = policy(conn, room)
                if inspect.isawaitable(result):
                    result = await result
                if isinstance(result, Mapping):
                    data = {**data, **result} if data else result
            if conn.closed:
                return
            members = self._members.get(room)
            new = members is None or conn.id not in members
        capacity = self.capacity_hooks
        if new and capacity is not None:
            await capacity.acquire(conn, room)
            if conn.closed:  # disconnected meanwhile: its rooms are left already
                await capacity.release(conn, room)
                return
            members = self._members.get(room)
        if members is None:
            members = self._members[room] = {}
        members[conn.id] = conn
        conn.add_room(room)
        if new and data is not None:
            self._data.setdefault(room, {})[conn.id] = data
        cluster = self.cluster
        if cluster.transport is not None and not cluster.is_subscribed(room):
            await cluster.sync_room(room)
        if new and self._join_hooks:
            await self._run_hooks(self._join_hooks, conn, room, "room join hook failed")
        if new and self.presence_hooks is not None:
            await self.presence_hooks.joined(conn, room, data)

    async def leave(self, conn: Connection, room: str) -> None:
        """Remove ``conn`` from ``room``; an empty room disappears (and is unsubscribed)."""
        conn.remove_room(room)
        members = self._members.get(room)
        if members is None or members.pop(conn.id, None) is None:
            return
        self._forget_data(room, conn.id)
        if not members:
            del self._members[room]
            if self.cluster.transport is not None:
                await self.cluster.sync_room(room)
        if self.capacity_hooks is not None:
            await self.capacity_hooks.release(conn, room)
        if self._leave_hooks:
            await self._run_hooks(self._leave_hooks, conn, room, "room leave hook failed")
        if self.presence_hooks is not None:
            await self.presence_hooks.left(conn, room)

    async def leave_all(self, conn: Connection) -> tuple[str, ...]:
        """Remove ``conn`` from every room; returns the rooms it was in."""
        rooms = conn.rooms
        for room in rooms:
            await self.leave(conn, room)
        return rooms

    def _leave_all_now(self, conn: Connection) -> tuple[str, ...]:
        """Remove ``conn`` from every room at once, without awaiting the transport.

        For synchronous cleanup (the testing contexts): a room left empty keeps its channel
        subscription, which a later join reuses and [`close`][] drops. Leave hooks do not
        run (they may await).
        """
        rooms = conn.rooms
        for room in rooms:
            conn.remove_room(room)
            members = self._members.get(room)
            if members is not None and members.pop(conn.id, None) is not None:
                self._forget_data(room, conn.id)
                if not members:
                    del self._members[room]
        return rooms

    def _forget_data(self, room: str, cid: str) -> None:
        data = self._data.get(room)
        if data is not None and data.pop(cid, None) is not None and not data:
            del self._data[room]

    def member_data(self, conn: Connection | str, room: str) -> Mapping[str, Any] | None:
        """The member data of ``conn`` (a connection or its id) in ``room``: what its join
        passed and its room policy's ``admit`` returned (see [`Admit`][wsevents.Admit]),
        or [`set_member_data`][]'s; None when it has none or is not a local member."""
        data = self._data.get(room)
        if data is None:
            return None
        return data.get(conn if isinstance(conn, str) else conn.id)

    def set_member_data(self, conn: Connection, room: str, data: Mapping[str, Any] | None) -> bool:
        """Replace the member data of ``conn`` in ``room`` on this instance (presence's
        [`update`][wsevents.Presence.update] calls it); False when ``conn`` is not a
        member."""
        members = self._members.get(room)
        if members is None or conn.id not in members:
            return False
        if data is None:
            self._forget_data(room, conn.id)
        else:
            self._data.setdefault(room, {})[conn.id] = data
        return True

    @staticmethod
    async def _run_hooks(hooks: list[RoomHook], conn: Connection, room: str, what: str) -> None:
        for hook in hooks:
            await await_hook(hook, conn, room, logger=log, message=what)

    def _members_contains(self, room: str) -> bool:
        return room in self._members

    @property
    def codec_encode(self) -> Callable[[dict[str, Any]], bytes]:
        """How pushes are encoded for local members."""
        return self._encode

    def members_of(self, room: str) -> Mapping[str, Connection]:
        """The local members of ``room`` by connection id (a live view: do not change it)."""
        return self._members.get(room) or _NO_MEMBERS

    def connections(self, room: str) -> tuple[Connection, ...]:
        """The local members of ``room``."""
        members = self._members.get(room)
        return tuple(members.values()) if members else ()

    def size(self, room: str) -> int:
        """How many local connections are in ``room``."""
        members = self._members.get(room)
        return len(members) if members else 0

    def rooms(self) -> tuple[str, ...]:
        """Every room with at least one local member."""
        return tuple(self._members)

    @staticmethod
    def rooms_of(conn: Connection) -> tuple[str, ...]:
        """The rooms ``conn`` is in, in join order."""
        return conn.rooms

    # -- broadcasting ------------------------------------------------------------------

    async def broadcast(
        self,
        room: str,
        event: str,
        data: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        exclude_id: str | None = None,
    ) -> DeliveryReport:
        """Push ``event`` on path ``room`` to every member of ``room`` on every instance.

        The push is encoded once; local members get it directly, then the envelope is
        published (when there is a transport). A failed publish is logged and reported,
        never raised.
        """
        if self.check_push is not None:
            self.check_push(event, room, data)
        history = self.history_hooks
        if history is not None and history.tracks(room):
            return await history.broadcast(room, event, data, params, exclude_id)
        frame = encode_push(event, room, data, params, self._encode)
        sent, skipped, dropped = self.deliver_local(room, frame, exclude_id)
        cluster = self.cluster
        if cluster.transport is None:
            return DeliveryReport(sent, skipped, dropped)
        error = await cluster.publish(
            Envelope(cluster.instance_id, "room", room, event, room, data, params, exclude_id)
        )
        return DeliveryReport(sent, skipped, dropped, error is None, error)

    def deliver_local(
        self, room: str, frame: bytes, exclude_id: str | None = None
    ) -> tuple[int, int, int]:
        """Write one encoded frame to every local member; returns (sent, skipped, dropped)."""
        members = self._members.get(room)
        if not members:
            return 0, 0, 0
        sent = skipped = dropped = 0
        # Sends are synchronous, so membership cannot change during the loop.
        for cid, conn in members.items():
            if cid == exclude_id:
                skipped += 1
            elif conn.send_frame(frame):
                sent += 1
            else:
                dropped += 1
                self.cluster.deliveries.dropped(conn)
        self.cluster.deliveries.delivered += sent
        return sent, skipped, dropped

    async def publish(self, channel: str, fields: dict[str, Any]) -> Exception | None:
        """Publish raw envelope ``fields`` on ``channel``, stamped with this instance's
        origin; returns the error instead of raising it. Broadcasts use
        [`broadcast`][]; this is for custom envelopes."""
        return await self.cluster.publish_fields(channel, fields)

    # -- transport subscriptions -------------------------------------------------------

    def subscribed_rooms(self) -> frozenset[str]:
        """Rooms whose channel this instance is subscribed to."""
        return self.cluster.subscribed_rooms()

    async def close(self) -> None:
        """Unsubscribe every room channel (members stay as they are)."""
        await self.cluster.close_rooms()
