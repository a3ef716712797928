"""Broadcast transports: how broadcasts travel between wsevents instances.

``base`` holds the contract (async protocols, ``BaseTransport``, ``Capabilities``).

``RedisTransport``, ``RedisClusterTransport`` and ``NatsTransport`` are loaded on first
access (``wsevents.transports.RedisTransport`` or ``from wsevents.transports.redis import
RedisTransport``; likewise ``wsevents.transports.nats``), so importing wsevents never imports
redis or nats-py.
"""

from typing import TYPE_CHECKING, Any

from .base import (
    BaseTransport,
    BroadcastTransport,
    Capabilities,
    CapacityStore,
    ConnectionDirectory,
    HistoryEntry,
    HistoryStore,
    PayloadHandler,
    PresenceCount,
    PresenceMember,
    PresencePage,
    PresenceStore,
    RateLimitStore,
    SessionStore,
    StateListener,
    StreamPosition,
    TransportStateEvents,
)
from .memory import (
    MemoryBus,
    MemoryCapacityStore,
    MemoryHistoryStore,
    MemoryPresenceStore,
    MemoryRateLimitStore,
    MemorySessionStore,
    MemoryTransport,
)

if TYPE_CHECKING:
    from .nats import NatsTransport
    from .redis import RedisClusterTransport, RedisTransport

__all__ = [
    "BaseTransport",
    "BroadcastTransport",
    "Capabilities",
    "CapacityStore",
    "ConnectionDirectory",
    "HistoryEntry",
    "HistoryStore",
    "MemoryBus",
    "MemoryCapacityStore",
    "MemoryHistoryStore",
    "MemoryPresenceStore",
    "MemoryRateLimitStore",
    "MemorySessionStore",
    "MemoryTransport",
    "NatsTransport",
    "PayloadHandler",
    "PresenceCount",
    "PresenceMember",
    "PresencePage",
    "PresenceStore",
    "RateLimitStore",
    "RedisClusterTransport",
    "RedisTransport",
    "SessionStore",
    "StateListener",
    "StreamPosition",
    "TransportStateEvents",
]


def __getattr__(name: str) -> Any:
    if name in ("RedisTransport", "RedisClusterTransport"):
        from . import redis

        return getattr(redis, name)
    if name == "NatsTransport":
        from .nats import NatsTransport

        return NatsTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
