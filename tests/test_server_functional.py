"""The aiohttp adapter over real sockets: handshake, limits, bad frames, heartbeat, shutdown."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from wsevents import (
    WsApp,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
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


# -- frames -----------------------------------------------------------------------------------


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
    '{"event":"rpc","path":"/echo","id":1,"data":"\\ud800"}',
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
