"""Prometheus metrics over real sockets: exact counts after a known workload, bounded label
cardinality, and the /metrics endpoint in the text exposition format."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from wsevents import (
    MemoryBus,
    MemoryTransport,
    Metrics,
    RateLimit,
    WsApp,
    WsError,
    use_route_params,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.metrics import UNMATCHED
from wsevents.server import add_metrics_route, attach
from wsevents.testing import WsTestClient

pytestmark = pytest.mark.functional

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def build(**options: Any) -> tuple[WsApp, asyncio.Queue[str]]:
    ws = WsApp(heartbeat=0, **options)
    gone: asyncio.Queue[str] = asyncio.Queue()

    @ws.on_disconnect
    def _gone() -> None:
        gone.put_nowait(use_ws_connection().id)

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    @ws.on_message("rpc", "/users/:id")
    def user() -> Any:
        return {"id": use_route_params().get("id")}

    @ws.on_message("rpc", "/forbidden")
    def forbidden() -> None:
        raise WsError(403, "no")

    @ws.on_message("rpc", "/crash")
    def crash() -> None:
        raise RuntimeError("secret")

    @ws.on_message("rpc", "/later")
    async def later() -> str:
        await asyncio.sleep(0)
        return "done"

    @ws.on_message("rpc", "/limited", rate_limit=RateLimit(1, per=3600.0))
    def limited() -> str:
        return "ok"

    @ws.on_message("join", "/rooms/:room")
    async def join() -> bool:
        await use_ws_rooms().join()
        return True

    @ws.on_message("say", "/rooms/:room")
    async def say() -> int:
        report = await use_ws_rooms().broadcast("said", use_ws_message().data)
        return report.sent

    @ws.on_message("flood", "/rooms/:room")
    async def flood() -> bool:
        chunk = "x" * 100_000
        me = use_ws_connection().id
        for _ in range(200):
            await use_ws_server().rooms.broadcast(
                use_ws_message().path, "flood", chunk, exclude_id=me
            )
        return True

    return ws, gone


async def serve(
    aiohttp_client: Any, ws: WsApp, registry: CollectorRegistry
) -> tuple[Any, Callable[[], Awaitable[WsTestClient]]]:
    app = attach(ws, web.Application())
    add_metrics_route(app, ws, registry=registry)
    server = await aiohttp_client(app)

    async def connect() -> WsTestClient:
        return WsTestClient(await server.ws_connect("/ws"))

    return server, connect


async def scrape(server: Any) -> Samples:
    resp = await server.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counts_after_a_known_workload(aiohttp_client: Any) -> None:
    ws, gone = build()
    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    alice = await connect()
    for n in range(5):
        assert (await alice.request("rpc", "/echo", n, message_id=n))["data"] == n
    await alice.send("rpc", "/echo", "no id")  # handled, no reply
    for n in range(3):
        reply = await alice.request("rpc", "/forbidden", message_id=100 + n)
        assert reply["error"]["code"] == 403
    assert (await alice.request("rpc", "/crash", message_id=200))["error"]["code"] == 500
    assert (await alice.request("rpc", "/later", message_id=201))["data"] == "done"
    assert (await alice.request("rpc", "/nowhere", message_id=202))["error"]["code"] == 404
    await alice.send_raw("not json")
    assert (await alice.request("rpc", "/limited", message_id=300))["data"] == "ok"
    assert (await alice.request("rpc", "/limited", message_id=301))["error"]["code"] == 429

    s = await scrape(server)
    received = "wsevents_messages_received_total"
    assert value(s, received, event="rpc", route="/echo") == 6
    assert value(s, received, event="rpc", route="/forbidden") == 3
    assert value(s, received, event=UNMATCHED, route=UNMATCHED) == 1
    assert value(s, "wsevents_messages_invalid_total") == 1
    replies = "wsevents_replies_total"
    assert value(s, replies, event="rpc", route="/echo", code="200") == 5
    assert value(s, replies, event="rpc", route="/forbidden", code="403") == 3
    assert value(s, replies, event="rpc", route="/forbidden", code="200") == 0
    assert value(s, replies, event="rpc", route="/crash", code="500") == 1
    assert value(s, replies, event="rpc", route="/later", code="200") == 1
    assert value(s, replies, event=UNMATCHED, route=UNMATCHED, code="404") == 1
    assert value(s, replies, event="rpc", route="/limited", code="429") == 1
    assert value(s, "wsevents_rate_limit_rejections_total", kind="message") == 1
    duration = "wsevents_handler_duration_seconds"
    assert value(s, duration + "_count", event="rpc", route="/echo") == 6
    assert value(s, duration + "_bucket", event="rpc", route="/echo", le="+Inf") == 6
    assert value(s, duration + "_count", event="rpc", route="/crash") == 1
    assert value(s, duration + "_sum", event="rpc", route="/echo") > 0
    assert value(s, "wsevents_connections") == 1
    assert value(s, "wsevents_connections_opened_total") == 1
    assert value(s, "wsevents_transport_up") == 1

    await alice.close()
    await asyncio.wait_for(gone.get(), 5)
    s = await scrape(server)
    assert value(s, "wsevents_connections") == 0
    assert value(s, "wsevents_connections_closed_total", code="1000", by="client") == 1


async def test_a_broadcast_counts_each_delivery_once(aiohttp_client: Any) -> None:
    ws, _ = build()
    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    members = [await connect() for _ in range(4)]
    for n, member in enumerate(members):
        assert (await member.request("join", "/rooms/a", message_id=n))["data"] is True
    # The sender is left out: 3 deliveries.
    assert (await members[0].request("say", "/rooms/a", "hi", message_id=9))["data"] == 3
    for member in members[1:]:
        assert (await member.next_push())["data"] == "hi"
    s = await scrape(server)
    assert value(s, "wsevents_pushes_delivered_total") == 3
    assert value(s, "wsevents_rooms") == 1
    assert value(s, "wsevents_pushes_dropped_total", reason="closed") == 0


async def test_a_slow_consumer_is_counted_and_its_drops_too(aiohttp_client: Any) -> None:
    ws, gone = build(max_send_buffer=256 << 10)
    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    sender = await connect()
    # A raw client that never reads: its socket buffers fill, then the server's.
    sleeper = await server.ws_connect("/ws")
    await sleeper.send_json({"event": "join", "path": "/rooms/slow", "id": 1})
    await sender.request("join", "/rooms/slow", message_id=1)
    assert (await sender.request("flood", "/rooms/slow", message_id=2))["data"] is True
    await asyncio.wait_for(gone.get(), 10)
    s = await scrape(server)
    assert value(s, "wsevents_slow_consumers_closed_total") == 1
    assert value(s, "wsevents_connections_closed_total", code="1013", by="server") == 1
    # One member, 200 pushes: each one either written or dropped, and the push that
    # overflowed the buffer (and those after it) dropped as a slow consumer's.
    delivered = value(s, "wsevents_pushes_delivered_total")
    slow = value(s, "wsevents_pushes_dropped_total", reason="slow_consumer")
    closed = value(s, "wsevents_pushes_dropped_total", reason="closed")
    assert slow >= 1 and delivered >= 1
    assert delivered + slow + closed == 200
    await sleeper.close()


async def test_a_thousand_concrete_paths_make_one_label(aiohttp_client: Any) -> None:
    ws, _ = build()
    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    client = await connect()
    for n in range(1000):
        await client.send("rpc", f"/users/{n}")
        await client.send("rpc", f"/unknown/{n}")
    assert (await client.request("rpc", "/users/last", message_id=1))["data"] == {"id": "last"}
    s = await scrape(server)
    routes = {
        dict(labels)["route"]
        for (name, labels) in s
        if name == "wsevents_messages_received_total" and s[name, labels] > 0
    }
    assert routes == {"/users/:id", UNMATCHED}
    assert value(s, "wsevents_messages_received_total", event="rpc", route="/users/:id") == 1001
    assert value(s, "wsevents_messages_received_total", event=UNMATCHED, route=UNMATCHED) == 1000
    histogram_routes = {
        dict(labels)["route"]
        for (name, labels) in s
        if name == "wsevents_handler_duration_seconds_count"
    }
    assert "/users/1" not in histogram_routes and "/users/:id" in histogram_routes


async def test_the_fallback_counts_as_unmatched(aiohttp_client: Any) -> None:
    ws, _ = build()

    @ws.on_unhandled
    def fallback() -> str:
        return "caught"

    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    client = await connect()
    assert (await client.request("rpc", "/x/1", message_id=1))["data"] == "caught"
    s = await scrape(server)
    assert value(s, "wsevents_replies_total", event=UNMATCHED, route=UNMATCHED, code="200") == 1
    assert value(s, "wsevents_handler_duration_seconds_count", event=UNMATCHED, route=UNMATCHED)


async def test_interceptors_and_routes_added_after_enabling_are_counted(
    aiohttp_client: Any,
) -> None:
    ws, _ = build()
    metrics = ws.enable_metrics(registry=CollectorRegistry())

    @ws.on_message("rpc", "/late")
    def late() -> str:
        return "late"

    @ws.intercept
    async def refuse_some(scope: Any, call_next: Any) -> Any:
        if scope.message.data == "refuse":
            raise WsError(418, "teapot")
        return await call_next()

    _, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    client = await connect()
    assert (await client.request("rpc", "/late", message_id=1))["data"] == "late"
    assert (await client.request("rpc", "/late", "refuse", message_id=2))["error"]["code"] == 418
    stats = metrics.route("rpc", "/late")
    assert stats.received == 2
    assert stats.replies == {"200": 1, "418": 1}
    assert metrics.samples()["wsevents_replies_total"]["rpc", "/late", "418"] == 1


async def test_handshake_refusals_are_counted(aiohttp_client: Any) -> None:
    ws, _ = build(handshake_rate=RateLimit(1, per=3600.0), allowed_origins=["https://ok.test"])
    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    resp = await server.get("/ws", headers={"Origin": "https://evil.test"})
    assert resp.status == 403
    first = await connect()
    with pytest.raises(Exception, match="429"):
        await connect()
    s = await scrape(server)
    assert value(s, "wsevents_connections_refused_total", reason="origin") == 1
    assert value(s, "wsevents_connections_refused_total", reason="rate_limit") == 1
    assert value(s, "wsevents_rate_limit_rejections_total", kind="handshake") == 1
    await first.close()


async def test_on_connect_refusals_are_counted(aiohttp_client: Any) -> None:
    ws, _ = build()

    @ws.on_connect
    def deny() -> None:
        raise WsError(401, "no")

    server, _ = await serve(aiohttp_client, ws, CollectorRegistry())
    sock = await server.ws_connect("/ws")
    await sock.receive()
    assert sock.close_code == 1008
    s = await scrape(server)
    assert value(s, "wsevents_connections_refused_total", reason="on_connect") == 1
    assert value(s, "wsevents_connections_opened_total") == 0


def test_enable_metrics_twice_is_refused() -> None:
    ws = WsApp(heartbeat=0)
    metrics = ws.enable_metrics(registry=CollectorRegistry())
    assert isinstance(metrics, Metrics) and ws.metrics is metrics
    with pytest.raises(RuntimeError, match="already enabled"):
        ws.enable_metrics(registry=CollectorRegistry())


def test_bad_buckets_are_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        WsApp(heartbeat=0).enable_metrics(registry=CollectorRegistry(), buckets=[0.1, -1])


def test_metrics_are_off_by_default() -> None:
    ws, _ = build()
    assert ws.metrics is None
    assert all(endpoint.stats is None for _, _, endpoint in ws.router.routes())


def test_codes_outside_the_usual_ranges_share_a_label() -> None:
    from wsevents.metrics import close_code_label, reply_code_label

    assert reply_code_label(404) == "404"
    assert reply_code_label(4040) == "other"
    assert close_code_label(4999, by_server=True) == "4999"
    assert close_code_label(4999, by_server=False) == "other"
    assert close_code_label(1001, by_server=False) == "1001"


def test_without_prometheus_client_enabling_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # imports of it now fail
    ws = WsApp(heartbeat=0)
    with pytest.raises(ImportError, match=r"pip install 'wsevents\[metrics\]'"):
        ws.enable_metrics()
    with pytest.raises(ImportError, match="wsevents"):
        add_metrics_route(web.Application(), ws)
    assert ws.metrics is None


def test_the_cli_without_prometheus_client_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from wsevents.__main__ import main

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    status = main(["run", "examples.reference_app:app", "--port", "0", "--metrics"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --metrics needs prometheus-client: pip install 'wsevents[metrics]'"]


async def test_publishes_and_inbound_deliveries_across_instances(aiohttp_client: Any) -> None:
    bus = MemoryBus()
    a, _ = build(transport=MemoryTransport(bus))
    b, _ = build(transport=MemoryTransport(bus))
    server_a, connect_a = await serve(aiohttp_client, a, CollectorRegistry())
    server_b, connect_b = await serve(aiohttp_client, b, CollectorRegistry())
    sender, members = await connect_a(), [await connect_b() for _ in range(2)]
    assert (await sender.request("join", "/rooms/x", message_id=1))["data"] is True
    for n, member in enumerate(members):
        assert (await member.request("join", "/rooms/x", message_id=n))["data"] is True
    assert (await sender.request("say", "/rooms/x", "hi", message_id=2))["data"] == 0
    for member in members:
        assert (await member.next_push())["data"] == "hi"
    sa, sb = await scrape(server_a), await scrape(server_b)
    assert value(sa, "wsevents_transport_publishes_total") == 1
    assert value(sa, "wsevents_transport_publish_errors_total") == 0
    assert value(sa, "wsevents_pushes_delivered_total") == 0  # the sender was left out
    assert value(sb, "wsevents_pushes_delivered_total") == 2  # one envelope, two members
    assert value(sb, "wsevents_transport_publishes_total") == 0


class BrokenTransport(MemoryTransport):
    """A transport whose backend refuses every publish (subscriptions work)."""

    async def publish(self, channel: str, payload: str) -> None:
        raise ConnectionError("backend gone")


async def test_failed_publishes_are_counted(aiohttp_client: Any) -> None:
    ws, _ = build(transport=BrokenTransport())
    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    client = await connect()
    assert (await client.request("join", "/rooms/x", message_id=1))["data"] is True
    for n in range(3):
        assert (await client.request("say", "/rooms/x", n, message_id=2 + n))["data"] == 0
    s = await scrape(server)
    assert value(s, "wsevents_transport_publishes_total") == 3
    assert value(s, "wsevents_transport_publish_errors_total") == 3
    assert ws.snapshot()["transport"]["publish_errors"] == 3


async def test_idempotent_calls_are_counted_like_other_calls(aiohttp_client: Any) -> None:
    ws, _ = build()
    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    alice = await connect()
    # Each first call runs its handler; each repeat gets the kept reply without running it.
    for n in range(2):
        assert (await alice.request("rpc", "/echo", "x", message_id=n, idem="e"))["data"] == "x"
    for n in range(2):
        reply = await alice.request("rpc", "/forbidden", message_id=10 + n, idem="f")
        assert reply["error"]["code"] == 403
    assert (await alice.request("rpc", "/limited", message_id=20, idem="l1"))["data"] == "ok"
    reply = await alice.request("rpc", "/limited", message_id=21, idem="l2")
    assert reply["error"]["code"] == 429
    assert (await alice.request("rpc", "/later", message_id=30, idem="a"))["data"] == "done"

    s = await scrape(server)
    received, replies = "wsevents_messages_received_total", "wsevents_replies_total"
    duration = "wsevents_handler_duration_seconds_count"
    assert value(s, received, event="rpc", route="/echo") == 2
    assert value(s, replies, event="rpc", route="/echo", code="200") == 2
    assert value(s, duration, event="rpc", route="/echo") == 1
    assert value(s, received, event="rpc", route="/forbidden") == 2
    assert value(s, replies, event="rpc", route="/forbidden", code="403") == 2
    assert value(s, duration, event="rpc", route="/forbidden") == 1
    assert value(s, replies, event="rpc", route="/limited", code="200") == 1
    assert value(s, replies, event="rpc", route="/limited", code="429") == 1
    assert value(s, "wsevents_rate_limit_rejections_total", kind="message") == 1
    assert value(s, received, event="rpc", route="/later") == 1
    assert value(s, duration, event="rpc", route="/later") == 1


async def test_pushes_a_handler_sends_to_its_connection_are_counted(aiohttp_client: Any) -> None:
    ws, gone = build()

    @ws.on_connect
    def welcome() -> None:
        use_ws_connection().send("welcome", "/hello", "hi")

    @ws.on_message("rpc", "/me")
    def me() -> str:
        return use_ws_connection().id

    @ws.on_message("rpc", "/twice")
    def twice() -> bool:
        conn = use_ws_connection()
        return conn.send("note", "/one", 1) and conn.send("note", "/two", 2)

    @ws.on_message("rpc", "/to")
    async def to() -> bool:
        return await use_ws_server().send_to(use_ws_message().data, "note", "/direct", 3)

    @ws.on_message("rpc", "/bye")
    def bye() -> None:
        conn = use_ws_connection()
        conn.close(1000, "bye")
        assert conn.send("note", "/late", 4) is False  # closed: dropped

    server, connect = await serve(aiohttp_client, ws, CollectorRegistry())
    alice, bob = await connect(), await connect()
    assert (await alice.next_push())["event"] == "welcome"
    assert (await bob.next_push())["event"] == "welcome"
    assert (await alice.request("rpc", "/twice", message_id=1))["data"] is True
    assert [(await alice.next_push())["path"] for _ in range(2)] == ["/one", "/two"]
    assert await alice.call("rpc", "/to", "nobody") is False  # an unknown id: nothing sent
    assert await alice.call("rpc", "/to", await bob.call("rpc", "/me")) is True
    assert (await bob.next_push())["path"] == "/direct"
    await alice.send("rpc", "/bye")
    await asyncio.wait_for(gone.get(), 5)
    s = await scrape(server)
    # 2 welcomes, 2 notes to alice, 1 to bob; the push after the close is dropped.
    assert value(s, "wsevents_pushes_delivered_total") == 5
    assert value(s, "wsevents_pushes_dropped_total", reason="closed") == 1
