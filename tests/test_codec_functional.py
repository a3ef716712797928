"""The default JSON codec over real sockets: lone surrogates and the nesting limit.

Replies are read with the standard library's ``json``: a frame carrying a lone surrogate
escape is valid JSON, which a strict UTF-8 decoder (like orjson) refuses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from wsevents import MemoryTransport, WsApp, use_ws_connection, use_ws_message, use_ws_rooms
from wsevents.protocol import MAX_NESTING_DEPTH
from wsevents.server import attach
from wsevents.testing import serve_memory_cluster

TIMEOUT = 5.0
ROOM = "/chat/lobby"


def make_app(transport: MemoryTransport | None = None) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport)

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    @ws.on_message("rpc", "/push-back")
    def push_back() -> None:
        use_ws_connection().send("echo", "/push-back", use_ws_message().data)

    @ws.on_message("join", "/chat/:room")
    async def join() -> str:
        return await use_ws_rooms().join()

    @ws.on_message("message", "/chat/:room")
    async def message() -> bool:
        await use_ws_rooms().broadcast("message", use_ws_message().data)
        return True

    return ws


async def connect(aiohttp_client: Any, ws: WsApp) -> Any:
    client = await aiohttp_client(attach(ws, web.Application()))
    return client, await client.ws_connect("/ws")


async def next_text(sock: Any) -> str:
    """The next data frame's text; it must be a text frame of pure ASCII."""
    while True:
        msg = await sock.receive(timeout=TIMEOUT)
        if msg.type in (WSMsgType.PING, WSMsgType.PONG):
            continue
        assert msg.type is WSMsgType.TEXT, msg
        text: str = msg.data
        return text


# -- lone surrogates ----------------------------------------------------------------------

LONE = [
    ("a\\ud83db", "a\ud83db"),  # an emoji cut after its high surrogate
    ("\\udc00", "\udc00"),  # a low surrogate alone
    ("\\uD83D\\uD83D", "\ud83d\ud83d"),  # upper-case hex, two highs
    ("é\\ud83d€", "é\ud83d€"),  # mixed with other non-ASCII text
]


@pytest.mark.parametrize(("escaped", "value"), LONE)
@pytest.mark.parametrize("binary", [False, True])
async def test_lone_surrogate_is_echoed_as_the_same_escape(
    aiohttp_client, escaped, value, binary
) -> None:
    _, sock = await connect(aiohttp_client, make_app())
    frame = '{"event":"rpc","path":"/echo","id":30,"data":"' + escaped + '"}'
    if binary:
        await sock.send_bytes(frame.encode())
    else:
        await sock.send_str(frame)
    text = await next_text(sock)
    assert json.loads(text) == {"id": 30, "data": value}
    # Escaped as ASCII: any JSON reader (JavaScript's JSON.parse) gets the same string back.
    assert text.isascii()


async def test_lone_surrogates_in_keys_and_nested_values_are_echoed(aiohttp_client) -> None:
    _, sock = await connect(aiohttp_client, make_app())
    await sock.send_str(
        '{"event":"rpc","path":"/echo","id":"\\ud800","data":{"\\udfff":["x","\\ud83d",{"y":1}]}}'
    )
    assert json.loads(await next_text(sock)) == {
        "id": "\ud800",
        "data": {"\udfff": ["x", "\ud83d", {"y": 1}]},
    }


async def test_a_push_carrying_a_lone_surrogate_arrives(aiohttp_client) -> None:
    _, sock = await connect(aiohttp_client, make_app())
    await sock.send_str('{"event":"rpc","path":"/push-back","id":1,"data":"a\\ud83d"}')
    # The push is sent by the handler, before its reply.
    assert json.loads(await next_text(sock)) == {
        "event": "echo",
        "path": "/push-back",
        "data": "a\ud83d",
    }
    assert json.loads(await next_text(sock)) == {"id": 1, "data": None}


async def test_room_broadcast_carries_a_lone_surrogate_here_and_to_other_instances(
    aiohttp_client,
) -> None:
    cluster = await serve_memory_cluster(aiohttp_client, make_app, instances=2)
    alice = await cluster.servers[0].ws_connect("/ws")
    bob = await cluster.servers[0].ws_connect("/ws")  # same instance: direct delivery
    carol = await cluster.servers[1].ws_connect("/ws")  # other instance: via the envelope
    for i, sock in enumerate((alice, bob, carol)):
        await sock.send_str(f'{{"event":"join","path":"{ROOM}","id":{i}}}')
        assert json.loads(await next_text(sock)) == {"id": i, "data": ROOM}
    await alice.send_str(
        '{"event":"message","path":"' + ROOM + '","id":9,"data":{"text":"cut \\ud83d"}}'
    )
    expected = {
        "event": "message",
        "path": ROOM,
        "params": {"room": "lobby"},
        "data": {"text": "cut \ud83d"},
    }
    assert json.loads(await next_text(bob)) == expected
    assert json.loads(await next_text(carol)) == expected
    assert json.loads(await next_text(alice)) == {"id": 9, "data": True}
    for sock in (alice, bob, carol):
        await sock.close()


# -- nesting --------------------------------------------------------------------------------


def nested(kind: str, depth: int, leaf: str) -> str:
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    return '{"k":' * depth + leaf + "}" * depth


def echo_frame(kind: str, depth: int, leaf: str, message_id: int) -> str:
    """An echo RPC nested ``depth`` levels deep, its own object counted."""
    data = nested(kind, depth - 1, leaf)
    return f'{{"event":"rpc","path":"/echo","id":{message_id},"data":{data}}}'


LEAVES = pytest.mark.parametrize("leaf", ["1", '"\\ud83d"'], ids=["plain", "lone-surrogate"])


@pytest.mark.parametrize("kind", ["array", "object"])
@LEAVES
async def test_frame_nested_at_the_limit_is_echoed(aiohttp_client, kind, leaf) -> None:
    _, sock = await connect(aiohttp_client, make_app())
    await sock.send_str(echo_frame(kind, MAX_NESTING_DEPTH, leaf, 1))
    expected = json.loads(nested(kind, MAX_NESTING_DEPTH - 1, leaf))
    assert json.loads(await next_text(sock)) == {"id": 1, "data": expected}


@pytest.mark.parametrize("kind", ["array", "object"])
@LEAVES
@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH + 1, 500, 1025])
async def test_frame_nested_over_the_limit_is_dropped_and_the_socket_stays_open(
    aiohttp_client, kind, leaf, depth
) -> None:
    _, sock = await connect(aiohttp_client, make_app())
    await sock.send_str(echo_frame(kind, depth, leaf, 1))
    await sock.send_str('{"event":"rpc","path":"/echo","id":2,"data":"after"}')
    # Replies keep the order of the frames: a reply to id 1 would come first.
    assert json.loads(await next_text(sock)) == {"id": 2, "data": "after"}
    assert not sock.closed
