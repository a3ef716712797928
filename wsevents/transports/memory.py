"""An in-process broadcast transport: several WsApp instances in one process share a bus."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from dataclasses import dataclass, field

from .base import BaseTransport, Capabilities, PayloadHandler

__all__ = ["MemoryBus", "MemoryTransport"]

log = logging.getLogger("wsevents.transports.memory")


@dataclass(eq=False, slots=True)
class _Subscription:
    handler: PayloadHandler
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class MemoryBus:
    """The shared medium of [`MemoryTransport`][] instances (one per simulated cluster).

    It also keeps the cluster's connection directory.
    """

    def __init__(self) -> None:
        self.channels: dict[str, list[_Subscription]] = {}
        self.directory: dict[str, str] = {}
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
        """A connection directory, kept on the bus."""
        return Capabilities(directory=self)

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
