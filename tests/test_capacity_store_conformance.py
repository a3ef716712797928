"""The capacity store conformance suite: the stores of wsevents pass it, broken ones fail it."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from wsevents import MemoryBus
from wsevents.testing import check_capacity_store
from wsevents.transports.memory import MemoryCapacityStore
from wsevents.transports.redis._capacity import RedisCapacity

pytest_plugins = ["tests.redis_fixtures"]


async def test_the_memory_store_passes_and_is_left_empty() -> None:
    bus = MemoryBus()
    await check_capacity_store(lambda: bus.capacity)
    # Leases of instances without places may stay until they run out; no place is left.
    assert all(not room.places for room in bus.capacity._rooms.values())


async def test_an_async_factory_is_awaited() -> None:
    store = MemoryCapacityStore()

    async def factory() -> MemoryCapacityStore:
        return store

    await check_capacity_store(factory, room_prefix="custom:")


@pytest.mark.functional
async def test_the_redis_store_passes_and_leaves_no_key(admin: aioredis.Redis, prefix: str) -> None:
    # One store per "instance", all on the same Redis and prefix, as in a cluster.
    await check_capacity_store(lambda: RedisCapacity(admin, prefix=prefix, command_timeout=2.0))
    assert [key async for key in admin.scan_iter(match=prefix + "*", count=500)] == []


class NoLimit(MemoryCapacityStore):
    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        return await super().try_acquire(room, member, limit + 1, instance_id, lease)


class TwoPlacesPerRejoin(MemoryCapacityStore):
    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        entry = self._rooms.get(room)
        if entry is not None and member in entry.places:
            member += "'"
        return await super().try_acquire(room, member, limit, instance_id, lease)


class ForeignRelease(MemoryCapacityStore):
    async def release(self, room: str, member: str, instance_id: str) -> bool:
        entry = self._rooms.get(room)
        if entry is None or member not in entry.places:
            return False
        return await super().release(room, member, entry.places[member])


class LeasesNeverRunOut(MemoryCapacityStore):
    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        return await super().try_acquire(room, member, limit, instance_id, 3600.0)


class RenewAlwaysTrue(MemoryCapacityStore):
    async def renew(self, room: str, instance_id: str, lease: float) -> bool:
        await super().renew(room, instance_id, lease)
        return True


class RacyAcquire(MemoryCapacityStore):
    async def try_acquire(
        self, room: str, member: str, limit: int, instance_id: str, lease: float
    ) -> bool:
        entry = self._rooms.get(room)
        if entry is not None and member in entry.places:
            return True
        full = await self.count(room) >= limit
        await asyncio.sleep(0)  # others check meanwhile: a read then a write, not atomic
        if full:
            return False
        return await super().try_acquire(room, member, 10**6, instance_id, lease)


class SyncCount(MemoryCapacityStore):
    def count(self, room: str) -> int:  # type: ignore[override]
        entry = self._rooms.get(room)
        return len(entry.places) if entry is not None else 0


@pytest.mark.parametrize(
    ("store_class", "check", "message"),
    [
        (NoLimit, "limit", "a 4th place of 3"),
        (TwoPlacesPerRejoin, "limit", "no second one"),
        (ForeignRelease, "limit", "release by another"),
        (LeasesNeverRunOut, "lease", "0.05 s lease ran out"),
        (RenewAlwaysTrue, "lease", "renew() of a lease that ran out"),
        (RacyAcquire, "races", "concurrent acquisitions"),
        (SyncCount, "limit", "count() is not async"),
    ],
)
async def test_a_broken_store_fails_the_check_that_catches_it(
    store_class: type[MemoryCapacityStore], check: str, message: str
) -> None:
    store = store_class()
    with pytest.raises(AssertionError) as raised:
        await check_capacity_store(lambda: store, timeout=1.0)
    text = str(raised.value)
    assert text.startswith(f"check_capacity_store [{check}]"), text
    assert message in text, text


async def test_a_factory_that_raises_or_returns_a_non_store_is_reported() -> None:
    def boom() -> MemoryCapacityStore:
        raise RuntimeError("no backend")

    with pytest.raises(AssertionError, match="the factory raised RuntimeError"):
        await check_capacity_store(boom)
    with pytest.raises(AssertionError, match="has no try_acquire"):
        await check_capacity_store(lambda: object())  # type: ignore[arg-type,return-value]
