"""The rate-limit store conformance suite: the stores of wsevents pass it, broken ones fail it."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from wsevents import MemoryBus
from wsevents.testing import check_rate_limit_store
from wsevents.transports.memory import MemoryRateLimitStore
from wsevents.transports.redis._ratelimit import RedisRateLimits

pytest_plugins = ["tests.redis_fixtures"]


async def test_the_memory_store_passes() -> None:
    bus = MemoryBus()
    await check_rate_limit_store(lambda: bus.rate_limits)


async def test_an_async_factory_is_awaited() -> None:
    store = MemoryRateLimitStore()

    async def factory() -> MemoryRateLimitStore:
        return store

    await check_rate_limit_store(factory, key_prefix="custom:")
    assert all(key.startswith("custom:") for key in store._buckets)


@pytest.mark.functional
async def test_the_redis_store_passes_and_its_keys_expire(
    admin: aioredis.Redis, prefix: str
) -> None:
    # One store per "instance", all on the same Redis and prefix, as in a cluster.
    await check_rate_limit_store(lambda: RedisRateLimits(admin, prefix=prefix, command_timeout=2.0))
    keys = [key async for key in admin.scan_iter(match=prefix + "*", count=500)]
    assert keys
    # Each expires once its bucket would be full again (at most 5 tokens at 0.5/s: 10 s).
    ttls = [await admin.pttl(key) for key in keys]
    assert all(0 < ttl <= 10_001 for ttl in ttls), ttls


class PerStore(MemoryRateLimitStore):
    """Every factory call a store of its own: instances do not share."""


class NeverRefuses(MemoryRateLimitStore):
    async def take(self, key: str, capacity: float, refill: float) -> float:
        return 0.0


class RefusalsConsume(MemoryRateLimitStore):
    async def take(self, key: str, capacity: float, refill: float) -> float:
        wait = await super().take(key, capacity, refill)
        if wait:
            tokens, stamp = self._buckets[key]
            self._buckets[key] = (tokens - 1.0, stamp)
        return wait


class Bucket(MemoryRateLimitStore):
    """A token bucket written out, with the two mistakes below to switch on."""

    capped = True
    racy = False

    async def take(self, key: str, capacity: float, refill: float) -> float:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (capacity, now))
        tokens += (now - stamp) * refill
        if self.capped:
            tokens = min(capacity, tokens)
        if self.racy:
            await asyncio.sleep(0)  # read, yield, write: concurrent takes see one count
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / refill


class NoCap(Bucket):
    capped = False


class Racy(Bucket):
    racy = True


class Broken(MemoryRateLimitStore):
    async def take(self, key: str, capacity: float, refill: float) -> float:
        raise ConnectionError("down")


@pytest.mark.parametrize(
    ("make", "check", "what"),
    [
        (PerStore, "shared", "gave a token through another"),
        (NeverRefuses, "bucket", "gave a wait of 0.0"),
        (RefusalsConsume, "bucket", "a refused take consumed a token"),
        (NoCap, "refill", "refilled past its capacity"),
        (Broken, "bucket", "raised ConnectionError"),
    ],
)
async def test_broken_stores_fail_with_the_check_named(make, check, what) -> None:
    shared = make()
    factory = make if make is PerStore else (lambda: shared)
    with pytest.raises(AssertionError) as info:
        await check_rate_limit_store(factory)
    assert f"[{check}]" in str(info.value) and what in str(info.value)


async def test_the_written_out_bucket_passes_and_a_racy_one_fails_the_race() -> None:
    bucket = Bucket()
    await check_rate_limit_store(lambda: bucket)
    store = Racy()
    with pytest.raises(AssertionError, match=r"\[shared\]: 30 of 30 concurrent takes"):
        await check_rate_limit_store(lambda: store)
