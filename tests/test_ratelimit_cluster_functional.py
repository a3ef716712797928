"""Cluster-wide rate limits (RateLimit(..., cluster=True)): one bucket per user or IP in the
backend, shared by instances on a MemoryBus and on a real Redis; fail open."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from wsevents import (
    Capabilities,
    MemoryBus,
    MemoryTransport,
    RateLimit,
    WsApp,
    WsClientError,
    use_ws_connection,
)
from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports import MemoryRateLimitStore
from wsevents.transports.redis import RedisTransport

from .redis_support import REDIS_URL, wait_until

pytest_plugins = ["tests.redis_fixtures"]


def build(transport: Any, *, app_limit: RateLimit | None = None) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport, rate_limit=app_limit)

    @ws.on_connect
    def identify() -> None:
        conn = use_ws_connection()
        if conn.request is not None:
            conn.user = conn.request.query.get("user", conn.id)

    @ws.on_message("rpc", "/shared", rate_limit=RateLimit(3, per=60, key="user", cluster=True))
    def shared() -> str:
        return "ok"

    @ws.on_message("rpc", "/local", rate_limit=RateLimit(1, per=60, key="user"))
    def local() -> str:
        return "ok"

    @ws.on_message("rpc", "/by-ip", rate_limit=RateLimit(2, per=60, key="ip", cluster=True))
    async def by_ip() -> str:
        await asyncio.sleep(0)
        return "ok"

    @ws.on_message("rpc", "/fast", rate_limit=RateLimit(20, burst=1, key="user", cluster=True))
    def fast() -> str:
        return "ok"

    @ws.on_message(
        "rpc", "/dry", rate_limit=RateLimit(1, per=60, key="user", cluster=True, dry_run=True)
    )
    def dry() -> str:
        return "ok"

    group = ws.group("/g", rate_limit=RateLimit(2, per=60, key="user", cluster=True))

    @group.on_message("rpc", "/a", rate_limit=RateLimit(5, per=60, key="user", cluster=True))
    def g_a() -> str:
        return "a"

    @group.on_message("rpc", "/b")
    def g_b() -> str:
        return "b"

    return ws


async def serve(aiohttp_client: Any, apps: list[WsApp]) -> Callable[..., Any]:
    servers = [await aiohttp_client(attach(app, web.Application())) for app in apps]

    async def connect(instance: int, user: str) -> WsTestClient:
        return WsTestClient(await servers[instance].ws_connect("/ws", params={"user": user}))

    return connect


async def rejected(client: WsTestClient, path: str) -> WsClientError:
    with pytest.raises(WsClientError) as info:
        await client.call("rpc", path)
    assert (info.value.code, info.value.message) == (429, "Too Many Requests")
    return info.value


async def check_one_bucket_per_user(connect: Callable[..., Any]) -> None:
    """ada's connections on 3 instances share 3 calls; bob has his own bucket."""
    ada = [await connect(i, "ada") for i in range(3)]
    for client in ada:
        assert await client.call("rpc", "/shared") == "ok"
    for client in ada:
        error = await rejected(client, "/shared")
        assert error.retry_after is not None and 0 < error.retry_after <= 20.001
    bob = await connect(1, "bob")
    assert [await bob.call("rpc", "/shared") for _ in range(3)] == ["ok"] * 3
    await rejected(bob, "/shared")
    # A limit without cluster=True counts per instance: 1 call on each.
    for client in ada:
        assert await client.call("rpc", "/local") == "ok"
        await rejected(client, "/local")
    # Keyed by IP: every connection comes from 127.0.0.1, on any instance.
    assert await ada[0].call("rpc", "/by-ip") == "ok"
    assert await bob.call("rpc", "/by-ip") == "ok"
    await rejected(ada[2], "/by-ip")
    # A group's limit and its route's are two buckets: /g/a counts against both.
    assert await ada[0].call("rpc", "/g/a") == "a"
    assert await ada[1].call("rpc", "/g/b") == "b"
    await rejected(ada[2], "/g/a")
    await rejected(ada[2], "/g/b")
    # Dry run: counted, never refused.
    assert [await ada[i % 3].call("rpc", "/dry") for i in range(4)] == ["ok"] * 4
    # Refill: 20 a second, burst 1.
    assert await ada[0].call("rpc", "/fast") == "ok"
    error = await rejected(ada[1], "/fast")
    assert error.retry_after is not None and 0 < error.retry_after <= 0.051
    await asyncio.sleep(error.retry_after + 0.01)
    assert await ada[2].call("rpc", "/fast") == "ok"
    for client in [*ada, bob]:
        await client.close()


def test_cluster_limits_need_a_user_or_ip_key() -> None:
    for key in ("connection", lambda conn: conn.id):
        with pytest.raises(ValueError, match="cluster-wide"):
            RateLimit(1, key=key, cluster=True)  # type: ignore[arg-type]
    assert RateLimit(1, key="ip", cluster=True).cluster


async def test_memory_store_takes_and_refills() -> None:
    store = MemoryRateLimitStore()
    assert await store.take("k", 2.0, 1.0) == 0.0
    assert await store.take("k", 2.0, 1.0) == 0.0
    wait = await store.take("k", 2.0, 1.0)
    assert 0.9 < wait <= 1.0
    assert await store.take("other", 2.0, 1.0) == 0.0
    assert await store.take("fast", 1.0, 100.0) == 0.0
    await asyncio.sleep(0.02)
    assert await store.take("fast", 1.0, 100.0) == 0.0
    assert len(store) == 3


async def test_three_memory_instances_share_one_bucket(aiohttp_client) -> None:
    bus = MemoryBus()
    apps = [build(MemoryTransport(bus)) for _ in range(3)]
    await check_one_bucket_per_user(await serve(aiohttp_client, apps))
    dry = [r for app in apps for r in app.routes() if r.pattern == "/dry"]
    assert sum(limiter.rejected for r in dry for limiter in r.rate_limits) == 3


async def test_three_redis_instances_share_one_bucket(
    aiohttp_client, admin: aioredis.Redis, prefix: str
) -> None:
    transports = [RedisTransport.from_url(REDIS_URL, prefix=prefix) for _ in range(3)]
    apps = [build(t) for t in transports]
    await check_one_bucket_per_user(await serve(aiohttp_client, apps))
    # The buckets live in Redis, and expire once they would be full again.
    keys = sorted(k.decode() for k in await admin.keys(f"{prefix}ws:rl:*"))
    assert f"{prefix}ws:rl:route rpc /shared|ada" in keys
    assert f"{prefix}ws:rl:group /g|ada" in keys
    ttl = await admin.pttl(f"{prefix}ws:rl:route rpc /shared|ada")
    assert 0 < ttl <= 60_001


async def test_an_app_wide_cluster_limit(aiohttp_client) -> None:
    bus = MemoryBus()
    limit = RateLimit(4, per=60, key="user", cluster=True)
    apps = [build(MemoryTransport(bus), app_limit=limit) for _ in range(2)]
    connect = await serve(aiohttp_client, apps)
    a, b = await connect(0, "ada"), await connect(1, "ada")
    assert [await c.call("rpc", "/g/b") for c in (a, b)] == ["b", "b"]
    assert [await c.call("rpc", "/local") for c in (a, b)] == ["ok", "ok"]
    await rejected(a, "/shared")
    await rejected(b, "/dry")
    await a.close()
    await b.close()


class _BrokenStore:
    def __init__(self) -> None:
        self.calls = 0

    async def take(self, key: str, capacity: float, refill: float) -> float:
        self.calls += 1
        raise ConnectionError("backend unreachable")


class _BrokenTransport(MemoryTransport):
    def __init__(self, store: _BrokenStore) -> None:
        super().__init__()
        self.store = store

    def capabilities(self) -> Capabilities:
        return Capabilities(rate_limits=self.store)


async def test_a_failing_backend_fails_open_with_one_warning(aiohttp_client, caplog) -> None:
    store = _BrokenStore()
    connect = await serve(aiohttp_client, [build(_BrokenTransport(store))])
    ada = await connect(0, "ada")
    caplog.set_level(logging.WARNING, "wsevents.ratelimit")
    assert [await ada.call("rpc", "/shared") for _ in range(6)] == ["ok"] * 6
    assert store.calls == 6
    warnings = [r for r in caplog.records if "backend failed" in r.getMessage()]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    await ada.close()


async def test_without_a_store_the_buckets_are_the_instance_s(aiohttp_client, caplog) -> None:
    class Plain(MemoryTransport):
        def capabilities(self) -> Capabilities:
            return Capabilities()

    caplog.set_level(logging.WARNING, "wsevents")
    connect = await serve(aiohttp_client, [build(None), build(Plain())])
    for instance in (0, 1):
        ada = await connect(instance, "ada")
        assert [await ada.call("rpc", "/shared") for _ in range(3)] == ["ok"] * 3
        await rejected(ada, "/shared")
        await ada.close()
    # Only the app with a transport that cannot share warns.
    assert len([r for r in caplog.records if "no rate-limit store" in r.getMessage()]) == 1


async def test_redis_takes_are_atomic_across_clients(admin: aioredis.Redis, prefix: str) -> None:
    from wsevents.transports.redis._ratelimit import RedisRateLimits

    clients = [aioredis.from_url(REDIS_URL) for _ in range(3)]
    try:
        stores = [RedisRateLimits(c, prefix=prefix, command_timeout=5.0) for c in clients]
        waits = await asyncio.gather(*(stores[i % 3].take("race", 5.0, 0.001) for i in range(30)))
        assert sum(1 for w in waits if w == 0.0) == 5
        assert all(w > 900 for w in waits if w)  # ~1000 s for one token at 0.001/s
        ttl = await admin.pttl(stores[0].key("race"))
        assert 4_000_000 < ttl <= 5_000_001  # refilled to 5 tokens in ~5000 s
    finally:
        for c in clients:
            await c.aclose()


async def test_redis_store_failure_is_a_transport_error() -> None:
    from wsevents import TransportError
    from wsevents.transports.redis._ratelimit import RedisRateLimits

    from .redis_support import free_port

    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        store = RedisRateLimits(client, prefix="x:", command_timeout=2.0)
        with pytest.raises(TransportError, match="rate limit take failed"):
            await store.take("k", 1.0, 1.0)
    finally:
        await client.aclose()


@pytest.mark.functional
async def test_a_redis_outage_fails_open_and_the_limit_is_back_with_redis(
    aiohttp_client, throwaway_redis, caplog
) -> None:
    transports = [
        RedisTransport.from_url(
            throwaway_redis.url,
            connect_timeout=1.0,
            command_timeout=0.5,
            reconnect_delay=0.05,
            reconnect_max_delay=0.5,
        )
        for _ in range(2)
    ]
    connect = await serve(aiohttp_client, [build(t) for t in transports])
    a, b = await connect(0, "ada"), await connect(1, "ada")
    assert [await c.call("rpc", "/shared") for c in (a, b, a)] == ["ok"] * 3
    await rejected(b, "/shared")

    await throwaway_redis.stop()
    caplog.set_level(logging.WARNING, "wsevents.ratelimit")
    # The backend is gone: calls go through, one warning per limit.
    assert [await c.call("rpc", "/shared", timeout=5) for c in (a, b, a, b)] == ["ok"] * 4
    warnings = [r for r in caplog.records if "backend failed" in r.getMessage()]
    assert len(warnings) == 2  # once per instance's limit, not per call

    await throwaway_redis.start()  # empty: a fresh bucket of 3, shared again
    await wait_until(lambda: transports[0].health(), timeout=10.0, what="Redis is back")
    assert [await c.call("rpc", "/shared") for c in (a, b, a)] == ["ok"] * 3
    await rejected(b, "/shared")
    await a.close()
    await b.close()


async def test_cluster_wide_rejections_are_counted_by_the_metrics(aiohttp_client) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from wsevents.server import add_metrics_route

    ws = build(MemoryTransport(MemoryBus()))
    app = attach(ws, web.Application())
    registry = CollectorRegistry()
    ws.enable_metrics(registry=registry)
    add_metrics_route(app, ws, registry=registry)
    server = await aiohttp_client(app)
    ada = WsTestClient(await server.ws_connect("/ws", params={"user": "ada"}))
    assert [await ada.call("rpc", "/shared") for _ in range(3)] == ["ok"] * 3
    await rejected(ada, "/shared")
    await rejected(ada, "/shared")
    text = await (await server.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("wsevents_rate_limit_rejections_total", (("kind", "message"),))] == 2
    replies = ("wsevents_replies_total", (("code", "429"), ("event", "rpc"), ("route", "/shared")))
    assert samples[replies] == 2
    await ada.close()
