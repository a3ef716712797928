"""The context variables behind the composables (the one user of contextvars-extras).

Each connection runs in its own context (the upgrade request's context is its parent), and
each message in a copy of it, so concurrent messages never see each other's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from contextvars_extras import ContextVarExt

if TYPE_CHECKING:
    from .app import WsApp
    from .connection import Connection
    from .protocol import ClientMessage


@dataclass(frozen=True, slots=True)
class MessageScope:
    """What one message's handler can reach."""

    message: ClientMessage
    params: Mapping[str, str]
    connection: Connection
    app: WsApp


current_connection: ContextVarExt[Connection] = ContextVarExt("wsevents.connection")
current_message: ContextVarExt[MessageScope] = ContextVarExt("wsevents.message")
current_app: ContextVarExt[WsApp] = ContextVarExt("wsevents.app")
