"""The admin snapshot, the health probes and the structured logs, over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from wsevents import WsApp, WsError, use_ws_connection, use_ws_message, use_ws_rooms
from wsevents.logs import LogFormatter
from wsevents.server import add_admin_routes, add_health_routes, attach
from wsevents.testing import WsTestClient

pytestmark = pytest.mark.functional

TOKEN = "s3cret-admin-token"


def build(**options: Any) -> WsApp:
    ws = WsApp(heartbeat=0, **options)

    @ws.on_message("join", "/rooms/:room")
    async def join() -> bool:
        await use_ws_rooms().join()
        return True

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().id

    @ws.on_message("rpc", "/flood")
    def flood() -> bool:
        # 16 MB to the caller, at once: what the peer does not read stays buffered.
        conn = use_ws_connection()
        chunk = "x" * 100_000
        for _ in range(int(use_ws_message().data)):
            conn.send("flood", "/flood", chunk)
        return True

    return ws


async def serve(aiohttp_client: Any, ws: WsApp) -> Any:
    app = attach(ws, web.Application())
    add_admin_routes(app, ws, TOKEN, top=5)
    add_health_routes(app, ws)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer \udcff"},
    ],
)
async def test_snapshot_without_the_right_token_is_401(
    aiohttp_client: Any, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(aiohttp_client, build())
    resp = await server.get("/admin/snapshot", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert await resp.json() == {"error": "Unauthorized"}
    refused = [r for r in caplog.records if getattr(r, "reason", None) == "admin_token"]
    assert refused and refused[0].levelno == logging.WARNING


async def test_snapshot_shows_connections_rooms_transport_and_the_slowest(
    aiohttp_client: Any,
) -> None:
    ws = build(max_send_buffer=256 << 20)
    server = await serve(aiohttp_client, ws)
    clients = [WsTestClient(await server.ws_connect("/ws")) for _ in range(3)]
    for n, client in enumerate(clients):
        assert (await client.request("join", "/rooms/big", message_id=n))["data"] is True
    assert (await clients[0].request("join", "/rooms/small", message_id=9))["data"] is True
    # A raw client that never reads, asking for 16 MB: most of it stays in our buffer.
    sleeper = await server.ws_connect("/ws")
    await sleeper.send_json({"event": "rpc", "path": "/whoami", "id": 1})
    sleeper_id = json.loads((await sleeper.receive()).data)["data"]
    await sleeper.send_json({"event": "rpc", "path": "/flood", "data": 160, "id": 2})
    resp = await server.get("/admin/snapshot", headers={"Authorization": f"Bearer {TOKEN}"})
    while resp.status == 200 and not (await resp.json())["slowest"]:
        await asyncio.sleep(0.01)  # the flood is written by the handler, soon
        resp = await server.get("/admin/snapshot", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200 and resp.content_type == "application/json"
    snap = await resp.json()
    assert snap["instance"] == ws.rooms.instance_id
    assert snap["connections"] == 4
    assert snap["rooms"] == [
        {"room": "/rooms/big", "members": 3},
        {"room": "/rooms/small", "members": 1},
    ]
    assert snap["rooms_total"] == 2
    assert snap["transport"] == {
        "up": True,
        "kind": None,
        "publishes": 0,
        "publish_errors": 0,
        "subscribed_rooms": 0,
    }
    [slowest] = snap["slowest"]
    assert slowest["connection"] == sleeper_id
    assert slowest["buffered_bytes"] > 1_000_000
    await sleeper.close()


def test_snapshot_lists_at_most_top_and_max_rooms() -> None:
    ws = build()
    snap = ws.snapshot(top=0, max_rooms=0)
    assert snap["rooms"] == [] and snap["slowest"] == [] and snap["connections"] == 0


def test_an_empty_admin_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        add_admin_routes(web.Application(), build(), "")


async def test_health_probes(aiohttp_client: Any) -> None:
    ws = build()
    server = await serve(aiohttp_client, ws)
    resp = await server.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    resp = await server.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"ready": True, "closing": False, "transport_up": True}
    await ws.shutdown()
    resp = await server.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["closing"] is True


async def test_readyz_is_503_while_the_transport_is_down(aiohttp_client: Any) -> None:
    from wsevents.transports.redis import RedisTransport

    # Nothing listens on port 1: the app serves alone, its transport down.
    ws = build(transport=RedisTransport.from_url("redis://127.0.0.1:1/0", connect_timeout=0.2))
    metrics = ws.enable_metrics(registry=CollectorRegistry())
    server = await serve(aiohttp_client, ws)
    resp = await server.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"ready": False, "closing": False, "transport_up": False}
    assert ws.snapshot()["transport"]["up"] is False
    assert metrics.samples()["wsevents_transport_up"] == 0
    assert (await server.get("/healthz")).status == 200


async def test_health_routes_leave_the_applications_own_alone(aiohttp_client: Any) -> None:
    async def mine(_: web.Request) -> web.Response:
        return web.Response(text="mine")

    ws = build()
    app = web.Application()
    app.router.add_get("/healthz", mine)
    attach(ws, app)
    add_health_routes(app, ws)
    server = await aiohttp_client(app)
    assert await (await server.get("/healthz")).text() == "mine"
    assert (await server.get("/readyz")).status == 200


# -- logs ----------------------------------------------------------------------------------


def fields_of(caplog: pytest.LogCaptureFixture, **wanted: Any) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if all(getattr(r, key, None) == value for key, value in wanted.items())
    ]


async def test_lifecycle_is_logged_at_debug_with_the_connection_id(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsevents")
    closed = asyncio.Event()
    ws = build()
    ws.on_disconnect(closed.set)
    server = await serve(aiohttp_client, ws)
    client = WsTestClient(await server.ws_connect("/ws"))
    conn_id = (await client.request("rpc", "/whoami", message_id=1))["data"]
    await client.close()
    await asyncio.wait_for(closed.wait(), 5)
    [opened] = fields_of(caplog, conn=conn_id, event="open")
    [close] = fields_of(caplog, conn=conn_id, event="close")
    assert opened.levelno == close.levelno == logging.DEBUG
    assert close.code == 1000 and close.by == "client"  # type: ignore[attr-defined]


async def test_refusals_and_slow_consumers_are_warnings_with_id_and_reason(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ws = build(max_send_buffer=64 << 10)

    @ws.on_connect
    def deny() -> None:
        request = use_ws_connection().request
        if request is not None and request.query.get("deny"):
            raise WsError(403, "no")

    slow_seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "reason", None) == "slow_consumer":
                slow_seen.set()

    watch = Watch()
    logging.getLogger("wsevents").addHandler(watch)
    server = await serve(aiohttp_client, ws)
    refused = await server.ws_connect("/ws?deny=1")
    await refused.receive()
    [warning] = fields_of(caplog, reason="on_connect")
    assert warning.levelno == logging.WARNING and warning.code == 1008  # type: ignore[attr-defined]
    assert warning.conn  # type: ignore[attr-defined]

    sleeper = await server.ws_connect("/ws")
    await sleeper.send_json({"event": "rpc", "path": "/whoami", "id": 1})
    sleeper_id = json.loads((await sleeper.receive()).data)["data"]
    await sleeper.send_json({"event": "rpc", "path": "/flood", "data": 160, "id": 2})
    try:
        await asyncio.wait_for(slow_seen.wait(), 10)
    finally:
        logging.getLogger("wsevents").removeHandler(watch)
    [slow] = fields_of(caplog, reason="slow_consumer")
    assert slow.levelno == logging.WARNING
    assert slow.conn == sleeper_id and slow.code == 1013  # type: ignore[attr-defined]
    await sleeper.close()


def record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("wsevents.server", logging.WARNING, __file__, 1, msg, args, None)
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            rec.exc_info = sys.exc_info()
    rec.__dict__.update(extra)
    return rec


def test_text_format_is_key_value_on_one_line() -> None:
    line = LogFormatter("text").format(
        record('closed %s: "%d"\nbye', "abc", 1000, conn="abc", code=1000, empty="", none=None)
    )
    assert "\n" not in line
    assert line.startswith("time=") and line.split(" ")[0].endswith("Z")
    assert " level=warning logger=wsevents.server " in line
    assert ' msg="closed abc: \\"1000\\"\\nbye" conn=abc code=1000 empty="" none=null' in line


def test_json_format_parses_with_extras_and_traceback() -> None:
    line = LogFormatter("json").format(record("failed %s", "x", exc=True, conn="c1", obj=object()))
    parsed = json.loads(line)
    assert parsed["level"] == "warning" and parsed["msg"] == "failed x"
    assert parsed["conn"] == "c1" and parsed["obj"].startswith("<object")
    assert "RuntimeError: boom" in parsed["exc"]


def test_an_unknown_log_style_is_refused() -> None:
    with pytest.raises(ValueError, match="text"):
        LogFormatter("xml")  # type: ignore[arg-type]
