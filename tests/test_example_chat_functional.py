"""The chat example over real sockets, driven by the Python client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from examples.chat.server import clean_name, create_app
from wsevents.client import Push, WsClient, WsClientError
from wsevents.testing import WsTestClient

pytestmark = pytest.mark.functional


@pytest.fixture
async def chat(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(create_app(history_size=3))


@pytest.fixture
async def join(chat: TestServer) -> AsyncIterator[Callable[..., Awaitable[WsClient]]]:
    made: list[WsClient] = []

    async def connect(name: str | None) -> WsClient:
        query = "" if name is None else f"?name={quote(name)}"
        client = WsClient(f"ws://127.0.0.1:{chat.port}/ws{query}")
        made.append(client)
        await client.connect()
        return client

    yield connect
    for client in made:
        await client.close()


async def test_page_and_client_module_are_served(chat: TestServer) -> None:
    async with TestClient(chat) as http:
        page = await http.get("/")
        assert page.status == 200
        assert 'from "/wsevents-client.js"' in await page.text()
        module = await http.get("/wsevents-client.js")
        assert module.status == 200
        assert module.headers["Content-Type"].startswith("text/javascript")
        assert module.headers["Cache-Control"] == "no-cache"
        assert "export class WsClient" in await module.text()


async def test_join_notice_history_and_leave_notice(join: Any) -> None:
    ada = await join("Ada")
    notices = ada.pushes("system", "/chat/*")
    messages = ada.pushes("message", "/chat/*")
    first = await ada.subscribe("/chat/lobby")
    assert first.reply == {
        "room": "lobby",
        "name": "Ada",
        "members": ["Ada"],
        "history": [],
        "offset": 0,
        "epoch": first.reply["epoch"],
    }
    for text in ("one", "two", "three", "four"):
        assert await ada.call("message", "/chat/lobby", {"text": f"  {text} "}) == {"sent": True}

    bob = await join("Bob")
    second = await bob.subscribe("/chat/lobby")
    assert second.reply["members"] == ["Ada", "Bob"]
    # The history keeps the last 3 messages, trimmed.
    assert [m["text"] for m in second.reply["history"]] == ["two", "three", "four"]
    assert {m["name"] for m in second.reply["history"]} == {"Ada"}

    async with asyncio.timeout(5):
        assert [(await anext(messages)).data["text"] for _ in range(4)] == [
            "one",
            "two",
            "three",
            "four",
        ]
        joined = await anext(notices)
    # The lobby is a history room: its pushes carry their offset (Ada's join, 4 messages).
    assert joined == Push("system", "/chat/lobby", {"room": "lobby"}, joined.data, offset=6)
    assert joined.data == {
        "kind": "join",
        "name": "Bob",
        "text": "Bob joined",
        "members": ["Ada", "Bob"],
    }

    await bob.call("message", "/chat/lobby", {"text": "hi"})
    async with asyncio.timeout(5):
        said = await anext(messages)
    assert (said.data["name"], said.data["text"]) == ("Bob", "hi")

    await bob.close()
    async with asyncio.timeout(5):
        left = await anext(notices)
    assert left.data == {"kind": "leave", "name": "Bob", "text": "Bob left", "members": ["Ada"]}


async def test_unsubscribe_pushes_a_leave_notice(join: Any) -> None:
    ada = await join("Ada")
    bob = await join("Bob")
    await ada.subscribe("/chat/lobby")
    sub = await bob.subscribe("/chat/lobby")
    notices = ada.pushes("system", "/chat/lobby")
    await sub()
    async with asyncio.timeout(5):
        left = (await anext(notices)).data
    assert (left["text"], left["members"]) == ("Bob left", ["Ada"])
    with pytest.raises(WsClientError) as info:
        await bob.call("message", "/chat/lobby", {"text": "gone"})
    assert info.value.code == 403


async def test_a_second_subscribe_does_not_announce_twice(join: Any) -> None:
    ada = await join("Ada")
    bob = await join("Bob")
    await ada.subscribe("/chat/lobby")
    notices = ada.pushes("system", "/chat/lobby")
    await bob.subscribe("/chat/lobby")
    again = await bob.subscribe("/chat/lobby")
    assert again.reply["members"] == ["Ada", "Bob"]
    await bob.close()
    async with asyncio.timeout(5):
        assert [(await anext(notices)).data["kind"] for _ in range(2)] == ["join", "leave"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (None, 400),
        ({"text": ""}, 400),
        ({"text": "   "}, 400),
        ({"text": 5}, 400),
        ({"text": "x" * 501}, 400),
    ],
)
async def test_bad_messages_are_refused(join: Any, data: Any, code: int) -> None:
    ada = await join("Ada")
    await ada.subscribe("/chat/lobby")
    with pytest.raises(WsClientError) as info:
        await ada.call("message", "/chat/lobby", data)
    assert info.value.code == code


async def test_messages_need_membership_and_rooms_need_valid_names(join: Any) -> None:
    ada = await join("Ada")
    with pytest.raises(WsClientError) as not_member:
        await ada.call("message", "/chat/lobby", {"text": "hi"})
    assert (not_member.value.code, not_member.value.message) == (403, "join the room first")
    for path in ("/chat/" + "x" * 33, "/chat/a%20b", "/chat/a/b", "/chat/"):
        with pytest.raises(WsClientError) as bad_room:
            await ada.subscribe(path)
        assert bad_room.value.code == 404


async def test_names_are_cleaned_or_made_up(join: Any) -> None:
    for raw, expected in (("  Ada \t Lovelace ", "Ada Lovelace"), ("x" * 40, "x" * 24)):
        client = await join(raw)
        assert (await client.subscribe("/chat/names")).reply["name"] == expected
    guest = await join(None)
    assert (await guest.subscribe("/chat/names")).reply["name"].startswith("guest-")


def test_clean_name_drops_control_characters() -> None:
    assert clean_name("a\x00b\nc", "fallback") == "ab c"
    assert clean_name("\x07", "fallback") == "fallback"
    assert clean_name(None, "fallback") == "fallback"


# -- recovery: a dropped connection resumes and gets what it missed, once ------------------


def drop(client: WsTestClient) -> None:
    """Cut the TCP connection without a close frame."""
    response = client.ws._response
    assert response.connection is not None and response.connection.transport is not None
    response.connection.transport.abort()


async def test_a_dropped_member_resumes_and_recovers_the_missed_messages_once(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    chat = await aiohttp_server(create_app(history_size=10))

    async def join(name: str) -> WsClient:
        client = WsClient(f"ws://127.0.0.1:{chat.port}/ws?name={name}")
        await client.connect()
        return client

    async def next_chat_push(client: WsTestClient) -> dict[str, Any]:
        """The next message or notice (presence pushes, in the stream too, skipped)."""
        while True:
            frame = await client.next_push()
            if frame["event"] != "presence":
                return frame

    async with TestClient(chat) as http:
        ada = WsTestClient(await http.ws_connect("/ws", params={"name": "Ada"}))
        token = (await ada.call("rpc", "/session"))["session"]
        joined = await ada.call("subscribe", "/chat/lobby")
        await ada.call("message", "/chat/lobby", {"text": "before"})
        assert (await next_chat_push(ada))["data"]["text"] == "before"
        bob = await join("Bob")
        notices = bob.pushes("system", "/chat/lobby")
        await bob.subscribe("/chat/lobby")
        seen = await next_chat_push(ada)
        assert seen["data"]["text"] == "Bob joined"
        drop(ada)
        async with asyncio.timeout(5):
            assert (await anext(notices)).data["text"] == "Ada left"
        for text in ("missed 1", "missed 2"):
            await bob.call("message", "/chat/lobby", {"text": text})
        back = WsTestClient(await http.ws_connect("/ws", params={"name": "Ada", "session": token}))
        assert await back.call("rpc", "/session") == {"session": token, "resumed": True}
        since = {"offset": seen["offset"], "epoch": joined["epoch"]}
        reply = await back.call("subscribe", "/chat/lobby", {"since": since})
        assert reply["recovered"] is True and reply["history"] == []
        assert reply["members"] == ["Ada", "Bob"]
        # What Ada missed, each push once and in offset order, before the reply.
        replayed = back.pending_messages()
        offsets = [p["offset"] for p in replayed]
        assert offsets == sorted(set(offsets)) and offsets[0] > seen["offset"]
        assert offsets[-1] <= reply["offset"]
        # "Ada left" is in the history, but it left Ada out: so does the replay.
        assert [(p["event"], p["data"]["text"]) for p in replayed if p["event"] != "presence"] == [
            ("message", "missed 1"),
            ("message", "missed 2"),
        ]
        async with asyncio.timeout(5):
            assert (await anext(notices)).data["text"] == "Ada joined"
        await bob.call("message", "/chat/lobby", {"text": "live"})
        live = await next_chat_push(back)  # Ada's return notice went to the others only
        assert live["data"]["text"] == "live" and live["offset"] > reply["offset"]
        await asyncio.sleep(0.2)
        later = [p["offset"] for p in back.pending_messages()]
        assert all(offset > live["offset"] for offset in later)
        await back.close()
        await bob.close()


async def test_a_subscribe_with_a_lost_epoch_gets_the_recent_messages(join: Any) -> None:
    ada = await join("Ada")
    await ada.subscribe("/chat/lobby")
    await ada.call("message", "/chat/lobby", {"text": "kept"})
    bob = await join("Bob")
    reply = await bob.call("subscribe", "/chat/lobby", {"since": {"offset": 3, "epoch": "old"}})
    assert reply["recovered"] is False
    assert [m["text"] for m in reply["history"]] == ["kept"]
    for bad in ({"since": {"offset": -1, "epoch": "e"}}, {"since": {"offset": 1}}, 5):
        with pytest.raises(WsClientError) as refused:
            await bob.call("subscribe", "/chat/lobby", bad)
        assert refused.value.code == 400
