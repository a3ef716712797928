"""The aiohttp adapter over real sockets: handshake, limits, bad frames, heartbeat, shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web

from wsevents import (
    WsApp,
    WsError,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.protocol import JsonCodec, encode_push
from wsevents.server import WS_APP, attach
from wsevents.testing import WsTestClient

TIMEOUT = 5.0
MIB = 1 << 20


def make_app(**options: Any) -> WsApp:
    options.setdefault("heartbeat", 0)
    ws = WsApp(**options)

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    @ws.on_message("rpc", "/size")
    def size() -> int:
        raw = use_ws_message().raw
        return len(raw.encode("utf-8") if isinstance(raw, str) else raw)

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().id

    return ws


async def serve(aiohttp_client: Any, ws: WsApp, path: str = "/ws") -> Any:
    return await aiohttp_client(attach(ws, web.Application(), path))


def sized_message(size: int, char: str = "x", message_id: int = 1) -> str:
    """A valid /size RPC whose UTF-8 encoding is exactly ``size`` bytes."""
    head = f'{{"event":"rpc","path":"/size","id":{message_id},"data":"'
    tail = '"}'
    room = size - len((head + tail).encode())
    count, rest = divmod(room, len(char.encode()))
    text = head + char * count + "x" * rest + tail
    assert len(text.encode()) == size
    return text


async def next_frame(sock: Any) -> Any:
    """The next data frame of a raw socket, decoded (control frames skipped)."""
    while True:
        msg = await sock.receive(timeout=TIMEOUT)
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return msg.json()
        assert msg.type in (WSMsgType.PING, WSMsgType.PONG), msg


# -- origin -----------------------------------------------------------------------------------


async def test_request_without_origin_is_allowed(aiohttp_client) -> None:
    client = await serve(aiohttp_client, make_app())
    sock = await client.ws_connect("/ws")
    await sock.send_json({"event": "rpc", "path": "/echo", "data": 1, "id": 1})
    assert await next_frame(sock) == {"id": 1, "data": 1}


async def test_same_host_origin_is_allowed(aiohttp_client) -> None:
    client = await serve(aiohttp_client, make_app())
    origin = f"http://{client.server.host}:{client.server.port}"
    for value in (origin, origin + "/", origin.upper()):
        sock = await client.ws_connect("/ws", headers={"Origin": value})
        await sock.send_json({"event": "rpc", "path": "/echo", "data": value, "id": 1})
        assert await next_frame(sock) == {"id": 1, "data": value}
        await sock.close()


async def test_foreign_origin_is_refused_with_403(aiohttp_client) -> None:
    ws = make_app()
    connects: list[str] = []
    ws.on_connect(lambda: connects.append(use_ws_connection().id))
    client = await serve(aiohttp_client, ws)
    port = client.server.port
    for origin in (
        "http://evil.example",
        f"http://evil.example:{port}",
        f"http://127.0.0.1:{port + 1}",
        f"http://localhost:{port}",
        "null",
        "not a url",
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect("/ws", headers={"Origin": origin})
        assert info.value.status == 403, origin
    assert connects == []
    assert ws.connections() == ()


async def test_allowed_origins_list_allows_only_those(aiohttp_client) -> None:
    ws = make_app(allowed_origins=["https://app.example.com", "http://localhost:3000/"])
    client = await serve(aiohttp_client, ws)
    for origin in ("https://app.example.com", "HTTPS://APP.EXAMPLE.COM/", "http://localhost:3000"):
        sock = await client.ws_connect("/ws", headers={"Origin": origin})
        await sock.send_json({"event": "rpc", "path": "/echo", "data": origin, "id": 1})
        assert await next_frame(sock) == {"id": 1, "data": origin}
        await sock.close()
    same_host = f"http://{client.server.host}:{client.server.port}"
    for origin in ("https://evil.example", "http://app.example.com", same_host):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect("/ws", headers={"Origin": origin})
        assert info.value.status == 403, origin


async def test_allowed_origins_star_allows_any(aiohttp_client) -> None:
    client = await serve(aiohttp_client, make_app(allowed_origins="*"))
    for origin in ("https://evil.example", "null"):
        sock = await client.ws_connect("/ws", headers={"Origin": origin})
        await sock.send_json({"event": "rpc", "path": "/echo", "data": origin, "id": 1})
        assert await next_frame(sock) == {"id": 1, "data": origin}
        await sock.close()


async def test_refused_origins_are_logged_as_rate_limited_warnings(aiohttp_client, caplog) -> None:
    client = await serve(aiohttp_client, make_app())
    with caplog.at_level(logging.WARNING, logger="wsevents"):
        for origin in ["http://evil.example"] * 20 + ["http://other.example"] * 3:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await client.ws_connect("/ws", headers={"Origin": origin})
        # A flood of random origins is capped too.
        for i in range(100):
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await client.ws_connect("/ws", headers={"Origin": f"http://evil{i}.example"})
    warnings = [r for r in caplog.records if r.name.startswith("wsevents")]
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert sum("'http://evil.example'" in r.getMessage() for r in warnings) == 1
    assert sum("'http://other.example'" in r.getMessage() for r in warnings) == 1
    assert 2 < len(warnings) <= 10
    assert all("allowed_origins" in r.getMessage() for r in warnings)


# -- subprotocols -----------------------------------------------------------------------------


def protocol_app(**options: Any) -> WsApp:
    ws = make_app(**options)

    @ws.on_message("rpc", "/subprotocol")
    def subprotocol() -> str | None:
        return use_ws_connection().subprotocol

    return ws


async def handshake(client: Any, protocol_header: str | None) -> tuple[int, dict[str, str]]:
    """A hand-written WebSocket handshake: the response's status and headers."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {client.server.host}:{client.server.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol_header is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol_header}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.close()
    await writer.wait_closed()
    status_line, *header_lines = head.decode().strip().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}


@pytest.mark.parametrize(
    ("offered", "selected"),
    [(("json",), "json"), (("v2", "json"), "v2"), (("json", "v2"), "json"), ((), None)],
)
async def test_by_default_the_first_protocol_the_client_offers_is_selected(
    aiohttp_client, offered, selected
) -> None:
    # A front end created with protocols: ['json'] aborts unless one comes back.
    client = await serve(aiohttp_client, protocol_app())
    sock = await client.ws_connect("/ws", protocols=offered)
    assert sock.protocol == selected
    await sock.send_json({"event": "rpc", "path": "/subprotocol", "id": 1})
    assert await next_frame(sock) == {"id": 1, "data": selected}


async def test_handshake_response_header_names_the_selected_subprotocol(aiohttp_client) -> None:
    client = await serve(aiohttp_client, protocol_app(subprotocols=["v2", "json"]))
    assert (await handshake(client, "json"))[1]["sec-websocket-protocol"] == "json"
    assert (await handshake(client, "json, v2"))[1]["sec-websocket-protocol"] == "v2"
    status, headers = await handshake(client, None)
    assert status == 101
    assert "sec-websocket-protocol" not in headers


async def test_subprotocols_option_selects_in_server_preference_order(aiohttp_client) -> None:
    client = await serve(aiohttp_client, protocol_app(subprotocols=("v2", "json")))
    for offered, selected in [
        (("json", "v2"), "v2"),
        (("json",), "json"),
        (("x", "json", "y"), "json"),
        ((), None),
    ]:
        sock = await client.ws_connect("/ws", protocols=offered)
        assert sock.protocol == selected, offered
        await sock.send_json({"event": "rpc", "path": "/subprotocol", "id": 1})
        assert await next_frame(sock) == {"id": 1, "data": selected}
        await sock.close()


@pytest.mark.parametrize("subprotocols", [["v2", "json"], []])
async def test_client_offering_no_supported_subprotocol_is_refused_with_400(
    aiohttp_client, subprotocols
) -> None:
    ws = protocol_app(subprotocols=subprotocols)
    connects: list[str] = []
    ws.on_connect(lambda: connects.append(use_ws_connection().id))
    client = await serve(aiohttp_client, ws)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws", protocols=("xml", "v1"))
    assert info.value.status == 400
    assert connects == []
    sock = await client.ws_connect("/ws")  # offering none is fine
    await sock.send_json({"event": "rpc", "path": "/subprotocol", "id": 1})
    assert await next_frame(sock) == {"id": 1, "data": None}


@pytest.mark.parametrize("header", ["", " ", "json,", ",json", "json, ,v2", "a b", "j(son)", "é"])
async def test_malformed_subprotocol_header_is_refused_with_400(aiohttp_client, header) -> None:
    client = await serve(aiohttp_client, protocol_app())
    status, headers = await handshake(client, header)
    assert status == 400
    assert "sec-websocket-protocol" not in headers


@pytest.mark.parametrize("subprotocols", [[""], ["a b"], ["json", "x,y"]])
def test_subprotocols_option_must_be_tokens(subprotocols) -> None:
    with pytest.raises(ValueError, match="subprotocol"):
        WsApp(subprotocols=subprotocols)


def test_subprotocols_option_accepts_one_string() -> None:
    assert WsApp(subprotocols="json").subprotocols == ("json",)
    assert WsApp().subprotocols is None


# -- message and frame size -------------------------------------------------------------------


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
async def test_message_of_exactly_1_mib_is_accepted(ws_client, char) -> None:
    client = await ws_client(make_app())
    await client.send_raw(sized_message(MIB, char))
    assert await client.next_message(timeout=10) == {"id": 1, "data": MIB}


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
async def test_message_of_1_mib_plus_one_byte_is_dropped_and_socket_stays_open(
    ws_client, char
) -> None:
    client = await ws_client(make_app())
    too_big = sized_message(MIB + 1, char)
    if char != "x":
        assert len(too_big) < MIB  # only its UTF-8 size is over the limit
    await client.send_raw(too_big)
    await client.send("rpc", "/echo", "still open", message_id=2)
    assert await client.next_message(timeout=10) == {"id": 2, "data": "still open"}
    assert client.close_code is None


async def test_binary_message_limit_counts_bytes(ws_client) -> None:
    client = await ws_client(make_app())
    await client.send_raw(sized_message(MIB, "é", message_id=1).encode())
    await client.send_raw(sized_message(MIB + 1, "é", message_id=2).encode())
    await client.send("rpc", "/echo", "after", message_id=3)
    assert await client.next_message(timeout=10) == {"id": 1, "data": MIB}
    assert await client.next_message(timeout=10) == {"id": 3, "data": "after"}


async def test_message_of_5_mib_is_dropped_not_closed(ws_client) -> None:
    ws = make_app()
    client = await ws_client(ws)
    bystander = await ws_client(ws)
    await client.send_raw(sized_message(5 * MIB))
    assert await bystander.call("rpc", "/echo", "served") == "served"
    await client.send("rpc", "/echo", "still open", message_id=2)
    assert await client.next_message(timeout=10) == {"id": 2, "data": "still open"}


async def test_frame_over_max_frame_size_closes_with_1009(aiohttp_client) -> None:
    ws = make_app(max_message_size=64, max_frame_size=128)
    client = await serve(aiohttp_client, ws)
    sock = await client.ws_connect("/ws")
    bystander = await client.ws_connect("/ws")
    # Over the message limit, under the frame limit: dropped, socket kept.
    await sock.send_str(sized_message(100))
    await sock.send_json({"event": "rpc", "path": "/size", "id": 2})
    assert (await next_frame(sock))["id"] == 2
    await sock.send_str(sized_message(200))
    msg = await sock.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    await bystander.send_json({"event": "rpc", "path": "/echo", "data": "ok", "id": 1})
    assert await next_frame(bystander) == {"id": 1, "data": "ok"}


@pytest.mark.parametrize("size", [4 * MIB, 16 * MIB])
async def test_client_sending_a_frame_far_over_max_frame_size_reads_1009(
    aiohttp_client, size
) -> None:
    # The server must not reset the connection while the client is still sending, or the
    # client never reads the close frame and sees an abnormal 1006.
    ws = make_app(max_message_size=1024, max_frame_size=64 * 1024)
    gone: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    ws.on_disconnect(lambda: gone.set_result(use_ws_connection().id))
    client = await serve(aiohttp_client, ws)
    sock = await client.ws_connect("/ws")
    await sock.send_json({"event": "rpc", "path": "/whoami", "id": 1})
    sender_id = (await next_frame(sock))["data"]
    bystander = await client.ws_connect("/ws")
    await sock.send_str(sized_message(size))
    msg = await sock.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    assert sock.close_code == 1009
    assert await asyncio.wait_for(gone, TIMEOUT) == sender_id
    await bystander.send_json({"event": "rpc", "path": "/echo", "data": "ok", "id": 1})
    assert await next_frame(bystander) == {"id": 1, "data": "ok"}


async def test_client_going_silent_inside_an_oversize_frame_is_closed_in_bounded_time(
    aiohttp_client,
) -> None:
    ws = make_app(max_message_size=1024, max_frame_size=64 * 1024)
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ws.on_disconnect(lambda: gone.set_result(None))
    client = await serve(aiohttp_client, ws)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {client.server.host}:{client.server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    # A masked text frame announcing 8 MiB, of which only 1 MiB ever comes.
    writer.write(b"\x81\xff" + (8 * MIB).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * MIB)
    # The close frame 1009, then the end of the connection (EOF), not a wait forever.
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"\x88\x02\x03\xf1"
    writer.close()
    await asyncio.wait_for(gone, TIMEOUT)


# -- frames -----------------------------------------------------------------------------------


FRAME_BOUNDARIES = [125, 126, 127, 65535, 65536]
"""Payload lengths at the edges of the 2-, 4- and 10-byte frame headers."""


class BinaryJsonCodec(JsonCodec):
    binary = True


def sized_push_app(**options: Any) -> WsApp:
    """/push: sends a push whose encoded message is exactly ``data`` bytes."""
    ws = make_app(**options)
    overhead = len(encode_push("push", "/sized", ""))

    @ws.on_message("rpc", "/push")
    def push() -> int:
        size = use_ws_message().data
        use_ws_connection().send("push", "/sized", "x" * (size - overhead))
        return int(size)

    return ws


@pytest.mark.parametrize(("compress", "binary"), [(False, False), (False, True), (True, False)])
async def test_pushes_at_the_frame_header_boundaries_arrive_intact(
    aiohttp_client, compress: bool, binary: bool
) -> None:
    codec = BinaryJsonCodec() if binary else JsonCodec()
    client = await serve(aiohttp_client, sized_push_app(compress=compress, codec=codec))
    sock = await client.ws_connect("/ws", compress=15 if compress else 0)
    assert sock.compress == (15 if compress else 0)
    for size in FRAME_BOUNDARIES:
        await sock.send_json({"event": "rpc", "path": "/push", "data": size, "id": size})
        push = await sock.receive(timeout=TIMEOUT)
        assert push.type is (WSMsgType.BINARY if binary else WSMsgType.TEXT)
        raw = push.data.encode() if isinstance(push.data, str) else push.data
        assert len(raw) == size
        assert orjson.loads(raw) == {
            "event": "push",
            "path": "/sized",
            "data": "x" * (size - len(encode_push("push", "/sized", ""))),
        }
        reply = await sock.receive(timeout=TIMEOUT)
        assert reply.json() == {"id": size, "data": size}
    await sock.close()


async def test_push_frames_on_the_wire_carry_the_minimal_header(aiohttp_client) -> None:
    client = await serve(aiohttp_client, sized_push_app())
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {client.server.host}:{client.server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    # RFC 6455 §5.2, spelled out: FIN and text, unmasked, the shortest length encoding.
    expected_headers = {
        125: b"\x81\x7d",
        126: b"\x81\x7e" + (126).to_bytes(2, "big"),
        127: b"\x81\x7e" + (127).to_bytes(2, "big"),
        65535: b"\x81\x7e\xff\xff",
        65536: b"\x81\x7f" + (65536).to_bytes(8, "big"),
    }
    for size in FRAME_BOUNDARIES:
        request = orjson.dumps({"event": "rpc", "path": "/push", "data": size, "id": 1})
        # A masked text frame with the all-zero mask (the payload stays as it is).
        writer.write(b"\x81" + bytes([0x80 | len(request)]) + b"\0\0\0\0" + request)
        header = expected_headers[size]
        assert await asyncio.wait_for(reader.readexactly(len(header)), TIMEOUT) == header
        push = orjson.loads(await asyncio.wait_for(reader.readexactly(size), TIMEOUT))
        assert (push["event"], push["path"]) == ("push", "/sized")
        reply = orjson.dumps({"id": 1, "data": size})
        frame = await asyncio.wait_for(reader.readexactly(2 + len(reply)), TIMEOUT)
        assert frame == b"\x81" + bytes([len(reply)]) + reply
    writer.close()
    await writer.wait_closed()


async def test_binary_frames_are_parsed_like_text_and_replied_as_text(aiohttp_client) -> None:
    client = await serve(aiohttp_client, make_app())
    sock = await client.ws_connect("/ws")
    await sock.send_bytes(b'{"event":"rpc","path":"/echo","data":"bin\xc3\xa9","id":1}')
    msg = await sock.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.TEXT
    assert msg.json() == {"id": 1, "data": "biné"}


BAD_FRAMES: list[str | bytes] = [
    "",
    "{",
    "not json",
    '{"event":"rpc","path":"/echo","id":1,}',
    '{"event":"rpc","path":"/echo","id":1,"data":NaN}',
    '{"event":"rpc","path":"/echo","id":1,"data":"\\ud800}',
    '{"event":"rpc","path":"/echo","id":1,"data":NaN,"x":"\\ud800"}',
    '{"event":"rpc","path":"/echo","id":1,"data":' + "[" * 300 + '"\\ud800"' + "]" * 300 + "}",
    "[]",
    '[{"event":"rpc","path":"/echo","id":1}]',
    '"a string"',
    "42",
    "null",
    "true",
    '{"event":1,"path":"/echo","id":1}',
    '{"event":"rpc","path":null,"id":1}',
    '{"event":"rpc","path":["/echo"],"id":1}',
    '{"event":{"e":"rpc"},"path":"/echo","id":1}',
    '{"event":"rpc","id":1}',
    '{"path":"/echo","id":1}',
    '{"id":1}',
    '{"event":"rpc","path":"/echo","id":1,"data":' + "[" * 100_000 + "]" * 100_000 + "}",
    "[" * 200_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    b'{"event":"rpc","path":"/echo","id":1,"data":"\xff\xfe"}',
    b"\x00\x01\x02\xff",
    b"\x80" * 1000,
    "x" * (2 * MIB),
]


async def test_bad_frames_are_dropped_without_disturbing_anyone(ws_client, caplog) -> None:
    ws = make_app()
    sender = await ws_client(ws)
    bystander = await ws_client(ws)
    for i, frame in enumerate(BAD_FRAMES):
        await sender.send_raw(frame)
        assert await bystander.call("rpc", "/echo", i) == i
    await sender.send("rpc", "/echo", "after", message_id="last")
    # None of the bad frames (most with an id) got a reply: this is the first frame.
    assert await sender.next_message() == {"id": "last", "data": "after"}
    assert sender.close_code is None
    assert "Traceback" not in caplog.text


async def test_text_frame_with_invalid_utf8_closes_only_that_connection_1007(
    aiohttp_client,
) -> None:
    ws = make_app()
    client = await serve(aiohttp_client, ws)
    sock = await client.ws_connect("/ws")
    bystander = await client.ws_connect("/ws")
    await sock.send_frame(b'{"event":"rpc","path":"/echo","data":"\xff","id":1}', WSMsgType.TEXT)
    msg = await sock.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1007)
    await bystander.send_json({"event": "rpc", "path": "/echo", "data": "ok", "id": 1})
    assert await next_frame(bystander) == {"id": 1, "data": "ok"}
    fresh = await client.ws_connect("/ws")
    await fresh.send_json({"event": "rpc", "path": "/echo", "data": "new", "id": 1})
    assert await next_frame(fresh) == {"id": 1, "data": "new"}


# -- logging ----------------------------------------------------------------------------------


def server_lines(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("wsevents")]


async def test_open_and_close_are_logged_at_debug_with_the_connection_id(
    aiohttp_client, caplog
) -> None:
    ws = make_app()
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ws.on_disconnect(lambda: gone.set_result(None))
    client = await serve(aiohttp_client, ws)
    with caplog.at_level(logging.DEBUG, logger="wsevents"):
        sock = await client.ws_connect("/ws")
        await sock.send_json({"event": "rpc", "path": "/whoami", "id": 1})
        conn_id = (await next_frame(sock))["data"]
        await sock.close(code=4001, message=b"bye")
        await asyncio.wait_for(gone, TIMEOUT)
    lines = [line for line in server_lines(caplog) if conn_id in line]
    assert len(lines) == 2, lines
    assert "open" in lines[0]
    assert "closed" in lines[1] and "4001" in lines[1]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "wsevents.server")


async def test_server_side_close_is_logged_with_its_code(aiohttp_client, caplog) -> None:
    ws = make_app()
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ws.on_disconnect(lambda: gone.set_result(None))

    @ws.on_message("rpc", "/kick")
    def kick() -> None:
        use_ws_connection().close(4002, "kicked")

    client = await serve(aiohttp_client, ws)
    with caplog.at_level(logging.DEBUG, logger="wsevents"):
        sock = await client.ws_connect("/ws")
        await sock.send_json({"event": "rpc", "path": "/kick"})
        msg = await sock.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4002)
        await asyncio.wait_for(gone, TIMEOUT)
    closed = [line for line in server_lines(caplog) if "closed" in line]
    assert len(closed) == 1 and "4002" in closed[0] and "server" in closed[0], closed


async def test_refused_connections_are_logged_at_debug_with_the_reason(
    aiohttp_client, caplog
) -> None:
    ws = make_app(subprotocols=["v2"])

    @ws.on_connect
    def refuse() -> None:
        if use_ws_connection().request.query.get("token") != "ok":  # type: ignore[union-attr]
            raise WsError(401, "Token expired")

    client = await serve(aiohttp_client, ws)
    with caplog.at_level(logging.DEBUG, logger="wsevents"):
        sock = await client.ws_connect("/ws")
        msg = await sock.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect("/ws?token=ok", protocols=("v1",))
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect("/ws?token=ok", headers={"Origin": "http://evil.example"})
    lines = server_lines(caplog)
    refused = [line for line in lines if "refused" in line]
    assert any("1008" in line and "Token expired" in line for line in refused), lines
    assert any("subprotocol" in line for line in refused), lines
    assert any("http://evil.example" in line for line in refused), lines


# -- heartbeat --------------------------------------------------------------------------------


async def test_heartbeat_keeps_clients_that_answer_pings(aiohttp_client) -> None:
    ws = make_app(heartbeat=0.2, heartbeat_timeout=0.2)
    client = await serve(aiohttp_client, ws)
    # aiohttp answers pings by itself while a reader is waiting.
    autoping = WsTestClient(await client.ws_connect("/ws"))
    cid = await autoping.call("rpc", "/whoami")
    # A second client answers pings by hand and counts the heartbeat cycles.
    sock = await client.ws_connect("/ws", autoping=False)
    pings = 0
    while pings < 4:  # four full ping/timeout cycles
        msg = await sock.receive(timeout=TIMEOUT)
        assert msg.type is WSMsgType.PING, msg
        pings += 1
        await sock.pong(msg.data)
    assert await autoping.call("rpc", "/whoami") == cid
    assert len(ws.connections()) == 2
    await sock.send_json({"event": "rpc", "path": "/echo", "data": "alive", "id": 1})
    assert await next_frame(sock) == {"id": 1, "data": "alive"}
    await autoping.close()


async def test_heartbeat_drops_a_client_that_ignores_pings(aiohttp_client) -> None:
    ws = make_app(heartbeat=0.2, heartbeat_timeout=0.2)
    client = await serve(aiohttp_client, ws)
    sock = await client.ws_connect("/ws", autoping=False)
    started = time.monotonic()
    pings = 0
    while True:
        msg = await sock.receive(timeout=TIMEOUT)
        if msg.type is not WSMsgType.PING:
            break
        pings += 1  # and never answer
    assert msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSE, WSMsgType.ERROR), msg
    assert time.monotonic() - started < 3.0
    assert 1 <= pings <= 3
    assert ws.connections() == () or all(c.closed for c in ws.connections())


async def test_heartbeat_keeps_a_client_whose_reading_is_paused_by_max_in_flight(
    aiohttp_client,
) -> None:
    ws = make_app(heartbeat=0.2, heartbeat_timeout=0.2, max_in_flight=1)
    gate = asyncio.Event()

    @ws.on_message("rpc", "/block")
    async def block() -> str:
        await gate.wait()
        return "released"

    client = await serve(aiohttp_client, ws)
    sock = await client.ws_connect("/ws", autoping=False)
    await sock.send_json({"event": "rpc", "path": "/block", "id": 1})
    pings = 0
    while pings < 4:  # the reader is paused: the server cannot see these pongs yet
        msg = await sock.receive(timeout=TIMEOUT)
        assert msg.type is WSMsgType.PING, msg
        pings += 1
        await sock.pong(msg.data)
    gate.set()
    assert await next_frame(sock) == {"id": 1, "data": "released"}
    await sock.send_json({"event": "rpc", "path": "/echo", "data": "alive", "id": 2})
    assert await next_frame(sock) == {"id": 2, "data": "alive"}


async def test_client_ping_gets_a_pong(aiohttp_client) -> None:
    client = await serve(aiohttp_client, make_app())
    sock = await client.ws_connect("/ws", autoping=False)
    await sock.ping(b"are you there")
    msg = await sock.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")


# -- compression ------------------------------------------------------------------------------


async def test_compression_is_off_by_default_even_when_offered(aiohttp_client) -> None:
    client = await serve(aiohttp_client, make_app())
    sock = await client.ws_connect("/ws", compress=15)
    assert sock.compress == 0
    assert "Sec-WebSocket-Extensions" not in sock._response.headers
    await sock.send_json({"event": "rpc", "path": "/echo", "data": "plain", "id": 1})
    assert await next_frame(sock) == {"id": 1, "data": "plain"}


async def test_compression_on_negotiates_deflate_and_messages_round_trip(aiohttp_client) -> None:
    ws = make_app(compress=True)

    @ws.on_message("rpc", "/push")
    async def push() -> str:
        conn = use_ws_connection()
        for i in range(20):
            conn.send("tick", "/push", {"i": i, "pad": "z" * 5000})
        await use_ws_rooms().join()
        await use_ws_rooms().broadcast("room", "all", exclude_self=False)
        return "pushed"

    client = await serve(aiohttp_client, ws)
    sock = await client.ws_connect("/ws", compress=15)
    assert sock.compress == 15
    test_client = WsTestClient(sock)
    data = {"text": "compressible " * 10_000}
    assert await test_client.call("rpc", "/echo", data) == data
    await test_client.send("rpc", "/push", message_id="p")
    frames = [await test_client.next_message() for _ in range(22)]
    assert [f["data"]["i"] for f in frames[:20]] == list(range(20))
    assert frames[20] == {"event": "room", "path": "/push", "data": "all"}
    assert frames[21] == {"id": "p", "data": "pushed"}
    plain = await client.ws_connect("/ws")  # a client that does not offer it
    assert plain.compress == 0
    await plain.send_json({"event": "rpc", "path": "/echo", "data": "x", "id": 1})
    assert await next_frame(plain) == {"id": 1, "data": "x"}
    await test_client.close()


# -- shutdown ---------------------------------------------------------------------------------


def add_slow_handler(ws: WsApp) -> tuple[asyncio.Event, asyncio.Event, list[str]]:
    started, gate = asyncio.Event(), asyncio.Event()
    effects: list[str] = []

    @ws.on_message("rpc", "/slow")
    async def slow() -> str:
        started.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            effects.append("cancelled")
            raise
        effects.append("finished")
        return "late"

    return started, gate, effects


async def test_close_after_listen_sends_1001_and_lets_a_running_handler_finish() -> None:
    ws = make_app(shutdown_timeout=5.0)
    started, gate, effects = add_slow_handler(ws)
    host, port = await ws.listen(port=0)
    assert host == "127.0.0.1" and port > 0
    url = f"http://{host}:{port}/ws"
    async with aiohttp.ClientSession() as session:
        sock = await session.ws_connect(url)
        await sock.send_json({"event": "rpc", "path": "/slow", "id": 1})
        await asyncio.wait_for(started.wait(), TIMEOUT)
        closing = asyncio.create_task(ws.close())
        msg = await sock.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (
            WSMsgType.CLOSE,
            1001,
            "Server shutting down",
        )
        with pytest.raises(aiohttp.ClientError):
            await session.ws_connect(url)
        assert not closing.done()  # still waiting for the handler
        gate.set()
        await asyncio.wait_for(closing, TIMEOUT)
    assert effects == ["finished"]
    assert ws.connections() == ()


async def test_handler_running_past_shutdown_timeout_is_cancelled() -> None:
    ws = make_app(shutdown_timeout=0.2)
    started, _gate, effects = add_slow_handler(ws)
    host, port = await ws.listen(port=0)
    async with aiohttp.ClientSession() as session:
        sock = await session.ws_connect(f"http://{host}:{port}/ws")
        await sock.send_json({"event": "rpc", "path": "/slow", "id": 1})
        await asyncio.wait_for(started.wait(), TIMEOUT)
        began = time.monotonic()
        await asyncio.wait_for(ws.close(), TIMEOUT)
        assert time.monotonic() - began < 3.0
        msg = await sock.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    assert effects == ["cancelled"]


async def test_aiohttp_app_cleanup_closes_clients_with_1001(aiohttp_server) -> None:
    ws = make_app()
    started, gate, effects = add_slow_handler(ws)
    server = await aiohttp_server(attach(ws, web.Application()))
    async with aiohttp.ClientSession() as session:
        sock = await session.ws_connect(server.make_url("/ws"))
        await sock.send_json({"event": "rpc", "path": "/slow", "id": 1})
        await asyncio.wait_for(started.wait(), TIMEOUT)
        closing = asyncio.create_task(server.close())
        msg = await sock.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (
            WSMsgType.CLOSE,
            1001,
            "Server shutting down",
        )
        gate.set()
        await asyncio.wait_for(closing, TIMEOUT)
    assert effects == ["finished"]


async def test_new_connection_during_shutdown_is_refused_with_503(aiohttp_client) -> None:
    ws = make_app()
    client = await serve(aiohttp_client, ws)
    sock = await client.ws_connect("/ws")
    await ws.shutdown()
    msg = await sock.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "Server shutting down")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 503


# -- mounting ---------------------------------------------------------------------------------


async def test_attach_mounts_next_to_http_routes_and_stores_the_app(aiohttp_client) -> None:
    ws = make_app()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "ws": len(_.app[WS_APP].connections())})

    app = web.Application()
    app.router.add_get("/health", health)
    assert ws.attach(app, "/socket") is app
    assert app[WS_APP] is ws
    client = await aiohttp_client(app)
    sock = await client.ws_connect("/socket")
    await sock.send_json({"event": "rpc", "path": "/echo", "data": "mounted", "id": 1})
    assert await next_frame(sock) == {"id": 1, "data": "mounted"}
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"ok": True, "ws": 1}
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 404


async def test_plain_http_get_on_the_ws_path_gets_4xx(aiohttp_client) -> None:
    client = await serve(aiohttp_client, make_app())
    resp = await client.get("/ws")
    assert 400 <= resp.status < 500
    resp = await client.get("/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert 400 <= resp.status < 500
    resp = await client.post("/ws")
    assert 400 <= resp.status < 500
    sock = await client.ws_connect("/ws")  # the server is fine
    await sock.send_json({"event": "rpc", "path": "/echo", "data": "ok", "id": 1})
    assert await next_frame(sock) == {"id": 1, "data": "ok"}


# -- slow consumer ----------------------------------------------------------------------------


async def test_slow_consumer_is_closed_1013_while_the_room_keeps_receiving(
    aiohttp_client,
) -> None:
    ws = make_app(max_send_buffer=256 * 1024)
    pad = "p" * (64 * 1024)

    @ws.on_message("rpc", "/join")
    async def join() -> str:
        await use_ws_rooms().join("room")
        return use_ws_connection().id

    @ws.on_message("rpc", "/flood")
    async def flood() -> dict[str, Any]:
        victim = use_ws_server().get_connection(use_ws_message().data)
        assert victim is not None
        sent = after_close = 0
        report = None
        for i in range(1000):  # at most 64 MiB
            report = await use_ws_rooms().broadcast("flood", {"i": i, "pad": pad}, room="room")
            sent += 1
            await asyncio.sleep(0)  # let the healthy reader run (same loop in this test)
            if victim.closed:
                after_close += 1
                if after_close > 20:
                    break
        assert report is not None
        return {"sent": sent, "victim_closed": victim.closed, "last": [report.sent, report.dropped]}

    client = await serve(aiohttp_client, ws)
    healthy = WsTestClient(await client.ws_connect("/ws"))
    sender = WsTestClient(await client.ws_connect("/ws"))
    victim = await client.ws_connect("/ws")
    await victim.send_json({"event": "rpc", "path": "/join", "id": 1})
    victim_id = (await next_frame(victim))["data"]
    await healthy.call("rpc", "/join")
    await sender.call("rpc", "/join")
    # The victim stops reading; the sender floods the room (sender excluded).
    result = await sender.call("rpc", "/flood", victim_id, timeout=30)
    assert result["victim_closed"] is True
    assert result["last"] == [1, 1]  # the healthy member got it, the victim's was dropped
    received = [(await healthy.next_push())["data"]["i"] for _ in range(result["sent"])]
    assert received == list(range(result["sent"]))
    # The victim reads again: what was buffered, then the close frame.
    got = 0
    while True:
        msg = await victim.receive(timeout=TIMEOUT)
        if msg.type is not WSMsgType.TEXT:
            break
        got += 1
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1013, "Slow consumer")
    assert got < result["sent"]
    assert await healthy.call("rpc", "/echo", "healthy") == "healthy"
    fresh = WsTestClient(await client.ws_connect("/ws"))
    assert await fresh.call("rpc", "/echo", "fresh") == "fresh"
    for test_client in (healthy, sender, fresh):
        await test_client.close()


async def test_slow_consumer_that_never_reads_again_is_dropped_after_the_close_timeout(
    aiohttp_client, monkeypatch
) -> None:
    import wsevents.server

    monkeypatch.setattr(wsevents.server, "_CLOSE_TIMEOUT", 0.2)
    ws = make_app(max_send_buffer=256 * 1024)
    pad = "p" * (64 * 1024)
    disconnected = asyncio.Event()

    @ws.on_disconnect
    def gone() -> None:
        disconnected.set()

    @ws.on_message("rpc", "/flood")
    async def flood() -> bool:
        victim = use_ws_server().get_connection(use_ws_message().data)
        assert victim is not None
        for i in range(1000):  # at most 64 MiB
            victim.send("flood", "/f", {"i": i, "pad": pad})
            await asyncio.sleep(0)
            if victim.closed:
                return True
        return False

    client = await serve(aiohttp_client, ws)
    sender = WsTestClient(await client.ws_connect("/ws"))
    victim = await client.ws_connect("/ws")
    await victim.send_json({"event": "rpc", "path": "/whoami", "id": 1})
    victim_id = (await next_frame(victim))["data"]
    assert await sender.call("rpc", "/flood", victim_id, timeout=30) is True
    # The victim never reads again: the server must not wait for it forever.
    await asyncio.wait_for(disconnected.wait(), TIMEOUT)
    assert ws.get_connection(victim_id) is None
    await sender.close()
    await victim.close()


async def test_close_after_listen_stops_the_server_without_calling_close_again() -> None:
    ws = make_app()
    calls: list[str] = []
    close = ws.close

    async def counted_close() -> None:
        calls.append("close")
        await close()

    ws.close = counted_close  # type: ignore[method-assign]
    host, port = await ws.listen(port=0)
    assert host == "127.0.0.1" and port > 0
    await ws.close()
    # The server's cleanup releases the app itself: no close() -> cleanup -> close() cycle.
    assert calls == ["close"]
    assert ws.closing
