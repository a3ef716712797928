"""Cluster-wide rate limits on Redis: one token bucket per key, taken by a Lua script.

``<prefix>ws:rl:<key>`` is a hash with ``t`` (tokens) and ``s`` (when they were counted,
seconds on the Redis clock, ``TIME``), so every instance sees one clock. The key expires
once the bucket would be full again: an idle bucket costs nothing.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from ...exceptions import TransportError
from ._commands import cause, text

__all__ = ["RedisRateLimits"]

# KEYS: the bucket; ARGV: capacity, refill (tokens per second).
# Returns the seconds until a token is free, as text ("0" when one was taken).
_TAKE = """
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = capacity
elseif now > stamp then
  tokens = math.min(capacity, tokens + (now - stamp) * refill)
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / refill
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 's', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / refill * 1000) + 1)
return string.format('%.17g', wait)
"""


class RedisRateLimits:
    """A [`RateLimitStore`][wsevents.RateLimitStore] over Redis (see the
    module docs for the keys).

    Args:
        client: the client whose pool runs the script.
        prefix: put before every key name.
        command_timeout: seconds a take may take.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str, command_timeout: float) -> None:
        self.client = client
        self.prefix = prefix
        self.command_timeout = command_timeout
        self._take = client.register_script(_TAKE)

    def key(self, key: str) -> str:
        """The Redis key of bucket ``key``."""
        return f"{self.prefix}ws:rl:{key}"

    async def take(self, key: str, capacity: float, refill: float) -> float:
        """Take a token from bucket ``key``; 0.0, or the seconds until one is free."""
        try:
            async with asyncio.timeout(self.command_timeout):
                wait = await self._take(keys=[self.key(key)], args=[repr(capacity), repr(refill)])
        except Exception as exc:
            raise TransportError(f"rate limit take failed: {cause(exc)}") from exc
        return float(text(wait))
