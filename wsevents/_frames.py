"""RFC 6455 frames as a server writes them: whole (FIN set) and unmasked.

Pure: no I/O. The adapter writes these bytes straight to the transport, so sending stays
synchronous. Every frame built here is valid on its own: no continuation frames (nothing
is fragmented), control frames carry at most 125 bytes, lengths use the minimal encoding.
"""

from __future__ import annotations

import struct

__all__ = [
    "BINARY_HEADERS",
    "MAX_CONTROL_PAYLOAD",
    "MAX_PAYLOAD",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "TEXT_HEADERS",
    "encode_close",
    "encode_frame",
    "frame_header",
]

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_OPCODES = frozenset((OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

MAX_CONTROL_PAYLOAD = 125
"""Bytes a control frame (close, ping, pong) may carry."""
MAX_PAYLOAD = (1 << 63) - 1
"""The largest payload length: the most significant bit of the 64-bit length is 0."""

_FIN = 0x80
_PACK2 = struct.Struct("!BB").pack
_PACK4 = struct.Struct("!BBH").pack
_PACK10 = struct.Struct("!BBQ").pack
_PACK_CODE = struct.Struct("!H").pack
# Close codes an endpoint must not send: 1004 reserved; 1005, 1006, 1015 are only reported.
_UNSENDABLE_CLOSE_CODES = frozenset((1004, 1005, 1006, 1015))


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a whole, unmasked frame of ``length`` payload bytes.

    2 bytes up to 125, 4 bytes up to 65535, 10 bytes beyond.

    Raises:
        ValueError: an opcode other than text, binary, close, ping or pong; a negative
            length or one over `MAX_PAYLOAD`; a control frame over 125 bytes.
    """
    if opcode not in _OPCODES:
        raise ValueError(f"not a frame opcode a server sends: {opcode!r}")
    if length < 0 or length > MAX_PAYLOAD:
        raise ValueError(f"payload length out of range: {length}")
    if opcode >= OP_CLOSE and length > MAX_CONTROL_PAYLOAD:
        raise ValueError(f"control frame payload over {MAX_CONTROL_PAYLOAD} bytes: {length}")
    if length < 126:
        return _PACK2(_FIN | opcode, length)
    if length < 65536:
        return _PACK4(_FIN | opcode, 126, length)
    return _PACK10(_FIN | opcode, 127, length)


TEXT_HEADERS: tuple[bytes, ...] = tuple(frame_header(OP_TEXT, n) for n in range(126))
"""``TEXT_HEADERS[n]`` is ``frame_header(OP_TEXT, n)`` for ``n`` < 126 (the per-message path)."""
BINARY_HEADERS: tuple[bytes, ...] = tuple(frame_header(OP_BINARY, n) for n in range(126))
"""``BINARY_HEADERS[n]`` is ``frame_header(OP_BINARY, n)`` for ``n`` < 126."""


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A whole, unmasked frame: header and payload.

    Raises:
        ValueError: as `frame_header` (a control payload over 125 bytes included).
    """
    return frame_header(opcode, len(payload)) + payload


def encode_close(code: int, reason: bytes = b"") -> bytes:
    """A close frame with ``code`` and a UTF-8 ``reason`` of at most 123 bytes.

    Raises:
        ValueError: a code outside 1000-4999 or one only ever reported (1004, 1005, 1006,
            1015); a reason over 123 bytes.
    """
    if not 1000 <= code <= 4999 or code in _UNSENDABLE_CLOSE_CODES:
        raise ValueError(f"not a close code to send: {code!r}")
    return encode_frame(OP_CLOSE, _PACK_CODE(code) + reason)
