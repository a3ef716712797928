"""Slow consumers over real sockets: bounded buffers, the room never stalls."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType, web

from wsevents import WsApp, use_ws_connection, use_ws_message, use_ws_rooms, use_ws_server
from wsevents.connection import SLOW_CONSUMER_CLOSE_CODE
from wsevents.server import attach
from wsevents.testing import WsTestClient

BROADCASTS = 1000
PAD = "p" * (16 * 1024)  # 1000 x 16 KiB = 16 MiB: far more than socket buffers hold
MAX_SEND_BUFFER = 256 * 1024


async def test_a_reader_that_stops_is_closed_while_1000_broadcasts_reach_the_others(
    aiohttp_client: Any,
) -> None:
    ws = WsApp(heartbeat=0, max_send_buffer=MAX_SEND_BUFFER)
    peak: dict[str, int] = {"buffered": 0}

    @ws.on_message("rpc", "/join")
    async def join() -> str:
        await use_ws_rooms().join("room")
        return use_ws_connection().id

    @ws.on_message("rpc", "/flood")
    async def flood() -> dict[str, Any]:
        victim = use_ws_server().get_connection(use_ws_message().data)
        assert victim is not None
        dropped = 0
        for i in range(BROADCASTS):
            report = await use_ws_rooms().broadcast("flood", {"i": i, "pad": PAD}, room="room")
            dropped += report.dropped
            peak["buffered"] = max(peak["buffered"], victim._socket.buffer_size())
            await asyncio.sleep(0)  # the healthy reader shares this loop in the test
        return {"dropped": dropped, "victim_closed": victim.closed}

    client = await aiohttp_client(attach(ws, web.Application()))
    healthy = [WsTestClient(await client.ws_connect("/ws")) for _ in range(2)]
    sender = WsTestClient(await client.ws_connect("/ws"))
    victim = await client.ws_connect("/ws")
    await victim.send_json({"event": "rpc", "path": "/join", "id": 1})
    victim_id = (await victim.receive_json(timeout=5))["data"]
    for member in healthy:
        await member.call("rpc", "/join")

    # The victim never reads while the whole flood goes out.
    result = await sender.call("rpc", "/flood", victim_id, timeout=60)

    assert result["victim_closed"] is True
    assert result["dropped"] > 0  # its losses show in the delivery reports
    # Memory stays bounded: the victim's buffer never grows past the bound by more than
    # the one frame that crossed it.
    assert peak["buffered"] <= MAX_SEND_BUFFER + len(PAD) + 1024
    for member in healthy:
        seen = [(await member.next_push(timeout=10))["data"]["i"] for _ in range(BROADCASTS)]
        assert seen == list(range(BROADCASTS))
    # Reading again, the victim finds part of the flood, then the close frame.
    frames = 0
    while True:
        msg = await victim.receive(timeout=10)
        if msg.type is not WSMsgType.TEXT:
            break
        frames += 1
    assert (msg.type, msg.data, msg.extra) == (
        WSMsgType.CLOSE,
        SLOW_CONSUMER_CLOSE_CODE,
        "Slow consumer",
    )
    assert frames < BROADCASTS
    for member in (*healthy, sender):
        await member.close()
