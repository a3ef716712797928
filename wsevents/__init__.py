"""wsevents: WebSocket back ends as small as HTTP handlers.

Routed message handlers, context-local composables, rooms and broadcasting across
instances, on aiohttp, wire compatible with ``@wooksjs/event-ws``.

Every name below is loaded on first use: ``import wsevents`` runs no module of the
package but the adapter registry, so that aiohttp stays unloaded until it is needed and
a pytest plugin importing ``wsevents.testing.plugin`` does not load the runtime before
coverage measurement starts.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._adapters import register_adapter

if TYPE_CHECKING:
    from ._context import MessageScope
    from .app import RouteGroup, WsApp, create_ws_app
    from .capacity import Capacity
    from .client import WsClient
    from .composables import (
        RouteParams,
        WsRooms,
        WsServer,
        use_route_params,
        use_ws_connection,
        use_ws_data,
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
    from .history import History, HistoryOptions, StreamJoin
    from .metrics import Metrics
    from .presence import Presence, PresenceChange, PresenceUser, PresenceUsers
    from .protocol import ClientMessage, Codec, JsonCodec
    from .ratelimit import RateLimit
    from .rooms import Admit, DeliveryReport, RoomManager
    from .routing import Guard, Route
    from .sessions import Sessions
    from .transports import (
        BaseTransport,
        BroadcastTransport,
        Capabilities,
        CapacityStore,
        ConnectionDirectory,
        HistoryEntry,
        HistoryStore,
        MemoryBus,
        MemoryTransport,
        PresenceCount,
        PresenceStore,
        RateLimitStore,
        SessionStore,
        StreamPosition,
    )

__version__ = "0.1.0"

__all__ = [
    "Admit",
    "BaseTransport",
    "BroadcastTransport",
    "CallNext",
    "Capabilities",
    "Capacity",
    "CapacityStore",
    "ClientMessage",
    "Codec",
    "Connection",
    "ConnectionDirectory",
    "DeliveryReport",
    "Guard",
    "History",
    "HistoryEntry",
    "HistoryOptions",
    "HistoryStore",
    "Interceptor",
    "JsonCodec",
    "MemoryBus",
    "MemoryTransport",
    "MessageScope",
    "Metrics",
    "Presence",
    "PresenceChange",
    "PresenceCount",
    "PresenceStore",
    "PresenceUser",
    "PresenceUsers",
    "ProtocolError",
    "RateLimit",
    "RateLimitStore",
    "RoomManager",
    "Route",
    "RouteGroup",
    "RouteParams",
    "RoutingError",
    "SessionStore",
    "Sessions",
    "StreamJoin",
    "StreamPosition",
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
    "use_ws_data",
    "use_ws_message",
    "use_ws_rooms",
    "use_ws_server",
]

# Where each public name lives (relative to this package).
_EXPORTS: dict[str, str] = {
    "Admit": ".rooms",
    "BaseTransport": ".transports",
    "BroadcastTransport": ".transports",
    "CallNext": ".dispatch",
    "Capabilities": ".transports",
    "Capacity": ".capacity",
    "CapacityStore": ".transports",
    "ClientMessage": ".protocol",
    "Codec": ".protocol",
    "Connection": ".connection",
    "ConnectionDirectory": ".transports",
    "DeliveryReport": ".rooms",
    "Guard": ".routing",
    "History": ".history",
    "HistoryEntry": ".transports",
    "HistoryOptions": ".history",
    "HistoryStore": ".transports",
    "Interceptor": ".dispatch",
    "JsonCodec": ".protocol",
    "MemoryBus": ".transports",
    "MemoryTransport": ".transports",
    "MessageScope": "._context",
    "Metrics": ".metrics",
    "Presence": ".presence",
    "PresenceChange": ".presence",
    "PresenceCount": ".transports",
    "PresenceStore": ".transports",
    "PresenceUser": ".presence",
    "PresenceUsers": ".presence",
    "ProtocolError": ".exceptions",
    "RateLimit": ".ratelimit",
    "RateLimitStore": ".transports",
    "RoomManager": ".rooms",
    "Route": ".routing",
    "RouteGroup": ".app",
    "RouteParams": ".composables",
    "RoutingError": ".exceptions",
    "SessionStore": ".transports",
    "Sessions": ".sessions",
    "StreamJoin": ".history",
    "StreamPosition": ".transports",
    "TransportError": ".exceptions",
    "WsApp": ".app",
    "WsClient": ".client",
    "WsClientError": ".exceptions",
    "WsConnectionRefused": ".exceptions",
    "WsError": ".exceptions",
    "WsEventsError": ".exceptions",
    "WsRooms": ".composables",
    "WsServer": ".composables",
    "create_ws_app": ".app",
    "use_route_params": ".composables",
    "use_ws_connection": ".composables",
    "use_ws_data": ".composables",
    "use_ws_message": ".composables",
    "use_ws_rooms": ".composables",
    "use_ws_server": ".composables",
}


def _load_server() -> None:
    # The aiohttp adapter registers itself when imported. Loaded on the first
    # WsApp.attach/run/listen, so that ``import wsevents`` stays free of aiohttp, and so
    # that wsevents.app never imports the layer above it.
    from . import server  # noqa: F401


register_adapter(loader=_load_server)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
