"""The Redis Cluster engine against a real 3-master 3-replica cluster started by the tests:
conformance, sharded channels, hash-tagged room keys, slot moves and failover."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode

from wsevents import TransportError
from wsevents.testing import (
    check_capacity_store,
    check_history_store,
    check_presence_store,
    check_rate_limit_store,
    check_session_store,
    check_transport,
)
from wsevents.transports.redis import RedisClusterTransport, RedisTransport
from wsevents.transports.redis._capacity import RedisCapacity
from wsevents.transports.redis._history import RedisHistory
from wsevents.transports.redis._presence import RedisPresence
from wsevents.transports.redis._ratelimit import RedisRateLimits
from wsevents.transports.redis._sessions import RedisSessions

from .redis_support import (
    ThrowawayRedisCluster,
    cluster_keys,
    delete_cluster_keys,
    free_cluster_ports,
    unique,
    wait_until,
)

# The fixtures redis_cluster and cluster_prefix.
pytest_plugins = ["tests.redis_fixtures"]

pytestmark = pytest.mark.functional


@pytest.fixture
async def cluster_client(
    redis_cluster: ThrowawayRedisCluster,
) -> AsyncIterator[aioredis.RedisCluster]:
    client = aioredis.RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in redis_cluster.ports]
    )
    await client.initialize()  # the slot map, before concurrent commands
    yield client
    await client.aclose()


def transport(cluster: ThrowawayRedisCluster, prefix: str, **options: float) -> RedisTransport:
    return RedisTransport.from_url(cluster.url, prefix=prefix, **options)


async def test_the_cluster_transport_passes_the_conformance_suite(
    redis_cluster: ThrowawayRedisCluster, cluster_prefix: str
) -> None:
    made: list[RedisTransport] = []

    def factory() -> RedisTransport:
        made.append(transport(redis_cluster, cluster_prefix))
        return made[-1]

    await check_transport(factory)
    assert made and all(isinstance(t, RedisClusterTransport) for t in made)


async def test_the_presence_store_passes_on_the_cluster_and_leaves_no_key(
    redis_cluster: ThrowawayRedisCluster,
    cluster_client: aioredis.RedisCluster,
    cluster_prefix: str,
) -> None:
    await check_presence_store(
        lambda: RedisPresence(
            cluster_client, prefix=cluster_prefix, command_timeout=2.0, reap_lease=5.0
        )
    )
    assert await delete_cluster_keys(redis_cluster, cluster_prefix) == 0


async def test_the_capacity_store_passes_on_the_cluster_and_leaves_no_key(
    redis_cluster: ThrowawayRedisCluster,
    cluster_client: aioredis.RedisCluster,
    cluster_prefix: str,
) -> None:
    await check_capacity_store(
        lambda: RedisCapacity(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    )
    assert await delete_cluster_keys(redis_cluster, cluster_prefix) == 0


async def test_the_session_store_passes_on_the_cluster(
    redis_cluster: ThrowawayRedisCluster,
    cluster_client: aioredis.RedisCluster,
    cluster_prefix: str,
) -> None:
    await check_session_store(
        lambda: RedisSessions(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    )


# -- sharded channels -------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.got: list[str] = []
        self.changed = asyncio.Event()

    def __call__(self, payload: str) -> None:
        self.got.append(payload)
        self.changed.set()

    async def wait_for(self, payload: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while payload not in self.got:
                self.changed.clear()
                await self.changed.wait()


async def shard_channels(cluster: ThrowawayRedisCluster, prefix: str) -> dict[int, set[str]]:
    """Master port → the shard channels under ``prefix`` subscribed there."""
    out: dict[int, set[str]] = {}
    for port in cluster.master_ports():
        node = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            raw = await node.execute_command("PUBSUB", "SHARDCHANNELS", prefix + "*")
        finally:
            await node.aclose()
        out[port] = {c.decode() for c in raw}
    return out


async def test_room_channels_spread_over_the_masters_and_each_is_subscribed_once(
    redis_cluster: ThrowawayRedisCluster, cluster_prefix: str
) -> None:
    a = transport(redis_cluster, cluster_prefix)
    b = transport(redis_cluster, cluster_prefix)
    await a.start()
    await b.start()
    try:
        inbox = Inbox()
        rooms = [f"ws:room:/rooms/{i}" for i in range(12)]
        for room in rooms:
            await b.subscribe(room, inbox)
        placed = await shard_channels(redis_cluster, cluster_prefix)
        with_rooms = [port for port, chans in placed.items() if chans - {""}]
        assert len(with_rooms) == 3, placed  # 12 names hash to every master
        room_homes = [
            [port for port, chans in placed.items() if cluster_prefix + room in chans]
            for room in rooms
        ]
        assert all(len(homes) == 1 for homes in room_homes), room_homes
        for i, room in enumerate(rooms):
            await a.publish(room, f"p{i}")
        for i in range(len(rooms)):
            await inbox.wait_for(f"p{i}")
        assert sorted(inbox.got) == sorted(f"p{i}" for i in range(len(rooms)))
        assert await a.health() and await b.health()
    finally:
        await a.close()
        await b.close()
    assert not any((await shard_channels(redis_cluster, cluster_prefix)).values())


async def test_a_room_with_any_name_keeps_its_keys_on_one_shard(
    redis_cluster: ThrowawayRedisCluster,
    cluster_client: aioredis.RedisCluster,
    cluster_prefix: str,
) -> None:
    presence = RedisPresence(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    history = RedisHistory(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    capacity = RedisCapacity(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    for room in ["", "}", "a}b", "{x}", "~lead", "/rooms/é"]:
        assert await presence.add(room, "c1", "u1", None, "i1")
        assert (await presence.count(room)).connections == 1
        assert (await history.append(room, "p", 10, 60.0)).offset == 1
        assert await capacity.try_acquire(room, "c1", 1, "i1", 60.0)
        assert not await capacity.try_acquire(room, "c2", 1, "i1", 60.0)
    # Every room got keys of its own: "~lead" is not hashed like another name.
    assert (await presence.count("~lead")).connections == 1
    assert await presence.reap("i1", "i1") is not None
    keys = await cluster_keys(redis_cluster, cluster_prefix + "ws:history:*")
    assert len(keys) == 6 * 3
    assert len({cluster_client.keyslot(k) for k in keys}) == 6


async def test_the_cluster_transport_refuses_a_prefix_with_braces(
    redis_cluster: ThrowawayRedisCluster,
) -> None:
    with pytest.raises(ValueError, match="cannot contain"):
        transport(redis_cluster, "app{1}:")


# -- failover ---------------------------------------------------------------------------------


# On a failover, redis-py's cluster client drops pooled connections to the surviving
# masters without closing them (their finalizers warn): not a leak of the transport's.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_killed_master_is_replaced_and_delivery_is_back_within_10_s_without_duplicates(
    redis_cluster: ThrowawayRedisCluster, cluster_prefix: str
) -> None:
    options: dict[str, float] = {
        "reconnect_delay": 0.05,
        "reconnect_max_delay": 0.5,
        "ping_interval": 0.5,
        "ping_timeout": 1.0,
        "connect_timeout": 1.0,
        "command_timeout": 1.0,
    }
    a = transport(redis_cluster, cluster_prefix, **options)
    b = transport(redis_cluster, cluster_prefix, **options)
    states: list[bool] = []
    b.add_state_listener(states.append)
    await a.start()
    await b.start()
    inbox = Inbox()
    # Channels on every master: one of them lives on the master killed below.
    rooms = [f"ws:room:/f/{i}" for i in range(12)]
    try:
        for room in rooms:
            await b.subscribe(room, inbox)
        for room in rooms:
            await a.publish(room, f"before {room}")
        for room in rooms:
            await inbox.wait_for(f"before {room}")
        victim = (await shard_channels(redis_cluster, cluster_prefix)).items()
        port = next(port for port, chans in victim if chans)
        await asyncio.to_thread(redis_cluster.kill, port)
        killed_at = asyncio.get_running_loop().time()

        async def delivered_everywhere(tag: str) -> bool:
            for room in rooms:
                try:
                    await a.publish(room, f"{tag} {room}")
                except Exception:
                    return False
            try:
                for room in rooms:
                    await inbox.wait_for(f"{tag} {room}", timeout=0.5)
            except TimeoutError:
                return False
            return True

        attempt = 0
        while not await delivered_everywhere(f"after{attempt}"):
            attempt += 1
            assert asyncio.get_running_loop().time() - killed_at < 10, "not back within 10 s"
            await asyncio.sleep(0.1)
        assert states[:1] == [False] and states[-1] is True
        assert b.connected and await b.health()
        # Each payload arrived at most once, the last round exactly once per room.
        assert len(inbox.got) == len(set(inbox.got))
        assert all(f"after{attempt} {room}" in inbox.got for room in rooms)
    finally:
        await a.close()
        await b.close()
        await asyncio.to_thread(redis_cluster.restart, port)
        await asyncio.to_thread(redis_cluster.wait_healthy)
        gc.collect()  # finalize the dropped connections here, under this test's filters


def move_slot(cluster: ThrowawayRedisCluster, slot: int, source: int, target: int) -> None:
    """Hand the (keyless) ``slot`` from master ``source`` to master ``target``."""
    ids = {port: cluster.cli(port, "CLUSTER", "MYID").strip() for port in (source, target)}
    assert (
        cluster.cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source]).strip()
        == "OK"
    )
    assert (
        cluster.cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target]).strip()
        == "OK"
    )
    for port in cluster.master_ports():
        assert (
            cluster.cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target]).strip() == "OK"
        )


async def test_a_moved_slot_is_resubscribed_on_its_new_master(
    redis_cluster: ThrowawayRedisCluster,
    cluster_client: aioredis.RedisCluster,
    cluster_prefix: str,
) -> None:
    options: dict[str, float] = {"reconnect_delay": 0.05, "reconnect_max_delay": 0.5}
    a = transport(redis_cluster, cluster_prefix, **options)
    b = transport(redis_cluster, cluster_prefix, **options)
    states: list[bool] = []
    b.add_state_listener(states.append)
    await a.start()
    await b.start()
    inbox = Inbox()
    room = "ws:room:/moving"
    slot = cluster_client.keyslot(cluster_prefix + room)
    placed = await shard_channels(redis_cluster, cluster_prefix)
    source = target = 0
    try:
        await b.subscribe(room, inbox)
        await a.publish(room, "before")
        await inbox.wait_for("before")
        placed = await shard_channels(redis_cluster, cluster_prefix)
        source = next(port for port, chans in placed.items() if cluster_prefix + room in chans)
        target = next(port for port in placed if port != source)
        await asyncio.to_thread(move_slot, redis_cluster, slot, source, target)
        await wait_until(lambda: states[-1:] == [True], timeout=10, what="resubscribed")
        assert states == [False, True]
        placed = await shard_channels(redis_cluster, cluster_prefix)
        assert cluster_prefix + room in placed[target]
        assert cluster_prefix + room not in placed[source]
        await a.publish(room, "after")  # a's client follows the MOVED redirection
        await inbox.wait_for("after")
        assert inbox.got == ["before", "after"]
    finally:
        await a.close()
        await b.close()
        if source:
            await asyncio.to_thread(move_slot, redis_cluster, slot, target, source)


async def test_the_history_store_passes_on_the_cluster(
    cluster_client: aioredis.RedisCluster, cluster_prefix: str
) -> None:
    await check_history_store(
        lambda: RedisHistory(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    )


# -- an unreachable cluster ---------------------------------------------------------------------


async def test_an_unreachable_cluster_fails_fast_naming_the_url_without_password() -> None:
    port = free_cluster_ports(1)[0]
    url = f"redis+cluster://:secret-pw@127.0.0.1:{port}"
    failing = RedisTransport.from_url(url, fail_fast=True, connect_timeout=0.5)
    with pytest.raises(TransportError) as caught:
        await failing.start()
    assert f"redis+cluster://:***@127.0.0.1:{port}" in str(caught.value)
    assert "secret-pw" not in str(caught.value)
    await failing.close()


async def test_an_unreachable_cluster_starts_down_and_every_command_fails_cleanly() -> None:
    port = free_cluster_ports(1)[0]
    down = RedisTransport.from_url(
        f"redis+cluster://127.0.0.1:{port}", connect_timeout=0.3, command_timeout=0.5
    )
    states: list[bool] = []
    down.add_state_listener(states.append)
    await down.start()  # not fail_fast: starts anyway, retrying in the background
    try:
        assert not down.connected and states == [False]
        assert await down.health() is False
        await down.subscribe("ws:room:/r", lambda payload: None)  # kept for later
        assert down.channels == frozenset({"ws:room:/r"})
        with pytest.raises(TransportError):
            await down.publish("ws:room:/r", "lost")
        capabilities = down.capabilities()
        assert capabilities.presence is not None and capabilities.directory is not None
        with pytest.raises(TransportError):
            await capabilities.presence.count("/r")
        with pytest.raises(TransportError):
            await capabilities.directory.locate_connection("c1")
    finally:
        await down.close()


async def test_a_killed_shard_connection_is_reported_and_every_channel_resubscribed(
    redis_cluster: ThrowawayRedisCluster, cluster_prefix: str
) -> None:
    name = unique("wsevents-shard")
    options: dict[str, Any] = {"reconnect_max_delay": 0.5, "client_name": name}
    a = transport(redis_cluster, cluster_prefix, **options)
    b = transport(redis_cluster, cluster_prefix, **options)
    states: list[bool] = []
    a_states: list[bool] = []
    b.add_state_listener(states.append)
    a.add_state_listener(a_states.append)
    await a.start()
    await b.start()
    inbox = Inbox()
    rooms = [f"ws:room:/k/{i}" for i in range(12)]
    try:
        for room in rooms:
            await b.subscribe(room, inbox)
        port = redis_cluster.master_ports()[0]
        node = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            subscribers = [
                c
                for c in await node.client_list()
                if c.get("name") == name and int(c.get("ssub", 0)) > 0
            ]
            assert len(subscribers) == 2  # a's (probe only) and b's
            for client in subscribers:
                await node.client_kill_filter(_id=client["id"])
        finally:
            await node.aclose()
        await wait_until(lambda: states == [False, True], timeout=10, what="b down then up")
        await wait_until(lambda: a_states == [False, True], timeout=10, what="a down then up")
        for i, room in enumerate(rooms):
            await a.publish(room, f"after {i}")
        for i in range(len(rooms)):
            await inbox.wait_for(f"after {i}")
        assert sorted(inbox.got) == sorted(f"after {i}" for i in range(len(rooms)))
        assert await a.health() and await b.health()
        assert a.reconnects == 1 and b.reconnects == 1
    finally:
        await a.close()
        await b.close()


async def test_the_rate_limit_store_passes_on_the_cluster(
    cluster_client: aioredis.RedisCluster, cluster_prefix: str
) -> None:
    await check_rate_limit_store(
        lambda: RedisRateLimits(cluster_client, prefix=cluster_prefix, command_timeout=2.0)
    )


def test_the_multi_instance_benchmark_measures_every_node_of_a_cluster(
    redis_cluster: ThrowawayRedisCluster,
) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "multi_instance.py"
    spec = importlib.util.spec_from_file_location("multi_instance_bench", script)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pids = bench.redis_pids(redis_cluster.url)
    assert sorted(pids) == sorted(proc.pid for proc in redis_cluster.procs.values())
    assert bench.redis_pid(redis_cluster.url) in pids
