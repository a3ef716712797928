"""The wsevents error tree.

Only :class:`WsError` carries text that a client may see; every other exception a
handler raises reaches the client as ``500 "Internal Error"``.
"""

from __future__ import annotations

__all__ = [
    "ProtocolError",
    "RoutingError",
    "TransportError",
    "WsClientError",
    "WsError",
    "WsEventsError",
]


class WsEventsError(Exception):
    """Base class of every error wsevents raises on purpose."""


class WsError(WsEventsError):
    """An error with an HTTP-like code whose message is sent to the client.

    Raise it from a handler to reply ``{"id", "error": {"code", "message"}}``, or from an
    ``on_connect`` hook to refuse the connection (4xx close with 1008, others 1011).

    Example:
        ``raise WsError(403, "private room")``
    """

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = int(code)
        self.message = message if message is not None else _default_message(self.code)
        super().__init__(self.code, self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ProtocolError(WsEventsError, ValueError):
    """A malformed frame: dropped before routing, never raised to a handler."""


class RoutingError(WsEventsError, ValueError):
    """A route pattern that cannot be compiled, raised at registration."""


class TransportError(WsEventsError):
    """A broadcast transport failed; the backend's error is in ``__cause__``."""


class WsClientError(WsEventsError):
    """An RPC made by a client failed: an error reply, 408 (timeout) or 503 (not connected)."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = int(code)
        self.message = message if message is not None else _default_message(self.code)
        super().__init__(self.code, self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


_DEFAULT_MESSAGES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    408: "Request Timeout",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Error",
    503: "Service Unavailable",
}


def _default_message(code: int) -> str:
    return _DEFAULT_MESSAGES.get(code, "Error")
