"""RFC 6455 frame packing, checked against two decoders: a strict one written here from
the RFC, and aiohttp's own WebSocket reader."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

import pytest
from aiohttp import WSMsgType
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import WebSocketReader
from aiohttp.http_websocket import WSMessage
from hypothesis import given
from hypothesis import strategies as st

from wsevents._frames import (
    BINARY_HEADERS,
    MAX_CONTROL_PAYLOAD,
    MAX_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TEXT_HEADERS,
    encode_close,
    encode_frame,
    frame_header,
)

BOUNDARIES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 2**32 - 1, 2**32, MAX_PAYLOAD]
DATA_OPCODES = [OP_TEXT, OP_BINARY]


@dataclass(frozen=True)
class Header:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length: int
    size: int


def parse_header(data: bytes) -> Header:
    """Decode a frame header per RFC 6455 §5.2, refusing what a sender must not send."""
    first, second = data[0], data[1]
    flag = second & 0x7F
    if flag < 126:
        length, size = flag, 2
    elif flag == 126:
        (length,) = struct.unpack_from("!H", data, 2)
        size = 4
        assert length >= 126, "the minimal number of bytes MUST be used"
    else:
        (length,) = struct.unpack_from("!Q", data, 2)
        size = 10
        assert length >= 65536, "the minimal number of bytes MUST be used"
        assert length >> 63 == 0, "the most significant bit MUST be 0"
    assert len(data) >= size
    return Header(
        fin=bool(first & 0x80),
        rsv=(first >> 4) & 0x7,
        opcode=first & 0xF,
        masked=bool(second & 0x80),
        length=length,
        size=size,
    )


def expected_size(length: int) -> int:
    return 2 if length <= 125 else 4 if length <= 0xFFFF else 10


# -- the header, against the RFC ---------------------------------------------------------------


@pytest.mark.parametrize("opcode", DATA_OPCODES)
@pytest.mark.parametrize("length", BOUNDARIES)
def test_header_at_the_length_boundaries_decodes_to_the_length(opcode: int, length: int) -> None:
    header = frame_header(opcode, length)
    parsed = parse_header(header)
    assert parsed == Header(
        fin=True, rsv=0, opcode=opcode, masked=False, length=length, size=expected_size(length)
    )
    assert len(header) == parsed.size


def test_header_bytes_at_the_boundaries() -> None:
    # Spelled out once from RFC 6455 §5.2, independent of any decoder.
    assert frame_header(OP_TEXT, 0) == b"\x81\x00"
    assert frame_header(OP_TEXT, 125) == b"\x81\x7d"
    assert frame_header(OP_BINARY, 126) == b"\x82\x7e\x00\x7e"
    assert frame_header(OP_TEXT, 65535) == b"\x81\x7e\xff\xff"
    assert frame_header(OP_TEXT, 65536) == b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"
    assert frame_header(OP_BINARY, 2**32) == b"\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x00"


@given(st.sampled_from(DATA_OPCODES), st.integers(min_value=0, max_value=MAX_PAYLOAD))
def test_any_length_round_trips_through_the_header(opcode: int, length: int) -> None:
    parsed = parse_header(frame_header(opcode, length))
    assert (parsed.fin, parsed.rsv, parsed.masked) == (True, 0, False)
    assert (parsed.opcode, parsed.length, parsed.size) == (opcode, length, expected_size(length))


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
@pytest.mark.parametrize("length", [0, 1, MAX_CONTROL_PAYLOAD])
def test_control_headers_up_to_125_bytes(opcode: int, length: int) -> None:
    parsed = parse_header(frame_header(opcode, length))
    assert (parsed.fin, parsed.opcode, parsed.length, parsed.size) == (True, opcode, length, 2)


def test_header_tables_hold_the_short_headers() -> None:
    assert len(TEXT_HEADERS) == len(BINARY_HEADERS) == 126
    assert list(TEXT_HEADERS) == [frame_header(OP_TEXT, n) for n in range(126)]
    assert list(BINARY_HEADERS) == [frame_header(OP_BINARY, n) for n in range(126)]


# -- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [0x0, 0x3, 0x7, 0xB, 0xF, 0x10, 0x81, -1])
def test_opcodes_a_server_does_not_send_are_refused(opcode: int) -> None:
    # 0x0 (continuation) too: a frame built here is always whole.
    with pytest.raises(ValueError, match="opcode"):
        frame_header(opcode, 0)


@pytest.mark.parametrize("length", [-1, MAX_PAYLOAD + 1, 2**64])
def test_lengths_out_of_range_are_refused(length: int) -> None:
    with pytest.raises(ValueError, match="length out of range"):
        frame_header(OP_TEXT, length)


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
@pytest.mark.parametrize("length", [126, 65536])
def test_control_frames_over_125_bytes_are_refused(opcode: int, length: int) -> None:
    with pytest.raises(ValueError, match="control frame"):
        frame_header(opcode, length)
    with pytest.raises(ValueError, match="control frame"):
        encode_frame(opcode, b"x" * length)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 5000, 65536])
def test_close_codes_not_to_send_are_refused(code: int) -> None:
    with pytest.raises(ValueError, match="close code"):
        encode_close(code)


def test_close_reason_over_123_bytes_is_refused() -> None:
    assert len(encode_close(1000, b"r" * 123)) == 2 + 125
    with pytest.raises(ValueError, match="control frame"):
        encode_close(1000, b"r" * 124)


# -- whole frames, against aiohttp's reader ----------------------------------------------------


async def decode(data: bytes) -> list[WSMessage]:
    """Feed ``data`` to aiohttp's WebSocket reader (as a client reads a server) in two
    pieces, and return the messages it decodes."""
    from aiohttp._websocket.reader import WebSocketDataQueue

    loop = asyncio.get_running_loop()
    queue = WebSocketDataQueue(BaseProtocol(loop), 1 << 30, loop=loop)
    reader = WebSocketReader(queue, 0, compress=False, decode_text=True)
    cut = len(data) // 2
    for piece in (data[:cut], data[cut:]):
        failed, _ = reader.feed_data(piece)
        assert not failed, queue.exception()
    messages = []
    while queue._buffer:  # what the reader has decoded so far; read() would wait for more
        messages.append(await queue.read())
    return messages


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20])
async def test_aiohttp_reads_text_frames_of_every_header_size(length: int) -> None:
    payload = ("é" * (length // 2) + "x" * (length % 2)).encode()
    assert len(payload) == length
    [msg] = await decode(encode_frame(OP_TEXT, payload))
    assert (msg.type, msg.data) == (WSMsgType.TEXT, payload.decode())


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
async def test_aiohttp_reads_binary_frames(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    [msg] = await decode(encode_frame(OP_BINARY, payload))
    assert (msg.type, msg.data) == (WSMsgType.BINARY, payload)


async def test_aiohttp_reads_frames_back_to_back() -> None:
    sizes = [125, 126, 65535, 65536, 0]
    stream = b"".join(encode_frame(OP_BINARY, bytes([n % 251]) * n) for n in sizes)
    messages = await decode(stream)
    assert [(m.type, m.data) for m in messages] == [
        (WSMsgType.BINARY, bytes([n % 251]) * n) for n in sizes
    ]


@given(st.one_of(st.integers(0, 300), st.integers(65400, 65700)), st.sampled_from(DATA_OPCODES))
async def test_aiohttp_reads_any_length_near_the_boundaries(length: int, opcode: int) -> None:
    payload = b"a" * length
    [msg] = await decode(encode_frame(opcode, payload))
    if opcode == OP_TEXT:
        assert (msg.type, msg.data) == (WSMsgType.TEXT, payload.decode())
    else:
        assert (msg.type, msg.data) == (WSMsgType.BINARY, payload)


@pytest.mark.parametrize("length", [0, 1, 125])
@pytest.mark.parametrize(("opcode", "kind"), [(OP_PING, WSMsgType.PING), (OP_PONG, WSMsgType.PONG)])
async def test_aiohttp_reads_ping_and_pong(opcode: int, kind: WSMsgType, length: int) -> None:
    [msg] = await decode(encode_frame(opcode, b"p" * length))
    assert (msg.type, msg.data) == (kind, b"p" * length)


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, b""), (1009, b""), (1013, b"Slow consumer"), (4000, b"r" * 123)]
)
async def test_aiohttp_reads_the_close_code_and_reason(code: int, reason: bytes) -> None:
    [msg] = await decode(encode_close(code, reason))
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, code, reason.decode())
