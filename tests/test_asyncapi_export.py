"""The AsyncAPI export of a running app: the command line, WsApp.asyncapi, the HTTP route,
and the official parser on the reference app's document."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from examples.reference_app import app as reference_app
from wsevents.server import add_asyncapi_route, attach

from .test_asyncapi import run_validator, validator  # noqa: F401  (a fixture)

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML is in the test extra
    yaml = None

ROOT = Path(__file__).parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsevents", "asyncapi", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    result = cli("examples.reference_app:app")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def channel(doc: dict[str, Any], address: str) -> tuple[str, dict[str, Any]]:
    found = [(k, c) for k, c in doc["channels"].items() if c["address"] == address]
    assert len(found) == 1, address
    return found[0]


def operations(doc: dict[str, Any], key: str, action: str) -> list[dict[str, Any]]:
    return [
        op
        for op in doc["operations"].values()
        if op["channel"]["$ref"] == f"#/channels/{key}" and op["action"] == action
    ]


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def test_cli_prints_the_same_document_as_the_method(document: dict[str, Any]) -> None:
    expected = reference_app.asyncapi(title="examples.reference_app:app")
    assert document == json.loads(json.dumps(expected))
    assert document["asyncapi"] == "3.0.0"


def test_every_route_is_a_receive_operation(document: dict[str, Any]) -> None:
    received = {
        (op["title"]) for op in document["operations"].values() if op["action"] == "receive"
    }
    assert received == {f"{r.event} {r.pattern}" for r in reference_app.routes()}


def test_typed_message_payload_and_reply(document: dict[str, Any]) -> None:
    key, _ = channel(document, "/typed/message")
    (op,) = operations(document, key, "receive")
    payload = resolve(document, resolve(document, op["messages"][0])["payload"])
    assert payload["required"] == ["text"]
    assert payload["properties"]["text"] == {"type": "string", "minLength": 1, "maxLength": 500}
    assert payload["properties"]["tags"]["maxItems"] == 5
    reply_messages = [resolve(document, m) for m in op["reply"]["messages"]]
    reply = resolve(document, reply_messages[0]["payload"])
    assert set(reply["properties"]) == {"ok", "length"}
    assert reply_messages[1]["name"] == "error"


def test_typed_item_channel_has_an_integer_id_parameter(document: dict[str, Any]) -> None:
    key, ch = channel(document, "/typed/items/{id}")
    assert "id" in ch["parameters"]
    assert "integer" in ch["parameters"]["id"]["description"]
    (op,) = operations(document, key, "receive")
    assert "reply" in op


def test_message_push_is_a_send_operation_on_the_chat_channel(document: dict[str, Any]) -> None:
    key, ch = channel(document, "/chat/rooms/{room}")
    assert "room" in ch["parameters"]
    (push,) = operations(document, key, "send")
    assert resolve(document, push["messages"][0])["name"] == "message"
    assert {op["title"] for op in operations(document, key, "receive")} >= {
        "subscribe /chat/rooms/:room",
        "message /chat/rooms/:room",
    }


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_yaml_output_reads_back_as_the_json_document(document: dict[str, Any]) -> None:
    result = cli("examples.reference_app:app", "--yaml")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == document


def test_options_reach_the_document() -> None:
    result = cli(
        "examples.reference_app:app",
        "--title",
        "Reference",
        "--app-version",
        "1.2.3",
        "--description",
        "Hello.",
        "--server",
        "ws://localhost:8080/ws",
    )
    doc = json.loads(result.stdout)
    assert doc["info"]["title"] == "Reference"
    assert doc["info"]["version"] == "1.2.3"
    assert doc["info"]["description"].startswith("Hello.\n\n")
    assert doc["servers"]["default"] == {
        "host": "localhost:8080",
        "protocol": "ws",
        "pathname": "/ws",
    }


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nope_module:app"], "error: cannot import module 'nope_module'"),
        (["examples.reference_app:nope"], "has no attribute 'nope'"),
        (["examples/reference_app.py"], "is a file path"),
        (["examples.reference_app:app", "--server", "http://x"], "error: bad --server"),
        (["tests.cli_targets:not_an_app"], "is a int, not a WsApp"),
        (["tests.cli_targets:make_plain_aiohttp_app"], "asyncapi needs a WsApp"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(args: list[str], error: str) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert error in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


async def test_http_route_serves_the_document(aiohttp_client: Any) -> None:
    app = attach(reference_app, web.Application(), "/ws")
    add_asyncapi_route(app, reference_app, "/asyncapi.json", title="Ref", version="2")
    client = await aiohttp_client(app)
    response = await client.get("/asyncapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert body == json.loads(json.dumps(reference_app.asyncapi(title="Ref", version="2")))
    assert (await client.get("/asyncapi.json")).status == 200


def test_http_route_refuses_a_bad_server_url_at_once() -> None:
    with pytest.raises(ValueError, match="ws://"):
        add_asyncapi_route(web.Application(), reference_app, server="http://x")


@pytest.mark.timeout(300)
def test_official_parser_accepts_the_reference_app_document(validator: Path) -> None:  # noqa: F811
    result = cli("examples.reference_app:app")
    assert result.returncode == 0, result.stderr
    checked = run_validator(validator, result.stdout)
    diagnostics = [json.loads(line) for line in checked.stdout.splitlines()]
    assert [d for d in diagnostics if d["severity"] == "error"] == []
    assert checked.returncode == 0, checked.stderr


@pytest.mark.timeout(300)
def test_official_parser_accepts_the_chat_document(validator: Path) -> None:  # noqa: F811
    result = cli("examples.chat.server:app")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    sent = {op["title"] for op in doc["operations"].values() if op["action"] == "send"}
    assert sent == {
        "push message /chat/:room([A-Za-z0-9_-]{1,32})",
        "push system /chat/:room([A-Za-z0-9_-]{1,32})",
    }
    checked = run_validator(validator, result.stdout)
    assert checked.returncode == 0, checked.stdout + checked.stderr
