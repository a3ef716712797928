"""The connection directory: a TTL'd key per open connection, naming the instance that
holds it, refreshed while that instance lives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ...exceptions import TransportError
from ._commands import RedisClient, cause, chunks, text
from ._pubsub import PubSub

__all__ = ["RedisDirectory"]

log = logging.getLogger("wsevents.transports.redis")

_DIRECTORY_BATCH = 500


class RedisDirectory:
    """A [`ConnectionDirectory`][wsevents.ConnectionDirectory] over Redis keys.

    ``<prefix>conn:<connection id>`` holds the instance id, with a TTL of ``ttl`` seconds
    that ``refresh_forever`` extends every third of it; the entries of a crashed instance
    vanish after that. It goes by the pub/sub connection's view of Redis: while that is
    down and a command already failed, writes wait for the reconnection (which wakes the
    refresh to rewrite them) and lookups fail at once.

    Args:
        client: the client whose pool runs the commands.
        prefix: put before every key name.
        ttl: seconds an entry lives unless refreshed.
        command_timeout: seconds a command may take.
        pubsub: whose ``up``, ``unavailable`` and ``url`` the directory goes by.
        ensure_running: called on each registration, to make sure the owner runs the
            refresh (and the reader).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        ttl: float,
        command_timeout: float,
        pubsub: PubSub,
        ensure_running: Callable[[], None],
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self.command_timeout = command_timeout
        self.closed = False
        self._pubsub = pubsub
        self._ensure_running = ensure_running
        self._local: dict[str, str] = {}  # entries of this process
        self._deleting: set[str] = set()  # entries whose DEL is in flight
        self._wakeup = asyncio.Event()

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        """Record that ``connection_id`` lives on ``instance_id`` (refreshed while open).

        When Redis is unreachable the entry is kept locally and written on reconnect.
        """
        if self.closed:
            return
        self._local[connection_id] = instance_id
        if self._pubsub.unavailable:
            return
        self._ensure_running()
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.client.set(self._key(connection_id), instance_id, px=self._ttl_ms())
        except Exception as exc:
            log.debug("directory write of %s deferred: %r", connection_id, exc)

    async def unregister_connection(self, connection_id: str) -> None:
        """Delete ``connection_id``'s entry (if Redis is unreachable, it expires)."""
        if self.closed:
            return  # clear() deletes every entry still in _local
        self._local.pop(connection_id, None)
        if self._pubsub.unavailable:
            return
        self._deleting.add(connection_id)  # clear() deletes it too if this is cut short
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.client.delete(self._key(connection_id))
        except Exception as exc:
            log.debug("directory delete of %s failed (it expires): %r", connection_id, exc)
        finally:
            self._deleting.discard(connection_id)

    async def locate_connection(self, connection_id: str) -> str | None:
        """The instance id holding ``connection_id``, or None.

        Raises:
            TransportError: Redis cannot answer.
        """
        if self.closed:
            raise TransportError("the Redis transport is closed")
        if self._pubsub.unavailable:
            raise TransportError(
                f"Redis at {self._pubsub.url} is unavailable "
                f"(last error: {self._pubsub.last_cause()})"
            )
        try:
            async with asyncio.timeout(self.command_timeout):
                value = await self.client.get(self._key(connection_id))
        except Exception as exc:
            raise TransportError(
                f"directory lookup of {connection_id} at {self._pubsub.url} failed: {cause(exc)}"
            ) from exc
        return None if value is None else text(value)

    def wake(self) -> None:
        """Refresh now (Redis came back, maybe restarted empty)."""
        self._wakeup.set()

    async def refresh_forever(self) -> None:
        """Extend the TTL of this process's entries every third of it, until closed."""
        interval = self.ttl / 3
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wakeup.wait()
            self._wakeup.clear()
            if self.closed:
                return
            if not self._local or self._pubsub.unavailable:
                continue
            try:
                await self._refresh()
            except Exception as exc:
                if self._pubsub.up:
                    log.warning("directory refresh at %s failed: %s", self._pubsub.url, cause(exc))
                else:
                    log.debug("directory refresh failed: %r", exc)

    async def clear(self) -> None:
        """Delete every entry of this process (the transport closes); entries that Redis
        cannot delete now expire by themselves."""
        keys = [self._key(cid) for cid in (*self._local, *self._deleting)]
        self._local.clear()
        for chunk in chunks(keys, _DIRECTORY_BATCH):
            try:
                async with asyncio.timeout(self.command_timeout):
                    await self.client.delete(*chunk)
            except Exception as exc:
                log.debug("directory cleanup failed (entries expire by themselves): %r", exc)
                break
        # A fresh event: a restarted transport may run on another event loop.
        self._wakeup = asyncio.Event()

    def _key(self, connection_id: str) -> str:
        return f"{self.prefix}conn:{connection_id}"

    def _ttl_ms(self) -> int:
        return max(int(self.ttl * 1000), 10)

    async def _refresh(self) -> None:
        """Extend every local entry's TTL; rewrite the ones Redis lost; delete stragglers."""
        ttl = self._ttl_ms()
        snapshot = list(self._local.items())
        for chunk in chunks(snapshot, _DIRECTORY_BATCH):
            async with asyncio.timeout(self.command_timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    for cid, instance in chunk:
                        _ = pipe.set(self._key(cid), instance, px=ttl, xx=True)
                    results = await pipe.execute()
                # XX never resurrects an entry deleted meanwhile; one that Redis lost is
                # written again only while the connection is still open here.
                missing = [
                    (cid, instance)
                    for (cid, instance), ok in zip(chunk, results, strict=True)
                    if not ok and self._local.get(cid) == instance
                ]
                if missing:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for cid, instance in missing:
                            _ = pipe.set(self._key(cid), instance, px=ttl)
                        await pipe.execute()
        gone = [self._key(cid) for cid, _ in snapshot if cid not in self._local]
        for keys in chunks(gone, _DIRECTORY_BATCH):
            async with asyncio.timeout(self.command_timeout):
                await self.client.delete(*keys)
