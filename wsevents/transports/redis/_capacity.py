"""Room capacity on Redis: Lua scripts take and free places atomically.

Keys of a room are hash-tagged with the room (``{<room>}``), so that each script touches
one slot (a Redis Cluster keeps a room on one shard):

* ``<prefix>ws:capacity:{<room>}:places``: hash, member (connection id) → instance;
* ``<prefix>ws:capacity:{<room>}:leases``: sorted set, instance → lease expiry (ms, Redis
  clock).

Every script first drops the places of the instances whose lease in the room ran out, so
a dead instance's places are free once its lease expires, with no reaper. Both keys
expire with the last lease: a room nobody holds a place in leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import redis.asyncio as aioredis

from ...exceptions import TransportError
from ._commands import cause
from ._pubsub import PubSub

__all__ = ["RedisCapacity"]

# KEYS: places, leases. Sets `now` (ms, Redis clock) and drops the places of the
# instances whose lease ran out.
_PURGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  local gone = {}
  for _, instance in ipairs(dead) do gone[instance] = true end
  local places = redis.call('HGETALL', KEYS[1])
  for i = 1, #places, 2 do
    if gone[places[i + 1]] then redis.call('HDEL', KEYS[1], places[i]) end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
"""

# Extends the instance's lease (ARGV[2], ms from ARGV[n]) and both keys' expiry.
_LEASE = """
local function lease(instance, ms)
  local added = redis.call('ZADD', KEYS[2], now + ms, instance)
  local last = tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIREAT', KEYS[1], last)
  redis.call('PEXPIREAT', KEYS[2], last)
  return added
end
"""

# KEYS: places, leases; ARGV: member, instance, limit, lease ms. Returns 1 when the member
# holds a place (taken now or before), 0 when the room is full.
_ACQUIRE = (
    _PURGE
    + _LEASE
    + """
if not redis.call('HGET', KEYS[1], ARGV[1]) then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
lease(ARGV[2], tonumber(ARGV[4]))
return 1
"""
)

# KEYS: places, leases; ARGV: member, instance. Returns 1 when a place was freed.
_RELEASE = (
    _PURGE
    + """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return 1
"""
)

# KEYS: places, leases. Returns the places taken.
_COUNT = (
    _PURGE
    + """
return redis.call('HLEN', KEYS[1])
"""
)

# KEYS: places, leases; ARGV: instance, lease ms. Returns 1 when the instance had a live
# lease (now extended), 0 when it had none (its places may be gone: nothing is extended).
_RENEW = (
    _PURGE
    + _LEASE
    + """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
lease(ARGV[1], tonumber(ARGV[2]))
return 1
"""
)


class RedisCapacity:
    """A [`CapacityStore`][wsevents.CapacityStore] over Redis (see the module docs for
    the keys).

    Args:
        client: the client whose pool runs the scripts.
        prefix: put before every key name.
        command_timeout: seconds a command may take.
        pubsub: whose view of Redis the store goes by: while it is down and a command
            already failed, commands fail at once instead of waiting for a timeout.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        command_timeout: float,
        pubsub: PubSub | None = None,
    ) -> None:
        self.client = client
        self._pubsub = pubsub
        self.prefix = prefix
        self.command_timeout = command_timeout
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._count = client.register_script(_COUNT)
        self._renew = client.register_script(_RENEW)

    def _keys(self, room: str) -> list[str]:
        base = f"{self.prefix}ws:capacity:{{{room}}}:"
        return [base + "places", base + "leases"]

    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        """Take a place for ``member`` unless ``limit`` places are taken."""
        result = await self._run(
            self._acquire(keys=self._keys(room), args=[member, instance_id, limit, _ms(lease)]),
            "acquire",
        )
        return int(result) == 1

    async def release(self, room: str, member: str, instance_id: str) -> bool:
        """Free ``member``'s place; False when it held none (held by ``instance_id``)."""
        result = await self._run(
            self._release(keys=self._keys(room), args=[member, instance_id]), "release"
        )
        return int(result) == 1

    async def count(self, room: str) -> int:
        """Places taken in ``room``."""
        return int(await self._run(self._count(keys=self._keys(room)), "count"))

    async def renew(self, room: str, instance_id: str, lease: float) -> bool:
        """Extend ``instance_id``'s lease in ``room``; False when it had no live lease."""
        result = await self._run(
            self._renew(keys=self._keys(room), args=[instance_id, _ms(lease)]), "renew"
        )
        return int(result) == 1

    async def _run(self, command: Any, what: str) -> Any:
        pubsub = self._pubsub
        if pubsub is not None and pubsub.unavailable:
            if inspect.iscoroutine(command):
                command.close()  # a coroutine never awaited would warn
            raise TransportError(
                f"capacity {what}: Redis at {pubsub.url} is unavailable "
                f"(last error: {pubsub.last_cause()})"
            )
        try:
            async with asyncio.timeout(self.command_timeout):
                return await command
        except Exception as exc:
            raise TransportError(f"capacity {what} failed: {cause(exc)}") from exc


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)
