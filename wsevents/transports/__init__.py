"""Broadcast transports: how broadcasts travel between wsevents instances."""

from .base import BroadcastTransport, ConnectionDirectory, PayloadHandler
from .memory import MemoryBus, MemoryTransport

__all__ = [
    "BroadcastTransport",
    "ConnectionDirectory",
    "MemoryBus",
    "MemoryTransport",
    "PayloadHandler",
]
