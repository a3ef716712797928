"""examples/multi_instance: two reference-app processes started with --redis-url."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from examples.multi_instance.demo import cross
from wsevents.testing import WsTestClient, assert_delivered_once

from .redis_support import both_engines, free_port

# The fixtures admin, prefix and throwaway_redis.
pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parent.parent


class Instance:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> int:
        """SIGTERM by PID; returns the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def start_instance(redis_url: str) -> Instance:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsevents",
        "run",
        "examples.reference_app:app",
        "--port",
        str(port),
        "--redis-url",
        redis_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    instance = Instance(proc, port)
    deadline = time.monotonic() + 20
    while True:  # ready when the port accepts connections
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None or time.monotonic() > deadline:
                await instance.stop()
                raise AssertionError(f"instance on {port} did not start") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return instance


@pytest.fixture
async def two_instances(
    admin: aioredis.Redis, engine_url: str
) -> AsyncIterator[tuple[Instance, Instance]]:
    """Two reference-app processes on the engine under test (one Redis unless the test
    runs on ``both_engines``)."""
    a = await start_instance(engine_url)
    try:
        b = await start_instance(engine_url)
    except BaseException:
        await a.stop()
        raise
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


@both_engines
async def test_demo_sees_room_announcement_and_direct_push_cross_instances(
    two_instances: tuple[Instance, Instance],
) -> None:
    a, b = two_instances
    lines = await cross(a.url, b.url)
    assert lines[0].endswith(": hello from instance A")
    assert lines[1] == "announcement: to every connection"
    assert lines[2] == "direct (sent=True): just for Bob"


async def test_sigterm_closes_connections_and_the_transport(
    two_instances: tuple[Instance, Instance], admin: aioredis.Redis
) -> None:
    a, _ = two_instances
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(a.url)
        await ws.send_json({"event": "rpc", "path": "/whoami", "id": 1})
        connection_id = (await ws.receive_json(timeout=5))["data"]["id"]
        key = f"wsevents:conn:{connection_id}"
        assert await admin.exists(key) == 1
        assert await a.stop() == 0
        closing = await ws.receive(timeout=5)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert closing.data == 1001
    # The transport deleted the instance's directory entry and left Redis.
    assert await admin.exists(key) == 0


async def _connect(session: aiohttp.ClientSession, url: str) -> WsTestClient:
    return WsTestClient(await session.ws_connect(url))


@both_engines
async def test_two_processes_deliver_every_push_exactly_once_from_the_outside(
    two_instances: tuple[Instance, Instance],
) -> None:
    a, b = two_instances
    room = f"/chat/rooms/outside-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        on_a = [await _connect(session, a.url) for _ in range(2)]
        on_b = [await _connect(session, b.url) for _ in range(2)]
        sender, *others = [*on_a, *on_b]
        for client in (*on_a, *on_b):
            assert await client.call("subscribe", room) == {"subscribed": True}

        # A room broadcast: once to each member on both instances, never to the sender.
        assert await sender.call("message", room, {"n": 1}) == {"sent": True}
        push = {"event": "message", "path": room, "params": {"room": room.rsplit("/", 1)[1]}}
        await assert_delivered_once(others, {**push, "data": {"n": 1}}, excluded=[sender])

        # Order: 200 messages from one sender arrive in order on the other instance.
        for n in range(200):
            await sender.send("message", room, {"seq": n})
        for member in others:
            got = [(await member.next_push())["data"]["seq"] for _ in range(200)]
            assert got == list(range(200))

        # Server-wide: every connection of both instances, the sender included, once.
        assert await on_b[0].call("rpc", "/announce", {"all": True}) == {"sent": True}
        announcement = {"event": "announcement", "path": "/announce", "data": {"all": True}}
        await assert_delivered_once([*on_a, *on_b], announcement)

        # Direct: to a connection on the other instance, once; an unknown id is refused.
        target_id = (await on_b[1].call("rpc", "/whoami"))["id"]
        payload = {"to": target_id, "payload": "psst"}
        assert await on_a[0].call("rpc", "/direct", payload) == {"sent": True}
        direct = {"event": "notification", "path": "/private", "data": "psst"}
        await assert_delivered_once([on_b[1]], direct, excluded=[on_a[1], on_b[0]])
        unknown = {"to": str(uuid.uuid4()), "payload": "lost"}
        assert await on_a[0].call("rpc", "/direct", unknown) == {"sent": False}

        # The disconnect notice of a member on A reaches the members on B once.
        leaving_id = (await on_a[1].call("rpc", "/whoami"))["id"]
        await on_a[1].close()
        notice = {"event": "system", "path": room, "data": {"text": "left", "id": leaving_id}}
        await assert_delivered_once([on_a[0], *on_b], notice)
        for client in (on_a[0], *on_b):
            await client.close()
