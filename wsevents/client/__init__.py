"""The asyncio client: ``async with WsClient(url) as client: await client.call(...)``.

It speaks the wsevents protocol (the ``@wooksjs/event-ws`` one) over
``aiohttp.ClientSession``: RPC calls with ids and timeouts, fire-and-forget sends with a
bounded offline queue, subscriptions replayed after reconnects (history rooms recovered
with ``since``), push listeners and iterators, reconnects with jittered backoff, sessions
resumed with retried idempotent calls (``resume=True``). See ``docs/python-client.md``.
"""

from __future__ import annotations

from ..exceptions import WsClientError, WsConnectionRefused
from ._client import (
    DEFAULT_PUSH_QUEUE_SIZE,
    DEFAULT_QUEUE_SIZE,
    FINAL_CLOSE_CODES,
    CloseHook,
    ErrorHook,
    OpenHook,
    PushHandler,
    PushStream,
    ReconnectHook,
    RecoveryFailedHook,
    Subscription,
    TokenProvider,
    WsClient,
)
from ._listeners import Push
from ._presence import PresenceChangeHandler, RoomPresence

__all__ = [
    "DEFAULT_PUSH_QUEUE_SIZE",
    "DEFAULT_QUEUE_SIZE",
    "FINAL_CLOSE_CODES",
    "CloseHook",
    "ErrorHook",
    "OpenHook",
    "PresenceChangeHandler",
    "Push",
    "PushHandler",
    "PushStream",
    "ReconnectHook",
    "RecoveryFailedHook",
    "RoomPresence",
    "Subscription",
    "TokenProvider",
    "WsClient",
    "WsClientError",
    "WsConnectionRefused",
]
