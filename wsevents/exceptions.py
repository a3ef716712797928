"""The wsevents error tree.

Only [`WsError`][] carries text that a client may see; every other exception a
handler raises reaches the client as ``500 "Internal Error"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ProtocolError",
    "RoutingError",
    "TransportError",
    "WsClientError",
    "WsConnectionRefused",
    "WsError",
    "WsEventsError",
]


class WsEventsError(Exception):
    """Base class of every error wsevents raises on purpose."""


class WsError(WsEventsError):
    """An error with an HTTP-like code whose message is sent to the client.

    Raise it from a handler to reply ``{"id", "error": {"code", "message"}}``, or from an
    ``on_connect`` hook to refuse the connection (4xx close with 1008, others 1011).

    ``details``, when given, is sent as ``error.details``: a list of JSON objects, e.g. the
    failing fields of a validation error ``[{"path": ["text"], "message": "..."}]``.
    ``retry_after``, when given, is sent as ``error.retry_after``: the seconds after which
    the call may succeed (a rate limit's 429 carries it).

    Example:
        ``raise WsError(403, "private room")``
    """

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        details: Sequence[Mapping[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = int(code)
        self.message = message if message is not None else _default_message(self.code)
        self.details: list[dict[str, Any]] | None = (
            None if details is None else [dict(d) for d in details]
        )
        self.retry_after = None if retry_after is None else float(retry_after)
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
    """An RPC made by a client failed: an error reply, 408 (timeout) or 503 (not connected).

    Attributes:
        code: the error's code.
        message: the error's message.
        details: the error reply's ``details`` (e.g. the failing fields of a 400
            validation error, ``[{"path": ["text"], "message": "..."}]``), or ``None``
            when the reply has none.
        retry_after: the error reply's ``retry_after`` in seconds (a 429 of a rate limit
            carries it: the call may succeed after that long), or ``None``.
    """

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        details: Sequence[Mapping[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = int(code)
        self.message = message if message is not None else _default_message(self.code)
        self.details: list[dict[str, Any]] | None = (
            None if details is None else [dict(d) for d in details]
        )
        self.retry_after = None if retry_after is None else float(retry_after)
        super().__init__(self.code, self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class WsConnectionRefused(WsClientError):
    """The server refused the connection: it closed the socket right after the handshake.

    A wsevents server does so when an ``on_connect`` hook raises: 1008 with the error's
    message for a ``WsError`` with a 4xx code, 1011 otherwise. ``code`` is the close code and
    ``message`` its reason, so ``str(exc)`` reads ``1008: Unauthorized``.

    Attributes:
        close_code: the close code the server sent.
        reason: the close reason the server sent (may be empty).
    """

    def __init__(self, close_code: int, reason: str = "") -> None:
        super().__init__(close_code, reason or f"Connection refused ({close_code})")
        self.close_code = int(close_code)
        self.reason = reason


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
