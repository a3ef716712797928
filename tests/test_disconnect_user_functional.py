"""disconnect_user: every connection of a user, on every instance, closed with the code
given (the reference app's rpc /revoke: 4403 "Revoked"); one instance, three instances
over MemoryTransport and over real Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from examples.reference_app import app as reference_app
from wsevents import (
    BroadcastTransport,
    WsApp,
    use_ws_connection,
    use_ws_message,
    use_ws_server,
)
from wsevents.cluster import CONTROL_CHANNEL
from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports.redis import RedisTransport

from .redis_support import REDIS_URL

pytest_plugins = ["tests.redis_fixtures"]

WITHIN = 1.0  # the contract: closed within 1 s on every instance


def build(transport: BroadcastTransport | None = None) -> WsApp:
    ws = WsApp(heartbeat=0, transport=transport)

    @ws.on_connect
    def identify() -> None:
        request = use_ws_connection().request
        user = request.query.get("user") if request is not None else None
        if user:
            use_ws_connection().user = user

    @ws.on_message("rpc", "/revoke")
    async def revoke() -> dict[str, Any]:
        data = use_ws_message().data
        closed = await use_ws_server().disconnect_user(data["user"], 4403, "Revoked")
        return {"ok": True, "here": closed}

    @ws.on_message("rpc", "/echo")
    def echo() -> Any:
        return use_ws_message().data

    return ws


async def assert_revoked(victims: list[WsTestClient], started: float) -> None:
    for victim in victims:
        assert await victim.wait_closed(timeout=5.0) == 4403
        assert victim.close_reason == "Revoked"
    assert time.monotonic() - started <= WITHIN


async def test_every_connection_of_the_user_is_closed_on_one_instance(ws_client) -> None:
    ws = build()
    tab1 = await ws_client(ws, query={"user": "alice"})
    tab2 = await ws_client(ws, query={"user": "alice"})
    bob = await ws_client(ws, query={"user": "bob"})
    started = time.monotonic()
    assert await bob.call("rpc", "/revoke", {"user": "alice"}) == {"ok": True, "here": 2}
    await assert_revoked([tab1, tab2], started)
    assert await bob.call("rpc", "/echo", "still here") == "still here"


async def test_a_user_may_revoke_itself(ws_client) -> None:
    ws = build()
    alice = await ws_client(ws, query={"user": "alice"})
    await alice.send("rpc", "/revoke", {"user": "alice"}, message_id=1)
    assert await alice.wait_closed() == 4403


@pytest.mark.parametrize("code", [999, 1001, 2999, 5000])
async def test_codes_an_application_may_not_send_are_refused(ws_client, code: int) -> None:
    ws = build()
    with pytest.raises(ValueError, match="close code"):
        await ws.server.disconnect_user("alice", code, "no")


async def test_across_three_memory_instances(ws_cluster) -> None:
    cluster = await ws_cluster(lambda t: build(t), instances=3)
    victims = await cluster.connect_spread(6, query={"user": "alice"})
    others = await cluster.connect_spread(3, query={"user": "bob"})
    started = time.monotonic()
    reply = await others[1].call("rpc", "/revoke", {"user": "alice"})
    assert reply == {"ok": True, "here": 2}  # two of the six live on instance 1
    await assert_revoked(victims, started)
    for other in others:
        assert await other.call("rpc", "/echo", 1) == 1


@pytest.fixture
async def redis_instances(aiohttp_client: Any, prefix: str) -> AsyncIterator[list[Any]]:
    servers = []
    for _ in range(3):
        transport = RedisTransport.from_url(REDIS_URL, prefix=prefix)
        servers.append(await aiohttp_client(attach(build(transport), web.Application(), "/ws")))
    yield servers


@pytest.mark.functional
async def test_across_three_redis_instances(redis_instances: list[Any]) -> None:
    clients: list[WsTestClient] = []

    async def connect(i: int, user: str) -> WsTestClient:
        sock = await redis_instances[i].ws_connect("/ws", params={"user": user})
        client = WsTestClient(sock)
        clients.append(client)
        return client

    victims = [await connect(i % 3, "alice") for i in range(6)]
    others = [await connect(i, "bob") for i in range(3)]
    started = time.monotonic()
    assert await others[2].call("rpc", "/revoke", {"user": "alice"}) == {"ok": True, "here": 2}
    await assert_revoked(victims, started)
    for other in others:
        assert await other.call("rpc", "/echo", 1) == 1
    for client in clients:
        await client.close()


async def test_malformed_control_envelopes_are_dropped(ws_cluster) -> None:
    cluster = await ws_cluster(lambda t: build(t), instances=2)
    alice = await cluster.connect(1, query={"user": "alice"})
    bob = await cluster.connect(1, query={"user": "bob"})
    transport = cluster.apps[0].transport
    assert transport is not None
    for payload in (
        '{"op": "disconnect_user", "user": "alice", "code": "4403", "reason": "x", "origin": "o"}',
        '{"op": "disconnect_user", "user": "alice", "code": 1001, "reason": "x", "origin": "o"}',
        '{"op": "disconnect_user", "user": "alice", "code": 4403, "origin": "o"}',
        '{"op": "reboot", "user": "alice", "code": 4403, "reason": "x", "origin": "o"}',
        '{"user": "alice", "code": 4403, "reason": "x"}',
        "not json",
        # A valid one last: once bob is closed, the ones before were handled.
        '{"op": "disconnect_user", "user": "bob", "code": 4403, "reason": "x", "origin": "o"}',
    ):
        await transport.publish(CONTROL_CHANNEL, payload)
    assert await bob.wait_closed() == 4403
    assert await alice.call("rpc", "/echo", "alive") == "alive"


# -- the reference app --------------------------------------------------------------------


async def test_reference_revoke_closes_4403_and_replies_ok(ws_client) -> None:
    alice = await ws_client(reference_app, query={"user": "alice"})
    admin = await ws_client(reference_app, query={"user": "admin"})
    assert await alice.call("rpc", "/whoami") is not None
    assert await admin.call("rpc", "/revoke", {"user": "alice"}) == {"ok": True}
    assert await alice.wait_closed() == 4403
    assert alice.close_reason == "Revoked"
    error = await admin.request("rpc", "/revoke", {"nobody": 1}, message_id=5)
    assert error["error"]["code"] == 400
    await admin.close()
