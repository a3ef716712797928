"""The presence store conformance suite: the stores of wsevents pass it, broken ones fail it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from wsevents import MemoryBus
from wsevents.testing import check_presence_store
from wsevents.transports.base import PresenceMember, PresencePage
from wsevents.transports.memory import MemoryPresenceStore
from wsevents.transports.redis._presence import RedisPresence

pytest_plugins = ["tests.redis_fixtures"]

FAST = {"timeout": 2.0}


async def test_the_memory_store_passes_and_is_left_empty() -> None:
    bus = MemoryBus()
    await check_presence_store(lambda: bus.presence)
    assert bus.presence._rooms == {}
    assert bus.presence._alive == {}


async def test_an_async_factory_is_awaited() -> None:
    store = MemoryPresenceStore()

    async def factory() -> MemoryPresenceStore:
        return store

    await check_presence_store(factory, room_prefix="custom:")


@pytest.mark.functional
async def test_the_redis_store_passes_and_leaves_no_key(admin: aioredis.Redis, prefix: str) -> None:
    # One store per "instance", all on the same Redis and prefix, as in a cluster.
    await check_presence_store(
        lambda: RedisPresence(admin, prefix=prefix, command_timeout=2.0, reap_lease=5.0)
    )
    assert [key async for key in admin.scan_iter(match=prefix + "*", count=500)] == []


class EverySecondTabIsFirst(MemoryPresenceStore):
    async def add(
        self, room: str, connection_id: str, user: str, data: str | None, instance_id: str
    ) -> bool:
        await super().add(room, connection_id, user, data, instance_id)
        return True


class UnorderedPages(MemoryPresenceStore):
    async def members(self, room: str, offset: int, limit: int) -> PresencePage:
        page = await super().members(room, 0, 1000)
        members = sorted(page.members, key=lambda m: m.user.lower())
        return PresencePage(page.total, tuple(members[offset : offset + limit]))


class LastDataWins(MemoryPresenceStore):
    async def add(
        self, room: str, connection_id: str, user: str, data: str | None, instance_id: str
    ) -> bool:
        first = await super().add(room, connection_id, user, data, instance_id)
        await self.update(room, user, data)
        return first


class EveryReaperReaps(MemoryPresenceStore):
    """Reads, then removes, without a claim: concurrent reapers all report the leaves."""

    async def reap(self, instance_id: str, reaper_id: str) -> list[tuple[str, str]] | None:
        left = set()
        for room, entry in self._rooms.items():
            held = [
                user for user, instance in entry.connections.values() if instance == instance_id
            ]
            left |= {(room, user) for user in held if held.count(user) == entry.users[user]}
        await asyncio.sleep(0)  # the round trip between the read and the removal
        await super().reap(instance_id, reaper_id)
        return sorted(left)


class NeverExpires(MemoryPresenceStore):
    async def expired_instances(self) -> list[str]:
        return []


class ConnectionCountIsWrong(MemoryPresenceStore):
    async def members(self, room: str, offset: int, limit: int) -> PresencePage:
        page = await super().members(room, offset, limit)
        return PresencePage(
            page.total, tuple(PresenceMember(m.user, m.data, 1) for m in page.members)
        )


class SyncCount(MemoryPresenceStore):
    def count(self, room: str) -> object:  # type: ignore[override]
        return None


@pytest.mark.parametrize(
    ("store", "failure"),
    [
        (EverySecondTabIsFirst, "[first-last]: add of the user's second connection"),
        (UnorderedPages, "[pages]: the whole list"),
        (ConnectionCountIsWrong, "[pages]: the whole list"),
        (LastDataWins, "[data]: data of the first connection"),
        (EveryReaperReaps, "[reap]: 4 concurrent reaps of one dead instance: 4 got leaves"),
        (NeverExpires, "[heartbeat]: an instance whose 0.05 s heartbeat ran out"),
        (SyncCount, "[first-last]: count() is not async"),
    ],
)
async def test_a_broken_store_fails_the_check_that_names_it(
    store: type[MemoryPresenceStore], failure: str
) -> None:
    shared = store()
    with pytest.raises(AssertionError) as caught:
        await check_presence_store(lambda: shared, **FAST)
    assert str(caught.value).startswith(f"check_presence_store {failure}"), str(caught.value)


async def test_a_factory_that_raises_is_reported() -> None:
    def factory() -> MemoryPresenceStore:
        raise RuntimeError("no store today")

    with pytest.raises(AssertionError, match=r"\[first-last\]: the factory raised RuntimeError"):
        await check_presence_store(factory, **FAST)


def test_check_presence_store_runs_under_plain_asyncio_without_pytest() -> None:
    script = """
import asyncio
import sys
sys.modules["pytest"] = None
from wsevents import MemoryBus
from wsevents.transports.memory import MemoryPresenceStore
from wsevents.testing import check_presence_store


class AlwaysFirst(MemoryPresenceStore):
    async def add(self, room, connection_id, user, data, instance_id):
        await super().add(room, connection_id, user, data, instance_id)
        return True


async def main():
    bus = MemoryBus()
    await check_presence_store(lambda: bus.presence)
    print("memory passes")
    broken = AlwaysFirst()
    try:
        await check_presence_store(lambda: broken, timeout=1.0)
    except AssertionError as exc:
        print(str(exc).split(":")[0])


asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["memory passes", "check_presence_store [first-last]"]
