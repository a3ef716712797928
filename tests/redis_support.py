"""Helpers of the Redis functional tests: the server under test, a throwaway server, probes."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
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


REDIS_CLI = shutil.which("redis-cli")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """``count`` distinct free ports P with P + 10000 free too (a cluster node's bus port),
    all at most 55535."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 45000)
        if port not in ports and _bindable(port) and _bindable(port + 10000):
            ports.append(port)
    return ports


class ThrowawayRedisCluster:
    """A Redis Cluster of ``masters`` masters with one replica each, as ``redis-server``
    subprocesses in ``directory`` on free loopback ports, created with
    ``redis-cli --cluster create``.

    Synchronous, so that a session-scoped fixture starts it once. ``stop()`` ends every
    process it started, by PID. ``cluster-node-timeout`` is short (1 s) so that a killed
    master is replaced within seconds, and the cluster keeps serving the other shards'
    slots meanwhile (``cluster-require-full-coverage no``).
    """

    def __init__(self, directory: str, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.directory = directory
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.ports = free_cluster_ports(masters * 2)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start_node(self, port: int) -> None:
        assert REDIS_SERVER is not None
        self.procs[port] = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(self.directory, f"nodes-{port}.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-require-full-coverage", "no",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "no",
                "--dir", self.directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_ping(port)

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        assert REDIS_CLI is not None
        subprocess.run(
            [
                REDIS_CLI, "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "1", "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )  # fmt: skip
        self.wait_healthy()

    def cli(self, port: int, *args: str) -> str:
        assert REDIS_CLI is not None
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    def _wait_ping(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.cli(port, "PING").strip() != "PONG":
            if time.monotonic() > deadline or self.procs[port].poll() is not None:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)

    def roles(self) -> dict[int, str]:
        """Port → ``master`` or ``slave``, of the live nodes."""
        out: dict[int, str] = {}
        for port, proc in self.procs.items():
            if proc.poll() is None:
                first = self.cli(port, "ROLE").split("\n", 1)[0].strip()
                out[port] = first
        return out

    def master_ports(self) -> list[int]:
        return sorted(port for port, role in self.roles().items() if role == "master")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node reports ``cluster_state:ok``, there are ``masters`` live
        masters owning every slot and every live replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while True:
            live = [p for p, proc in self.procs.items() if proc.poll() is None]
            states = [self.cli(p, "CLUSTER", "INFO") for p in live]
            if (
                all("cluster_state:ok" in s for s in states)
                and len(self.master_ports()) == self.masters
                and all("cluster_slots_ok:16384" in s for s in states)
                and all(
                    "master_link_status:up" in self.cli(p, "INFO", "replication")
                    for p, role in self.roles().items()
                    if role == "slave"
                )
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not healthy after {timeout} s: {states}")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (by its PID) and reap it."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again with its cluster config (it rejoins)."""
        self.start_node(port)

    def stop(self) -> None:
        """End every process started here, by PID (SIGTERM, then SIGKILL)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def delete_cluster_keys(cluster: ThrowawayRedisCluster, prefix: str) -> int:
    """Delete every key under ``prefix`` on every master of ``cluster``; returns how many."""
    total = 0
    for port in cluster.master_ports():
        node = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            keys = [key async for key in node.scan_iter(match=prefix + "*", count=500)]
            if keys:
                async with node.pipeline(transaction=False) as pipe:
                    for key in keys:  # one DEL per key: keys of several slots
                        _ = pipe.delete(key)
                    await pipe.execute()
            total += len(keys)
        finally:
            await node.aclose()
    return total


ENGINES = ["redis", "redis-cluster"]
"""The Redis engines a multi-instance test can run on (the ``engine`` fixture)."""

both_engines = pytest.mark.parametrize("engine", ENGINES, indirect=True)
"""Run a test on one Redis and on the Redis Cluster (through the ``engine_url`` fixture)."""


async def cluster_keys(cluster: ThrowawayRedisCluster, match: str) -> list[bytes]:
    """The keys matching ``match`` on every master of ``cluster``."""
    found: list[bytes] = []
    for port in cluster.master_ports():
        node = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            found += [key async for key in node.scan_iter(match=match, count=500)]
        finally:
            await node.aclose()
    return found


KeysOf = Callable[[str], Awaitable[list[bytes]]]
"""``await keys_of(match)``: the keys matching ``match`` on the engine under test."""
