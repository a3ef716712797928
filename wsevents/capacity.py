"""Room capacity: at most ``max_members`` connections in a room, counted on every instance.

A room whose policy has a ``max_members`` ([`WsApp.room_policy`][wsevents.WsApp.room_policy])
is a capped room: a connection joining it takes a place in the backend's
[`CapacityStore`][wsevents.CapacityStore], which decides atomically, so that of joins
racing for the last place on any instances exactly one wins; the others are refused with
409 ``"Room is full"``. The place is freed when the connection leaves the room or
disconnects.

Places are leased per room and instance: this instance renews the leases of the rooms it
holds places in every third of [`Capacity.lease`][]. When an instance dies, its leases run
out and its places are free again, within ``lease`` seconds. An instance that finds its
lease lost (it could not reach the backend for longer than that) takes its places again;
a member that no longer finds one is removed from the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .connection import Connection
from .exceptions import WsError
from .rooms import RoomManager
from .transports.base import CapacityStore
from .transports.memory import MemoryCapacityStore

__all__ = ["ROOM_FULL", "Capacity"]

log = logging.getLogger("wsevents.capacity")

ROOM_FULL = "Room is full"
"""The message of the 409 error that refuses a join of a full room."""

_UNAVAILABLE = "Service Unavailable"


class Capacity:
    """The room capacity of one instance (``ws.capacity``); usable with a bare RoomManager.

    Args:
        rooms: the instance's room registry.
        limit_of: the maximum of members of a room, or None for a room without one (a
            [`WsApp`][wsevents.WsApp] looks it up in its room policies).
        lease: seconds this instance's places in a room stay taken without a renewal
            (renewed every third of it); a dead instance's places are free within that.
    """

    def __init__(
        self,
        rooms: RoomManager,
        limit_of: Callable[[str], int | None],
        *,
        lease: float = 10.0,
    ) -> None:
        if lease <= 0:
            raise ValueError("lease must be > 0")
        self.rooms = rooms
        self.lease = float(lease)
        self._limit_of = limit_of
        self._store: CapacityStore | None = None
        self._shared = False
        # room -> local connection ids holding a place there.
        self._held: dict[str, set[str]] = {}
        # (room, connection id) whose release failed: retried with each renewal.
        self._unreleased: set[tuple[str, str]] = set()
        self._locks: dict[tuple[str, str], list[Any]] = {}  # [lock, users]
        self._loop_task: asyncio.Task[None] | None = None
        self._running = False
        self._failing = False

    # -- queries ------------------------------------------------------------------------

    def limit(self, room: str) -> int | None:
        """The maximum of members of ``room`` (None: no maximum)."""
        return self._limit_of(room)

    @property
    def store(self) -> CapacityStore:
        """The backend store (the transport's, or one of this process)."""
        if self._store is None:
            shared = self.rooms.cluster.capabilities.capacity
            self._shared = shared is not None
            self._store = shared if shared is not None else MemoryCapacityStore()
        return self._store

    async def count(self, room: str) -> int:
        """How many places of ``room`` are taken, on every instance (0 for a room
        without a maximum)."""
        if self.limit(room) is None:
            return 0
        return await self.store.count(room)

    def holds(self, conn: Connection, room: str) -> bool:
        """Whether ``conn`` holds a place in ``room`` (taken through this instance)."""
        return conn.id in self._held.get(room, ())

    # -- the RoomManager's hooks --------------------------------------------------------

    async def acquire(self, conn: Connection, room: str) -> None:
        """Take a place in ``room`` for ``conn`` (the RoomManager calls it before a join,
        after the join policies); nothing for a room without a maximum.

        Raises:
            WsError: 409 ``"Room is full"``; 503 when the store cannot answer.
        """
        limit = self.limit(room)
        if limit is None:
            return
        if self._loop_task is None and self._running:
            self._renew_in_background()  # a maximum registered after the start
        async with self._lock(room, conn.id):
            try:
                taken = await self.store.try_acquire(
                    room, conn.id, limit, self.rooms.instance_id, self.lease
                )
            except Exception as exc:
                log.warning("capacity: no place for %s in %s, store failed: %r", conn.id, room, exc)
                raise WsError(503, _UNAVAILABLE) from None
            if not taken:
                raise WsError(409, ROOM_FULL)
            self._held.setdefault(room, set()).add(conn.id)
            self._unreleased.discard((room, conn.id))

    async def release(self, conn: Connection, room: str) -> None:
        """Free ``conn``'s place in ``room`` unless it is (again) a member (the RoomManager
        calls it after a leave, and after a join abandoned once the place was taken)."""
        if not self.holds(conn, room):
            return
        async with self._lock(room, conn.id):
            if conn.in_room(room) or not self.holds(conn, room):
                return  # a join since made it a member: the place is its
            self._forget(room, conn.id)
            await self._release(room, conn.id)

    def _forget(self, room: str, cid: str) -> None:
        held = self._held.get(room)
        if held is not None:
            held.discard(cid)
            if not held:
                del self._held[room]

    async def _release(self, room: str, cid: str) -> None:
        try:
            await self.store.release(room, cid, self.rooms.instance_id)
        except Exception as exc:
            log.warning("capacity: release of %s in %s failed (retried): %r", cid, room, exc)
            self._unreleased.add((room, cid))
        else:
            self._unreleased.discard((room, cid))

    def _lock(self, room: str, cid: str) -> _KeyLock:
        return _KeyLock(self._locks, (room, cid))

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start renewing this instance's leases (with a store shared between instances;
        once a room has a maximum, also when it gets one after the start)."""
        self._running = True
        if self._loop_task is None:
            self._store = None  # the transport may have been replaced since
        if self.rooms.capacity_hooks is not None:
            self._renew_in_background()

    def _renew_in_background(self) -> None:
        _ = self.store  # decides whether the store is shared
        if self._shared and self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._keep_alive(), name="wsevents-capacity"
            )

    async def close(self) -> None:
        """Stop renewing and free the places this instance still holds."""
        self._running = False
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._store is None:
            return
        held = [(room, cid) for room, cids in self._held.items() for cid in cids]
        self._held.clear()
        for room, cid in (*held, *self._unreleased):
            try:
                await self._store.release(room, cid, self.rooms.instance_id)
            except Exception as exc:
                log.warning("capacity: release at shutdown failed (the lease runs out): %r", exc)
                break
        self._unreleased.clear()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            await self.renew()

    async def renew(self) -> None:
        """Renew this instance's lease in every room it holds places in, retry failed
        releases, and take the places of a lost lease again (the renewal loop calls it)."""
        store = self.store
        me = self.rooms.instance_id
        try:
            for room, cid in list(self._unreleased):
                await store.release(room, cid, me)
                self._unreleased.discard((room, cid))
            for room in list(self._held):
                if not await store.renew(room, me, self.lease):
                    await self._retake(store, room)
        except Exception as exc:
            if not self._failing:
                log.warning("capacity: lease renewal failed (retrying): %r", exc)
            self._failing = True
        else:
            self._failing = False

    async def _retake(self, store: CapacityStore, room: str) -> None:
        """The lease of ``room`` was lost: take the places of its local members again; a
        member that finds no place (others took them meanwhile) leaves the room."""
        limit = self.limit(room)
        for cid in list(self._held.get(room, ())):
            conn = self.rooms.members_of(room).get(cid)
            if conn is None:
                continue
            if limit is not None and await store.try_acquire(
                room, cid, limit, self.rooms.instance_id, self.lease
            ):
                continue
            log.warning("capacity: %s lost its place in %s (lease lost): removed", cid, room)
            self._forget(room, cid)
            await self.rooms.leave(conn, room)


class _KeyLock:
    """``async with``: a lock per key, dropped from ``locks`` once nobody uses it."""

    __slots__ = ("_entry", "_key", "_locks")

    def __init__(self, locks: dict[tuple[str, str], list[Any]], key: tuple[str, str]) -> None:
        self._locks = locks
        self._key = key
        entry = locks.get(key)
        if entry is None:
            entry = locks[key] = [asyncio.Lock(), 0]
        self._entry = entry

    async def __aenter__(self) -> None:
        entry = self._entry
        entry[1] += 1
        try:
            await entry[0].acquire()
        except BaseException:
            self._done()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._entry[0].release()
        self._done()

    def _done(self) -> None:
        entry = self._entry
        entry[1] -= 1
        if not entry[1] and self._locks.get(self._key) is entry:
            del self._locks[self._key]
