"""Declared data, reply and param types over real sockets: msgspec and pydantic side by side,
the error shape with details, the pipeline order, and declared pushes."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any, TypedDict

import msgspec
import pydantic
import pytest

from wsevents import (
    CallNext,
    MessageScope,
    RoutingError,
    WsError,
    create_ws_app,
    use_route_params,
    use_ws_connection,
    use_ws_data,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.contracts import InvalidPush


class Message(msgspec.Struct):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    tags: Annotated[list[str], msgspec.Meta(max_length=5)] = []


class PMessage(pydantic.BaseModel):
    text: str = pydantic.Field(min_length=1, max_length=500)
    tags: list[str] = pydantic.Field(default_factory=list, max_length=5)


class Ack(msgspec.Struct):
    ok: bool
    length: int


class PAck(pydantic.BaseModel):
    ok: bool
    length: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Named(TypedDict):
    name: str


def make_app(**options: Any):
    ws = create_ws_app(heartbeat=0, **options)
    seen: list[Any] = []

    @ws.on_message("rpc", "/msgspec", data=Message, reply=Ack)
    def with_msgspec() -> Ack:
        msg = use_ws_data(Message)
        seen.append((type(msg).__name__, use_ws_message().raw))
        return Ack(True, len(msg.text))

    @ws.on_message("rpc", "/pydantic", data=PMessage, reply=PAck)
    async def with_pydantic() -> PAck:
        msg = use_ws_data(PMessage)
        seen.append((type(msg).__name__, use_ws_message().raw))
        return PAck(ok=True, length=len(msg.text))

    @ws.on_message("rpc", "/point", data=Point)
    def point() -> dict[str, int]:
        p = use_ws_message().data
        assert isinstance(p, Point)
        return {"sum": p.x + p.y}

    @ws.on_message("rpc", "/named", data=Named)
    def named() -> Any:
        return use_ws_message().data

    @ws.on_message("rpc", "/items/:id/:slug", params={"id": int})
    def item() -> dict[str, Any]:
        params = use_route_params()
        typed = params.typed
        return {"id": typed["id"], "slug": typed["slug"], "text": params.get("id")}

    @ws.on_message("rpc", "/misuse", data=Message)
    def misuse() -> None:
        use_ws_data(PMessage)

    @ws.on_message("rpc", "/untyped")
    def untyped() -> None:
        use_ws_data(Message)

    @ws.on_message("rpc", "/unprocessable")
    def unprocessable() -> None:
        raise WsError(422, "x", details=[{"path": ["a"], "message": "bad"}])

    return ws, seen


@pytest.mark.parametrize("path", ["/msgspec", "/pydantic"])
async def test_valid_data_reaches_the_handler_typed_and_raw_as_sent(ws_client, path) -> None:
    ws, seen = make_app()
    client = await ws_client(ws)
    reply = await client.request("rpc", path, {"text": "héllo", "tags": ["a"]}, message_id=1)
    assert reply == {"id": 1, "data": {"ok": True, "length": 5}}
    kind, raw = seen[-1]
    assert kind == ("Message" if path == "/msgspec" else "PMessage")
    assert '"text":"héllo"' in (raw if isinstance(raw, str) else raw.decode())


@pytest.mark.parametrize(
    ("data", "first"),
    [
        ({"text": ""}, {"path": ["text"], "message": "expected at least 1 character"}),
        ({"text": "x" * 501}, {"path": ["text"], "message": "expected at most 500 characters"}),
        ({}, {"path": ["text"], "message": "missing required field"}),
        ({"text": 1}, {"path": ["text"], "message": "expected a string"}),
        (
            {"text": "a", "tags": list("abcdef")},
            {"path": ["tags"], "message": "expected at most 5 items"},
        ),
        ({"text": "a", "tags": ["a", None]}, {"path": ["tags", 1], "message": "expected a string"}),
        ("text", {"path": [], "message": "expected an object"}),
    ],
)
async def test_msgspec_and_pydantic_give_the_same_error(ws_client, data, first) -> None:
    ws, seen = make_app()
    client = await ws_client(ws)
    replies = [
        await client.request("rpc", path, data, message_id=path)
        for path in ("/msgspec", "/pydantic")
    ]
    errors = [reply["error"] for reply in replies]
    for error in errors:
        assert error["code"] == 400
        assert error["details"][0] == first
        where = ".".join(str(p) for p in first["path"]).replace(".1", "[1]")
        prefix = f"Invalid data: {where}: " if where else "Invalid data: "
        assert error["message"] == prefix + first["message"]
    assert errors[0] == errors[1]
    assert seen == []  # no handler ran


async def test_dataclass_and_typeddict_go_through_msgspec(ws_client) -> None:
    ws, _ = make_app()
    client = await ws_client(ws)
    assert await client.call("rpc", "/point", {"x": 1, "y": 2}) == {"sum": 3}
    assert await client.call("rpc", "/named", {"name": "n"}) == {"name": "n"}
    reply = await client.request("rpc", "/point", {"x": "1", "y": 2}, message_id=1)
    assert reply["error"]["message"] == "Invalid data: x: expected an integer"


async def test_typed_params_and_text_params_side_by_side(ws_client) -> None:
    ws, _ = make_app()
    client = await ws_client(ws)
    assert await client.call("rpc", "/items/0012/a%20b") == {
        "id": 12,
        "slug": "a b",
        "text": "0012",
    }
    reply = await client.request("rpc", "/items/x/a", message_id=1)
    assert reply["error"]["message"] == "Invalid param id: expected an integer"


async def test_use_ws_data_with_another_type_is_a_500_and_logged(ws_client, caplog) -> None:
    ws, _ = make_app()
    client = await ws_client(ws)
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        for path in ("/misuse", "/untyped"):
            reply = await client.request("rpc", path, {"text": "a"}, message_id=1)
            assert reply["error"] == {"code": 500, "message": "Internal Error"}
    assert "declares data=" in caplog.text
    assert "declares no data type" in caplog.text


async def test_any_ws_error_sends_its_details(ws_client) -> None:
    ws, _ = make_app()
    client = await ws_client(ws)
    reply = await client.request("rpc", "/unprocessable", message_id=1)
    assert reply == {
        "id": 1,
        "error": {"code": 422, "message": "x", "details": [{"path": ["a"], "message": "bad"}]},
    }


async def test_validation_runs_inside_interceptors_and_after_guards(ws_client) -> None:
    ws = create_ws_app(heartbeat=0)
    order: list[str] = []
    outcomes: list[int] = []

    @ws.intercept
    async def observe(scope: MessageScope, call_next: CallNext) -> Any:
        order.append("interceptor")
        try:
            result = await call_next()
        except WsError as exc:
            outcomes.append(exc.code)
            raise
        outcomes.append(200)
        return result

    def guard() -> bool:
        order.append("guard")
        return use_ws_message().path != "/guarded/0"

    @ws.on_message("rpc", "/guarded/:n", guards=[guard], params={"n": int}, data=Message)
    def handler() -> int:
        order.append("handler")
        n: int = use_route_params().typed["n"]
        return n

    client = await ws_client(ws)
    reply = await client.request("rpc", "/guarded/x", {"text": ""}, message_id=1)
    assert reply["error"]["message"] == "Invalid param n: expected an integer"
    reply = await client.request("rpc", "/guarded/1", {"text": ""}, message_id=2)
    assert reply["error"]["message"] == "Invalid data: text: expected at least 1 character"
    # The guard refuses before the params or the data are looked at.
    reply = await client.request("rpc", "/guarded/0", {"text": ""}, message_id=3)
    assert reply["error"] == {"code": 403, "message": "Forbidden"}
    assert await client.call("rpc", "/guarded/5", {"text": "ok"}) == 5
    assert outcomes == [400, 400, 403, 200]
    assert order == ["interceptor", "guard"] * 3 + ["interceptor", "guard", "handler"]


def test_registration_refuses_unknown_params_and_unsupported_types() -> None:
    ws = create_ws_app()
    with pytest.raises(RoutingError, match="names nope"):
        ws.add_message_handler("rpc", "/a/:id", lambda: None, params={"nope": int})

    class Opaque:
        pass

    with pytest.raises(TypeError, match="unsupported"):
        ws.add_message_handler("rpc", "/b", lambda: None, data=Opaque)
    with pytest.raises(TypeError, match="param 'id'"):
        ws.add_message_handler("rpc", "/c/:id", lambda: None, params={"id": list})
    group = ws.group("/g/:org")
    group.add_message_handler("rpc", "/x/:id", lambda: None, params={"org": int, "id": int})
    route = ws.routes()[-1]
    assert (route.pattern, dict(route.params), route.data) == (
        "/g/:org/x/:id",
        {"org": int, "id": int},
        None,
    )


# -- declared pushes ----------------------------------------------------------------------


class ChatMessage(msgspec.Struct):
    text: str


def chat_app(check: bool):
    ws = create_ws_app(heartbeat=0, check_pushes=check)
    ws.declare_push("message", "/chat/:room", data=ChatMessage)
    rooms_group = ws.group("/rooms")
    rooms_group.declare_push("note", "/:room")

    @ws.on_message("join", "/chat/:room")
    async def join() -> bool:
        await use_ws_rooms().join()
        return True

    @ws.on_message("say", "/chat/:room")
    async def say() -> bool:
        await use_ws_rooms().broadcast("message", use_ws_message().data, exclude_self=False)
        return True

    @ws.on_message("stray", "/chat/:room")
    async def stray() -> bool:
        await use_ws_rooms().broadcast("message", {"text": "x"}, room="/elsewhere")
        return True

    @ws.on_message("server", "/all")
    async def server_wide() -> bool:
        await use_ws_server().broadcast("message", "/chat/all", use_ws_message().data)
        return True

    @ws.on_message("self", "/self")
    def to_self() -> bool:
        use_ws_connection().send("message", "/chat/me", use_ws_message().data)
        return True

    return ws


def test_declared_pushes_are_listed() -> None:
    ws = chat_app(False)
    assert [(p.event, p.pattern) for p in ws.pushes()] == [
        ("message", "/chat/:room"),
        ("note", "/rooms/:room"),
    ]
    with pytest.raises(RoutingError):
        ws.declare_push("message", "/chat/:room")


async def test_check_pushes_refuses_a_push_that_does_not_match(ws_client, caplog) -> None:
    ws = chat_app(True)
    client = await ws_client(ws)
    assert await client.call("join", "/chat/a") is True
    assert await client.call("say", "/chat/a", {"text": "hi"}) is True
    assert (await client.next_push())["data"] == {"text": "hi"}
    with caplog.at_level(logging.ERROR, logger="wsevents"):
        for event, path, data in [
            ("say", "/chat/a", {"text": 1}),
            ("stray", "/chat/a", None),
            ("server", "/all", {"nope": 1}),
            ("self", "/self", "text"),
        ]:
            reply = await client.request(event, path, data, message_id=1)
            assert reply["error"] == {"code": 500, "message": "Internal Error"}
    assert "push message /chat/:room: Invalid data: text: expected a string" in caplog.text
    assert "path '/elsewhere' matches none of its declared patterns" in caplog.text
    # Nothing was pushed by the refused calls: the next frame is this reply.
    assert await client.call("server", "/all", {"text": "ok"}) is True
    assert (await client.next_push())["data"] == {"text": "ok"}


async def test_without_check_pushes_nothing_is_checked(ws_client) -> None:
    ws = chat_app(False)
    client = await ws_client(ws)
    assert await client.call("join", "/chat/a") is True
    assert await client.call("say", "/chat/a", {"text": 1}) is True
    assert (await client.next_push())["data"] == {"text": 1}


def test_push_checker_unit() -> None:
    ws = chat_app(True)
    check = ws.rooms.check_push
    assert check is not None
    check("other", "/anything", {"any": [1]})  # undeclared event: not checked
    check("note", "/rooms/x", [1, "x"])  # declared without a type: any data
    with pytest.raises(InvalidPush) as info:
        check("message", "/chat/a", {"text": 2})
    assert info.value.details == [{"path": ["text"], "message": "expected a string"}]
    assert create_ws_app().rooms.check_push is None
