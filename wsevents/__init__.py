"""wsevents: WebSocket back ends as small as HTTP handlers.

Routed message handlers, context-local composables, rooms and broadcasting across
instances, on aiohttp, wire compatible with ``@wooksjs/event-ws``.
"""

from typing import TYPE_CHECKING, Any

from ._context import MessageScope
from .app import RouteGroup, WsApp, create_ws_app, register_adapter
from .composables import (
    RouteParams,
    WsRooms,
    WsServer,
    use_route_params,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from .connection import Connection
from .dispatch import CallNext, Interceptor
from .exceptions import (
    ProtocolError,
    RoutingError,
    TransportError,
    WsClientError,
    WsConnectionRefused,
    WsError,
    WsEventsError,
)
from .presence import Presence, PresenceChange, PresenceUser, PresenceUsers
from .protocol import ClientMessage, Codec, JsonCodec
from .rooms import DeliveryReport, RoomManager
from .routing import Guard, Route
from .transports import (
    BaseTransport,
    BroadcastTransport,
    Capabilities,
    ConnectionDirectory,
    MemoryBus,
    MemoryTransport,
    PresenceCount,
    PresenceStore,
)

if TYPE_CHECKING:
    from .client import WsClient

__version__ = "0.1.0"

__all__ = [
    "BaseTransport",
    "BroadcastTransport",
    "CallNext",
    "Capabilities",
    "ClientMessage",
    "Codec",
    "Connection",
    "ConnectionDirectory",
    "DeliveryReport",
    "Guard",
    "Interceptor",
    "JsonCodec",
    "MemoryBus",
    "MemoryTransport",
    "MessageScope",
    "Presence",
    "PresenceChange",
    "PresenceCount",
    "PresenceStore",
    "PresenceUser",
    "PresenceUsers",
    "ProtocolError",
    "RoomManager",
    "Route",
    "RouteGroup",
    "RouteParams",
    "RoutingError",
    "TransportError",
    "WsApp",
    "WsClient",
    "WsClientError",
    "WsConnectionRefused",
    "WsError",
    "WsEventsError",
    "WsRooms",
    "WsServer",
    "create_ws_app",
    "use_route_params",
    "use_ws_connection",
    "use_ws_message",
    "use_ws_rooms",
    "use_ws_server",
]


def _load_server() -> None:
    # The aiohttp adapter registers itself when imported. Loaded on the first
    # WsApp.attach/run/listen, so that ``import wsevents`` stays free of aiohttp, and so
    # that wsevents.app never imports the layer above it.
    from . import server  # noqa: F401


register_adapter(loader=_load_server)


def __getattr__(name: str) -> Any:
    # The client needs aiohttp's ClientSession: load it on first use, so that
    # ``import wsevents`` stays free of aiohttp.
    if name == "WsClient":
        from .client import WsClient

        return WsClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
