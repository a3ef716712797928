"""RPC bookkeeping for the client: ids, pending calls, sorting server frames (sans-I/O).

No asyncio here: a pending call is anything with the three methods of a future, so the
client hands in ``asyncio.Future`` objects and the unit tests may hand in anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..exceptions import WsClientError
from ._listeners import Push

__all__ = ["PendingCall", "Reply", "RpcTracker", "build_message", "parse_server_message"]


class PendingCall(Protocol):
    """What [`RpcTracker`][] needs from a pending call (``asyncio.Future`` has it)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply ``{"id", "data"}`` or ``{"id", "error": {"code", "message", "details"?}}``."""

    id: Any
    data: Any = None
    error: WsClientError | None = None


def build_message(
    event: str, path: str, data: Any = None, message_id: Any = None, idem: str | None = None
) -> dict[str, Any]:
    """The frame object ``{"event", "path", "data"?, "id"?, "idem"?}``; None values are
    left out."""
    msg: dict[str, Any] = {"event": event, "path": path}
    if data is not None:
        msg["data"] = data
    if message_id is not None:
        msg["id"] = message_id
    if idem is not None:
        msg["idem"] = idem
    return msg


def parse_server_message(obj: Any) -> Reply | Push | None:
    """Sort a decoded server frame: a reply, a push, or None (to be dropped).

    A frame with a non-null ``id`` is a reply; one with string ``event`` and ``path`` is
    a push. A malformed ``error`` still fails the call: code 500 unless it carries an int.
    """
    if not isinstance(obj, Mapping):
        return None
    message_id = obj.get("id")
    if message_id is not None:
        err = obj.get("error")
        if err is None:
            return Reply(message_id, obj.get("data"))
        code = err.get("code") if isinstance(err, Mapping) else None
        message = err.get("message") if isinstance(err, Mapping) else None
        if not isinstance(code, int) or isinstance(code, bool):
            code = 500
        details = err.get("details") if isinstance(err, Mapping) else None
        if not isinstance(details, list) or not all(isinstance(d, Mapping) for d in details):
            details = None  # absent or malformed: the call fails all the same
        retry_after = err.get("retry_after") if isinstance(err, Mapping) else None
        if not isinstance(retry_after, int | float) or isinstance(retry_after, bool):
            retry_after = None
        error = WsClientError(
            code,
            message if isinstance(message, str) else None,
            details=details,
            retry_after=retry_after,
        )
        return Reply(message_id, None, error)
    event, path = obj.get("event"), obj.get("path")
    if not isinstance(event, str) or not isinstance(path, str):
        return None
    raw_params = obj.get("params")
    params: dict[str, str] = {}
    if isinstance(raw_params, Mapping):
        params = {str(k): str(v) for k, v in raw_params.items()}
    offset = obj.get("offset")
    if type(offset) is not int or offset < 0:
        offset = None  # absent or malformed: an ordinary push
    return Push(event, path, params, obj.get("data"), offset)


class RpcTracker:
    """Allocates call ids (1, 2, 3, … per client) and settles pending calls by reply."""

    __slots__ = ("_next_id", "_pending")

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: dict[int, PendingCall] = {}

    def next_id(self) -> int:
        """A new id, never handed out before by this tracker."""
        message_id = self._next_id
        self._next_id += 1
        return message_id

    def track(self, message_id: int, call: PendingCall) -> None:
        """Wait for the reply to ``message_id`` on ``call``."""
        self._pending[message_id] = call

    def discard(self, message_id: int) -> None:
        """Stop waiting for ``message_id`` (timed out or cancelled): its reply is dropped."""
        self._pending.pop(message_id, None)

    def resolve(self, reply: Reply) -> bool:
        """Settle the call ``reply`` answers; False when nobody waits for it (dropped)."""
        message_id = reply.id
        # The server echoes ids verbatim; a proxy that turned them into strings still matches.
        if isinstance(message_id, str) and message_id.isdigit():
            message_id = int(message_id)
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            return False
        call = self._pending.pop(message_id, None)
        if call is None or call.done():
            return False
        if reply.error is not None:
            call.set_exception(reply.error)
        else:
            call.set_result(reply.data)
        return True

    def fail_all(self, code: int, message: str) -> int:
        """Fail every pending call with ``WsClientError(code, message)``; returns how many."""
        pending, self._pending = self._pending, {}
        failed = 0
        for call in pending.values():
            if not call.done():
                call.set_exception(WsClientError(code, message))
                failed += 1
        return failed

    def __len__(self) -> int:
        return len(self._pending)
