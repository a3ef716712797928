"""Presence over a real Redis: three instances in process, and real processes killed -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from examples.reference_app import add_presence
from wsevents import PresenceChange, PresenceCount, WsApp
from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports.redis import RedisTransport
from wsevents.transports.redis._presence import RedisPresence

from .redis_support import REDIS_URL, KeysOf, both_engines, free_port, unique, wait_until
from .test_presence_functional import (
    count_changes,
    join,
    next_presence,
    presence,
    pushes_until,
    room_name,
)

pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parent.parent


class Instance:
    def __init__(self, app: WsApp, server: Any) -> None:
        self.app = app
        self.server = server

    async def connect(self, user: str) -> WsTestClient:
        return WsTestClient(await self.server.ws_connect("/ws", params={"user": user}))


Cluster = Callable[..., Awaitable[list[Instance]]]


@pytest.fixture
def changes() -> list[PresenceChange]:
    return []


@pytest.fixture
async def cluster(
    aiohttp_client: Any, prefix: str, changes: list[PresenceChange], engine_url: str
) -> AsyncIterator[Cluster]:
    async def make(count: int) -> list[Instance]:
        made = []
        for _ in range(count):
            app = WsApp(heartbeat=0, transport=RedisTransport.from_url(engine_url, prefix=prefix))
            add_presence(app)
            app.presence.instance_ttl = 0.6
            app.on_presence(changes.append)
            made.append(Instance(app, await aiohttp_client(attach(app, web.Application(), "/ws"))))
        return made

    yield make


async def presence_keys(admin: aioredis.Redis, prefix: str) -> list[bytes]:
    return [key async for key in admin.scan_iter(match=prefix + "ws:presence:*", count=500)]


@both_engines
async def test_counts_lists_and_changes_are_exact_across_three_instances(
    cluster: Cluster, changes: list[PresenceChange], keys_of: KeysOf, prefix: str
) -> None:
    instances = await cluster(3)
    room = room_name()
    observers = [await inst.connect(f"obs{i}") for i, inst in enumerate(instances)]
    for observer in observers:
        await join(observer, room, "O")
    alice = [await inst.connect("alice") for inst in instances]
    await asyncio.gather(*(join(c, room, "Ada") for c in alice))
    for observer in observers:
        assert await observer.call("rpc", "/presence/count", {"room": room}) == {
            "connections": 6,
            "users": 4,
        }
        page = await observer.call("rpc", "/presence/list", {"room": room, "limit": 2})
        assert page == {
            "total": 4,
            "members": [
                {"user": "alice", "name": "Ada", "connections": 3},
                {"user": "obs0", "name": "O", "connections": 1},
            ],
        }

    async def markers(stem: str) -> set[str]:
        names = set()
        for i, inst in enumerate(instances):
            await join(await inst.connect(f"{stem}{i}"), room)
            names.add(f"{stem}{i}")
        return names

    seen = await markers("~in")
    for observer in observers:
        assert count_changes(await pushes_until(observer, seen), "alice") == (1, 0)
    await asyncio.gather(*(c.close() for c in alice))
    seen = await markers("~out")
    for observer in observers:
        assert count_changes(await pushes_until(observer, seen), "alice") == (0, 1)
    assert [c.kind for c in changes if c.user == "alice"] == ["join", "leave"]
    # A clean shutdown of every instance leaves nothing behind.
    for inst in instances:
        await inst.server.close()
    assert await keys_of(prefix + "ws:presence:*") == []


@both_engines
async def test_one_survivor_reaps_a_dead_instance_and_each_member_hears_one_leave(
    cluster: Cluster, changes: list[PresenceChange], prefix: str
) -> None:
    instances = await cluster(2)
    room = room_name()
    watchers = [await inst.connect(f"w{i}") for i, inst in enumerate(instances)]
    for watcher in watchers:
        await join(watcher, room)
    # What a crashed instance leaves behind: its entries, and a heartbeat that expires.
    client: Any = instances[0].app.transport.client  # type: ignore[union-attr]
    dead = RedisPresence(client, prefix=prefix, command_timeout=2.0)
    assert await dead.heartbeat("dead-instance", 0.2)
    assert await dead.add(room, "c1", "ghost", '{"name": "G"}', "dead-instance")
    assert not await dead.add(room, "c2", "ghost", None, "dead-instance")
    assert not await dead.add(room, "c3", "w0", None, "dead-instance")
    for watcher in watchers:
        frames = await pushes_until(watcher, {"w0", "w1"})
        while count_changes(frames, "ghost") == (0, 0):
            frames.append(await next_presence(watcher, timeout=10.0))
        assert count_changes(frames, "ghost") == (0, 1)
        assert count_changes(frames, "w0") == (1, 0)
    for watcher in watchers:
        assert await watcher.call("rpc", "/presence/count", {"room": room}) == {
            "connections": 2,
            "users": 2,
        }
    assert [c.kind for c in changes if c.user == "ghost"] == ["leave"]
    assert await dead.expired_instances() == []
    # Another leave of ghost would come before this marker.
    await join(await instances[1].connect("~marker"), room)
    for watcher in watchers:
        assert count_changes(await pushes_until(watcher, {"~marker"}), "ghost") == (0, 0)


async def test_the_store_answers_count_and_members_like_the_memory_store(
    admin: aioredis.Redis, prefix: str
) -> None:
    store = RedisPresence(admin, prefix=prefix, command_timeout=2.0)
    room = "/r/{braces}"
    assert await store.add(room, "a", "bob", None, "i1")
    assert await store.add(room, "b", "alice", '{"name":"A"}', "i2")
    assert not await store.add(room, "c", "alice", '{"name":"other"}', "i1")
    assert not await store.add(room, "c", "alice", None, "i1")  # already there
    assert await store.count(room) == PresenceCount(3, 2)
    page = await store.members(room, 0, 10)
    assert page.total == 2
    assert [(m.user, m.data, m.connections) for m in page.members] == [
        ("alice", '{"name":"A"}', 2),
        ("bob", None, 1),
    ]
    assert await store.update(room, "bob", '{"name":"B"}')
    assert not await store.update(room, "nobody", None)
    assert (await store.members(room, 1, 1)).members[0].data == '{"name":"B"}'
    assert await store.remove(room, "b", "i2") is None
    assert await store.remove(room, "c", "i1") == "alice"
    assert await store.remove(room, "c", "i1") is None
    assert await store.reap("i1", "i1") == [(room, "bob")]
    assert await store.count(room) == PresenceCount(0, 0)
    assert await presence_keys(admin, prefix) == []


# -- real processes: kill -9 -------------------------------------------------------------------


def start_process(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsevents",
                "run",
                "examples.reference_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--redis-url",
                REDIS_URL,
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, port


async def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # poll interval, bounded by the deadline
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"port {port} not listening within {timeout} s")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_killed_instance_members_are_gone_everywhere_within_30_s(
    admin: aioredis.Redis, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    servers = []
    for i in range(2):
        proc, port = start_process(tmp_path / f"server-{i}.log")
        processes.append(proc)
        servers.append((proc, port))
    for proc, port in servers:
        await wait_listening(proc, port)
    room = f"/presence/rooms/{unique('kill')}"
    async with aiohttp.ClientSession() as session:

        async def connect(port: int, user: str) -> WsTestClient:
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}/ws", params={"user": user})
            return WsTestClient(ws)

        survivor_port, victim_port = servers[0][1], servers[1][1]
        bob = await connect(survivor_port, "bob")
        await join(bob, room, "Bob")
        victims = [await connect(victim_port, "alice"), await connect(victim_port, "carol")]
        await join(victims[0], room, "Ada")
        await join(victims[1], room, "Cy")
        both = await connect(survivor_port, "carol")  # carol stays through this tab
        await join(both, room, "Cy2")
        await pushes_until(bob, {"alice", "carol"})
        assert await bob.call("rpc", "/presence/count", {"room": room}) == {
            "connections": 4,
            "users": 3,
        }
        os.kill(servers[1][0].pid, signal.SIGKILL)
        servers[1][0].wait(timeout=10)
        started = time.monotonic()
        assert await next_presence(bob, timeout=30.0) == presence(room, [], ["alice"])
        assert time.monotonic() - started < 30.0
        assert await bob.call("rpc", "/presence/count", {"room": room}) == {
            "connections": 2,
            "users": 2,
        }
        page = await bob.call("rpc", "/presence/list", {"room": room})
        assert [m["user"] for m in page["members"]] == ["bob", "carol"]

        async def no_more_alice() -> bool:
            return (await bob.call("rpc", "/presence/count", {"room": room}))["users"] == 2

        await wait_until(no_more_alice, what="count stays exact")
        await bob.close()
        await both.close()
        for client in victims:
            await client.close()


# -- the chat example on two instances ---------------------------------------------------------


async def test_chat_member_lists_are_right_with_two_instances_on_redis(
    aiohttp_client: Any, prefix: str
) -> None:
    from examples.chat.server import create_app

    servers = [
        await aiohttp_client(
            create_app(transport=RedisTransport.from_url(REDIS_URL, prefix=prefix))
        )
        for _ in range(2)
    ]
    room = f"/chat/{unique('r')}"
    ada = WsTestClient(await servers[0].ws_connect("/ws", params={"name": "Ada"}))
    bob = WsTestClient(await servers[1].ws_connect("/ws", params={"name": "Bob"}))
    assert (await ada.call("subscribe", room))["members"] == ["Ada"]
    assert (await bob.call("subscribe", room))["members"] == ["Ada", "Bob"]
    joined = await ada.next_push()
    assert joined["data"]["kind"] == "join" and joined["data"]["members"] == ["Ada", "Bob"]
    await bob.close()
    async with asyncio.timeout(5):
        while True:
            push = await ada.next_push()
            if push["event"] == "system" and push["data"]["kind"] == "leave":
                break
    assert push["data"]["members"] == ["Ada"]
    # A resubscribe (what a page does after a reconnect) gets the list as it is now.
    assert (await ada.call("subscribe", room))["members"] == ["Ada"]
    await ada.close()
