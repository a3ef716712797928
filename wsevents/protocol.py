"""The wire protocol: parse client frames, encode replies and pushes (sans-I/O).

Client → server: ``{"event": str, "path": str, "data"?: any, "id"?: any}``.
Server → client: replies ``{"id", "data"}`` / ``{"id", "error": {"code", "message"}}`` and
pushes ``{"event", "path", "params"?, "data"?}``.

The codec is pluggable ([`Codec`][]); the default is JSON through orjson, sent as text
frames. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .exceptions import ProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "INTERNAL_ERROR",
    "NOT_FOUND",
    "ClientMessage",
    "Codec",
    "JsonCodec",
    "encode_error",
    "encode_push",
    "encode_reply",
    "parse_client_message",
]

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
"""1 MiB, counted in UTF-8 bytes: a larger frame is dropped."""

NOT_FOUND = "Not found"
INTERNAL_ERROR = "Internal Error"


class Codec(Protocol):
    """How frames become objects and objects become frames.

    ``binary`` says whether encoded frames go out as binary WebSocket frames (e.g.
    MessagePack) or as text frames (JSON; the bytes must then be UTF-8).
    """

    binary: bool

    def decode(self, raw: str | bytes, /) -> Any:
        """Turn one received frame into an object; raise anything on bad input."""
        ...

    def encode(self, message: dict[str, Any], /) -> bytes:
        """Turn one outgoing message into the bytes of one frame."""
        ...


class JsonCodec:
    """The default codec: JSON through orjson, UTF-8 text frames."""

    binary = False
    decode = staticmethod(orjson.loads)
    """Parse JSON text or UTF-8 bytes."""

    @staticmethod
    def encode(message: dict[str, Any], /) -> bytes:
        """Serialise to compact UTF-8 JSON (non-string dict keys are stringified)."""
        return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)


@dataclass(slots=True)
class ClientMessage:
    """One parsed client frame.

    ``has_id`` is true when the frame carried an ``id`` key, whatever its value (also
    ``null``, ``false``, ``0`` or ``""``): such a message gets exactly one reply, which echoes
    ``id`` verbatim. Treat it as read-only (it is not frozen only because frozen dataclasses
    are slow to create, and one is created per message).
    """

    event: str
    path: str
    data: Any = None
    id: Any = None
    has_id: bool = False
    raw: str | bytes = b""


def parse_client_message(
    raw: str | bytes,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    decode: Callable[[str | bytes], Any] = orjson.loads,
) -> ClientMessage:
    """Parse one frame into a [`ClientMessage`][].

    Raises:
        ProtocolError: the frame is over ``max_size`` UTF-8 bytes, is not valid for the
            codec, is not an object, or lacks a string ``event`` or ``path``. Callers drop
            such frames without a reply.
    """
    # A str needs at most 4 UTF-8 bytes per character: measure only when it could matter.
    if len(raw) * 4 > max_size and _utf8_size(raw) > max_size:
        raise ProtocolError("message too large")
    try:
        obj = decode(raw)
    except Exception as exc:
        raise ProtocolError("invalid frame") from exc
    if type(obj) is not dict:
        if not isinstance(obj, Mapping):
            raise ProtocolError("message is not an object")
        obj = dict(obj)
    event = obj.get("event")
    path = obj.get("path")
    if type(event) is not str or type(path) is not str:
        raise ProtocolError("message needs string 'event' and 'path'")
    return ClientMessage(event, path, obj.get("data"), obj.get("id"), "id" in obj, raw)


def _utf8_size(raw: str | bytes) -> int:
    if isinstance(raw, str):
        return len(raw.encode("utf-8", "surrogatepass"))
    return len(raw)


def encode_reply(
    message_id: Any, data: Any, encode: Callable[[dict[str, Any]], bytes] = JsonCodec.encode
) -> bytes:
    """Encode a successful reply ``{"id", "data"}``; ``None`` becomes ``null``."""
    return encode({"id": message_id, "data": data})


def encode_error(
    message_id: Any,
    code: int,
    message: str,
    encode: Callable[[dict[str, Any]], bytes] = JsonCodec.encode,
) -> bytes:
    """Encode an error reply ``{"id", "error": {"code", "message"}}``."""
    return encode({"id": message_id, "error": {"code": code, "message": message}})


def encode_push(
    event: str,
    path: str,
    data: Any = None,
    params: Mapping[str, str] | None = None,
    encode: Callable[[dict[str, Any]], bytes] = JsonCodec.encode,
) -> bytes:
    """Encode a push ``{"event", "path", "params"?, "data"?}``.

    ``params`` is left out when empty and ``data`` when it is ``None``.
    """
    push: dict[str, Any] = {"event": event, "path": path}
    if params:
        push["params"] = params if type(params) is dict else dict(params)
    if data is not None:
        push["data"] = data
    return encode(push)
