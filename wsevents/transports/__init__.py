"""Broadcast transports: how broadcasts travel between wsevents instances.

``RedisTransport`` is loaded on first access (``wsevents.transports.RedisTransport`` or
``from wsevents.transports.redis import RedisTransport``), so importing wsevents never
imports redis.
"""

from typing import TYPE_CHECKING, Any

from .base import BroadcastTransport, ConnectionDirectory, PayloadHandler
from .memory import MemoryBus, MemoryTransport

if TYPE_CHECKING:
    from .redis import RedisTransport

__all__ = [
    "BroadcastTransport",
    "ConnectionDirectory",
    "MemoryBus",
    "MemoryTransport",
    "PayloadHandler",
    "RedisTransport",
]


def __getattr__(name: str) -> Any:
    if name == "RedisTransport":
        from .redis import RedisTransport

        return RedisTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
