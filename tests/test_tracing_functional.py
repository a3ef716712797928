"""OpenTelemetry tracing: spans per message over real sockets, and one trace across two
instances (MemoryTransport and a real Redis), read back from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from wsevents import (
    MemoryBus,
    MemoryTransport,
    WsApp,
    WsError,
    use_ws_connection,
    use_ws_message,
    use_ws_rooms,
    use_ws_server,
)
from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports.base import BroadcastTransport
from wsevents.transports.redis import RedisTransport

from .redis_support import REDIS_URL, delete_keys, unique, wait_until

pytestmark = pytest.mark.functional

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


class ApiOnlyTracer(trace.Tracer):
    """An SDK tracer behind a plain API one: wsevents makes its spans through the API."""

    def __init__(self, inner: trace.Tracer) -> None:
        self.inner = inner

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self.inner.start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.start_as_current_span(*args, **kwargs)


class ApiOnlyProvider(trace.TracerProvider):
    def __init__(self, inner: TracerProvider) -> None:
        self.inner = inner

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return ApiOnlyTracer(self.inner.get_tracer(*args, **kwargs))

    def shutdown(self) -> None:
        self.inner.shutdown()


@pytest.fixture(params=["sdk", "api"])
def provider(request: pytest.FixtureRequest, exporter: InMemorySpanExporter) -> Iterator[Any]:
    """The SDK's provider (spans made straight, see wsevents/_spans.py) or the same behind
    the plain API (spans made through ``start_span``): every test runs with both."""
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    yield made if request.param == "sdk" else ApiOnlyProvider(made)
    made.shutdown()


def test_the_sdk_provider_gets_the_direct_span_maker(provider: Any) -> None:
    ws = WsApp(heartbeat=0)
    ws.enable_tracing(provider)
    maker = ws._dispatcher._tracing._spans  # type: ignore[union-attr]
    expected = "SdkSpans" if isinstance(provider, TracerProvider) else "ApiSpans"
    assert type(maker).__name__ == expected


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def one_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    await wait_until(lambda: len(spans_named(exporter, name)) >= 1, what=f"a span {name}")
    found = spans_named(exporter, name)
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def build(transport: BroadcastTransport | None = None) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport)

    @ws.on_message("rpc", "/users/:id")
    def user() -> dict[str, str]:
        return {"id": use_ws_message().path}

    @ws.on_message("rpc", "/slow/:n")
    async def slow() -> int:
        await asyncio.sleep(0)
        return 1

    @ws.on_message("rpc", "/teapot")
    def teapot() -> None:
        raise WsError(418, "I'm a teapot")

    @ws.on_message("rpc", "/unavailable")
    async def unavailable() -> None:
        raise WsError(503, "Come back later")

    @ws.on_message("rpc", "/crash")
    def crash() -> None:
        raise RuntimeError("secret internals")

    @ws.on_message("rpc", "/unencodable")
    def unencodable() -> object:
        return object()

    @ws.on_message("rpc", "/whoami")
    def whoami() -> str:
        return use_ws_connection().id

    @ws.on_message("join", "/rooms/:room")
    async def join() -> bool:
        await use_ws_rooms().join()
        return True

    @ws.on_message("message", "/rooms/:room")
    async def message() -> bool:
        await use_ws_rooms().broadcast("message", use_ws_message().data)
        return True

    @ws.on_message("rpc", "/announce")
    async def announce() -> bool:
        await use_ws_server().broadcast("announcement", "/announce", use_ws_message().data)
        return True

    @ws.on_message("rpc", "/direct")
    async def direct() -> bool:
        data = use_ws_message().data
        return await use_ws_server().send_to(data["to"], "note", "/private", data["body"])

    return ws


@pytest.fixture
async def traced(ws_client: Any, provider: TracerProvider) -> AsyncIterator[WsTestClient]:
    ws = build()
    ws.enable_tracing(provider)
    assert ws.tracing_enabled
    yield await ws_client(ws)


# -- one instance -------------------------------------------------------------------------


async def test_an_rpc_makes_one_server_span_named_by_its_route_pattern(
    traced: WsTestClient, exporter: InMemorySpanExporter
) -> None:
    assert await traced.call("rpc", "/users/42") == {"id": "/users/42"}
    me = await traced.call("rpc", "/whoami")
    span = await one_span(exporter, "ws rpc /users/:id")
    assert span.kind is SpanKind.SERVER
    assert span.parent is None
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "wsevents"
    assert dict(span.attributes or {}) == {
        "wsevents.event": "rpc",
        "wsevents.route": "/users/:id",
        "wsevents.path": "/users/42",
        "wsevents.connection.id": me,
        "wsevents.code": 200,
    }


async def test_an_async_handler_runs_inside_its_span(
    ws_client: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ws = build()

    @ws.on_message("rpc", "/nested")
    async def nested() -> str:
        await asyncio.sleep(0)
        with provider.get_tracer("app").start_as_current_span("db query") as span:
            return format(span.get_span_context().span_id, "016x")

    ws.enable_tracing(provider)
    traced = await ws_client(ws)
    child_id = await traced.call("rpc", "/nested")
    ws_span = await one_span(exporter, "ws rpc /nested")
    db = await one_span(exporter, "db query")
    assert format(db.context.span_id, "016x") == child_id
    assert db.parent is not None and db.parent.span_id == ws_span.context.span_id
    assert db.context.trace_id == ws_span.context.trace_id
    assert await traced.call("rpc", "/slow/1") == 1
    slow = await one_span(exporter, "ws rpc /slow/:n")
    assert slow.attributes is not None and slow.attributes["wsevents.code"] == 200


async def test_a_client_error_keeps_the_status_unset(
    traced: WsTestClient, exporter: InMemorySpanExporter
) -> None:
    reply = await traced.request("rpc", "/teapot", message_id=1)
    assert reply["error"] == {"code": 418, "message": "I'm a teapot"}
    span = await one_span(exporter, "ws rpc /teapot")
    assert span.attributes is not None and span.attributes["wsevents.code"] == 418
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


async def test_a_crash_is_a_500_error_span_with_the_exception_and_nothing_leaks(
    traced: WsTestClient, exporter: InMemorySpanExporter
) -> None:
    reply = await traced.request("rpc", "/crash", message_id=1)
    assert reply["error"] == {"code": 500, "message": "Internal Error"}
    span = await one_span(exporter, "ws rpc /crash")
    assert span.attributes is not None
    assert span.attributes["wsevents.code"] == 500
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.message"] == "secret internals"


async def test_idempotent_calls_get_spans_with_their_codes_first_and_repeated(
    traced: WsTestClient, exporter: InMemorySpanExporter
) -> None:
    for n in range(2):
        reply = await traced.request("rpc", "/teapot", message_id=n, idem="t")
        assert reply["error"] == {"code": 418, "message": "I'm a teapot"}
    assert (await traced.request("rpc", "/crash", message_id=5, idem="c"))["error"]["code"] == 500
    await wait_until(lambda: len(spans_named(exporter, "ws rpc /teapot")) == 2, what="2 spans")
    first, repeat = spans_named(exporter, "ws rpc /teapot")
    assert first.attributes is not None and repeat.attributes is not None
    assert first.attributes["wsevents.code"] == repeat.attributes["wsevents.code"] == 418
    assert "wsevents.idem.kept" not in first.attributes
    assert repeat.attributes["wsevents.idem.kept"] is True
    crash = await one_span(exporter, "ws rpc /crash")
    assert crash.attributes is not None and crash.attributes["wsevents.code"] == 500
    assert crash.status.status_code is StatusCode.ERROR
    assert [event.name for event in crash.events] == ["exception"]


async def test_a_5xx_ws_error_and_an_unencodable_reply_are_error_spans(
    traced: WsTestClient, exporter: InMemorySpanExporter
) -> None:
    assert (await traced.request("rpc", "/unavailable", message_id=1))["error"]["code"] == 503
    assert (await traced.request("rpc", "/unencodable", message_id=2))["error"]["code"] == 500
    for name, code in (("ws rpc /unavailable", 503), ("ws rpc /unencodable", 500)):
        span = await one_span(exporter, name)
        assert span.attributes is not None and span.attributes["wsevents.code"] == code
        assert span.status.status_code is StatusCode.ERROR


async def test_a_message_without_id_has_no_code_and_an_unrouted_one_is_a_404(
    traced: WsTestClient, exporter: InMemorySpanExporter
) -> None:
    await traced.send("rpc", "/users/7")
    await traced.send("nope", "/nowhere", message_id=None)  # an id, even null: a 404 reply
    assert (await traced.next_message())["error"]["code"] == 404
    span = await one_span(exporter, "ws rpc /users/:id")
    assert span.attributes is not None and "wsevents.code" not in span.attributes
    unrouted = await one_span(exporter, "ws unrouted")
    assert unrouted.attributes is not None
    assert unrouted.attributes["wsevents.code"] == 404
    assert unrouted.attributes["wsevents.event"] == "nope"
    assert "wsevents.route" not in unrouted.attributes


async def test_an_unrouted_event_of_any_length_is_cut_in_the_span(
    traced: WsTestClient, exporter: InMemorySpanExporter
) -> None:
    await traced.send("x" * 5000, "/" + "p" * 5000, message_id=1)
    assert (await traced.next_message())["error"]["code"] == 404
    unrouted = await one_span(exporter, "ws unrouted")
    assert unrouted.attributes is not None
    assert len(str(unrouted.attributes["wsevents.event"])) == 256
    assert len(str(unrouted.attributes["wsevents.path"])) == 256


async def test_a_client_traceparent_continues_the_clients_trace(
    traced: WsTestClient, exporter: InMemorySpanExporter
) -> None:
    frame = (
        '{"event":"rpc","path":"/users/1","id":1,'
        f'"traceparent":"{TRACEPARENT}","tracestate":"vendor=1"}}'
    )
    await traced.send_raw(frame)
    assert (await traced.next_message())["data"] == {"id": "/users/1"}
    span = await one_span(exporter, "ws rpc /users/:id")
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote
    assert span.context.trace_state.get("vendor") == "1"


@pytest.mark.parametrize(
    "traceparent",
    ['"garbage"', "12", "null", '"00-' + "0" * 32 + '-00f067aa0ba902b7-01"', '"' + "a" * 300 + '"'],
)
async def test_a_bad_client_traceparent_starts_a_new_trace(
    traced: WsTestClient, exporter: InMemorySpanExporter, traceparent: str
) -> None:
    await traced.send_raw(f'{{"event":"rpc","path":"/users/1","id":1,"traceparent":{traceparent}}}')
    assert (await traced.next_message())["data"] == {"id": "/users/1"}
    span = await one_span(exporter, "ws rpc /users/:id")
    assert span.parent is None
    assert format(span.context.trace_id, "032x") != TRACE_ID


async def test_the_client_context_can_be_ignored(
    ws_client: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ws = build()
    ws.enable_tracing(provider, client_context=False)
    client = await ws_client(ws)
    await client.send_raw(
        f'{{"event":"rpc","path":"/users/1","id":1,"traceparent":"{TRACEPARENT}"}}'
    )
    assert (await client.next_message())["data"] == {"id": "/users/1"}
    span = await one_span(exporter, "ws rpc /users/:id")
    assert span.parent is None


async def test_interceptors_and_the_fallback_run_inside_the_span(
    ws_client: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ws = build()
    seen: list[bool] = []

    @ws.intercept
    async def check(scope: Any, call_next: Any) -> Any:
        seen.append(trace.get_current_span() is scope.span and scope.span is not None)
        return await call_next()

    @ws.on_unhandled
    def fallback() -> str:
        return "fallback"

    ws.enable_tracing(provider)
    client = await ws_client(ws)
    assert await client.call("rpc", "/users/3") == {"id": "/users/3"}
    assert await client.call("anything", "/at/all") == "fallback"
    assert seen == [True, True]
    await one_span(exporter, "ws rpc /users/:id")
    fallback_span = await one_span(exporter, "ws * *")
    assert fallback_span.attributes is not None
    assert fallback_span.attributes["wsevents.route"] == "*"


async def test_without_tracing_no_span_is_made(
    ws_client: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ws = build()
    assert not ws.tracing_enabled
    client = await ws_client(ws)
    assert await client.call("rpc", "/users/1") == {"id": "/users/1"}
    assert exporter.get_finished_spans() == ()


def test_an_app_without_tracing_never_imports_opentelemetry() -> None:
    # Served and called once. (redis-py itself imports opentelemetry when it is installed,
    # so the Redis transport stays out of this check.)
    script = """
import asyncio, sys
import aiohttp
from wsevents import WsApp, MemoryBus, MemoryTransport

ws = WsApp(heartbeat=0, transport=MemoryTransport(MemoryBus()))

@ws.on_message("rpc", "/echo")
def echo():
    return 1

async def main():
    host, port = await ws.listen(port=0)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://{host}:{port}/ws") as sock:
            await sock.send_str('{"event":"rpc","path":"/echo","id":1}')
            print(await sock.receive_str())
    await ws.close()

asyncio.run(main())
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['{"id":1,"data":1}', "[]"]


# -- across instances ---------------------------------------------------------------------


async def two_memory_instances(aiohttp_client: Any, provider: TracerProvider) -> list[Any]:
    bus = MemoryBus()
    servers = []
    for _ in range(2):
        ws = build(MemoryTransport(bus))
        ws.enable_tracing(provider)
        servers.append(await aiohttp_client(attach(ws, web.Application(), "/ws")))
    return servers


async def two_redis_instances(
    aiohttp_client: Any, provider: TracerProvider, prefix: str
) -> list[Any]:
    servers = []
    for _ in range(2):
        ws = build(RedisTransport.from_url(REDIS_URL, prefix=prefix))
        ws.enable_tracing(provider)
        servers.append(await aiohttp_client(attach(ws, web.Application(), "/ws")))
    return servers


@pytest.fixture(params=["memory", "redis"])
async def instances(
    request: pytest.FixtureRequest, aiohttp_client: Any, provider: TracerProvider
) -> AsyncIterator[list[WsTestClient]]:
    admin = None
    prefix = unique("wsevents-tracing") + ":"
    if request.param == "memory":
        servers = await two_memory_instances(aiohttp_client, provider)
    else:
        admin = aioredis.from_url(REDIS_URL)
        try:
            await admin.ping()
        except Exception as exc:
            await admin.aclose()
            pytest.skip(f"no Redis at {REDIS_URL}: {exc!r}")
        servers = await two_redis_instances(aiohttp_client, provider, prefix)
    clients = [WsTestClient(await server.ws_connect("/ws")) for server in servers]
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()
        if admin is not None:
            await delete_keys(admin, prefix)
            await admin.aclose()


def instance_of(span: ReadableSpan) -> str:
    assert span.attributes is not None
    return str(span.attributes["wsevents.instance.id"])


async def test_a_room_broadcast_is_one_trace_across_two_instances(
    instances: list[WsTestClient], exporter: InMemorySpanExporter
) -> None:
    sender, receiver = instances
    room = "/rooms/lobby"
    assert await receiver.call("join", room) is True
    assert await sender.call("join", room) is True
    exporter.clear()
    await sender.send_raw(
        f'{{"event":"message","path":"{room}","id":1,"data":"hi","traceparent":"{TRACEPARENT}"}}'
    )
    assert await receiver.next_push() == {
        "event": "message",
        "path": room,
        "params": {"room": "lobby"},
        "data": "hi",
    }
    handled = await one_span(exporter, "ws message /rooms/:room")
    publish = await one_span(exporter, "ws publish room")
    deliver = await one_span(exporter, "ws deliver room")
    assert {format(s.context.trace_id, "032x") for s in (handled, publish, deliver)} == {TRACE_ID}
    assert publish.kind is SpanKind.PRODUCER and deliver.kind is SpanKind.CONSUMER
    assert publish.parent is not None and publish.parent.span_id == handled.context.span_id
    assert deliver.parent is not None and deliver.parent.span_id == publish.context.span_id
    assert deliver.attributes is not None and publish.attributes is not None
    assert instance_of(deliver) != instance_of(publish)
    assert deliver.attributes["wsevents.origin"] == instance_of(publish)
    assert deliver.attributes["wsevents.delivered"] == 1
    assert str(deliver.attributes["messaging.destination.name"]).endswith("ws:room:" + room)
    assert deliver.attributes["wsevents.event"] == "message"


async def test_a_server_broadcast_and_a_send_to_are_traced_to_the_other_instance(
    instances: list[WsTestClient], exporter: InMemorySpanExporter
) -> None:
    sender, receiver = instances
    receiver_id = await receiver.call("rpc", "/whoami")
    exporter.clear()
    assert await sender.call("rpc", "/announce", "all") is True
    assert (await receiver.next_push())["data"] == "all"
    assert await sender.call("rpc", "/direct", {"to": receiver_id, "body": "psst"}) is True
    assert await receiver.next_push() == {"event": "note", "path": "/private", "data": "psst"}
    for kind, rpc in (("broadcast", "ws rpc /announce"), ("direct", "ws rpc /direct")):
        handled = await one_span(exporter, rpc)
        publish = await one_span(exporter, f"ws publish {kind}")
        deliver = await one_span(exporter, f"ws deliver {kind}")
        assert handled.context.trace_id == publish.context.trace_id == deliver.context.trace_id
        assert deliver.parent is not None and deliver.parent.span_id == publish.context.span_id
        assert deliver.attributes is not None and deliver.attributes["wsevents.delivered"] == 1


class FailingTransport(MemoryTransport):
    """A MemoryTransport whose publishes all fail (Redis down)."""

    async def publish(self, channel: str, payload: str) -> None:
        raise ConnectionError("backend unreachable")


async def test_a_failed_publish_is_an_error_span_and_the_message_still_succeeds(
    ws_client: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ws = build(FailingTransport(MemoryBus()))
    ws.enable_tracing(provider)
    client = await ws_client(ws)
    assert await client.call("join", "/rooms/a") is True
    assert await client.call("message", "/rooms/a", "hi") is True
    publish = await one_span(exporter, "ws publish room")
    assert publish.status.status_code is StatusCode.ERROR
    assert publish.attributes is not None
    assert publish.attributes["error.type"] == "ConnectionError"
    handled = await one_span(exporter, "ws message /rooms/:room")
    assert handled.status.status_code is StatusCode.UNSET
    assert handled.attributes is not None and handled.attributes["wsevents.code"] == 200


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"traceparent": "not-a-traceparent"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},
        {"traceparent": 42, "tracestate": {"a": 1}},
    ],
    ids=["none", "garbage", "all-zero", "not-text"],
)
async def test_an_envelope_without_valid_trace_context_is_delivered_in_a_new_trace(
    aiohttp_client: Any,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    extra: dict[str, Any],
) -> None:
    bus = MemoryBus()
    ws = build(MemoryTransport(bus))
    ws.enable_tracing(provider)
    server = await aiohttp_client(attach(ws, web.Application(), "/ws"))
    client = WsTestClient(await server.ws_connect("/ws"))
    try:
        assert await client.call("join", "/rooms/a") is True
        # Another (untraced, or foreign) instance on the bus.
        other = MemoryTransport(bus)
        envelope = {"event": "message", "path": "/rooms/a", "data": "x", **extra, "origin": "o"}
        await other.publish("ws:room:/rooms/a", json.dumps(envelope))
        assert (await client.next_push())["data"] == "x"
        deliver = await one_span(exporter, "ws deliver room")
        assert deliver.parent is None
        assert deliver.attributes is not None and deliver.attributes["wsevents.origin"] == "o"
    finally:
        await client.close()


async def test_a_history_room_broadcast_is_one_trace_across_instances(
    ws_cluster: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from examples.reference_app import add_history

    def build_history(transport: MemoryTransport) -> WsApp:
        ws = WsApp(heartbeat=0, transport=transport)
        add_history(ws)
        ws.enable_tracing(provider)
        return ws

    cluster = await ws_cluster(build_history, instances=2)
    sender, receiver = await cluster.connect(0), await cluster.connect(1)
    room = "/feed/rooms/traced"
    for client in (receiver, sender):
        assert (await client.call("subscribe", room))["subscribed"] is True
    exporter.clear()
    await sender.call("publish", room, "kept")
    push = await receiver.next_push()
    assert (push["data"], push["offset"]) == ("kept", 1)
    handled = await one_span(exporter, "ws publish /feed/rooms/:room")
    publish = await one_span(exporter, "ws publish room")
    deliver = await one_span(exporter, "ws deliver room")
    assert handled.context.trace_id == publish.context.trace_id == deliver.context.trace_id
    assert deliver.parent is not None and deliver.parent.span_id == publish.context.span_id
    assert deliver.attributes is not None and "wsevents.delivered" not in deliver.attributes


# -- with metrics and idempotent calls ---------------------------------------------------------


async def test_traced_messages_are_still_counted_and_idempotent_calls_traced_and_run_once(
    ws_client: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from prometheus_client import CollectorRegistry

    ws = build()
    runs: list[int] = []

    @ws.on_message("rpc", "/count")
    def count() -> int:
        runs.append(1)
        return len(runs)

    ws.enable_metrics(registry=CollectorRegistry())
    ws.enable_tracing(provider)
    client = await ws_client(ws)
    assert await client.call("rpc", "/users/7") == {"id": "/users/7"}  # sync, metered, traced
    for message_id in (1, 2):
        await client.send_raw(
            json.dumps({"event": "rpc", "path": "/count", "id": message_id, "idem": "k-1"})
        )
    replies = [await client.next_message(), await client.next_message()]
    assert sorted(r["id"] for r in replies) == [1, 2]
    assert [r["data"] for r in replies] == [1, 1] and runs == [1]  # ran once
    await wait_until(lambda: len(spans_named(exporter, "ws rpc /count")) == 2, what="2 spans")
    await one_span(exporter, "ws rpc /users/:id")
    assert ws.metrics is not None
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in ws.metrics.collect()
        for s in family.samples
    }
    users = (("event", "rpc"), ("route", "/users/:id"))
    assert samples["wsevents_messages_received_total", users] == 1
    assert samples["wsevents_replies_total", (("code", "200"), *users)] == 1
