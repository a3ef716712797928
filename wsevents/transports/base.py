"""The backend contract: what carries broadcasts between instances, and what else it can do.

Every method is ``async``. A transport implements [`BroadcastTransport`][] (usually by
subclassing [`BaseTransport`][], which gives no-op ``start``/``close`` and no
capabilities) and declares what more it offers in
[`BroadcastTransport.capabilities`][wsevents.BroadcastTransport.capabilities]: a
[`Capabilities`][] value naming the object that implements each optional protocol.
wsevents never probes a transport with ``getattr`` or ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "BaseTransport",
    "BroadcastTransport",
    "Capabilities",
    "ConnectionDirectory",
    "PayloadHandler",
    "StateListener",
    "TransportStateEvents",
]

PayloadHandler = Callable[[str], "Awaitable[None] | None"]
"""Called with each payload published on a subscribed channel, in publish order (wsevents'
own handlers are sync; a transport awaits the result when it is awaitable)."""

StateListener = Callable[[bool], "Awaitable[None] | None"]
"""Called with False when the transport loses its backend, True when it is back."""


@runtime_checkable
class ConnectionDirectory(Protocol):
    """Which instance holds which connection id, so ``send_to`` can reach it.

    A transport whose [`Capabilities`][] name a directory lets ``send_to()`` reach a
    connection on another instance and answer ``False`` for an id that exists nowhere.
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


class TransportStateEvents(Protocol):
    """Reports when the transport loses its backend and when it is back.

    It backs ``WsApp.on_transport_down`` / ``on_transport_up``.
    """

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(False)`` on loss and ``listener(True)`` on recovery."""
        ...

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport offers beyond pub/sub; each field is the implementing object or None.

    Attributes:
        directory: where connection ids are registered, for ``send_to`` across instances.
        state_events: backend loss and recovery notifications.
    """

    directory: ConnectionDirectory | None = None
    state_events: TransportStateEvents | None = None


@runtime_checkable
class BroadcastTransport(Protocol):
    """A pub/sub bus between wsevents instances; every method is ``async``.

    Contract:

    * ``publish`` delivers ``payload`` to every subscriber of ``channel``, the publishing
      instance's own subscriber included (echoing to the publisher is fine: wsevents drops
      its own envelopes by origin id);
    * payloads on one channel arrive in publish order;
    * ``subscribe`` registers ``handler`` for ``channel`` and returns once messages
      published afterwards will be delivered; a transport that cannot reach its backend
      keeps the registration and restores it when the backend is back;
    * ``unsubscribe`` stops delivery on that channel;
    * ``start`` runs when the app starts (before the first subscription) and ``close``
      when it closes;
    * ``capabilities`` declares the optional protocols the transport implements.
    """

    async def publish(self, channel: str, payload: str) -> None:
        """Publish ``payload`` on ``channel``."""
        ...

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        """Deliver every later payload on ``channel`` to ``handler``."""
        ...

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``."""
        ...

    async def start(self) -> None:
        """Connect to the backend (called once before first use)."""
        ...

    async def close(self) -> None:
        """Release the backend (called at shutdown)."""
        ...

    def capabilities(self) -> Capabilities:
        """The optional protocols this transport implements."""
        ...


class BaseTransport:
    """A base for transports: no-op [`start`][] and [`close`][], no capabilities.

    Subclasses implement [`publish`][], [`subscribe`][] and [`unsubscribe`][], and
    override [`capabilities`][] to declare what else they offer.
    """

    async def publish(self, channel: str, payload: str) -> None:
        """Publish ``payload`` on ``channel``."""
        raise NotImplementedError

    async def subscribe(self, channel: str, handler: PayloadHandler) -> None:
        """Deliver every later payload on ``channel`` to ``handler``."""
        raise NotImplementedError

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``."""
        raise NotImplementedError

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to close."""

    def capabilities(self) -> Capabilities:
        """No optional capability."""
        return Capabilities()
