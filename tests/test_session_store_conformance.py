"""The session store conformance suite: the stores of wsevents pass it, broken ones fail it."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from wsevents import MemoryBus
from wsevents.testing import check_session_store
from wsevents.transports.memory import MemorySessionStore
from wsevents.transports.redis import RedisTransport
from wsevents.transports.redis._sessions import RedisSessions

from .redis_support import REDIS_URL

pytest_plugins = ["tests.redis_fixtures"]


async def test_the_memory_store_passes_and_is_left_empty() -> None:
    bus = MemoryBus()
    await check_session_store(lambda: bus.sessions)
    assert bus.sessions._values == {}


async def test_an_async_factory_is_awaited() -> None:
    store = MemorySessionStore()

    async def factory() -> MemorySessionStore:
        return store

    await check_session_store(factory, key_prefix="custom:")


@pytest.mark.functional
async def test_the_redis_store_passes_and_leaves_no_key(admin: aioredis.Redis, prefix: str) -> None:
    await check_session_store(lambda: RedisSessions(admin, prefix=prefix, command_timeout=2.0))
    assert [key async for key in admin.scan_iter(match=prefix + "*", count=500)] == []


@pytest.mark.functional
async def test_the_redis_transport_declares_its_session_store(prefix: str) -> None:
    transport = RedisTransport.from_url(REDIS_URL, prefix=prefix)
    store = transport.capabilities().sessions
    assert isinstance(store, RedisSessions)
    await check_session_store(lambda: store)
    await transport.client.aclose()


@pytest.mark.functional
async def test_redis_failures_raise_transport_errors(prefix: str) -> None:
    from wsevents import TransportError

    client = aioredis.from_url("redis://127.0.0.1:1/0")
    store = RedisSessions(client, prefix=prefix, command_timeout=0.5)
    for call in (
        store.put("k", "v", 1.0),
        store.get("k"),
        store.take("k"),
        store.delete("k"),
        store.incr("k"),
    ):
        with pytest.raises(TransportError, match="session store"):
            await call
    await client.aclose()


class LosesOnlyNew(MemorySessionStore):
    async def put(self, key: str, value: str, ttl: float | None, *, only_new: bool = False) -> bool:
        return await super().put(key, value, ttl)


class TakeKeeps(MemorySessionStore):
    async def take(self, key: str) -> str | None:
        return await self.get(key)


class NeverExpires(MemorySessionStore):
    async def put(self, key: str, value: str, ttl: float | None, *, only_new: bool = False) -> bool:
        return await super().put(key, value, None, only_new=only_new)


class CountsFromZero(MemorySessionStore):
    async def incr(self, key: str) -> int:
        return await super().incr(key) - 1


class SyncGet(MemorySessionStore):
    def get(self, key: str) -> str | None:  # type: ignore[override]
        return None


@pytest.mark.parametrize(
    ("store", "check"),
    [
        (LosesOnlyNew(), "only-new"),
        (TakeKeeps(), "take"),
        (NeverExpires(), "expiry"),
        (CountsFromZero(), "incr"),
        (SyncGet(), "values"),
    ],
)
async def test_broken_stores_fail_naming_the_check(store: MemorySessionStore, check: str) -> None:
    with pytest.raises(AssertionError, match=rf"check_session_store \[{check}\]"):
        await check_session_store(lambda: store, timeout=2.0)
