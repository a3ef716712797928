"""Helpers of the Redis functional tests: the server under test, a throwaway server, probes."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_SERVER = shutil.which("redis-server")


def unique(stem: str) -> str:
    """A name nobody else uses on the shared Redis (prefixes, client names)."""
    return f"{stem}-{uuid.uuid4().hex[:10]}"


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = ""
) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.02)


async def clients_named(admin: aioredis.Redis, name: str) -> list[dict[str, Any]]:
    """The connections of CLIENT LIST that carry ``name`` (set with ``client_name=``)."""
    return [c for c in await admin.client_list() if c.get("name") == name]


async def pubsub_clients_named(admin: aioredis.Redis, name: str) -> list[dict[str, Any]]:
    """The connections named ``name`` that are in pub/sub mode."""
    return [c for c in await clients_named(admin, name) if "P" in str(c.get("flags", ""))]


class Events:
    """A state listener that records what it was told and lets a test wait for it."""

    def __init__(self) -> None:
        self.seen: list[bool] = []
        self._changed = asyncio.Event()

    def __call__(self, up: bool) -> None:
        self.seen.append(up)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[bool]:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.seen


async def delete_keys(admin: aioredis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix``; returns how many there were."""
    keys = [key async for key in admin.scan_iter(match=prefix + "*", count=500)]
    if keys:
        await admin.delete(*keys)
    return len(keys)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayRedis:
    """A ``redis-server`` subprocess without persistence, on a port of its own.

    ``stop()`` ends it by its PID; ``start()`` brings it back on the same port, empty.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        probe = aioredis.from_url(self.url, retry=Retry(NoBackoff(), 0))
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    await probe.ping()
                    return
                except Exception:
                    if time.monotonic() > deadline or self.proc.returncode is not None:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await probe.aclose()

    async def stop(self) -> None:
        """End the server by its PID (SIGTERM, then SIGKILL) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
