"""The wire protocol: parse client frames, encode replies and pushes (sans-I/O).

Client → server: ``{"event": str, "path": str, "data"?: any, "id"?: any}``.
Server → client: replies ``{"id", "data"}`` / ``{"id", "error": {"code", "message"}}`` and
pushes ``{"event", "path", "params"?, "data"?}``.

The codec is pluggable ([`Codec`][]); the default is JSON through orjson, sent as text
frames. Nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .exceptions import ProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "INTERNAL_ERROR",
    "MAX_NESTING_DEPTH",
    "NOT_FOUND",
    "ClientMessage",
    "Codec",
    "JsonCodec",
    "encode_error",
    "encode_push",
    "encode_reply",
    "encode_stream_push",
    "error_object",
    "parse_client_message",
    "select_subprotocol",
]

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
"""1 MiB, counted in UTF-8 bytes: a larger frame is dropped."""

MAX_NESTING_DEPTH = 254
"""Deepest nesting of arrays and objects in a JSON frame, the frame's own object counted.

The deepest orjson encodes, so whatever is parsed can be echoed (a reply or push is no
deeper than the frame its data came from); a deeper frame is dropped like invalid JSON.
"""

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
    """The default codec: JSON through orjson, UTF-8 text frames.

    Two cases orjson refuses take a slower path through the standard library: strings
    with lone surrogates (a JavaScript string cut inside an emoji, valid JSON as
    ``"\\ud83d"``) are parsed, and encoded back as the same ASCII escapes. Frames nested
    deeper than ``MAX_NESTING_DEPTH`` are refused.
    """

    binary = False

    @staticmethod
    def decode(raw: str | bytes, /) -> Any:
        """Parse JSON text or UTF-8 bytes.

        Raises:
            ValueError: invalid JSON, or nested deeper than ``MAX_NESTING_DEPTH``.
        """
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if not _has_surrogate_escape(raw):
                raise
            obj = _loads_escaped(raw)
            if len(raw) >= _MIN_TOO_DEEP_LEN and _deeper_than(obj, MAX_NESTING_DEPTH):
                raise ValueError(_TOO_DEEP) from None
            return obj
        # orjson parses 1024 levels but encodes exactly MAX_NESTING_DEPTH (a test pins it):
        # its encoder is the depth check, at a tenth of the parse cost, and only a frame
        # long enough to hold that many brackets needs it.
        if len(raw) >= _MIN_TOO_DEEP_LEN:
            try:
                orjson.dumps(obj)
            except orjson.JSONEncodeError:
                raise ValueError(_TOO_DEEP) from None
        return obj

    @staticmethod
    def encode(message: dict[str, Any], /) -> bytes:
        """Serialise to compact UTF-8 JSON (non-string dict keys are stringified).

        Raises:
            TypeError: a value JSON cannot carry.
        """
        try:
            return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError as exc:
            if "surrogates" not in str(exc):
                raise
            escaped = _dumps_escaped(message)
            if escaped is None:
                raise
            return escaped


_TOO_DEEP = f"nested deeper than {MAX_NESTING_DEPTH} levels"
_MIN_TOO_DEEP_LEN = 2 * (MAX_NESTING_DEPTH + 1)
"""A frame nested deeper than the limit has at least this many brackets (and bytes)."""
_INT_RANGE = range(-(1 << 63), 1 << 64)
"""Integers orjson parses as int; it parses larger ones as float."""


def _has_surrogate_escape(raw: str | bytes) -> bool:
    if isinstance(raw, str):
        return "\\ud" in raw or "\\uD" in raw
    return b"\\ud" in raw or b"\\uD" in raw


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests more than ``limit`` arrays and objects (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 1)] if type(obj) in (dict, list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _parse_int(text: str) -> int | float:
    value = int(text)
    return value if value in _INT_RANGE else _parse_float(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads_escaped(raw: str | bytes) -> Any:
    """The standard library's parser, with orjson's rules for numbers (slow path)."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None


def _to_json_native(obj: Any) -> Any:
    # Types orjson knows and the standard library does not (dataclasses, datetimes, ...).
    return orjson.loads(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))


def _dumps_escaped(message: dict[str, Any]) -> bytes | None:
    """ASCII JSON with ``\\uXXXX`` escapes, lone surrogates included (slow path)."""
    try:
        text = json.dumps(
            message,
            ensure_ascii=True,
            separators=(",", ":"),
            allow_nan=False,
            default=_to_json_native,
        )
    except Exception:  # anything orjson could not encode either: its error is raised
        return None
    return text.encode("ascii")


@dataclass(slots=True)
class ClientMessage:
    """One parsed client frame.

    ``has_id`` is true when the frame carried an ``id`` key, whatever its value (also
    ``null``, ``false``, ``0`` or ``""``): such a message gets exactly one reply, which echoes
    ``id`` verbatim. ``idem`` is the frame's top-level ``"idem"`` (None when absent or
    ``null``): the key of an idempotent call. Treat it as read-only (it is not frozen only
    because frozen dataclasses are slow to create, and one is created per message).
    """

    event: str
    path: str
    data: Any = None
    id: Any = None
    has_id: bool = False
    raw: str | bytes = b""
    idem: Any = None


def parse_client_message(
    raw: str | bytes,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    decode: Callable[[str | bytes], Any] = JsonCodec.decode,
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
    return ClientMessage(
        event, path, obj.get("data"), obj.get("id"), "id" in obj, raw, obj.get("idem")
    )


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
    *,
    details: Sequence[Mapping[str, Any]] | None = None,
    retry_after: float | None = None,
) -> bytes:
    """Encode an error reply ``{"id", "error": {"code", "message", "details"?,
    "retry_after"?}}``.

    ``details`` (e.g. ``WsError.details``) and ``retry_after`` are left out when ``None``.
    """
    return encode({"id": message_id, "error": error_object(code, message, details, retry_after)})


def error_object(
    code: int,
    message: str,
    details: Sequence[Mapping[str, Any]] | None = None,
    retry_after: float | None = None,
) -> dict[str, Any]:
    """The ``error`` object of an error reply: ``{"code", "message", "details"?,
    "retry_after"?}`` (``details`` and ``retry_after`` left out when ``None``)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    if retry_after is not None:
        error["retry_after"] = retry_after
    return error


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


def encode_stream_push(
    event: str,
    path: str,
    data: Any,
    params: Mapping[str, str] | None,
    offset: int,
    encode: Callable[[dict[str, Any]], bytes] = JsonCodec.encode,
) -> bytes:
    """Encode a push of a history room: ``{"event", "path", "params"?, "data"?, "offset"}``
    (the same keys in the same order on every instance and in a replay)."""
    push: dict[str, Any] = {"event": event, "path": path}
    if params:
        push["params"] = params if type(params) is dict else dict(params)
    if data is not None:
        push["data"] = data
    push["offset"] = offset
    return encode(push)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_token(value: str) -> bool:
    """Whether ``value`` is an HTTP token, the syntax of a subprotocol name."""
    return _TOKEN.fullmatch(value) is not None


def select_subprotocol(offered: str, supported: Sequence[str] | None) -> str:
    """The subprotocol to answer a ``Sec-WebSocket-Protocol`` request header with.

    ``supported`` lists the server's subprotocols by preference: the first the client
    offers wins. None selects the client's first offer, whatever it is.

    Raises:
        ValueError: the header is not a comma-separated list of tokens, or it offers
            none of ``supported``.
    """
    offers = [offer.strip(" \t") for offer in offered.split(",")]
    if not all(map(is_token, offers)):
        raise ValueError("malformed Sec-WebSocket-Protocol header")
    if supported is None:
        return offers[0]
    for name in supported:
        if name in offers:
            return name
    raise ValueError("no supported subprotocol offered")
