"""The AsyncAPI 3.0 export: addresses, operations, schemas, YAML, and the official parser."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsevents.asyncapi import (
    AddressParam,
    RouteSpec,
    build_asyncapi,
    docstring_summary,
    pattern_to_address,
    to_yaml,
)
from wsevents.contracts import PushSpec, compile_data_type, compile_param_type

from .test_contracts import Color, Message, PMessage, PRich, Rich

VALIDATOR = Path(__file__).parent.parent / "tools" / "asyncapi-validate"


class Ack(msgspec.Struct):
    ok: bool
    length: int


class PAck(pydantic.BaseModel):
    ok: bool
    length: int


def typed_message(data: Message) -> Ack:
    """Check a message and count its characters.

    The reply says how many code points ``text`` has.
    """
    return Ack(True, len(data.text))


def representative_routes() -> tuple[list[RouteSpec], list[PushSpec]]:
    summary, description = docstring_summary(typed_message)
    routes = [
        RouteSpec(
            "rpc",
            "/typed/message",
            compile_data_type(Message),
            compile_data_type(Ack),
            summary=summary,
            description=description,
        ),
        RouteSpec("rpc", "/typed/pydantic", compile_data_type(PMessage), compile_data_type(PAck)),
        RouteSpec(
            "rpc",
            "/typed/items/:id",
            reply=compile_data_type(dict[str, int]),
            params=(compile_param_type("id", int),),
        ),
        RouteSpec("subscribe", "/chat/rooms/:room"),
        RouteSpec("unsubscribe", "/chat/rooms/:room"),
        RouteSpec("message", "/chat/rooms/:room", compile_data_type(Message)),
        RouteSpec("rpc", "/static/*"),
        RouteSpec("rpc", "/rich", compile_data_type(Rich), compile_data_type(list[Rich])),
        RouteSpec("rpc", "/prich", compile_data_type(PRich)),
        RouteSpec(
            "rpc",
            "/paint/:color/:from-:to/:n(\\d+)/:opt?",
            params=(
                compile_param_type("color", Color),
                compile_param_type("n", Annotated[int, msgspec.Meta(ge=1)]),
            ),
        ),
        RouteSpec("chat:message", "/time\\:now"),
        RouteSpec("error", "/", reply=compile_data_type(int)),
    ]
    pushes = [
        PushSpec("message", "/chat/rooms/:room", compile_data_type(Message), summary="Chat"),
        PushSpec("presence", "/presence/rooms/:room", compile_data_type(PMessage)),
        PushSpec("tick", "/ticks"),
    ]
    return routes, pushes


def build() -> dict[str, Any]:
    routes, pushes = representative_routes()
    return build_asyncapi(
        routes, pushes, title="reference", version="1.2.3", server="ws://127.0.0.1:8080/ws"
    )


def channel_by_address(doc: dict[str, Any], address: str) -> tuple[str, dict[str, Any]]:
    found = [(k, c) for k, c in doc["channels"].items() if c["address"] == address]
    assert len(found) == 1, [c["address"] for c in doc["channels"].values()]
    return found[0]


build_cache: dict[str, Any] = build()


def follow(ref: dict[str, Any], *, once: bool = False) -> dict[str, Any]:
    """The node a ``$ref`` points to (following references to references)."""
    node: Any = ref
    while "$ref" in node:
        assert node["$ref"].startswith("#/")
        node = build_cache
        for part in ref["$ref"][2:].split("/"):
            node = node[part]
        assert isinstance(node, dict)
        ref = node
        if once:
            break
    return node  # type: ignore[no-any-return]


def operations_on(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [
        op for op in doc["operations"].values() if op["channel"] == {"$ref": f"#/channels/{key}"}
    ]


# -------------------------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("pattern", "address", "params"),
    [
        ("/", "/", []),
        ("/chat/rooms/:room", "/chat/rooms/{room}", [AddressParam("room", "room")]),
        (
            "/:from-:to",
            "/{from}-{to}",
            [AddressParam("from", "from"), AddressParam("to", "to")],
        ),
        ("/item/:id(\\d+)", "/item/{id}", [AddressParam("id", "id", regex="\\d+")]),
        ("/x/:id((a|b)\\))/y", "/x/{id}/y", [AddressParam("id", "id", regex="(a|b)\\)")]),
        ("/vars/:key?", "/vars/{key}", [AddressParam("key", "key", optional=True)]),
        ("/static/*", "/static/{wildcard}", [AddressParam("*", "wildcard", wildcard=True)]),
        (
            "/:wildcard/*",
            "/{wildcard}/{wildcard_}",
            [AddressParam("wildcard", "wildcard"), AddressParam("*", "wildcard_", wildcard=True)],
        ),
        ("/wildcard/*", "/wildcard/{wildcard}", [AddressParam("*", "wildcard", wildcard=True)]),
        ("/time\\:now\\*", "/time:now*", []),
    ],
)
def test_pattern_to_address(pattern: str, address: str, params: list[AddressParam]) -> None:
    assert pattern_to_address(pattern) == (address, params)


# ------------------------------------------------------------------------------- document


def test_document_header_and_server() -> None:
    doc = build_cache
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "reference"
    assert doc["info"]["version"] == "1.2.3"
    assert '{"event", "path", "data"?, "id"?}' in doc["info"]["description"]
    assert doc["servers"] == {
        "default": {"host": "127.0.0.1:8080", "protocol": "ws", "pathname": "/ws"}
    }
    assert doc["defaultContentType"] == "application/json"
    assert json.loads(json.dumps(doc)) == doc  # JSON-ready as it is


def test_typed_message_payload_is_the_declared_schema_and_reply_is_described() -> None:
    key, channel = channel_by_address(build_cache, "/typed/message")
    assert "parameters" not in channel
    (op,) = operations_on(build_cache, key)
    assert op["action"] == "receive"
    assert op["summary"] == "Check a message and count its characters."
    assert op["description"] == "The reply says how many code points ``text`` has."
    (ref,) = op["messages"]
    message = follow(ref)
    assert message["name"] == "rpc"
    payload = follow(message["payload"])
    assert payload["required"] == ["text"]
    text = payload["properties"]["text"]
    assert (text["type"], text["minLength"], text["maxLength"]) == ("string", 1, 500)
    assert payload["properties"]["tags"]["anyOf"][0]["maxItems"] == 5
    reply_ref, error_ref = op["reply"]["messages"]
    assert op["reply"]["channel"] == {"$ref": f"#/channels/{key}"}
    reply = follow(follow(reply_ref)["payload"])
    assert reply["properties"] == {"ok": {"type": "boolean"}, "length": {"type": "integer"}}
    error = follow(follow(error_ref)["payload"])
    assert error["required"] == ["code", "message"]
    assert "details" in error["properties"]


def test_pydantic_route_is_described_like_the_msgspec_one() -> None:
    key, _ = channel_by_address(build_cache, "/typed/pydantic")
    (op,) = operations_on(build_cache, key)
    payload = follow(follow(op["messages"][0])["payload"])
    assert payload["required"] == ["text"]
    text = payload["properties"]["text"]
    assert (text["type"], text["minLength"], text["maxLength"]) == ("string", 1, 500)
    assert "reply" in op


def test_params_become_address_parameters() -> None:
    _, channel = channel_by_address(build_cache, "/typed/items/{id}")
    assert set(channel["parameters"]) == {"id"}
    assert "integer" in channel["parameters"]["id"]["description"]
    _, paint = channel_by_address(build_cache, "/paint/{color}/{from}-{to}/{n}/{opt}")
    params = paint["parameters"]
    assert list(params) == ["color", "from", "to", "n", "opt"]
    assert params["color"]["enum"] == ["red", "green"]
    assert "\\d+" in params["n"]["description"]
    assert "integer" in params["n"]["description"]
    assert "Optional" in params["opt"]["description"]
    _, static = channel_by_address(build_cache, "/static/{wildcard}")
    assert "rest of the path" in static["parameters"]["wildcard"]["description"]


def test_untyped_routes_accept_anything() -> None:
    key, _ = channel_by_address(build_cache, "/static/{wildcard}")
    (op,) = operations_on(build_cache, key)
    assert follow(op["messages"][0])["payload"] == {}
    assert "reply" not in op


def test_events_on_one_pattern_share_a_channel_with_pushes() -> None:
    key, channel = channel_by_address(build_cache, "/chat/rooms/{room}")
    ops = operations_on(build_cache, key)
    actions = sorted((op["action"], follow(op["messages"][0])["name"]) for op in ops)
    assert actions == [
        ("receive", "message"),
        ("receive", "subscribe"),
        ("receive", "unsubscribe"),
        ("send", "message"),
    ]
    push = next(op for op in ops if op["action"] == "send")
    assert push["summary"] == "Chat"
    assert follow(push["messages"][0])["payload"] == {"$ref": "#/components/schemas/Message"}
    assert len(channel["messages"]) == 4


def test_pushes_on_their_own_patterns_get_channels() -> None:
    key, _ = channel_by_address(build_cache, "/presence/rooms/{room}")
    (op,) = operations_on(build_cache, key)
    assert op["action"] == "send"
    assert follow(follow(op["messages"][0])["payload"])["required"] == ["text"]
    key, _ = channel_by_address(build_cache, "/ticks")
    (op,) = operations_on(build_cache, key)
    assert follow(op["messages"][0])["payload"] == {}


def test_odd_event_names_and_escaped_patterns_give_valid_keys() -> None:
    key, _ = channel_by_address(build_cache, "/time:now")
    (op,) = operations_on(build_cache, key)
    assert follow(op["messages"][0])["name"] == "chat:message"
    key, _ = channel_by_address(build_cache, "/")
    assert key == "root"
    # An event called "error" does not take the place of the error reply.
    (op,) = operations_on(build_cache, key)
    _, error = op["reply"]["messages"]
    assert follow(error, once=True) == {"$ref": "#/components/messages/error"}
    assert follow(error)["name"] == "error"
    assert follow(op["messages"][0])["name"] == "error"
    for name in [*build_cache["channels"], *build_cache["operations"]]:
        assert all(ch.isalnum() or ch in "_.-" for ch in name), name


def test_every_ref_resolves() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                follow(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(build_cache)


def test_clashing_schema_names_are_renamed() -> None:
    first = msgspec.defstruct("Inner", [("a", int)])
    second = msgspec.defstruct("Inner", [("b", str)])
    Outer = msgspec.defstruct("Outer", [("inner", first)])
    Other = msgspec.defstruct("Other", [("inner", second)])

    doc = build_asyncapi(
        [
            RouteSpec("rpc", "/a", compile_data_type(Outer)),
            RouteSpec("rpc", "/b", compile_data_type(Other)),
            RouteSpec("rpc", "/c", compile_data_type(first)),
        ],
        title="t",
        version="1",
    )
    schemas = doc["components"]["schemas"]
    assert schemas["Inner"]["properties"] == {"a": {"type": "integer"}}
    assert schemas["Inner2"]["properties"] == {"b": {"type": "string"}}
    assert schemas["Other"]["properties"]["inner"] == {"$ref": "#/components/schemas/Inner2"}
    assert schemas["Outer"]["properties"]["inner"] == {"$ref": "#/components/schemas/Inner"}


def test_description_and_no_server() -> None:
    doc = build_asyncapi([], title="t", version="1", description="My app.")
    assert doc["info"]["description"].startswith("My app.\n\n")
    assert "servers" not in doc
    assert doc["channels"] == {} and doc["operations"] == {}


@pytest.mark.parametrize("url", ["http://x/ws", "ws:///ws", "localhost:8080"])
def test_bad_server_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        build_asyncapi([], title="t", version="1", server=url)


def test_wss_server_without_path() -> None:
    doc = build_asyncapi([], title="t", version="1", server="wss://example.test")
    assert doc["servers"]["default"] == {"host": "example.test", "protocol": "wss"}


def test_docstring_summary() -> None:
    def bare() -> None:
        pass

    def one_line() -> None:
        """Just this."""

    assert docstring_summary(bare) == (None, None)
    assert docstring_summary(one_line) == ("Just this.", None)
    assert docstring_summary(typed_message)[0] == "Check a message and count its characters."


# ----------------------------------------------------------------------------------- YAML

try:  # PyYAML comes with the docs extra (mkdocs); it reads the output back.
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@needs_yaml
@given(json_like)
def test_yaml_reads_back_as_the_same_value(value: Any) -> None:
    text = to_yaml(value)
    assert not text.lstrip().startswith(("{", "[")) or value in ({}, [])
    assert yaml.safe_load(text) == value


@needs_yaml
@pytest.mark.parametrize(
    "text",
    ["yes", "No", "on", "OFF", "y", "null", "~", "true", "1e3", "0x10", "1:20", "-", "- a",
     "a: b", "#x", "a #b", "", " a", "a ", "'", '"', "\\", "\n", "\u2028", "\x85", "\ufeff",
     "é", "😀", "\x00", "\x7f", ".inf", "<<", "=", "!tag", "&a", "*a", "%x", "@x", "`x",
     "{a}", "[a]", "|", ">", "?", "/chat/rooms/{room}", "$ref", "x-wsevents-event"],
)  # fmt: skip
def test_yaml_strings_that_look_like_something_else(text: str) -> None:
    doc = {text: [text, {text: text}]}
    assert yaml.safe_load(to_yaml(doc)) == doc


@needs_yaml
def test_yaml_block_style() -> None:
    doc = {"a": {"b": [1, {"c": "d", "e": []}], "f": {}}, "g": [[1, 2], "x"], "h": 1.5e20}
    assert to_yaml(doc) == (
        "a:\n  b:\n  - 1\n  - c: d\n    e: []\n  f: {}\ng:\n- - 1\n  - 2\n- x\nh: 1.5e+20\n"
    )
    assert yaml.safe_load(to_yaml({"big": 1e20, "small": 1e-7})) == {"big": 1e20, "small": 1e-7}


@needs_yaml
def test_yaml_special_floats_and_long_keys() -> None:
    loaded = yaml.safe_load(to_yaml({"a": math.inf, "b": -math.inf, "c": math.nan}))
    assert loaded["a"] == math.inf and loaded["b"] == -math.inf and math.isnan(loaded["c"])
    long_key = "k" * 2000
    doc = {long_key: {"x": 1}, "y": {long_key: [1]}, "z": [{long_key: 2}]}
    assert yaml.safe_load(to_yaml(doc)) == doc


@pytest.mark.parametrize("value", [{1: "a"}, {"a": b"x"}, {"a": object()}])
def test_yaml_refuses_non_json_values(value: Any) -> None:
    with pytest.raises(TypeError):
        to_yaml(value)


@needs_yaml
def test_yaml_of_the_document_reads_back() -> None:
    assert yaml.safe_load(to_yaml(build_cache)) == build_cache


# ------------------------------------------------------------------------ official parser


@pytest.fixture(scope="session")
def validator() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed to validate the AsyncAPI document")
        pytest.skip("node or npm is not installed")
    if not (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=VALIDATOR,
            check=True,
            capture_output=True,
            timeout=240,
        )
    return VALIDATOR / "validate.mjs"


def run_validator(script: Path, document: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(script)],
        input=document,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(300)
def test_official_parser_accepts_the_document(validator: Path) -> None:
    result = run_validator(validator, json.dumps(build_cache))
    diagnostics = [json.loads(line) for line in result.stdout.splitlines()]
    errors = [d for d in diagnostics if d["severity"] == "error"]
    assert errors == []
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(300)
def test_official_parser_rejects_a_broken_document(validator: Path) -> None:
    # Guards the test above: the script must fail on an error diagnostic.
    broken = json.loads(json.dumps(build_cache))
    next(iter(broken["operations"].values()))["channel"] = {"$ref": "#/channels/missing"}
    result = run_validator(validator, json.dumps(broken))
    assert result.returncode == 1
    diagnostics = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(d["severity"] == "error" for d in diagnostics)
