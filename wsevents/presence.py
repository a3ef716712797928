"""Presence: who is in a room, on every instance, by user.

A room whose name matches a tracked pattern ([`Presence.track`][]) is a presence room:
joining it records the connection, its user ([`Connection.user`][wsevents.Connection])
and member data in the backend's [`PresenceStore`][wsevents.PresenceStore]. The store
decides atomically whether a join is the user's first connection in the room and whether
a leave was their last, so each change is decided by exactly one instance, which:

* calls the change listeners once ([`Presence.add_listener`][]);
* in ``"list"`` mode, pushes ``presence`` to the room's members through the normal room
  broadcast, batched per room within ``window`` seconds:
  ``{"joins": [{"user", ...data}], "leaves": [{"user"}]}``.

Instances send a heartbeat to the store; when one stops (a crash), a survivor reaps its
entries (exactly one survivor per dead instance) and pushes the leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._aio import TaskSet, await_hook
from .connection import Connection
from .protocol import JsonCodec
from .rooms import RoomManager
from .routing import Router
from .transports.base import PresenceCount, PresenceStore
from .transports.memory import MemoryPresenceStore

__all__ = [
    "PRESENCE_EVENT",
    "Presence",
    "PresenceChange",
    "PresenceListener",
    "PresenceMode",
    "PresenceUser",
    "PresenceUsers",
]

log = logging.getLogger("wsevents.presence")

PRESENCE_EVENT = "presence"
"""The event of presence pushes (their path is the room)."""

PresenceMode = Literal["none", "count", "list"]
"""What a presence room offers: nothing, counts, or counts, user lists and pushes."""

_MODES = ("none", "count", "list")
_dumps = JsonCodec.encode
_loads = JsonCodec.decode


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A user's first connection joined a presence room, or their last one left it.

    Attributes:
        room: the room.
        user: the user id.
        kind: ``"join"`` or ``"leave"``.
        data: the member data of a join (None for a leave).
        instance_id: the instance that decided the change (for a leave of a dead
            instance's member: the survivor that reaped it).
    """

    room: str
    user: str
    kind: Literal["join", "leave"]
    data: Mapping[str, Any] | None
    instance_id: str


PresenceListener = Callable[[PresenceChange], "Awaitable[None] | None"]
"""Called with each [`PresenceChange`][], once in the whole cluster."""


@dataclass(frozen=True, slots=True)
class PresenceUser:
    """One user of a presence room.

    Attributes:
        user: the user id.
        data: the member data of the user's first connection (or of the last update).
        connections: the user's connections in the room, on every instance.
    """

    user: str
    data: Mapping[str, Any] | None
    connections: int

    def as_dict(self) -> dict[str, Any]:
        """``{**data, "user", "connections"}``: a member as the wire shows it."""
        return {**(self.data or {}), "user": self.user, "connections": self.connections}


@dataclass(frozen=True, slots=True)
class PresenceUsers:
    """A page of a presence room's users, ordered by user id.

    Attributes:
        total: distinct users in the room.
        members: the users of this page.
    """

    total: int
    members: tuple[PresenceUser, ...]


@dataclass(eq=False, slots=True)
class _Entry:
    """A local connection in a presence room, as this instance recorded it."""

    user: str
    data: str | None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    added: bool = False


def _encode_data(data: Mapping[str, Any] | None) -> str | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise TypeError(f"presence member data must be a mapping or None, got {type(data)!r}")
    return bytes(_dumps(dict(data))).decode()


def _decode_data(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    try:
        value = _loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Presence:
    """The presence of one instance (``ws.presence``); usable with a bare RoomManager.

    Args:
        rooms: the instance's room registry.
        window: seconds presence pushes of one room are batched.
        instance_ttl: seconds this instance counts as alive after each heartbeat (sent
            every third of it); a crashed instance's members are removed within about
            ``instance_ttl`` plus a third of it.
    """

    def __init__(
        self, rooms: RoomManager, *, window: float = 0.05, instance_ttl: float = 10.0
    ) -> None:
        if window < 0 or instance_ttl <= 0:
            raise ValueError("window must be >= 0 and instance_ttl > 0")
        self.rooms = rooms
        self.window = float(window)
        self.instance_ttl = float(instance_ttl)
        self._patterns: Router[PresenceMode] = Router(cache_size=1024)
        self._listeners: list[PresenceListener] = []
        self._store: PresenceStore | None = None
        self._local: dict[tuple[str, str], _Entry] = {}
        self._pending: dict[str, dict[str, tuple[bool, Mapping[str, Any] | None]]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks = TaskSet()
        self._loop_task: asyncio.Task[None] | None = None
        self._shared = False
        self._failing = False

    # -- configuration ------------------------------------------------------------------

    def track(self, pattern: str, *, mode: PresenceMode = "list") -> None:
        """Make the rooms whose name matches ``pattern`` presence rooms.

        ``pattern`` is a route pattern (``"/presence/rooms/:room"``); ``mode`` is
        ``"list"`` (counts, user lists, pushes), ``"count"`` (counts only, no pushes) or
        ``"none"`` (not tracked: carves an exception out of a wider pattern).

        Raises:
            ValueError: unknown mode.
            RoutingError: bad or duplicate pattern.
        """
        if mode not in _MODES:
            raise ValueError(f"presence mode must be one of {_MODES}, got {mode!r}")
        self._patterns.add("presence", pattern, mode)
        self.rooms.presence_hooks = self

    def mode(self, room: str) -> PresenceMode:
        """The presence mode of ``room`` (``"none"`` when no tracked pattern matches)."""
        found = self._patterns.match("presence", room)
        return found.handler if found is not None else "none"

    def add_listener(self, listener: PresenceListener) -> None:
        """Call ``listener(change)`` (sync or async) for every join and leave.

        Each change is reported once in the whole cluster, by the instance that decided it
        (for the members of a crashed instance: by the survivor that reaped it); errors are
        logged. Use it for "went online" logic.
        """
        self._listeners.append(listener)

    # -- queries ------------------------------------------------------------------------

    @property
    def store(self) -> PresenceStore:
        """The backend store (the transport's, or one of this process)."""
        if self._store is None:
            presence = self.rooms.cluster.capabilities.presence
            self._shared = presence is not None
            self._store = presence if presence is not None else MemoryPresenceStore()
        return self._store

    async def count(self, room: str) -> PresenceCount:
        """Connections and distinct users in ``room``, on every instance (zero for a room
        without presence)."""
        if self.mode(room) == "none":
            return PresenceCount(0, 0)
        return await self.store.count(room)

    async def users(self, room: str, offset: int = 0, limit: int = 50) -> PresenceUsers:
        """The users of ``room`` ordered by user id, ``limit`` of them from ``offset``.

        Raises:
            ValueError: ``offset`` or ``limit`` is negative.
            PermissionError: ``room`` is a ``"count"`` presence room.
        """
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        mode = self.mode(room)
        if mode == "none":
            return PresenceUsers(0, ())
        if mode != "list":
            raise PermissionError(f"presence of {room} is {mode!r}: no user list")
        page = await self.store.members(room, offset, limit)
        return PresenceUsers(
            page.total,
            tuple(PresenceUser(m.user, _decode_data(m.data), m.connections) for m in page.members),
        )

    async def update(self, conn: Connection, room: str, data: Mapping[str, Any] | None) -> bool:
        """Replace the member data of ``conn``'s user in ``room`` (pushed as a join in
        ``"list"`` mode); False when ``conn`` is not a presence member of ``room``.

        Raises:
            TypeError: ``data`` is not a mapping or None.
        """
        text = _encode_data(data)
        entry = self._local.get((room, conn.id))
        if entry is None:
            return False
        entry.data = text
        self.rooms.set_member_data(conn, room, data)
        await entry.ready.wait()
        if not await self.store.update(room, entry.user, text):
            return False
        if self.mode(room) == "list":
            self._queue(room, entry.user, True, _decode_data(text))
        return True

    def data_of(self, conn: Connection, room: str) -> Mapping[str, Any] | None:
        """The member data ``conn`` joined presence room ``room`` with (None: none, or not
        a member here)."""
        entry = self._local.get((room, conn.id))
        return _decode_data(entry.data) if entry is not None else None

    # -- the RoomManager's hooks ----------------------------------------------------------

    async def joined(self, conn: Connection, room: str, data: Mapping[str, Any] | None) -> None:
        """``conn`` joined ``room`` (the RoomManager calls it after each new join)."""
        mode = self.mode(room)
        if mode == "none":
            return
        text = _encode_data(data)
        key = (room, conn.id)
        # Checked and recorded without awaiting: a leave that already ran finds no entry
        # and this join sees that the connection is no longer in the room.
        if key in self._local or not conn.in_room(room):
            return
        entry = self._local[key] = _Entry(conn.user, text)
        try:
            await self._add(room, conn.id, entry)
        finally:
            entry.ready.set()

    async def left(self, conn: Connection, room: str) -> None:
        """``conn`` left ``room`` (the RoomManager calls it after each leave)."""
        entry = self._local.pop((room, conn.id), None)
        if entry is None:
            return
        await entry.ready.wait()
        if not entry.added:
            return
        try:
            user = await self.store.remove(room, conn.id, self.rooms.instance_id)
        except Exception as exc:
            log.warning("presence remove of %s from %s failed: %r", conn.id, room, exc)
            return
        if user is not None:
            await self._changed(room, user, None)

    async def _add(self, room: str, cid: str, entry: _Entry) -> None:
        try:
            first = await self.store.add(room, cid, entry.user, entry.data, self.rooms.instance_id)
        except Exception as exc:
            log.warning("presence add of %s to %s failed (retried): %r", cid, room, exc)
            return
        entry.added = True
        if first:
            await self._changed(room, entry.user, _decode_data(entry.data) or {})

    # -- changes ------------------------------------------------------------------------

    async def _changed(self, room: str, user: str, data: Mapping[str, Any] | None) -> None:
        join = data is not None
        if self.mode(room) == "list":
            self._queue(room, user, join, data)
        if self._listeners:
            change = PresenceChange(
                room, user, "join" if join else "leave", data, self.rooms.instance_id
            )
            for listener in self._listeners:
                await await_hook(listener, change, logger=log, message="presence listener failed")

    def _queue(self, room: str, user: str, join: bool, data: Mapping[str, Any] | None) -> None:
        pending = self._pending.setdefault(room, {})
        before = pending.pop(user, None)
        if before is not None and before[0] and not join:
            pass  # joined and left within the window: nobody needs to hear of it
        else:
            pending[user] = (join, data)
        if not pending:
            del self._pending[room]
            return
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self.window, self._flush_later)

    def _flush_later(self) -> None:
        self._flush_handle = None
        _ = self._tasks.spawn(self.flush())

    async def flush(self) -> None:
        """Push the pending changes now (one ``presence`` push per room)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, {}
        for room, changes in pending.items():
            joins = [{**(d or {}), "user": u} for u, (j, d) in changes.items() if j]
            leaves = [{"user": u} for u, (j, _) in changes.items() if not j]
            try:
                await self.rooms.broadcast(room, PRESENCE_EVENT, {"joins": joins, "leaves": leaves})
            except Exception:
                log.exception("presence push to %s failed", room)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the heartbeat and the reaping of dead instances (with a shared store)."""
        if self.rooms.presence_hooks is None:
            return
        if self._loop_task is None:
            self._store = None  # the transport may have been replaced since
        store = self.store
        if self._shared and self._loop_task is None:
            await self._keep_alive_once(store)
            self._loop_task = asyncio.get_running_loop().create_task(
                self._keep_alive(store), name="wsevents-presence"
            )

    async def close(self) -> None:
        """Stop the heartbeat, remove what this instance still has in the store (pushing
        the leaves) and push what is pending."""
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._store is not None and self.rooms.presence_hooks is not None:
            self._local.clear()
            try:
                left = await self._store.reap(self.rooms.instance_id, self.rooms.instance_id)
            except Exception as exc:
                log.warning("presence cleanup failed (entries expire): %r", exc)
                left = None
            for room, user in left or ():
                await self._changed(room, user, None)
        await self.flush()
        await self._tasks.wait(5.0)

    async def _keep_alive(self, store: PresenceStore) -> None:
        interval = self.instance_ttl / 3
        while True:
            await asyncio.sleep(interval)
            await self._keep_alive_once(store)

    async def _keep_alive_once(self, store: PresenceStore) -> None:
        try:
            await self._beat(store)
            await self._reap(store)
        except Exception as exc:
            # The transport reports the outage itself: warn once, until it works again.
            if not self._failing:
                log.warning("presence heartbeat failed (retrying): %r", exc)
            else:
                log.debug("presence heartbeat failed: %r", exc)
            self._failing = True
        else:
            self._failing = False

    async def _beat(self, store: PresenceStore) -> None:
        me = self.rooms.instance_id
        if await store.heartbeat(me, self.instance_ttl):
            # The store did not know us (reaped after a stall, or restarted): add again.
            for entry in self._local.values():
                entry.added = False
        for (room, cid), entry in list(self._local.items()):
            if not entry.added and entry.ready.is_set():
                entry.ready.clear()  # a leave meanwhile waits for this add
                try:
                    await self._add(room, cid, entry)
                finally:
                    entry.ready.set()

    async def _reap(self, store: PresenceStore) -> None:
        me = self.rooms.instance_id
        for dead in await store.expired_instances():
            if dead == me:
                continue
            left = await store.reap(dead, me)
            if left:
                log.info("reaped dead instance %s: %d leave(s)", dead, len(left))
            for room, user in left or ():
                await self._changed(room, user, None)
