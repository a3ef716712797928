"""check_history_store: the memory and Redis stores pass, broken stores are caught."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from wsevents import MemoryBus
from wsevents.testing import check_history_store
from wsevents.transports.base import HistoryEntry, StreamPosition
from wsevents.transports.memory import MemoryHistoryStore
from wsevents.transports.redis._history import RedisHistory

pytest_plugins = ["tests.redis_fixtures"]

FAST = {"timeout": 2.0}


async def test_the_memory_store_passes() -> None:
    bus = MemoryBus()
    await check_history_store(lambda: bus.history)


async def test_an_async_factory_is_awaited() -> None:
    store = MemoryHistoryStore()

    async def factory() -> MemoryHistoryStore:
        return store

    await check_history_store(factory, room_prefix="custom:")


@pytest.mark.functional
async def test_the_redis_store_passes(admin: aioredis.Redis, prefix: str) -> None:
    await check_history_store(lambda: RedisHistory(admin, prefix=prefix, command_timeout=2.0))


class OffByOne(MemoryHistoryStore):
    async def append(self, room: str, payload: str, size: int, ttl: float) -> StreamPosition:
        position = await super().append(room, payload, size, ttl)
        return StreamPosition(position.offset + 1, position.epoch)


class IgnoresEpoch(MemoryHistoryStore):
    async def since(
        self, room: str, offset: int, epoch: str, ttl: float
    ) -> tuple[StreamPosition, list[HistoryEntry] | None]:
        return await super().since(room, offset, (await self.position(room)).epoch, ttl)


class NeverTrims(MemoryHistoryStore):
    async def append(self, room: str, payload: str, size: int, ttl: float) -> StreamPosition:
        return await super().append(room, payload, 1_000_000, 1e9)


class Reversed(MemoryHistoryStore):
    async def since(
        self, room: str, offset: int, epoch: str, ttl: float
    ) -> tuple[StreamPosition, list[HistoryEntry] | None]:
        position, entries = await super().since(room, offset, epoch, ttl)
        return position, None if entries is None else entries[::-1]


class SyncPosition(MemoryHistoryStore):
    def position(self, room: str) -> StreamPosition:  # type: ignore[override]
        return StreamPosition(0, "e")


@pytest.mark.parametrize(
    ("store", "failure"),
    [
        (OffByOne, "[offsets]: offsets of three appends"),
        (IgnoresEpoch, "[since]: another epoch"),
        (Reversed, "[since]: since 0"),
        (NeverTrims, "[trim]: since a trimmed offset"),
        (SyncPosition, "[offsets]: position() is not async"),
    ],
)
async def test_a_broken_store_is_caught_by_the_check_that_covers_it(
    store: type[MemoryHistoryStore], failure: str
) -> None:
    shared = store()
    with pytest.raises(AssertionError) as caught:
        await check_history_store(lambda: shared, **FAST)
    assert str(caught.value).startswith(f"check_history_store {failure}"), str(caught.value)


async def test_a_factory_that_raises_is_reported() -> None:
    def factory() -> MemoryHistoryStore:
        raise RuntimeError("no store today")

    with pytest.raises(AssertionError, match=r"\[offsets\]: the factory raised RuntimeError"):
        await check_history_store(factory, **FAST)
