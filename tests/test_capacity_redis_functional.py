"""Room capacity over a real Redis: three instances in process, and a process killed -9."""

from __future__ import annotations

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

from wsevents import WsApp, WsClientError
from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports.redis import RedisTransport

from .redis_support import REDIS_URL, KeysOf, both_engines, free_port, unique, wait_until
from .test_capacity_functional import build_capped, call_error, join_outcomes
from .test_presence_redis_functional import wait_listening

pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parent.parent


class Instance:
    def __init__(self, app: WsApp, server: Any) -> None:
        self.app = app
        self.server = server
        self.clients: list[WsTestClient] = []

    async def connect(self) -> WsTestClient:
        client = WsTestClient(await self.server.ws_connect("/ws"))
        self.clients.append(client)
        return client


Cluster = Callable[..., Awaitable[list[Instance]]]


@pytest.fixture
async def cluster(aiohttp_client: Any, prefix: str, engine_url: str) -> AsyncIterator[Cluster]:
    made: list[Instance] = []

    async def make(count: int = 3, lease: float | None = None) -> list[Instance]:
        for _ in range(count):
            transport = RedisTransport.from_url(engine_url, prefix=prefix)
            app = build_capped(transport, lease=lease)
            made.append(Instance(app, await aiohttp_client(attach(app, web.Application(), "/ws"))))
        return made[-count:]

    yield make
    for instance in made:
        for client in instance.clients:
            await client.close()


async def capacity_keys(admin: aioredis.Redis, prefix: str) -> list[bytes]:
    return [key async for key in admin.scan_iter(match=prefix + "ws:capacity:*", count=500)]


@both_engines
async def test_racing_joins_over_three_instances_fill_exactly_the_places(
    cluster: Cluster, keys_of: KeysOf, prefix: str
) -> None:
    instances = await cluster(3)
    for round_ in range(3):
        room = f"/capped/rooms/race{round_}"
        clients = [await instances[(round_ + n) % 3].connect() for n in range(12)]
        outcomes = await join_outcomes(clients, room)
        assert outcomes.count([room]) == 3, outcomes
        assert outcomes.count((409, "Room is full")) == 9, outcomes
        assert sum(i.app.rooms.size(room) for i in instances) == 3
        for instance in instances:
            assert await instance.app.capacity.count(room) == 3
        members = [c for c, o in zip(clients, outcomes, strict=True) if o == [room]]
        waiting = [c for c in clients if c not in members]
        # A leave frees a place for anyone, on any instance.
        assert await members[0].call("leave", room) == []
        outcomes = await join_outcomes(waiting, room)
        assert outcomes.count([room]) == 1, outcomes
        # So does a disconnect.
        await members[1].close()

        async def one_more(room: str = room, waiting: list[WsTestClient] = waiting) -> bool:
            return any(o == [room] for o in await join_outcomes(waiting, room))

        await wait_until(one_more, what="a disconnect frees the place on every instance")
        assert sum(i.app.rooms.size(room) for i in instances) == 3
    # Every client gone: no place and no key is left.
    for instance in instances:
        for client in instance.clients:
            await client.close()

    async def no_keys() -> bool:
        return await keys_of(prefix + "ws:capacity:*") == []

    await wait_until(no_keys, what="an emptied room leaves no key in Redis")


async def test_an_instance_that_stops_renewing_frees_its_places(cluster: Cluster) -> None:
    instances = await cluster(3, lease=1.0)
    room = "/capped/rooms/stalled"
    victims = [await instances[1].connect(), await instances[1].connect()]
    survivor = await instances[0].connect()
    for client in (*victims, survivor):
        assert await client.call("subscribe", room) == {"subscribed": True}
    late = await instances[2].connect()
    assert (await call_error(late, "subscribe", room)).code == 409
    task = instances[1].app.capacity._loop_task
    assert task is not None
    task.cancel()  # instance 1 stops renewing, as a frozen process would
    started = time.monotonic()

    async def joined() -> bool:
        try:
            return await late.call("subscribe", room) == {"subscribed": True}
        except WsClientError as exc:
            assert exc.code == 409
            return False

    await wait_until(joined, timeout=10.0, what="the stalled instance's places are free")
    assert time.monotonic() - started >= 0.5  # not before its lease could run out
    assert await instances[0].app.capacity.count(room) == 2  # the survivor's and late's


@pytest.mark.parametrize("engine", ["redis-cluster"], indirect=True)
async def test_an_instance_that_stops_renewing_frees_its_places_on_the_cluster(
    cluster: Cluster,
) -> None:
    # A wrapper, not a mark on the test above: other engines' suites import that one.
    await test_an_instance_that_stops_renewing_frees_its_places(cluster)


def start_process(log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsevents",
                "run",
                "tests.cli_targets:make_capped_app",
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


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_a_killed_instances_places_are_freed_within_its_lease(
    admin: aioredis.Redis, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        processes.append(start_process(tmp_path / f"server-{n}.log", port))
    for proc, port in zip(processes, ports, strict=True):
        await wait_listening(proc, port)
    room = f"/capped/rooms/{unique('kill')}"
    async with aiohttp.ClientSession() as session:
        clients: list[WsTestClient] = []

        async def connect(port: int) -> WsTestClient:
            client = WsTestClient(await session.ws_connect(f"ws://127.0.0.1:{port}/ws"))
            clients.append(client)
            return client

        survivor_port, victim_port = ports
        try:
            victims = [await connect(victim_port), await connect(victim_port)]
            member = await connect(survivor_port)
            for client in (*victims, member):
                assert await client.call("subscribe", room) == {"subscribed": True}
            late = [await connect(survivor_port), await connect(survivor_port)]
            error = await call_error(late[0], "subscribe", room)
            assert (error.code, error.message) == (409, "Room is full")
            os.kill(processes[1].pid, signal.SIGKILL)
            processes[1].wait(timeout=10)
            started = time.monotonic()

            async def both_joined() -> bool:
                for client in late:
                    try:
                        await client.call("subscribe", room)
                    except WsClientError as exc:
                        assert exc.code == 409
                        return False
                return True

            await wait_until(both_joined, timeout=20.0, what="the killed instance's places")
            assert time.monotonic() - started < 20.0
            # Full again: the survivor's three, no more.
            spare = await connect(survivor_port)
            assert (await call_error(spare, "subscribe", room)).code == 409
            # The survivor's members hear each other.
            assert await member.call("message", room, "still here") == {"sent": True}
            for client in late:
                push = await client.next_push()
                assert (push["path"], push["data"]) == (room, "still here")
        finally:
            for client in clients:
                await client.close()
