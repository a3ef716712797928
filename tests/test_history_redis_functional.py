"""History rooms on a real Redis: three instances, recovery across them, history loss,
publisher races; and the store itself, on Redis and in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from examples.reference_app import add_history
from wsevents import HistoryStore, WsApp
from wsevents.server import attach
from wsevents.testing import WsTestClient
from wsevents.transports.memory import MemoryHistoryStore
from wsevents.transports.redis import RedisTransport
from wsevents.transports.redis._history import RedisHistory

from .redis_support import (
    REDIS_URL,
    KeysOf,
    ThrowawayRedisCluster,
    both_engines,
    delete_cluster_keys,
    wait_until,
)
from .test_history_functional import publish, push, room_name, subscribe

pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional

Connect = Callable[[int], Awaitable[WsTestClient]]


@pytest.fixture
async def cluster(aiohttp_client: Any, prefix: str, engine_url: str) -> Connect:
    servers = []
    for _ in range(3):
        app = WsApp(heartbeat=0, transport=RedisTransport.from_url(engine_url, prefix=prefix))
        add_history(app)
        servers.append(await aiohttp_client(attach(app, web.Application(), "/ws")))

    async def connect(i: int) -> WsTestClient:
        return WsTestClient(await servers[i].ws_connect("/ws"))

    return connect


@both_engines
async def test_away_during_500_pushes_from_other_instances_recovers_them_on_another(
    cluster: Connect,
) -> None:
    room = room_name()
    publishers = [await cluster(1), await cluster(2)]
    away = await cluster(0)
    start = await subscribe(away, room)
    await away.close()
    count = 500
    for i in range(count):
        await publish(publishers[i % 2], room, i)
    back = await cluster(1)
    reply = await subscribe(back, room, {"offset": start["offset"], "epoch": start["epoch"]})
    assert reply == {
        "subscribed": True,
        "offset": start["offset"] + count,
        "epoch": start["epoch"],
        "recovered": True,
    }
    assert back.pending_messages() == [push(room, i, i + 1) for i in range(count)]
    await publish(publishers[1], room, "live")
    assert await back.next_push() == push(room, "live", count + 1)


@both_engines
async def test_after_history_loss_since_is_not_recovered_and_a_new_epoch_starts(
    cluster: Connect, keys_of: KeysOf, prefix: str, engine_url: str
) -> None:
    room = room_name()
    alice, bob = await cluster(0), await cluster(2)
    start = await subscribe(bob, room)
    await publish(alice, room, "before")
    assert await bob.next_push() == push(room, "before", 1)
    await bob.close()
    # What a FLUSHALL does to the room.
    deleter = RedisTransport.from_url(engine_url).client
    for key in await keys_of(prefix + "ws:history:*"):
        await deleter.delete(key)
    await deleter.aclose()
    carol = await cluster(1)
    reply = await subscribe(carol, room, {"offset": 1, "epoch": start["epoch"]})
    assert reply["recovered"] is False and reply["offset"] == 0
    assert reply["epoch"] != start["epoch"]
    assert carol.pending_messages() == []
    await publish(alice, room, "after")
    assert await carol.next_push() == push(room, "after", 1)


@both_engines
async def test_a_publisher_race_on_three_instances_gives_every_member_one_order(
    cluster: Connect,
) -> None:
    room = room_name()
    members = [await cluster(i) for i in range(3)]
    for member in members:
        await subscribe(member, room)
    publishers = [await cluster(i) for i in range(3)]
    rounds = 40

    async def burst(p: WsTestClient, k: int) -> None:
        for i in range(rounds):
            await p.send("publish", room, f"{k}:{i}")

    await asyncio.gather(*(burst(p, k) for k, p in enumerate(publishers)))
    total = 3 * rounds
    received = [[await m.next_push() for _ in range(total)] for m in members]
    assert [p["offset"] for p in received[0]] == list(range(1, total + 1))
    for other in received[1:]:
        assert other == received[0]


# -- the store, on Redis and in memory -------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def store(request: Any, prefix: str) -> AsyncIterator[HistoryStore]:
    if request.param == "memory":
        yield MemoryHistoryStore()
        return
    if request.param == "redis":
        client: Any = aioredis.from_url(REDIS_URL)
    else:
        cluster: ThrowawayRedisCluster = request.getfixturevalue("redis_cluster")
        client = RedisTransport.from_url(cluster.url).client
        await client.initialize()  # the slot map, before concurrent commands
    yield RedisHistory(client, prefix=prefix, command_timeout=2.0)
    await client.aclose()
    if request.param == "redis-cluster":
        await delete_cluster_keys(cluster, prefix)


async def test_store_offsets_grow_by_one_and_since_gives_what_is_kept(store: HistoryStore) -> None:
    first = await store.position("r")
    assert first.offset == 0
    offsets = [(await store.append("r", f"p{i}", 3, 60.0)).offset for i in range(5)]
    assert offsets == [1, 2, 3, 4, 5]
    position, entries = await store.since("r", 2, first.epoch, 60.0)
    assert position.offset == 5 and position.epoch == first.epoch
    assert entries is not None
    assert [(e.offset, e.payload) for e in entries] == [(3, "p2"), (4, "p3"), (5, "p4")]
    assert (await store.since("r", 5, first.epoch, 60.0))[1] == []
    # Trimmed by size, another epoch, ahead of the stream: cannot be filled.
    assert (await store.since("r", 1, first.epoch, 60.0))[1] is None
    assert (await store.since("r", 4, "other", 60.0))[1] is None
    assert (await store.since("r", 6, first.epoch, 60.0))[1] is None


async def test_store_concurrent_appends_get_distinct_offsets(store: HistoryStore) -> None:
    results = await asyncio.gather(*(store.append("c", str(i), 100, 60.0) for i in range(50)))
    assert sorted(r.offset for r in results) == list(range(1, 51))
    assert len({r.epoch for r in results}) == 1


async def test_store_pushes_older_than_ttl_cannot_be_recovered(store: HistoryStore) -> None:
    start = await store.position("t")
    await store.append("t", "old", 10, 0.05)
    assert (await store.since("t", 0, start.epoch, 60.0))[1] is not None

    async def expired() -> bool:
        return (await store.since("t", 0, start.epoch, 0.05))[1] is None

    await wait_until(expired, what="the push to age out")
