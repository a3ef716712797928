"""The session store on Redis: one key per value, ``<prefix>ws:kv:<key>``.

``put`` is ``SET PX [NX]``, ``take`` is ``GETDEL`` (Redis 6.2 or later), ``incr`` is
``INCR``: each is one atomic command.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from ...exceptions import TransportError
from ._commands import cause, text

__all__ = ["RedisSessions"]


class RedisSessions:
    """A [`SessionStore`][wsevents.SessionStore] over Redis keys.

    Args:
        client: the client whose pool runs the commands.
        prefix: put before every key name.
        command_timeout: seconds a command may take.

    Every method raises [`TransportError`][wsevents.TransportError] when Redis fails or
    does not answer in time.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str, command_timeout: float) -> None:
        self.client = client
        self.prefix = prefix
        self.command_timeout = command_timeout

    def key(self, key: str) -> str:
        """The Redis key of ``key``."""
        return f"{self.prefix}ws:kv:{key}"

    async def put(self, key: str, value: str, ttl: float | None, *, only_new: bool = False) -> bool:
        """Set ``key`` for ``ttl`` seconds (``SET PX``); with ``only_new``, ``NX``."""
        px = max(int(ttl * 1000), 1) if ttl is not None else None
        done = await self._run(self.client.set(self.key(key), value, px=px, nx=only_new), "write")
        return bool(done)

    async def get(self, key: str) -> str | None:
        """The value of ``key``, or None."""
        value = await self._run(self.client.get(self.key(key)), "read")
        return None if value is None else text(value)

    async def take(self, key: str) -> str | None:
        """Get and delete ``key`` (``GETDEL``)."""
        value = await self._run(self.client.getdel(self.key(key)), "read")
        return None if value is None else text(value)

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        await self._run(self.client.delete(self.key(key)), "delete")

    async def incr(self, key: str) -> int:
        """Add 1 to the integer at ``key`` (``INCR``) and return it."""
        return int(await self._run(self.client.incr(self.key(key)), "increment"))

    async def _run(self, command: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self.command_timeout):
                return await command
        except Exception as exc:
            raise TransportError(f"session store {what} failed: {cause(exc)}") from exc
