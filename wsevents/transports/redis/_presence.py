"""Presence on Redis: Lua scripts decide first joins and last leaves atomically.

Keys of a room are hash-tagged with the room (``{<room>}``), so that each script touches
one slot (a Redis Cluster keeps a room on one shard):

* ``<prefix>ws:presence:{<room>}:conns``: hash, connection id → user;
* ``<prefix>ws:presence:{<room>}:users``: sorted set of the users (all scores 0: ordered
  by user id);
* ``<prefix>ws:presence:{<room>}:ucount``: hash, user → connections in the room;
* ``<prefix>ws:presence:{<room>}:udata``: hash, user → member data (JSON text);
* ``<prefix>ws:presence:{<room>}:inst:<instance>``: set of the room's connection ids held
  by that instance (what a reaper removes).

Per instance:

* ``<prefix>ws:presence:instances``: sorted set, instance → expiry (ms, Redis clock);
* ``<prefix>ws:presence:rooms:{<instance>}``: set of the rooms the instance has entries in;
* ``<prefix>ws:presence:reap:{<instance>}``: the reaper's claim on a dead instance.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from ...exceptions import TransportError
from ..base import PresenceCount, PresenceMember, PresencePage
from ._commands import RedisClient, cause, hash_tag, text
from ._pubsub import PubSub

__all__ = ["RedisPresence"]

log = logging.getLogger("wsevents.transports.redis")

# KEYS: conns, users, ucount, udata, inst; ARGV: connection id, user, data ('' = none).
# Returns 1 for the user's first connection, 0 for another one, -1 for a known connection.
_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('SADD', KEYS[5], ARGV[1])
if redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[4], ARGV[2], ARGV[3]) end
  return 1
end
return 0
"""

# KEYS: conns, users, ucount, udata, inst; ARGV: connection id.
# Returns {user whose last connection it was, or '', 1 when the instance has no
# connection left in the room}.
_REMOVE = """
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return {'', redis.call('SCARD', KEYS[5]) == 0 and 1 or 0} end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
local empty = redis.call('SCARD', KEYS[5]) == 0 and 1 or 0
if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
  redis.call('HDEL', KEYS[3], user)
  redis.call('HDEL', KEYS[4], user)
  redis.call('ZREM', KEYS[2], user)
  return {user, empty}
end
return {'', empty}
"""

# KEYS: conns, users, ucount, udata, inst (of the dead instance). Returns the users whose
# last connection was one of the instance's.
_REAP_ROOM = """
local gone = {}
for _, cid in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local user = redis.call('HGET', KEYS[1], cid)
  if user then
    redis.call('HDEL', KEYS[1], cid)
    if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
      redis.call('HDEL', KEYS[3], user)
      redis.call('HDEL', KEYS[4], user)
      redis.call('ZREM', KEYS[2], user)
      table.insert(gone, user)
    end
  end
end
redis.call('DEL', KEYS[5])
return gone
"""

# KEYS: ucount, udata; ARGV: user, data ('' = none).
_UPDATE = """
if not redis.call('HGET', KEYS[1], ARGV[1]) then return 0 end
if ARGV[2] == '' then redis.call('HDEL', KEYS[2], ARGV[1])
else redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
"""

# KEYS: users, ucount, udata; ARGV: offset, limit. Returns {total, user, count, data, ...}.
_MEMBERS = """
local total = redis.call('ZCARD', KEYS[1])
local out = {total}
local limit = tonumber(ARGV[2])
if limit <= 0 then return out end
local offset = tonumber(ARGV[1])
for _, user in ipairs(redis.call('ZRANGE', KEYS[1], offset, offset + limit - 1)) do
  table.insert(out, user)
  table.insert(out, redis.call('HGET', KEYS[2], user) or '0')
  table.insert(out, redis.call('HGET', KEYS[3], user) or '')
end
return out
"""

# KEYS: instances; ARGV: instance, ttl ms. Returns 1 when the instance was not listed.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""

# KEYS: instances. The instances whose expiry has passed (Redis clock).
_EXPIRED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: instances; ARGV: instance, '1' to remove it only while expired.
_FORGET = """
if ARGV[2] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if expiry and tonumber(expiry) > now then return 0 end
end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""


class RedisPresence:
    """A [`PresenceStore`][wsevents.PresenceStore] over Redis (see the module docs for
    the keys).

    Args:
        client: the client whose pool runs the scripts.
        prefix: put before every key name.
        command_timeout: seconds a command may take.
        pubsub: whose view of Redis the store goes by: while it is down and a command
            already failed, commands fail at once instead of waiting for a timeout.
        reap_lease: seconds a reaper's claim on a dead instance lasts (another survivor
            takes over after that if the reaper died meanwhile).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        command_timeout: float,
        pubsub: PubSub | None = None,
        reap_lease: float = 30.0,
    ) -> None:
        self.client = client
        self._pubsub = pubsub
        self.prefix = prefix
        self.command_timeout = command_timeout
        self.reap_lease = reap_lease
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
        self._reap_room = client.register_script(_REAP_ROOM)
        self._update = client.register_script(_UPDATE)
        self._members = client.register_script(_MEMBERS)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._expired = client.register_script(_EXPIRED)
        self._forget = client.register_script(_FORGET)
        # Per room: this instance's add and remove of one room never interleave, so that
        # its room list never loses a room it still has entries in.
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}

    # -- keys ---------------------------------------------------------------------------

    def _room_keys(self, room: str, instance_id: str) -> list[str]:
        base = f"{self.prefix}ws:presence:{hash_tag(room)}:"
        return [
            base + "conns",
            base + "users",
            base + "ucount",
            base + "udata",
            f"{base}inst:{instance_id}",
        ]

    def _instances_key(self) -> str:
        return f"{self.prefix}ws:presence:instances"

    def _rooms_key(self, instance_id: str) -> str:
        return f"{self.prefix}ws:presence:rooms:{hash_tag(instance_id)}"

    def _reap_key(self, instance_id: str) -> str:
        return f"{self.prefix}ws:presence:reap:{hash_tag(instance_id)}"

    # -- PresenceStore ------------------------------------------------------------------

    async def add(
        self, room: str, connection_id: str, user: str, data: str | None, instance_id: str
    ) -> bool:
        """Add a connection; True when it is its user's first in ``room``."""
        async with self._room_lock(room):
            await self._run(self.client.sadd(self._rooms_key(instance_id), room), "add")
            result = await self._run(
                self._add(
                    keys=self._room_keys(room, instance_id),
                    args=[connection_id, user, data or ""],
                ),
                "add",
            )
        return int(result) == 1

    async def remove(self, room: str, connection_id: str, instance_id: str) -> str | None:
        """Remove a connection; its user when it was their last in ``room``."""
        async with self._room_lock(room):
            user, empty = await self._run(
                self._remove(keys=self._room_keys(room, instance_id), args=[connection_id]),
                "remove",
            )
            if int(empty):
                await self._run(self.client.srem(self._rooms_key(instance_id), room), "remove")
        name = text(user)
        return name or None

    async def update(self, room: str, user: str, data: str | None) -> bool:
        """Replace ``user``'s data in ``room``; False when the user is not there."""
        keys = self._room_keys(room, "")
        result = await self._run(
            self._update(keys=[keys[2], keys[3]], args=[user, data or ""]), "update"
        )
        return int(result) == 1

    async def count(self, room: str) -> PresenceCount:
        """Connections and distinct users in ``room``."""
        keys = self._room_keys(room, "")

        async def both() -> Any:
            # Entering a cluster pipeline may connect: all of it runs inside _run.
            async with self.client.pipeline(transaction=True) as pipe:
                _ = pipe.hlen(keys[0])
                _ = pipe.zcard(keys[1])
                return await pipe.execute()

        connections, users = await self._run(both(), "count")
        return PresenceCount(int(connections), int(users))

    async def members(self, room: str, offset: int, limit: int) -> PresencePage:
        """Users of ``room`` ordered by user id, ``limit`` from ``offset``."""
        keys = self._room_keys(room, "")
        reply = await self._run(
            self._members(keys=[keys[1], keys[2], keys[3]], args=[offset, limit]), "members"
        )
        total, rest = int(reply[0]), reply[1:]
        members = tuple(
            PresenceMember(text(rest[i]), text(rest[i + 2]) or None, int(rest[i + 1]))
            for i in range(0, len(rest) - 2, 3)
        )
        return PresencePage(total, members)

    async def heartbeat(self, instance_id: str, ttl: float) -> bool:
        """Mark ``instance_id`` alive for ``ttl`` seconds; True when it was not listed."""
        result = await self._run(
            self._heartbeat(keys=[self._instances_key()], args=[instance_id, int(ttl * 1000)]),
            "heartbeat",
        )
        return int(result) == 1

    async def expired_instances(self) -> list[str]:
        """Instances whose heartbeat expired (by the Redis clock)."""
        reply = await self._run(self._expired(keys=[self._instances_key()]), "heartbeat")
        return [text(i) for i in reply]

    async def reap(self, instance_id: str, reaper_id: str) -> list[tuple[str, str]] | None:
        """Remove every entry of ``instance_id`` and forget it; None when another reaper
        holds the claim."""
        other = instance_id != reaper_id
        if other:
            claimed = await self._run(
                self.client.set(
                    self._reap_key(instance_id),
                    reaper_id,
                    nx=True,
                    px=max(int(self.reap_lease * 1000), 10),
                ),
                "reap",
            )
            if not claimed:
                return None
        left: list[tuple[str, str]] = []
        rooms_key = self._rooms_key(instance_id)
        for raw in await self._run(self.client.smembers(rooms_key), "reap"):
            room = text(raw)
            async with self._room_lock(room):
                gone = await self._run(
                    self._reap_room(keys=self._room_keys(room, instance_id)), "reap"
                )
                await self._run(self.client.srem(rooms_key, room), "reap")
            left.extend((room, text(user)) for user in gone)
        await self._run(
            self._forget(keys=[self._instances_key()], args=[instance_id, "1" if other else "0"]),
            "reap",
        )
        if other:
            await self._run(self.client.delete(self._reap_key(instance_id)), "reap")
        return left

    # -- internals ----------------------------------------------------------------------

    async def _run(self, command: Any, what: str) -> Any:
        pubsub = self._pubsub
        if pubsub is not None and pubsub.unavailable:
            if inspect.iscoroutine(command):
                command.close()  # a coroutine never awaited would warn
            raise TransportError(
                f"presence {what}: Redis at {pubsub.url} is unavailable "
                f"(last error: {pubsub.last_cause()})"
            )
        try:
            async with asyncio.timeout(self.command_timeout):
                return await command
        except Exception as exc:
            raise TransportError(f"presence {what} failed: {cause(exc)}") from exc

    def _room_lock(self, room: str) -> _RoomLock:
        return _RoomLock(self, room)


class _RoomLock:
    """``async with``: the per-room lock of a [`RedisPresence`][], dropped when unused."""

    __slots__ = ("_room", "_store")

    def __init__(self, store: RedisPresence, room: str) -> None:
        self._store = store
        self._room = room

    async def __aenter__(self) -> None:
        store, room = self._store, self._room
        lock = store._locks.get(room)
        if lock is None:
            lock = store._locks[room] = asyncio.Lock()
        store._lock_users[room] = store._lock_users.get(room, 0) + 1
        try:
            await lock.acquire()
        except BaseException:
            self._release_user()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._store._locks[self._room].release()
        self._release_user()

    def _release_user(self) -> None:
        store, room = self._store, self._room
        left = store._lock_users[room] - 1
        if left:
            store._lock_users[room] = left
        else:
            del store._lock_users[room]
            del store._locks[room]
