"""The reference app (examples/reference_app.py) over real sockets, route by route."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from examples.reference_app import app
from wsevents import WsClientError

TIMEOUT = 5.0


@pytest.fixture(autouse=True)
async def no_state_left_behind() -> AsyncIterator[None]:
    """The app is module-level: every test must leave it as it found it."""
    assert app.connections() == ()
    assert app.rooms.rooms() == ()
    yield
    # Torn down after ws_client and its server: every connection is cleaned up by now.
    assert app.connections() == ()
    assert app.rooms.rooms() == ()


async def whoami(client) -> str:
    return (await client.call("rpc", "/whoami"))["id"]


# -- connect ----------------------------------------------------------------------------------


async def test_token_bad_closes_1008_unauthorized(ws_client) -> None:
    client = await ws_client(app, query={"token": "bad"})
    assert await client.wait_closed() == 1008
    assert client.close_reason == "Unauthorized"
    assert app.connections() == ()


async def test_token_boom_closes_1011_internal_error_and_logs(ws_client, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        client = await ws_client(app, query={"token": "boom"})
        assert await client.wait_closed() == 1011
    assert client.close_reason == "Internal Error"
    assert "token service exploded" in caplog.text


async def test_good_or_missing_token_connects(ws_client) -> None:
    for query in (None, {"token": "good"}):
        client = await ws_client(app, query=query)
        assert await client.call("rpc", "/echo", "in") == "in"


# -- plain RPC routes -------------------------------------------------------------------------


async def test_echo_returns_data(ws_client) -> None:
    client = await ws_client(app)
    for data in ({"a": [1, 2]}, "text", 0, None, [True, None]):
        assert await client.request("rpc", "/echo", data, message_id=1) == {"id": 1, "data": data}


async def test_users_returns_the_decoded_param(ws_client) -> None:
    client = await ws_client(app)
    assert await client.call("rpc", "/users/42") == {"id": "42"}
    assert await client.call("rpc", "/users/j%C3%BCrgen") == {"id": "jürgen"}
    assert await client.call("rpc", "/users/7?x=1") == {"id": "7"}  # the query is ignored


@pytest.mark.parametrize("code", [400, 401, 403, 404, 418, 503])
async def test_error_route_replies_the_code_with_custom_error(ws_client, code) -> None:
    client = await ws_client(app)
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", f"/error/{code}")
    assert (info.value.code, info.value.message) == (code, "custom error")


async def test_crash_replies_500_internal_error_and_logs_the_cause(ws_client, caplog) -> None:
    client = await ws_client(app)
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        reply = await client.request("rpc", "/crash", message_id=5)
    assert reply == {"id": 5, "error": {"code": 500, "message": "Internal Error"}}
    assert "secret internals" in caplog.text
    assert await client.call("rpc", "/echo", "alive") == "alive"


async def test_none_replies_data_null(ws_client) -> None:
    client = await ws_client(app)
    assert await client.request("rpc", "/none", message_id="n") == {"id": "n", "data": None}


async def test_whoami_returns_a_uuid_per_connection(ws_client) -> None:
    first, second = await ws_client(app), await ws_client(app)
    ids = [await whoami(first), await whoami(second)]
    assert ids[0] != ids[1]
    for value in ids:
        assert str(uuid.UUID(value)) == value
    assert await whoami(first) == ids[0]


async def test_unknown_route_replies_404_and_is_silent_without_id(ws_client) -> None:
    client = await ws_client(app)
    await client.send("rpc", "/nope")
    await client.send("rpc", "/Echo", message_id=1)  # paths are case-sensitive
    assert await client.next_message() == {
        "id": 1,
        "error": {"code": 404, "message": "Not found"},
    }


async def test_slow_does_not_block_later_messages(ws_client) -> None:
    client = await ws_client(app)
    slow = asyncio.create_task(client.call("rpc", "/slow", {"ms": 1000}))
    assert await client.call("rpc", "/echo", "fast") == "fast"
    assert not slow.done()
    assert await asyncio.wait_for(slow, TIMEOUT) == {"slept": 1000}


@pytest.mark.parametrize("data", [{"ms": -1}, {"ms": 60_001}, {"ms": "10"}, {"ms": True}])
async def test_slow_rejects_bad_durations_with_400(ws_client, data) -> None:
    client = await ws_client(app)
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/slow", data)
    assert info.value.code == 400
    assert await client.call("rpc", "/slow") == {"slept": 0}


# -- rooms ------------------------------------------------------------------------------------

LOBBY = "/chat/rooms/lobby"
OTHER = "/chat/rooms/other"


async def test_subscribe_unsubscribe_and_rooms_in_join_order(ws_client) -> None:
    client = await ws_client(app)
    assert await client.call("subscribe", OTHER) == {"subscribed": True}
    assert await client.call("subscribe", LOBBY) == {"subscribed": True}
    assert await client.call("join", "/teams/red/channels/general") == {"joined": True}
    assert await client.call("rpc", "/rooms") == [OTHER, LOBBY, "team:red:general"]
    assert await client.call("rpc", "/room-size", {"room": LOBBY}) == {"size": 1}
    assert await client.call("unsubscribe", OTHER) == {"unsubscribed": True}
    assert await client.call("rpc", "/rooms") == [LOBBY, "team:red:general"]
    assert await client.call("rpc", "/room-size", {"room": OTHER}) == {"size": 0}


async def test_room_size_counts_members_and_validates(ws_client) -> None:
    alice, bob = await ws_client(app), await ws_client(app)
    await alice.call("subscribe", LOBBY)
    await bob.call("subscribe", LOBBY)
    assert await alice.call("rpc", "/room-size", {"room": LOBBY}) == {"size": 2}
    with pytest.raises(WsClientError) as info:
        await alice.call("rpc", "/room-size", {"room": 1})
    assert info.value.code == 400


async def test_message_reaches_other_members_not_the_sender(ws_client) -> None:
    alice, bob, carol = await ws_client(app), await ws_client(app), await ws_client(app)
    for client in (alice, bob):
        await client.call("subscribe", LOBBY)
    await carol.call("subscribe", OTHER)
    await alice.send("message", LOBBY, {"text": "hi"}, message_id=1)
    # A push to the sender would come before its reply.
    assert await alice.next_message() == {"id": 1, "data": {"sent": True}}
    assert await bob.next_push() == {
        "event": "message",
        "path": LOBBY,
        "params": {"room": "lobby"},
        "data": {"text": "hi"},
    }
    await carol.send("message-all", OTHER, "own room", message_id=2)
    # carol's first frame is her own room's push: nothing came from the lobby.
    assert await carol.next_message() == {
        "event": "message",
        "path": OTHER,
        "params": {"room": "other"},
        "data": "own room",
    }
    assert await carol.next_message() == {"id": 2, "data": {"sent": True}}


async def test_message_all_includes_the_sender_before_its_reply(ws_client) -> None:
    alice, bob = await ws_client(app), await ws_client(app)
    for client in (alice, bob):
        await client.call("subscribe", LOBBY)
    await alice.send("message-all", LOBBY, "everyone", message_id=1)
    push = {"event": "message", "path": LOBBY, "params": {"room": "lobby"}, "data": "everyone"}
    assert await alice.next_message() == push
    assert await alice.next_message() == {"id": 1, "data": {"sent": True}}
    assert await bob.next_push() == push


async def test_message_to_pushes_to_another_room_with_current_params(ws_client) -> None:
    alice, bob, carol = await ws_client(app), await ws_client(app), await ws_client(app)
    await alice.call("subscribe", LOBBY)
    await bob.call("subscribe", LOBBY)
    await carol.call("subscribe", OTHER)
    reply = await alice.call("message-to", LOBBY, {"room": OTHER, "payload": {"x": 1}})
    assert reply == {"sent": True}
    assert await carol.next_push() == {
        "event": "message",
        "path": OTHER,
        "params": {"room": "lobby"},
        "data": {"x": 1},
    }
    await alice.call("message", LOBBY, "second")
    # bob's first push is the lobby message: the message-to did not reach him.
    assert (await bob.next_push())["data"] == "second"
    with pytest.raises(WsClientError) as info:
        await alice.call("message-to", LOBBY, {"payload": 1})
    assert info.value.code == 400


async def test_join_and_say_use_the_team_room(ws_client) -> None:
    alice, bob, eve = await ws_client(app), await ws_client(app), await ws_client(app)
    path = "/teams/red/channels/general"
    for client in (alice, bob):
        assert await client.call("join", path) == {"joined": True}
    await eve.call("join", "/teams/blue/channels/general")
    assert await alice.call("rpc", "/room-size", {"room": "team:red:general"}) == {"size": 2}
    await alice.send("say", path, "yo", message_id=1)
    assert await alice.next_message() == {"id": 1, "data": {"sent": True}}
    assert await bob.next_push() == {
        "event": "say",
        "path": "team:red:general",
        "params": {"team": "red", "channel": "general"},
        "data": "yo",
    }
    await eve.send("say", "/teams/blue/channels/general", "blue", message_id=2)
    assert await eve.next_message() == {"id": 2, "data": {"sent": True}}
    assert await bob.call("rpc", "/rooms") == ["team:red:general"]


async def test_disconnect_notifies_the_other_members_of_each_room(ws_client) -> None:
    alice, bob, carol = await ws_client(app), await ws_client(app), await ws_client(app)
    alice_id = await whoami(alice)
    for client in (alice, bob, carol):
        await client.call("subscribe", LOBBY)
    for client in (alice, bob):
        await client.call("subscribe", OTHER)
    await alice.close()
    left = {"text": "left", "id": alice_id}
    assert await bob.next_push() == {"event": "system", "path": LOBBY, "data": left}
    assert await bob.next_push() == {"event": "system", "path": OTHER, "data": left}
    assert await carol.next_push() == {"event": "system", "path": LOBBY, "data": left}
    await bob.call("message", LOBBY, "after")
    # carol's next push is bob's message: she got one notice only.
    assert (await carol.next_push())["data"] == "after"
    assert await bob.call("rpc", "/room-size", {"room": LOBBY}) == {"size": 2}
    assert await bob.call("rpc", "/room-size", {"room": OTHER}) == {"size": 1}


async def test_announce_reaches_every_connection_sender_included(ws_client) -> None:
    alice, bob = await ws_client(app), await ws_client(app)
    await bob.call("subscribe", LOBBY)  # rooms do not matter
    await alice.send("rpc", "/announce", {"v": 2}, message_id=1)
    push = {"event": "announcement", "path": "/announce", "data": {"v": 2}}
    assert await alice.next_message() == push
    assert await alice.next_message() == {"id": 1, "data": {"sent": True}}
    assert await bob.next_push() == push


async def test_direct_pushes_to_an_existing_connection_only(ws_client) -> None:
    alice, bob, carol = await ws_client(app), await ws_client(app), await ws_client(app)
    bob_id = await whoami(bob)
    assert await alice.call("rpc", "/direct", {"to": bob_id, "payload": {"p": 1}}) == {"sent": True}
    assert await bob.next_push() == {
        "event": "notification",
        "path": "/private",
        "data": {"p": 1},
    }
    assert await alice.call("rpc", "/direct", {"to": str(uuid.uuid4()), "payload": 1}) == {
        "sent": False
    }
    with pytest.raises(WsClientError) as info:
        await alice.call("rpc", "/direct", {"payload": 1})
    assert info.value.code == 400
    await carol.send("rpc", "/echo", "probe", message_id=1)
    # carol got nothing before her own reply, alice nothing at all.
    assert await carol.next_message() == {"id": 1, "data": "probe"}
    assert alice.pending_messages() == []


async def test_self_push_arrives_before_the_reply(ws_client) -> None:
    client = await ws_client(app)
    await client.send("rpc", "/self-push", message_id=1)
    assert await client.next_message() == {
        "event": "notification",
        "path": "/alerts",
        "data": {"text": "welcome"},
    }
    assert await client.next_message() == {"id": 1, "data": {"ok": True}}


async def test_kick_closes_4000_kicked_without_reply(ws_client) -> None:
    client = await ws_client(app)
    other = await ws_client(app)
    await client.call("subscribe", LOBBY)
    await other.call("subscribe", LOBBY)
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", "/kick")
    assert info.value.code == 503
    assert await client.wait_closed() == 4000
    assert client.close_reason == "kicked"
    assert client.pending_messages() == []
    # The kicked connection leaves its rooms; the others hear about it.
    assert (await other.next_push())["event"] == "system"
    assert await other.call("rpc", "/room-size", {"room": LOBBY}) == {"size": 1}


# -- admin routes: one group guard ------------------------------------------------------------


async def test_admin_stats_counts_open_connections_for_an_admin(ws_client) -> None:
    admin = await ws_client(app, query={"role": "admin"})
    assert await admin.call("rpc", "/admin/stats") == {"connections": 1}
    others = [await ws_client(app), await ws_client(app, query={"role": "user"})]
    for other in others:  # a connection is counted once it has been accepted
        assert await other.call("rpc", "/echo", "ready") == "ready"
    assert await admin.call("rpc", "/admin/stats") == {"connections": 3}


async def test_admin_echo_returns_data_for_an_admin(ws_client) -> None:
    admin = await ws_client(app, query={"role": "admin"})
    assert await admin.call("rpc", "/admin/echo", {"a": [1, 2]}) == {"a": [1, 2]}


@pytest.mark.parametrize("query", [None, {"role": "user"}, {"role": "Admin"}])
@pytest.mark.parametrize("path", ["/admin/stats", "/admin/echo"])
async def test_admin_routes_refuse_other_connections_with_403(ws_client, query, path) -> None:
    client = await ws_client(app, query=query)
    assert await client.request("rpc", path, "x", message_id=1) == {
        "id": 1,
        "error": {"code": 403, "message": "Forbidden"},
    }
    await client.send("rpc", path, "no id")  # refused silently
    assert await client.call("rpc", "/echo", "still open") == "still open"
    assert client.pending_messages() == []


# -- contracts: /typed/message and /typed/items/:id --------------------------------------------


async def typed(client, data, message_id=1) -> dict:
    return await client.request("rpc", "/typed/message", data, message_id=message_id)


async def test_typed_message_valid_replies_ok_and_length(ws_client) -> None:
    client = await ws_client(app)
    assert await typed(client, {"text": "hello"}) == {"id": 1, "data": {"ok": True, "length": 5}}
    reply = await typed(client, {"text": "x" * 500, "tags": ["a", "b", "c", "d", "e"]}, 2)
    assert reply == {"id": 2, "data": {"ok": True, "length": 500}}
    assert (await typed(client, {"text": "a", "tags": []}, 3))["data"]["length"] == 1


async def test_typed_message_counts_code_points_not_bytes_or_utf16_units(ws_client) -> None:
    client = await ws_client(app)
    # 😀 is 4 UTF-8 bytes and 2 UTF-16 units, one character; é is 2 bytes.
    assert (await typed(client, {"text": "😀é"}))["data"] == {"ok": True, "length": 2}
    assert (await typed(client, {"text": "😀" * 500}, 2))["data"]["length"] == 500
    error = (await typed(client, {"text": "😀" * 501}, 3))["error"]
    assert error["details"] == [{"path": ["text"], "message": "expected at most 500 characters"}]


@pytest.mark.parametrize(
    ("data", "message", "details"),
    [
        (
            {"text": ""},
            "Invalid data: text: expected at least 1 character",
            [{"path": ["text"], "message": "expected at least 1 character"}],
        ),
        (
            {"text": "x" * 501},
            "Invalid data: text: expected at most 500 characters",
            [{"path": ["text"], "message": "expected at most 500 characters"}],
        ),
        (
            {"tags": ["a"]},
            "Invalid data: text: missing required field",
            [{"path": ["text"], "message": "missing required field"}],
        ),
        (
            {"text": 5},
            "Invalid data: text: expected a string",
            [{"path": ["text"], "message": "expected a string"}],
        ),
        (
            {"text": "hi", "tags": ["a", "b", "c", "d", "e", "f"]},
            "Invalid data: tags: expected at most 5 items",
            [{"path": ["tags"], "message": "expected at most 5 items"}],
        ),
        (
            {"text": "hi", "tags": ["a", 7]},
            "Invalid data: tags[1]: expected a string",
            [{"path": ["tags", 1], "message": "expected a string"}],
        ),
        (
            {"text": "hi", "tags": "a"},
            "Invalid data: tags: expected an array",
            [{"path": ["tags"], "message": "expected an array"}],
        ),
        (
            ["text"],
            "Invalid data: expected an object",
            [{"path": [], "message": "expected an object"}],
        ),
        (None, "Invalid data: expected an object", [{"path": [], "message": "expected an object"}]),
    ],
)
async def test_typed_message_invalid_data_is_400_naming_the_field(
    ws_client, data, message, details
) -> None:
    client = await ws_client(app)
    reply = await typed(client, data, "x-1")
    assert reply == {"id": "x-1", "error": {"code": 400, "message": message, "details": details}}


async def test_test_client_call_raises_with_the_details(ws_client) -> None:
    client = await ws_client(app)
    with pytest.raises(WsClientError) as caught:
        await client.call("rpc", "/typed/message", {"text": ""})
    assert caught.value.code == 400
    assert caught.value.details == [{"path": ["text"], "message": "expected at least 1 character"}]
    with pytest.raises(WsClientError) as plain:
        await client.call("rpc", "/error/404")
    assert plain.value.details is None


async def test_typed_message_error_leaks_no_internals(ws_client) -> None:
    client = await ws_client(app)
    reply = await typed(client, {"text": "secret-input" * 50, "tags": [{"k": "secret-input"}]})
    text = str(reply["error"])
    for leak in ("secret-input", "msgspec", "Struct", "Message", "http", "Traceback", "`"):
        assert leak not in text


async def test_typed_message_without_id_is_dropped_and_the_socket_stays_open(ws_client) -> None:
    client = await ws_client(app)
    await client.send("rpc", "/typed/message", {"text": ""})  # invalid, no id
    await client.send("rpc", "/typed/message", {"text": "ok"})  # valid, no id: no reply
    # Frames are handled in order: a reply to either would arrive before this one.
    assert await typed(client, {"text": "abc"}, 9) == {"id": 9, "data": {"ok": True, "length": 3}}
    assert client.close_code is None


async def test_typed_item_converts_the_id_to_a_number(ws_client) -> None:
    client = await ws_client(app)
    assert await client.request("rpc", "/typed/items/42", message_id=1) == {
        "id": 1,
        "data": {"id": 42},
    }
    assert await client.call("rpc", "/typed/items/-7") == {"id": -7}


@pytest.mark.parametrize("raw_id", ["abc", "4.2", "1e3", "%2B1", "12x"])
async def test_typed_item_non_integer_id_is_400_naming_id(ws_client, raw_id) -> None:
    client = await ws_client(app)
    reply = await client.request("rpc", f"/typed/items/{raw_id}", message_id=1)
    assert reply == {
        "id": 1,
        "error": {
            "code": 400,
            "message": "Invalid param id: expected an integer",
            "details": [{"path": ["params", "id"], "message": "expected an integer"}],
        },
    }


async def test_plain_routes_have_no_details_in_their_errors(ws_client) -> None:
    client = await ws_client(app)
    reply = await client.request("rpc", "/error/418", message_id=1)
    assert reply == {"id": 1, "error": {"code": 418, "message": "custom error"}}
