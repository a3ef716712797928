"""The context variables behind the composables (the one user of contextvars-extras).

Each connection runs in its own context (the upgrade request's context is its parent), and
each message in a copy of it, so concurrent messages never see each other's state.

The named handles are ``ContextVarExt`` objects (what contextvars-extras offers: a var
that can be ``is_set()``, ``delete()``-d and reset to its default). Everything in the
package reads and writes the plain ``ContextVar`` underneath (``.context_var``, or the
casts below), on purpose: the composables and the dispatcher run once per message, and
``ContextVar.get``/``set`` are C calls where the ``ContextVarExt`` methods add a
Python-level layer; and the adapter's set/reset pairs keep ``ContextVar`` tokens, which
the ``ContextVarExt`` stubs type differently from what ``set`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from contextvars_extras import ContextVarExt

from .routing import Route

if TYPE_CHECKING:
    from .app import WsApp
    from .connection import Connection
    from .protocol import ClientMessage


def _no_handler() -> None:
    return None


# The route of a scope made without one (the fake message contexts of wsevents.testing).
_NO_ROUTE = Route("", "", _no_handler)


@dataclass(slots=True)
class MessageScope:
    """What one message's handler can reach (interceptors get it as ``scope``).

    Attributes:
        message: the message.
        params: the route params (percent-decoded).
        connection: the connection it came from.
        app: the [`WsApp`][wsevents.WsApp].
        route: the [`Route`][wsevents.Route] that matched: ``route.pattern`` (e.g.
            ``/users/:id``, not the concrete path) and ``route.event`` label metrics with
            bounded cardinality. For the ``on_unhandled`` fallback both are ``"*"``.
        typed_params: the params with the route's declared ``params=`` types converted
            (set after the guards, before the handler); ``None`` until then, or when the
            route declares none.
        span: the message's OpenTelemetry span while tracing is on
            ([`WsApp.enable_tracing`][wsevents.WsApp.enable_tracing]); None otherwise.

    A route with a declared ``data=`` type replaces ``message`` (after the guards) by a
    copy whose ``data`` is the validated value; ``raw`` stays the frame as received.
    """

    message: ClientMessage
    params: Mapping[str, str]
    connection: Connection
    app: WsApp
    route: Route = _NO_ROUTE
    typed_params: Mapping[str, Any] | None = None
    span: Any = None


current_connection: ContextVarExt[Connection] = ContextVarExt("wsevents.connection")
current_message: ContextVarExt[MessageScope] = ContextVarExt("wsevents.message")
current_app: ContextVarExt[WsApp] = ContextVarExt("wsevents.app")

# The plain ContextVars underneath, for the per-message hot path (see the module docstring).
connection_var = cast("ContextVar[Connection]", current_connection.context_var)
message_var = cast("ContextVar[MessageScope]", current_message.context_var)
app_var = cast("ContextVar[WsApp]", current_app.context_var)
