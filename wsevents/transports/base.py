"""The broadcast transport interface that carries broadcasts between instances."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["BroadcastTransport", "ConnectionDirectory", "PayloadHandler", "maybe_await"]

PayloadHandler = Callable[[str], "Awaitable[None] | None"]
"""Called with each payload published on a subscribed channel, in publish order."""


@runtime_checkable
class BroadcastTransport(Protocol):
    """A pub/sub bus between wsevents instances.

    Each method may be sync or async. Contract:

    * ``publish`` delivers ``payload`` to every subscriber of ``channel``, the publishing
      instance's own subscriber included (echoing to the publisher is fine: wsevents drops
      its own envelopes by origin id);
    * payloads on one channel arrive in publish order;
    * ``subscribe`` registers ``handler`` for ``channel`` and returns once messages
      published afterwards will be delivered; a transport that cannot reach its backend
      keeps the registration and restores it when the backend is back;
    * ``unsubscribe`` stops delivery on that channel.

    Optional methods used when present: ``async start()`` before first use and
    ``async close()`` at shutdown.
    """

    def publish(self, channel: str, payload: str) -> Awaitable[None] | None:
        """Publish ``payload`` on ``channel``."""
        ...

    def subscribe(self, channel: str, handler: PayloadHandler) -> Awaitable[None] | None:
        """Deliver every later payload on ``channel`` to ``handler``."""
        ...

    def unsubscribe(self, channel: str) -> Awaitable[None] | None:
        """Stop delivering ``channel``."""
        ...


@runtime_checkable
class ConnectionDirectory(Protocol):
    """Which instance holds which connection id, so ``send_to`` can reach it.

    A transport that also implements this protocol lets ``send_to()`` reach a connection
    on another instance and answer ``False`` for an id that exists nowhere.
    """

    async def register_connection(self, connection_id: str, instance_id: str) -> None:
        """Record that ``connection_id`` lives on ``instance_id``."""
        ...

    async def unregister_connection(self, connection_id: str) -> None:
        """Forget ``connection_id`` (it closed)."""
        ...

    async def locate_connection(self, connection_id: str) -> str | None:
        """The instance id holding ``connection_id``, or None."""
        ...


async def maybe_await(result: Any) -> Any:
    """Await ``result`` when a sync-or-async transport method returned an awaitable."""
    if inspect.isawaitable(result):
        return await result
    return result
